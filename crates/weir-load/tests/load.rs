//! End-to-end tests of `weir load` against real sockets: a small hyper server, started in
//! each test on 127.0.0.1:0 or on a Unix socket in a temporary directory, with a
//! controllable delay and stall. Every load is bounded (at most a few hundred requests and
//! a few seconds). The tests call the library (`weir_load::run` / `weir_load::main`), so
//! they need no binary.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use weir_load::{LoadCommand, LoadError};

/// What the test server does, changeable while it runs.
#[derive(Default)]
struct State {
    /// Delay of `/slow`, ms.
    slow_ms: AtomicU64,
    /// A stall: requests arriving between `at` and `at + for` after the first request
    /// are held until the stall ends.
    stall: Mutex<Option<(Duration, Duration)>>,
    first: Mutex<Option<Instant>>,
    hits: AtomicU64,
    /// Connections that carried at least one request.
    used: AtomicU64,
}

/// A two-frame body of unknown length, so hyper sends it chunked.
struct Chunked(u8);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        self.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 3000])))))
    }
}

type Resp = Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

fn full(status: u16, body: &'static [u8]) -> Resp {
    use http_body_util::BodyExt;
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(body)).boxed())
        .expect("static response parts are valid")
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    use http_body_util::BodyExt;
    st.hits.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let first = *st.first.lock().unwrap().get_or_insert(now);
    let stall = *st.stall.lock().unwrap();
    if let Some((at, len)) = stall {
        let t = now - first;
        if t >= at && t < at + len {
            tokio::time::sleep_until((first + at + len).into()).await;
        }
    }
    let path = req.uri().path().to_string();
    // Drain the request body; what it held does not matter here.
    let _ = req.into_body().collect().await;
    Ok(match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(st.slow_ms.load(Ordering::Relaxed))).await;
            full(200, b"slow")
        }
        "/chunked" => Response::new(Chunked(3).boxed()),
        "/big" => {
            let body = Bytes::from(vec![b'b'; 64 * 1024]);
            Response::new(Full::new(body).boxed())
        }
        "/busy" => {
            let mut r = full(503, b"busy");
            r.headers_mut()
                .insert("x-weir-error", "queue-full".parse().unwrap());
            r
        }
        p if p.starts_with("/status/") => full(p[8..].parse().unwrap_or(500), b"status"),
        _ => full(200, b"hello"),
    })
}

struct Server {
    target: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server thread may already be gone if a test panicked; nothing to do then.
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve<L, S, F>(
    listener: L,
    accept: F,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) where
    F: Fn(&L) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<S>> + Send + '_>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        tokio::select! {
            _ = &mut stop => break,
            s = accept(&listener) => {
                let Ok(s) = s else { continue };
                let st = state.clone();
                tokio::spawn(async move {
                    let fresh = std::sync::atomic::AtomicBool::new(true);
                    let svc = hyper::service::service_fn(move |r| {
                        if fresh.swap(false, Ordering::Relaxed) {
                            st.used.fetch_add(1, Ordering::Relaxed);
                        }
                        handle(st.clone(), r)
                    });
                    // A client that goes away mid-response is normal under load.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }
    }
}

fn start(unix: bool) -> Server {
    let state = Arc::new(State::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let dir = unix.then(|| tempfile::tempdir().unwrap());
    let sock = dir.as_ref().map(|d| d.path().join("t.sock"));
    let st = state.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Some(sock) = sock {
                let l = tokio::net::UnixListener::bind(&sock).unwrap();
                ready_tx.send(format!("unix:{}:/", sock.display())).unwrap();
                serve(
                    l,
                    |l| Box::pin(async move { l.accept().await.map(|(s, _)| s) }),
                    st,
                    rx,
                )
                .await;
            } else {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready_tx
                    .send(format!("http://{}/", l.local_addr().unwrap()))
                    .unwrap();
                serve(
                    l,
                    |l| Box::pin(async move { l.accept().await.map(|(s, _)| s) }),
                    st,
                    rx,
                )
                .await;
            }
        });
    });
    let target = ready_rx.recv().unwrap();
    Server {
        target,
        state,
        stop: Some(tx),
        thread: Some(thread),
        _dir: dir,
    }
}

