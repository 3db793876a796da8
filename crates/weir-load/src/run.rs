//! From a command to results: validates every input before any request goes out (so bad
//! input exits 2 at once), checks the target answers, runs each rate of the sweep, prints
//! the reports, writes `--json` and `--plot`, and applies `--fail-if`.

use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{LoadCommand, LoadSub, PlotArgs};
use crate::engine::{self, Mode, Reuse, RunSpec};
use crate::error::LoadError;
use crate::failif::{self, Condition};
use crate::http::{Conn, Endpoint};
use crate::mix::{self, MixEntry};
use crate::parse;
use crate::plot::{self, Series};
use crate::report::{self, Manifest, RunJson};
use crate::schedule::{Arrivals, Limit};
use crate::stats;
use crate::target::Target;

/// What `weir load` did.
#[derive(Debug)]
pub struct Outcome {
    /// One result per run (one, or one per rate of a sweep; none for `plot`).
    pub runs: Vec<RunJson>,
    /// `--fail-if` conditions that were crossed, and INVALID runs when `--fail-if` was given.
    pub failed: Vec<String>,
}

impl Outcome {
    /// 0, or 1 when a threshold was crossed.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.failed.is_empty())
    }
}

/// Everything validated, ready to run.
struct Plan {
    target: Target,
    endpoint: Endpoint,
    entries: Vec<MixEntry>,
    rates: Vec<Option<f64>>,
    /// `--rates` was given: the JSON is `{"sweep": [...]}` even for one rate.
    sweep: bool,
    arrivals: Arrivals,
    reuse: Reuse,
    /// `--spin`: how long before a slot the scheduler stops sleeping.
    spin: Duration,
    seed: u64,
    limit: Limit,
    warmup: Duration,
    timeout: Duration,
    connections: usize,
    max_connections: usize,
    threads: usize,
    /// `None`: auto (1 ms, or 5% of the latency p99 when more).
    max_lateness: Option<Duration>,
    fail_if: Vec<Condition>,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    progress: bool,
    quiet: bool,
    mix_path: Option<String>,
}

fn usage(s: impl Into<String>) -> LoadError {
    LoadError::Usage(s.into())
}

fn flag<T>(name: &str, r: Result<T, String>) -> Result<T, LoadError> {
    r.map_err(|e| usage(format!("--{name}: {e}")))
}

fn check_out_dir(p: &Path, what: &str) -> Result<(), LoadError> {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir.is_dir() {
        Ok(())
    } else {
        Err(usage(format!(
            "--{what} {}: no such directory {}",
            p.display(),
            dir.display()
        )))
    }
}

