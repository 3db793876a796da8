//! Latency-by-percentile plots: the x axis is `1/(1-p)` on a log scale (50%, 90%, 99%,
//! 99.9%... equally spaced, the HdrHistogram and wrk2 convention and the paper's figures),
//! the y axis latency in ms. One series per run; `weir load plot` overlays saved runs.
//!
//! SVG only: plotters' bitmap backend needs a font rasterizer (its `ttf` feature pulls
//! font-kit and the system's font stack), which this crate does not take on; SVG text is
//! drawn by the viewer.

use std::path::Path;

use plotters::prelude::*;

use crate::error::LoadError;
use crate::stats::Hist;

/// A named histogram to draw.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Latency in microseconds.
    pub hist: Hist,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Refuses a plot path that is not `.svg`, before any load runs.
pub fn check_path(path: &Path) -> Result<(), LoadError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(e) if e == "svg" => Ok(()),
        Some(e) if e == "png" => Err(LoadError::Usage(format!(
            "{}: PNG is not supported (it would need a font stack); write .svg",
            path.display()
        ))),
        _ => Err(LoadError::Usage(format!(
            "{}: the plot file must end in .svg",
            path.display()
        ))),
    }
}

fn label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if (x - x.round()).abs() < 1e-6 {
        let digits = (x.round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    } else {
        format!("{p:.2}%")
    }
}

/// The points of one series: (log10(1/(1-p)), latency ms).
fn points(h: &Hist, xmax: f64) -> Vec<(f64, f64)> {
    let n = h.len().max(1) as f64;
    let x_end = n.log10().min(xmax);
    let mut out = Vec::new();
    let mut x = 0.0;
    while x < x_end {
        let p = 1.0 - 10f64.powf(-x);
        out.push((x, h.value_at_quantile(p) as f64 / 1e3));
        x += 0.01;
    }
    out.push((x_end, h.max() as f64 / 1e3));
    out
}

/// Draws the series into an SVG file.
pub fn draw(series: &[Series], title: &str, path: &Path) -> Result<(), LoadError> {
    check_path(path)?;
    let most = series
        .iter()
        .map(|s| s.hist.len())
        .max()
        .unwrap_or(1)
        .max(10);
    let xmax = (most as f64).log10().ceil().clamp(1.0, 6.0);
    let ymax = series
        .iter()
        .map(|s| s.hist.max() as f64 / 1e3)
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.08;
    let mut svg = String::new();
    {
        let e = |e: DrawingAreaErrorKind<_>| LoadError::Plot(e.to_string());
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_labels(xmax as usize + 1)
            .x_label_formatter(&|x| label(*x))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(e)?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    points(&s.hist, xmax),
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    std::fs::write(path, svg).map_err(|e| LoadError::Output {
        path: path.display().to_string(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_paths() {
        assert_eq!(label(0.0), "0%");
        assert_eq!(label(1.0), "90%");
        assert_eq!(label(2.0), "99%");
        assert_eq!(label(3.0), "99.9%");
        assert_eq!(label(4.0), "99.99%");
        assert!(check_path(Path::new("a.svg")).is_ok());
        assert!(check_path(Path::new("a.png")).is_err());
        assert!(check_path(Path::new("a")).is_err());
    }

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.svg");
        let mut h = crate::stats::new_hist(std::time::Duration::from_secs(10));
        for v in 1..=1000u64 {
            h.record(v * 100).unwrap();
        }
        draw(
            &[Series {
                name: "run a".into(),
                hist: h,
            }],
            "t",
            &p,
        )
        .unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(
            s.starts_with("<svg") && s.contains("run a") && s.contains("99.9%"),
            "{}",
            &s[..200]
        );
    }
}