impl Server {
    /// The target with another path.
    fn at(&self, path: &str) -> String {
        format!("{}{}", &self.target[..self.target.len() - 1], path)
    }
}

fn cmd(args: &[&str]) -> LoadCommand {
    let mut v: Vec<&str> = vec!["--no-progress", "--max-lateness", "50ms"];
    v.extend_from_slice(args);
    LoadCommand::try_parse_from(v).unwrap()
}

fn run(args: &[&str]) -> weir_load::Outcome {
    weir_load::run(cmd(args)).unwrap()
}

#[test]
fn tcp_open_loop_counts_statuses_and_rate() {
    let s = start(false);
    let o = run(&["--rate", "200", "--requests", "100", &s.target]);
    let r = &o.runs[0];
    assert_eq!(r.requests, 100);
    assert_eq!(r.completed, 100);
    assert_eq!(r.status.get("200"), Some(&100));
    assert_eq!(r.errors, 0);
    assert!(
        (100.0..=201.0).contains(&r.achieved_rate),
        "{}",
        r.achieved_rate
    );
    assert_eq!(s.state.hits.load(Ordering::Relaxed), 100);
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 < 200.0);
    assert_eq!(r.generator.missed_slots, 0);
    assert_eq!(o.exit_code(), 0);
}

#[test]
fn unix_socket_keeps_connections_alive() {
    let s = start(true);
    let o = run(&["--rate", "100", "--requests", "50", &s.target]);
    let r = &o.runs[0];
    assert_eq!(r.status.get("200"), Some(&50));
    assert_eq!(r.errors, 0);
    // 10 ms apart, answered in well under that: a few connections carry them all (more
    // open when a busy test machine delays some answers).
    assert!(
        r.generator.connections_opened <= 15,
        "{}",
        r.generator.connections_opened
    );
    assert!(r.manifest.target.starts_with("unix:"));
}

#[test]
fn reuse_oldest_sends_on_every_connection_in_turn() {
    // 20 connections opened before the start, 100 requests 5 ms apart, each answered in
    // well under that. The pool's newest connection would carry nearly all of them;
    // the oldest idle one each time means all 20 take turns, as 20 clients would.
    let open_loop = |s: &Server, extra: &str| {
        let line = format!(
            "--rate 200 --requests 100 --connections 20 {extra} {}",
            s.target
        );
        run(&line.split_whitespace().collect::<Vec<_>>())
    };
    let s = start(false);
    let o = open_loop(&s, "--reuse oldest");
    let r = &o.runs[0];
    assert_eq!(r.status.get("200"), Some(&100));
    assert_eq!(r.manifest.reuse.as_deref(), Some("oldest"));
    assert!(s.state.used.load(Ordering::Relaxed) >= 20);
    let s = start(false);
    let o = open_loop(&s, "");
    assert_eq!(o.runs[0].manifest.reuse.as_deref(), Some("newest"));
    // A busy test machine delays some answers, and the next request takes another
    // connection then: a bound, not a count.
    assert!(s.state.used.load(Ordering::Relaxed) < 20);
}

#[test]
fn spin_0s_sleeps_up_to_each_slot() {
    // 100 requests 5 ms apart. With the default 250 µs of spin before each slot the
    // scheduler would hold the CPU about 5% of the run; with `--spin 0s` it sleeps up to
    // each slot, and its CPU is its requests' alone. CPU time does not grow when a busy
    // machine preempts the tool, so the bound holds on any machine.
    let s = start(false);
    let o = run(&[
        "--rate",
        "200",
        "--requests",
        "100",
        "--spin",
        "0s",
        &s.target,
    ]);
    let r = &o.runs[0];
    assert_eq!(r.status.get("200"), Some(&100));
    assert_eq!(r.manifest.spin_us, Some(0.0));
    assert!(
        r.generator.cpu_s < 0.5 * r.elapsed_s,
        "cpu {} s over {} s",
        r.generator.cpu_s,
        r.elapsed_s
    );
    let o = run(&["--rate", "200", "--requests", "10", &s.target]);
    assert_eq!(o.runs[0].manifest.spin_us, Some(250.0));
}