fn plan(cmd: LoadCommand) -> Result<Plan, LoadError> {
    let target_s = cmd.target.ok_or_else(|| {
        usage("a TARGET is needed: http://HOST:PORT/PATH or unix:SOCKET_PATH:/PATH")
    })?;
    let target = Target::parse(&target_s).map_err(LoadError::Usage)?;
    let rates: Vec<Option<f64>> = match (&cmd.rate, &cmd.rates) {
        (Some(r), _) => vec![Some(flag("rate", parse::rate(r))?)],
        (None, Some(rs)) => flag("rates", parse::rates(rs))?.into_iter().map(Some).collect(),
        (None, None) => match cmd.connections {
            Some(_) => vec![None],
            None => {
                return Err(usage(
                    "give --rate R (open loop, the default way) or --connections C without a rate (closed loop)",
                ))
            }
        },
    };
    let open = rates[0].is_some();
    if !open && cmd.arrivals == Arrivals::Poisson {
        return Err(usage(
            "--arrivals poisson needs --rate (a closed loop has no schedule)",
        ));
    }
    let limit = match (&cmd.duration, cmd.requests) {
        (Some(_), Some(_)) => return Err(usage("give --duration or --requests, not both")),
        (_, Some(0)) => return Err(usage("--requests must be at least 1")),
        (_, Some(n)) => Limit::Count(n),
        (d, None) => {
            let d = flag("duration", parse::duration(d.as_deref().unwrap_or("10s")))?;
            if d.is_zero() {
                return Err(usage("--duration must be above zero"));
            }
            Limit::Duration(d.as_secs_f64())
        }
    };
    if let Limit::Duration(d) = limit {
        for r in rates.iter().flatten() {
            if r * d < 1.0 {
                return Err(usage(format!(
                    "--rate {r} for {d}s schedules no request (rate × duration is below 1)"
                )));
            }
        }
    }
    let warmup = flag("warmup", parse::duration(&cmd.warmup))?;
    let timeout = flag("timeout", parse::duration(&cmd.timeout))?;
    if timeout < Duration::from_millis(1) {
        return Err(usage("--timeout must be at least 1ms"));
    }
    let spin = flag("spin", parse::duration(&cmd.spin))?;
    if spin > Duration::from_secs(1) {
        return Err(usage(format!(
            "--spin {} is more than 1s: the scheduler would hold a core for that long before \
             each slot; use at most 1ms or so, or 0s to sleep up to each slot",
            cmd.spin
        )));
    }
    let max_lateness = match cmd.max_lateness.trim() {
        "auto" => None,
        d => Some(flag("max-lateness", parse::duration(d))?),
    };
    if cmd.threads == 0 || cmd.threads > 256 {
        return Err(usage("--threads must be between 1 and 256"));
    }
    if cmd.max_connections == 0 {
        return Err(usage("--max-connections must be at least 1"));
    }
    let connections = match cmd.connections {
        Some(0) => return Err(usage("--connections must be at least 1")),
        Some(c) if open && c > cmd.max_connections => {
            return Err(usage(format!(
                "--connections {c} is above --max-connections {}",
                cmd.max_connections
            )))
        }
        Some(c) => c,
        None => 1,
    };
    let (entries, mix_path) = match &cmd.mix {
        Some(p) => {
            let e = mix::load(p).map_err(|reason| LoadError::Mix {
                path: p.display().to_string(),
                reason,
            })?;
            (e, Some(p.display().to_string()))
        }
        None => (vec![MixEntry::single(target.path())], None),
    };
    let fail_if = match &cmd.fail_if {
        Some(s) => failif::parse(s).map_err(LoadError::FailIf)?,
        None => Vec::new(),
    };
    if let Some(p) = &cmd.plot {
        plot::check_path(p)?;
        check_out_dir(p, "plot")?;
    }
    if let Some(p) = &cmd.json {
        check_out_dir(p, "json")?;
    }
    let endpoint = match &target {
        Target::Tcp { addr, .. } => {
            let a = addr
                .to_socket_addrs()
                .map_err(|e| LoadError::Unreachable {
                    target: target_s.clone(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| LoadError::Unreachable {
                    target: target_s.clone(),
                    reason: "the host has no address".into(),
                })?;
            Endpoint::Tcp(a)
        }
        Target::Unix { socket, .. } => Endpoint::Unix(socket.clone()),
    };
    let seed = cmd.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    Ok(Plan {
        target,
        endpoint,
        entries,
        rates,
        sweep: cmd.rate.is_none() && cmd.rates.is_some(),
        arrivals: cmd.arrivals,
        reuse: cmd.reuse,
        spin,
        seed,
        limit,
        warmup,
        timeout,
        connections,
        max_connections: cmd.max_connections,
        threads: cmd.threads,
        max_lateness,
        fail_if,
        json: cmd.json,
        plot: cmd.plot,
        progress: !cmd.no_progress && std::io::stderr().is_terminal(),
        quiet: cmd.quiet,
        mix_path,
    })
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$`\\|&;<>*?".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, LoadError> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().map_err(LoadError::Runtime)
}

/// Runs `weir load` as asked; `Err` is bad input (exit 2).
pub fn run(cmd: LoadCommand) -> Result<Outcome, LoadError> {
    if let Some(LoadSub::Plot(args)) = cmd.sub {
        plot_files(&args)?;
        return Ok(Outcome {
            runs: Vec::new(),
            failed: Vec::new(),
        });
    }
    let plan = plan(cmd)?;
    crate::sys::room_for(plan.max_connections.max(plan.connections));
    let rt = runtime(plan.threads)?;
    let command = command_line();
    let mut runs = Vec::new();
    for (i, rate) in plan.rates.iter().enumerate() {
        if i > 0 {
            // Let the server drain what the previous step left before the next one starts.
            std::thread::sleep(Duration::from_millis(500));
        }
        let r = rt.block_on(one_run(&plan, *rate, &command))?;
        if plan.quiet {
            let g = &r.generator;
            println!(
                "{} req/s achieved, p99 {:.3}ms, errors {}, {}",
                format_args!("{:.1}", r.achieved_rate),
                r.latency_ms.p99,
                r.errors,
                if g.valid { "VALID" } else { "INVALID" }
            );
        } else {
            print!("{}", report::render(&r));
        }
        runs.push(r);
    }
    if runs.len() > 1 {
        print!("{}", report::render_sweep(&runs));
    }
    if let Some(p) = &plan.json {
        let text = if !plan.sweep {
            serde_json::to_string_pretty(&runs[0])
        } else {
            serde_json::to_string_pretty(&serde_json::json!({ "sweep": runs }))
        }
        .expect("the result serializes: plain maps, strings and numbers");
        std::fs::write(p, text + "\n").map_err(|e| LoadError::Output {
            path: p.display().to_string(),
            source: e,
        })?;
    }
    if let Some(p) = &plan.plot {
        let mut series = Vec::new();
        for r in &runs {
            let hist = stats::decode(&r.histogram.data).map_err(LoadError::Plot)?;
            series.push(Series {
                name: series_name(r, plan.sweep),
                hist,
            });
        }
        plot::draw(&series, &plan.target.to_string(), p)?;
    }
    let mut failed = Vec::new();
    if !plan.fail_if.is_empty() {
        for r in &runs {
            let at = r
                .manifest
                .rate
                .map(|x| format!(" at {x} req/s"))
                .unwrap_or_default();
            for c in failif::crossed(&plan.fail_if, r) {
                failed.push(format!("{c}{at}"));
            }
            if !r.generator.valid {
                failed.push(format!(
                    "run{at} is INVALID: {}",
                    r.generator.invalid_reasons.join("; ")
                ));
            }
        }
        for f in &failed {
            eprintln!("weir load: fail-if: {f}");
        }
    }
    Ok(Outcome { runs, failed })
}

fn series_name(r: &RunJson, sweep: bool) -> String {
    match (r.manifest.rate, sweep) {
        (Some(rate), true) => format!("{rate} req/s"),
        (Some(rate), false) => format!("{} @ {rate} req/s", r.manifest.target),
        (None, _) => format!(
            "{} ({} connections)",
            r.manifest.target, r.manifest.connections
        ),
    }
}

async fn one_run(plan: &Plan, rate: Option<f64>, command: &str) -> Result<RunJson, LoadError> {
    let time = report::now_rfc3339();
    let connect_timeout = plan.timeout.min(Duration::from_secs(5));
    let first = match tokio::time::timeout(connect_timeout, Conn::connect(&plan.endpoint)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(LoadError::Unreachable {
                target: plan.target.to_string(),
                reason: match e {
                    crate::http::HttpError::Connect(io) => io.to_string(),
                    other => other.to_string(),
                },
            })
        }
        Err(_) => {
            return Err(LoadError::Unreachable {
                target: plan.target.to_string(),
                reason: format!("no answer within {connect_timeout:?}"),
            })
        }
    };
    let host = plan.target.host_header();
    let spec = RunSpec {
        endpoint: plan.endpoint.clone(),
        requests: plan.entries.iter().map(|e| e.request_bytes(host)).collect(),
        heads: plan.entries.iter().map(MixEntry::is_head).collect(),
        weights: plan.entries.iter().map(|e| e.weight).collect(),
        mode: match rate {
            Some(rate) => Mode::Open {
                rate,
                arrivals: plan.arrivals,
            },
            None => Mode::Closed,
        },
        limit: plan.limit,
        warmup: plan.warmup,
        timeout: plan.timeout,
        connections: plan.connections,
        max_connections: plan.max_connections,
        seed: plan.seed,
        reuse: plan.reuse,
        spin: plan.spin,
    };
    let done = Arc::new(AtomicU64::new(0));
    let bar = plan.progress.then(|| {
        let total = match (rate, plan.limit) {
            (Some(r), Limit::Duration(d)) => ((d + plan.warmup.as_secs_f64()) * r).ceil() as u64,
            (Some(r), Limit::Count(n)) => n + (plan.warmup.as_secs_f64() * r).ceil() as u64,
            (None, Limit::Count(n)) => n,
            (None, Limit::Duration(_)) => 0,
        };
        let pb = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests ({per_sec})",
        ) {
            pb.set_style(style);
        }
        pb
    });
    let ticker = bar.clone().map(|pb| {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                pb.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let timer = crate::timer::Timer::new().map_err(LoadError::Runtime)?;
    let cpu0 = crate::sys::CpuUsage::now();
    let mut data = engine::run(spec, first, done, &timer).await;
    data.cpu = crate::sys::CpuUsage::now().since(cpu0);
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let (duration, requests_planned) = match plan.limit {
        Limit::Duration(d) => (Some(d), None),
        Limit::Count(n) => (None, Some(n)),
    };
    let manifest = Manifest {
        command: command.to_string(),
        target: plan.target.to_string(),
        mode: if rate.is_some() { "open" } else { "closed" }.into(),
        rate,
        arrivals: rate.map(|_| match plan.arrivals {
            Arrivals::Constant => "constant".into(),
            Arrivals::Poisson => "poisson".into(),
        }),
        reuse: rate.map(|_| match plan.reuse {
            Reuse::Newest => "newest".into(),
            Reuse::Oldest => "oldest".into(),
        }),
        spin_us: rate.map(|_| plan.spin.as_secs_f64() * 1e6),
        seed: plan.seed,
        duration,
        requests_planned,
        warmup: plan.warmup.as_secs_f64(),
        timeout: plan.timeout.as_secs_f64(),
        connections: plan.connections,
        max_connections: plan.max_connections,
        threads: plan.threads,
        mix: plan.mix_path.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        time,
    };
    let names: Vec<(String, f64)> = plan
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.weight))
        .collect();
    Ok(report::build(
        manifest,
        data,
        &names,
        plan.timeout,
        plan.max_lateness,
    ))
}

/// `weir load plot`: one series per saved run (a sweep file gives one per rate).
fn plot_files(args: &PlotArgs) -> Result<(), LoadError> {
    plot::check_path(&args.output)?;
    let mut series = Vec::new();
    for f in &args.files {
        let bad = |reason: String| LoadError::Input {
            path: f.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(f).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let runs: Vec<&serde_json::Value> = match v.get("sweep").and_then(|s| s.as_array()) {
            Some(a) => a.iter().collect(),
            None => vec![&v],
        };
        let sweep = runs.len() > 1;
        for r in runs {
            let data = r
                .pointer("/histogram/data")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("no histogram.data (not a weir load --json file?)".into()))?;
            let hist = stats::decode(data).map_err(bad)?;
            let rate = r.pointer("/manifest/rate").and_then(|x| x.as_f64());
            let name = match (sweep, rate) {
                (true, Some(rate)) => format!("{stem} @ {rate} req/s"),
                _ => stem.clone(),
            };
            series.push(Series { name, hist });
        }
    }
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| "latency by percentile".into());
    plot::draw(&series, &title, &args.output)
}
