//! Latency-by-percentile plots: the x axis is `1/(1-p)` on a log scale (50%, 90%, 99%,
//! 99.9%... equally spaced, the HdrHistogram and wrk2 convention and the paper's figures),
//! the y axis latency in ms. One series per run; `weir load plot` overlays saved runs.
//!
//! Two formats, chosen by the file's extension: `.svg` (plotters' SVG backend; the viewer
//! draws the text) and `.png` (plotters' bitmap backend, same size and layout). PNG text is
//! rasterized by `ab_glyph` from DejaVu Sans, which ships in `assets/` (with its license)
//! and is compiled in, so a machine without any font installed draws the same plot; the
//! `ttf` feature is not used because it loads system fonts through font-kit. plotters'
//! `bitmap_encoder` feature is not used either: it pulls the `image` crate with its
//! decoders, so the RGB buffer is encoded here with the small `png` crate instead. The
//! font is registered for SVG too: with `ab_glyph` on, plotters measures all text (layout,
//! legend box) with the registered font. The PNG's text comes out about 6% larger than an
//! SVG viewer draws it (plotters' SVG backend writes `font-size` as size / 1.24, ab_glyph
//! takes the size as DejaVu's line height, 1.164 em), which the raster can use.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::LoadError;
use crate::stats::Hist;

/// DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The plot's size in pixels (both formats).
pub const SIZE: (u32, u32) = (960, 600);

/// What a plot path's extension asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.svg`
    Svg,
    /// `.png`
    Png,
}

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

/// The format a plot path asks for; refuses any extension but `.svg` and `.png`, before
/// any load runs.
pub fn check_path(path: &Path) -> Result<Format, LoadError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => Err(LoadError::Usage(format!(
            "{}: the plot file must end in .svg or .png",
            path.display()
        ))),
    }
}

/// Registers the shipped font as plotters' "sans-serif" (once per process).
fn register_font() -> Result<(), LoadError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(LoadError::Plot("the built-in font does not load".into()))
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

/// Draws the series into `path`, an SVG or PNG file by its extension.
pub fn draw(series: &[Series], title: &str, path: &Path) -> Result<(), LoadError> {
    let format = check_path(path)?;
    register_font()?;
    let bytes = match format {
        Format::Svg => {
            let mut svg = String::new();
            chart(
                SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
                series,
                title,
            )?;
            svg.into_bytes()
        }
        Format::Png => {
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            chart(
                BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
                series,
                title,
            )?;
            encode_png(&rgb, SIZE)?
        }
    };
    std::fs::write(path, bytes).map_err(|e| LoadError::Output {
        path: path.display().to_string(),
        source: e,
    })
}

/// An 8-bit RGB buffer (rows top to bottom) as a PNG file's bytes.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, LoadError> {
    let e = |e: png::EncodingError| LoadError::Plot(format!("PNG encoding: {e}"));
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(e)?;
    writer.write_image_data(rgb).map_err(e)?;
    writer.finish().map_err(e)?;
    Ok(out)
}

/// Draws the chart on `root` (any plotters backend) and presents it.
fn chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[Series],
    title: &str,
) -> Result<(), LoadError> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| LoadError::Plot(e.to_string());
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
    root.present().map_err(e)
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
        assert_eq!(check_path(Path::new("a.svg")).unwrap(), Format::Svg);
        assert_eq!(check_path(Path::new("a.PNG")).unwrap(), Format::Png);
        for bad in ["a.jpg", "a", "svg"] {
            let e = check_path(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(".svg") && e.contains(".png"), "{e}");
        }
    }

    fn series(names: &[&str]) -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut h = crate::stats::new_hist(std::time::Duration::from_secs(10));
                for v in 1..=1000u64 {
                    h.record(v * 100 * (i as u64 + 1)).unwrap();
                }
                Series {
                    name: (*name).into(),
                    hist: h,
                }
            })
            .collect()
    }

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.svg");
        draw(&series(&["run a"]), "t", &p).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(
            s.starts_with("<svg") && s.contains("run a") && s.contains("99.9%"),
            "{}",
            &s[..200]
        );
    }

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        draw(
            &series(&["nginx-uwsgi", "weir @ 1000 req/s"]),
            "two runs",
            &p,
        )
        .unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), SIZE);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let px = &buf[..info.buffer_size()];
        let has = |c: RGBColor| px.chunks(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(has(COLORS[0]) && has(COLORS[1]), "both series drawn");
        // Text is antialiased: many grey levels besides white and black.
        let greys = px
            .chunks(3)
            .filter(|p| p[0] == p[1] && p[1] == p[2])
            .map(|p| p[0])
            .collect::<std::collections::BTreeSet<_>>();
        assert!(greys.len() > 20, "{} grey levels", greys.len());
        // Only text is drawn above the chart (the title) and left of the tick labels (the
        // rotated axis description): both hold dark pixels.
        let w = SIZE.0 as usize;
        let dark = |x: usize, y: usize| px[3 * (y * w + x)] < 100;
        assert!((0..40).any(|y| (0..w).any(|x| dark(x, y))), "title");
        assert!(
            (0..30).any(|x| (100..500).any(|y| dark(x, y))),
            "y axis text"
        );
    }
}