#[test]
fn response_bodies_chunked_and_large_are_read_whole() {
    let s = start(false);
    for path in ["/chunked", "/big"] {
        let o = run(&["--rate", "100", "--requests", "30", &s.at(path)]);
        let r = &o.runs[0];
        assert_eq!(
            r.status.get("200"),
            Some(&30),
            "{path}: {:?}",
            r.errors_by_kind
        );
        assert!(
            r.generator.connections_opened <= 15,
            "{path}: keep-alive survives the body"
        );
    }
}

/// The coordinated-omission check: a 1 s stall at 100 req/s delays the ~100 requests due
/// during it by up to 1 s each, so p99 must be near a second (a closed-loop tool would
/// see one slow request and a p99 of a few ms).
#[test]
fn server_stall_shows_in_the_percentiles() {
    let s = start(false);
    *s.state.stall.lock().unwrap() =
        Some((Duration::from_millis(1000), Duration::from_millis(1000)));
    let o = run(&["--rate", "100", "--requests", "300", &s.target]);
    let r = &o.runs[0];
    assert_eq!(r.completed, 300);
    let l = &r.latency_ms;
    // Bounds leave room for a busy test machine (the generator's lateness adds to every
    // latency); a closed-loop tool would report a p99 of a few ms here.
    assert!(l.p99 > 850.0 && l.p99 < 1300.0, "p99 {} ms", l.p99);
    assert!(l.max > 900.0 && l.max < 1500.0, "max {} ms", l.max);
    assert!(
        l.p90 > 300.0,
        "a third of the run is in the stall: p90 {} ms",
        l.p90
    );
    assert!(l.p50 < 200.0, "p50 {} ms", l.p50);
    // The generator itself was on time: the delay is the server's.
    assert_eq!(r.generator.missed_slots, 0);
    assert!(r.generator.lateness_ms.p99 < 50.0);
}

#[test]
fn timeouts_are_errors_and_count_as_the_timeout() {
    let s = start(false);
    s.state.slow_ms.store(400, Ordering::Relaxed);
    let t0 = Instant::now();
    let o = run(&[
        "--rate",
        "50",
        "--requests",
        "10",
        "--timeout",
        "100ms",
        &s.at("/slow"),
    ]);
    assert!(t0.elapsed() < Duration::from_secs(3));
    let r = &o.runs[0];
    assert_eq!(r.requests, 10);
    assert_eq!(r.completed, 0);
    assert_eq!(r.errors, 10);
    assert_eq!(r.errors_by_kind.get("timeout"), Some(&10));
    assert!(
        (r.latency_ms.p50 - 100.0).abs() < 0.5,
        "{}",
        r.latency_ms.p50
    );
    assert!(
        (r.latency_ms.max - 100.0).abs() < 0.5,
        "{}",
        r.latency_ms.max
    );
    assert_eq!(r.timeouts_counted_as_ms, 100.0);
    assert!(weir_load::report::render(r).contains("timeouts count as 100"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn mix_reports_per_entry_with_weir_error_classes() {
    let s = start(false);
    let dir = tempfile::tempdir().unwrap();
    let mix = write(
        dir.path(),
        "mix.toml",
        r#"
        [[request]]
        name = "hello"
        weight = 3
        path = "/"
        [[request]]
        name = "busy"
        weight = 1
        method = "POST"
        path = "/busy"
        headers = { "Content-Type" = "text/plain" }
        body = "ping"
        "#,
    );
    let o = run(&[
        "--rate",
        "200",
        "--requests",
        "200",
        "--seed",
        "5",
        "--mix",
        mix.to_str().unwrap(),
        &s.target,
    ]);
    let r = &o.runs[0];
    assert_eq!(r.requests, 200);
    let ok = r.status.get("200").copied().unwrap_or(0);
    let busy = r.status.get("503").copied().unwrap_or(0);
    assert_eq!(ok + busy, 200);
    assert!((20..=80).contains(&busy), "about a quarter: {busy}");
    assert_eq!(r.weir_errors.get("queue-full"), Some(&busy));
    assert_eq!(r.entries.len(), 2);
    assert_eq!(r.entries[0].name, "hello");
    assert_eq!(r.entries[0].requests, ok);
    assert_eq!(r.entries[1].requests, busy);
    assert_eq!(r.entries[1].status.get("503"), Some(&busy));
    let text = weir_load::report::render(r);
    assert!(text.contains("x-weir-error queue-full"), "{text}");
    assert!(text.contains("busy"));
}

#[test]
fn json_has_the_keys_and_replots() {
    let s = start(false);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let svg = dir.path().join("run.svg");
    run(&[
        "--rate",
        "100",
        "--duration",
        "500ms",
        "--warmup",
        "200ms",
        "--arrivals",
        "poisson",
        "--seed",
        "7",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        &s.target,
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in [
        "requests",
        "achieved_rate",
        "latency_ms",
        "status",
        "errors",
        "manifest",
        "histogram",
    ] {
        assert!(v.get(k).is_some(), "key {k} in {v}");
    }
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"][k].is_number(), "latency_ms.{k}");
    }
    for k in [
        "command", "target", "rate", "seed", "duration", "version", "time",
    ] {
        assert!(v["manifest"].get(k).is_some(), "manifest.{k}");
    }
    assert_eq!(v["manifest"]["seed"], 7);
    assert_eq!(v["manifest"]["rate"], 100.0);
    assert_eq!(v["manifest"]["arrivals"], "poisson");
    let n = v["requests"].as_u64().unwrap();
    assert!((25..=80).contains(&n), "poisson, 50 expected: {n}");
    assert!(v["warmup"]["requests"].as_u64().unwrap() > 0);
    let h = weir_load::stats::decode(v["histogram"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(h.len(), n);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    // Overlay the run with itself.
    let out = dir.path().join("both.svg");
    let c = LoadCommand::try_parse_from([
        "plot",
        json.to_str().unwrap(),
        json.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(weir_load::main(c), ExitCode::SUCCESS);
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.matches("run").count() >= 2, "two legend entries");
}

/// A PNG file's size, color type and RGB pixels.
fn decode_png(p: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let f = std::fs::File::open(p).unwrap();
    let mut r = png::Decoder::new(std::io::BufReader::new(f))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

/// Whether the RGB pixels hold this exact color.
fn has_color(px: &[u8], c: [u8; 3]) -> bool {
    px.chunks(3).any(|p| p == c)
}

#[test]
fn png_plots_a_run_and_an_overlay() {
    let s = start(false);
    s.state.slow_ms.store(2, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let single = dir.path().join("run.png");
    run(&[
        "--rate",
        "200",
        "--requests",
        "100",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        single.to_str().unwrap(),
        &s.at("/slow"),
    ]);
    let blue = [31, 119, 180];
    let red = [214, 39, 40];
    let (w, h, color, px) = decode_png(&single);
    assert_eq!((w, h), (960, 600));
    assert_eq!(color, png::ColorType::Rgb);
    assert_eq!(px.len(), 960 * 600 * 3);
    let colors: std::collections::HashSet<&[u8]> = px.chunks(3).collect();
    // White, black, grid greys, the series' blue and the antialiased text's greys.
    assert!(colors.len() > 20, "{} colors: blank?", colors.len());
    assert!(has_color(&px, blue) && !has_color(&px, red), "one series");

    // The run overlaid with a copy of itself: two series, two legend entries.
    let other = dir.path().join("again.json");
    std::fs::copy(&json, &other).unwrap();
    let both = dir.path().join("both.PNG");
    let c = LoadCommand::try_parse_from([
        "plot",
        json.to_str().unwrap(),
        other.to_str().unwrap(),
        "-o",
        both.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(weir_load::main(c), ExitCode::SUCCESS);
    let (w, h, _, px) = decode_png(&both);
    assert_eq!((w, h), (960, 600));
    assert!(has_color(&px, blue) && has_color(&px, red), "two series");

    // A path that cannot be written is a one-line error, exit 2.
    let blocked = dir.path().join("blocked.png");
    std::fs::create_dir(&blocked).unwrap();
    let args = [
        "plot",
        json.to_str().unwrap(),
        "-o",
        blocked.to_str().unwrap(),
    ];
    let e = weir_load::run(LoadCommand::try_parse_from(args).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot write {}", blocked.display())),
        "{e}"
    );
    assert_eq!(
        weir_load::main(LoadCommand::try_parse_from(args).unwrap()),
        ExitCode::from(2)
    );
}

#[test]
fn fail_if_sets_the_exit_status() {
    let s = start(false);
    let pass = cmd(&[
        "--rate",
        "100",
        "--requests",
        "20",
        "--fail-if",
        "p99>5s,5xx>0,rate<10",
        &s.target,
    ]);
    assert_eq!(weir_load::main(pass), ExitCode::SUCCESS);
    let o = run(&[
        "--rate",
        "100",
        "--requests",
        "20",
        "--fail-if",
        "p99>5s,2xx>=20,errors>0",
        &s.target,
    ]);
    assert_eq!(o.exit_code(), 1);
    assert_eq!(o.failed.len(), 1, "{:?}", o.failed);
    assert!(o.failed[0].starts_with("2xx>=20"));
    let fail = cmd(&[
        "--rate",
        "100",
        "--requests",
        "20",
        "--fail-if",
        "rate>1",
        &s.target,
    ]);
    assert_eq!(weir_load::main(fail), ExitCode::from(1));
}

#[test]
fn bad_input_exits_2() {
    let s = start(false);
    let dir = tempfile::tempdir().unwrap();
    let bad_mix = write(
        dir.path(),
        "bad.toml",
        "[[request]]\nweight = 0\npath = \"/\"\n",
    );
    // A port with nothing behind it: bind, learn the port, close.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let missing_sock = format!("unix:{}:/", dir.path().join("none.sock").display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--rate".into(), "100".into(), closed.clone()],
            "cannot connect",
        ),
        (
            vec!["--rate".into(), "100".into(), missing_sock],
            "cannot connect",
        ),
        (
            vec!["--rate".into(), "0".into(), s.target.clone()],
            "above zero",
        ),
        (
            vec![
                "--rate".into(),
                "1".into(),
                "--duration".into(),
                "100ms".into(),
                s.target.clone(),
            ],
            "no request",
        ),
        (
            vec!["--rate".into(), "9000000".into(), s.target.clone()],
            "above what",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--mix".into(),
                bad_mix.display().to_string(),
                s.target.clone(),
            ],
            "weight",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--mix".into(),
                "/nonexistent/mix.toml".into(),
                s.target.clone(),
            ],
            "--mix",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--fail-if".into(),
                "p99>>3".into(),
                s.target.clone(),
            ],
            "--fail-if",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--plot".into(),
                "x.jpg".into(),
                s.target.clone(),
            ],
            "must end in .svg or .png",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--spin".into(),
                "2s".into(),
                s.target.clone(),
            ],
            "more than 1s",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--spin".into(),
                "soon".into(),
                s.target.clone(),
            ],
            "--spin",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--plot".into(),
                "/nonexistent/x.png".into(),
                s.target.clone(),
            ],
            "no such directory",
        ),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "--duration".into(),
                "10".into(),
                s.target.clone(),
            ],
            "no unit",
        ),
        (vec![s.target.clone()], "--rate"),
        (
            vec![
                "--rate".into(),
                "10".into(),
                "https://example.invalid/".into(),
            ],
            "https",
        ),
        (vec!["--rate".into(), "10".into()], "TARGET"),
    ];
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = weir_load::run(cmd(&a)).expect_err(want);
        let msg = e.to_string();
        assert!(msg.contains(want), "{args:?}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(weir_load::main(cmd(&a)), ExitCode::from(2), "{args:?}");
    }
    assert!(matches!(
        weir_load::run(cmd(&["--rate", "10", &closed])),
        Err(LoadError::Unreachable { .. })
    ));
    assert_eq!(s.state.hits.load(Ordering::Relaxed), 0, "no load went out");
}

#[test]
fn closed_loop_runs_fixed_connections() {
    let s = start(false);
    let o = run(&["--connections", "4", "--requests", "200", &s.target]);
    let r = &o.runs[0];
    assert_eq!(r.requests, 200);
    assert_eq!(r.status.get("200"), Some(&200));
    assert_eq!(r.generator.connections_opened, 4);
    assert_eq!(r.manifest.mode, "closed");
    assert!(r.achieved_rate > 20.0);
}

#[test]
fn busy_connections_count_as_missed_slots() {
    let s = start(false);
    s.state.slow_ms.store(100, Ordering::Relaxed);
    let o = run(&[
        "--rate",
        "100",
        "--requests",
        "20",
        "--max-connections",
        "2",
        &s.at("/slow"),
    ]);
    let r = &o.runs[0];
    assert_eq!(r.completed, 20);
    assert!(
        r.generator.missed_slots >= 10,
        "{}",
        r.generator.missed_slots
    );
    assert!(r.generator.connections_opened <= 2);
    // A connection cap is part of the experiment: reported, not INVALID.
    assert!(r.generator.valid, "{:?}", r.generator.invalid_reasons);
    // 2 connections at 100 ms serve 20 req/s of the 100 asked: the queue grows, and the
    // latency from the schedule shows it.
    assert!(r.latency_ms.max > 500.0, "{}", r.latency_ms.max);
    assert!(weir_load::report::render(r).contains("found all 2 connections busy"));
    let o = run(&[
        "--rate",
        "100",
        "--requests",
        "5",
        "--max-connections",
        "1",
        "--fail-if",
        "missed>0",
        &s.at("/slow"),
    ]);
    assert_eq!(o.exit_code(), 1, "{:?}", o.failed);
}

#[test]
fn sweep_runs_each_rate() {
    let s = start(false);
    let o = run(&["--rates", "50,100", "--requests", "20", &s.target]);
    assert_eq!(o.runs.len(), 2);
    assert_eq!(o.runs[0].manifest.rate, Some(50.0));
    assert_eq!(o.runs[1].manifest.rate, Some(100.0));
    assert!(o.runs.iter().all(|r| r.requests == 20));
    assert_eq!(weir_load::report::render_sweep(&o.runs).lines().count(), 4);
}

/// A server that closes a kept-alive connection with the next request unread (a Unix
/// socket's peer then reads ECONNRESET, not EOF: what a server draining for a restart
/// does when a request crosses its close) costs a reconnect, not an error, as it does
/// any HTTP client on a reused connection.
#[test]
fn a_reset_on_a_reused_connection_before_the_answer_is_a_reconnect() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("reset.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let answer = |s: &mut std::os::unix::net::UnixStream| {
            let mut buf = Vec::new();
            let mut b = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0, "the client closed before its request");
                buf.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        };
        // The first connection: one answer, then closed with the next request unread.
        let (mut first, _) = listener.accept().unwrap();
        answer(&mut first);
        // One byte of the next request read, the rest left unread: closing then resets.
        let mut b = [0u8; 1];
        assert!(first.read(&mut b).unwrap() > 0, "no second request came");
        drop(first);
        // The reconnect, and any other: answered.
        let (mut again, _) = listener.accept().unwrap();
        for _ in 0..2 {
            answer(&mut again);
        }
    });
    let target = format!("unix:{}:/", sock.display());
    let o = run(&[
        "--rate",
        "20",
        "--requests",
        "3",
        "--max-connections",
        "1",
        &target,
    ]);
    let r = &o.runs[0];
    assert_eq!(r.status.get("200"), Some(&3), "{:?}", r.errors_by_kind);
    assert_eq!(r.errors, 0);
    assert_eq!(r.generator.reconnects, 1);
    server.join().unwrap();
}
