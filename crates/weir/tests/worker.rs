//! The worker as a real process: `weir worker --app ... --chdir tests/apps` with its standard
//! input one end of a socketpair, spoken to in the master<->worker protocol (weir-uwsgi).
//! Apps live in tests/apps (conformance.py documents its routes).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_uwsgi::{frame, head, packet};

fn weir_bin() -> PathBuf {
    // WEIR_TEST_BIN lets the same tests drive another build of the worker.
    if let Some(p) = std::env::var_os("WEIR_TEST_BIN") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/apps")
}

/// A request body as the master sends it.
#[derive(Clone, Copy)]
enum Body<'a> {
    None,
    Length(&'a [u8]),
    Chunked(&'a [&'a [u8]]),
}

/// A response as the worker framed it.
#[derive(Debug)]
struct Resp {
    status: u16,
    status_line: String,
    headers: Vec<(String, Vec<u8>)>,
    frames: Vec<Vec<u8>>,
    aborted: bool,
}

impl Resp {
    fn body(&self) -> Vec<u8> {
        self.frames.concat()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body()).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

struct Worker {
    child: Child,
    sock: Option<UnixStream>,
    buf: Vec<u8>,
}

impl Worker {
    fn spawn(app: &str, args: &[&str]) -> Worker {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let child = Command::new(weir_bin())
            .arg("worker")
            .args(["--app", app, "--id", "7", "--chdir"])
            .arg(apps_dir())
            .args(args)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir worker");
        Worker {
            child,
            sock: Some(ours),
            buf: Vec::new(),
        }
    }

    /// Spawns and waits for READY.
    fn start(app: &str, args: &[&str]) -> Worker {
        let mut w = Worker::spawn(app, args);
        w.expect_ready();
        w
    }

    fn conformance() -> Worker {
        Worker::start("conformance", &["--ready-check", "conformance:ready"])
    }

    fn sock(&mut self) -> &mut UnixStream {
        self.sock.as_mut().expect("socket open")
    }

    fn fill(&mut self, need: usize) {
        while self.buf.len() < need {
            let mut tmp = [0u8; 65536];
            let n = self.sock().read(&mut tmp).expect("read from worker");
            assert!(n > 0, "worker closed the socket; buffered {:?}", self.buf);
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn expect_ready(&mut self) {
        self.fill(packet::HEADER_LEN);
        let (p, used) = packet::decode(&self.buf).expect("READY packet");
        assert_eq!(p.modifier1, packet::MODIFIER_READY);
        assert!(p.vars_block.is_empty());
        self.buf.drain(..used);
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock().write_all(bytes).unwrap();
    }

    fn read_response(&mut self) -> Resp {
        let end = loop {
            if let Some(end) = head::find_end(&self.buf) {
                break end;
            }
            let have = self.buf.len();
            self.fill(have + 1);
        };
        let headtext = self.buf[..end - 4].to_vec();
        self.buf.drain(..end);
        let mut lines = headtext
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = String::from_utf8_lossy(lines.next().unwrap()).into_owned();
        let rest = status_line
            .strip_prefix("HTTP/1.1 ")
            .expect("HTTP/1.1 status line");
        let status = rest[..3].parse().unwrap();
        let headers = lines
            .map(|l| {
                let i = l.windows(2).position(|w| w == b": ").expect("header colon");
                (
                    String::from_utf8_lossy(&l[..i]).into_owned(),
                    l[i + 2..].to_vec(),
                )
            })
            .collect();
        let mut frames = Vec::new();
        let aborted = loop {
            match frame::decode(&self.buf) {
                Ok((f, used)) => {
                    let done = match f {
                        frame::Frame::Data(d) => {
                            frames.push(d.to_vec());
                            None
                        }
                        frame::Frame::End => Some(false),
                        frame::Frame::Abort => Some(true),
                    };
                    self.buf.drain(..used);
                    if let Some(a) = done {
                        break a;
                    }
                }
                Err(frame::FrameError::Incomplete { needed }) => self.fill(needed),
                Err(e) => panic!("bad frame from worker: {e}"),
            }
        };
        Resp {
            status,
            status_line,
            headers,
            frames,
            aborted,
        }
    }

    fn request_bytes(method: &str, uri: &[u8], extra: &[(&str, &[u8])], body: Body<'_>) -> Vec<u8> {
        let (path, query) = match uri.iter().position(|&b| b == b'?') {
            Some(i) => (&uri[..i], Some(&uri[i + 1..])),
            None => (uri, None),
        };
        let mut out = Vec::new();
        let mut b = packet::Builder::new(&mut out, 0, 0);
        b.var(b"REQUEST_METHOD", method.as_bytes()).unwrap();
        b.var(b"REQUEST_URI", uri).unwrap();
        b.var(b"PATH_INFO", path).unwrap();
        if let Some(q) = query {
            b.var(b"QUERY_STRING", q).unwrap();
        }
        b.var(b"SERVER_PROTOCOL", b"HTTP/1.1").unwrap();
        b.var(b"SERVER_NAME", b"localhost").unwrap();
        b.var(b"SERVER_PORT", b"8000").unwrap();
        b.var(b"REMOTE_ADDR", b"127.0.0.1").unwrap();
        b.var(b"REMOTE_PORT", b"54321").unwrap();
        b.var(b"HTTP_HOST", b"localhost:8000").unwrap();
        for (k, v) in extra {
            b.var(k.as_bytes(), v).unwrap();
        }
        let len;
        match body {
            Body::None => {}
            Body::Length(d) => {
                len = d.len().to_string();
                b.var(b"CONTENT_LENGTH", len.as_bytes()).unwrap();
            }
            Body::Chunked(_) => {
                b.var(b"WEIR_BODY", b"chunked").unwrap();
            }
        }
        b.finish().unwrap();
        match body {
            Body::None => {}
            Body::Length(d) => out.extend_from_slice(d),
            Body::Chunked(chunks) => {
                for c in chunks {
                    frame::encode_data(&mut out, c);
                }
                out.extend_from_slice(&frame::END);
            }
        }
        out
    }

    fn request_full(
        &mut self,
        method: &str,
        uri: &str,
        extra: &[(&str, &[u8])],
        body: Body<'_>,
    ) -> Resp {
        let bytes = Worker::request_bytes(method, uri.as_bytes(), extra, body);
        self.send(&bytes);
        self.read_response()
    }

    fn get(&mut self, uri: &str) -> Resp {
        self.request_full("GET", uri, &[], Body::None)
    }

    fn post(&mut self, uri: &str, body: Body<'_>) -> Resp {
        self.request_full("POST", uri, &[], body)
    }

    fn closes(&mut self) -> u64 {
        self.get("/closes").json()["closes"].as_u64().unwrap()
    }

    /// Closes our end (the master retiring the worker) and waits: status and stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        self.sock = None;
        self.wait()
    }

    fn wait(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "worker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_ok(r: &Resp) {
    assert_eq!(r.status, 200, "{r:?} {}", r.text());
    assert!(!r.aborted);
}

#[test]
fn ready_hello_then_eof_exits_zero() {
    let mut w = Worker::conformance();
    let r = w.get("/hello");
    assert_ok(&r);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.frames, vec![b"hello".to_vec()], "one data frame");
    assert_eq!(r.header("content-length").as_deref(), Some("5"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    let (status, err) = w.finish();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("weir worker 7: pid ") && err.contains("ready, app conformance imported in "),
        "{err}"
    );
}

#[test]
fn environ_is_pep3333() {
    let mut w = Worker::conformance();
    let r = w.request_full(
        "GET",
        "/environ",
        &[
            ("HTTP_X_MULTI", b"a, b"),
            ("WEIR_REQUEST_ID", b"rid-123"),
            ("WEIR_DEADLINE", b"1700000000.25"),
            ("WEIR_SOMETHING", b"internal"),
        ],
        Body::None,
    );
    assert_ok(&r);
    let e = r.json();
    assert_eq!(e["REQUEST_METHOD"], "GET");
    assert_eq!(e["PATH_INFO"], "/environ");
    assert_eq!(e["SCRIPT_NAME"], "", "SCRIPT_NAME defaults to empty");
    assert_eq!(e["QUERY_STRING"], "", "QUERY_STRING defaults to empty");
    assert_eq!(e["SERVER_NAME"], "localhost");
    assert_eq!(e["SERVER_PORT"], "8000");
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(e["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(e["REMOTE_PORT"], "54321");
    assert_eq!(e["REQUEST_URI"], "/environ");
    assert_eq!(e["HTTP_HOST"], "localhost:8000");
    assert_eq!(e["HTTP_X_MULTI"], "a, b");
    assert!(
        e.get("CONTENT_TYPE").is_none() && e.get("CONTENT_LENGTH").is_none(),
        "{e}"
    );
    assert_eq!(e["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert_eq!(e["wsgi.multithread"], false);
    assert_eq!(e["wsgi.multiprocess"], true);
    assert_eq!(e["wsgi.run_once"], false);
    assert_eq!(e["wsgi.input_terminated"], true);
    assert_eq!(e["wsgi.input"], "<Input>");
    assert_eq!(e["wsgi.errors"], "<Errors>");
    assert_eq!(e["wsgi.file_wrapper"], "<type>");
    assert_eq!(e["weir.request_id"], "rid-123");
    assert_eq!(e["weir.deadline"], 1700000000.25);
    for (k, _) in e.as_object().unwrap() {
        assert!(!k.starts_with("WEIR_"), "{k} leaked into environ");
    }

    // Raw latin-1 bytes in PATH_INFO, a query string, body vars.
    let bytes = Worker::request_bytes(
        "POST",
        b"/environ/caf\xe9?a=1&b=%20",
        &[
            ("CONTENT_TYPE", b"text/plain"),
            ("HTTP_X_LATIN", b"caf\xe9"),
        ],
        Body::Length(b"abc"),
    );
    w.send(&bytes);
    let e = w.read_response().json();
    assert_eq!(e["PATH_INFO"], "/environ/caf\u{e9}");
    assert_eq!(e["QUERY_STRING"], "a=1&b=%20");
    assert_eq!(e["CONTENT_TYPE"], "text/plain");
    assert_eq!(e["CONTENT_LENGTH"], "3");
    assert_eq!(e["HTTP_X_LATIN"], "caf\u{e9}");
    assert_eq!(e["weir.request_id"], serde_json::Value::Null);

    for (k, v, scheme) in [
        ("UWSGI_SCHEME", &b"https"[..], "https"),
        ("HTTPS", b"on", "https"),
        ("HTTPS", b"1", "https"),
        ("HTTPS", b"off", "http"),
    ] {
        let e = w
            .request_full("GET", "/environ", &[(k, v)], Body::None)
            .json();
        assert_eq!(e["wsgi.url_scheme"], scheme, "{k}={v:?}");
    }
}

#[test]
fn input_read_readline_iter_for_both_framings() {
    let mut w = Worker::conformance();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let r = w.post("/input/read", Body::Length(&big));
    assert_ok(&r);
    assert_eq!(r.body(), big);
    assert_eq!(r.header("x-read-calls").as_deref(), Some("1"));

    let r = w.post("/input/read?size=7000", Body::Length(&big));
    assert_eq!(r.body(), big);
    assert_eq!(
        r.header("x-read-calls").as_deref(),
        Some("29"),
        "read(size) returns size bytes"
    );

    let chunks: [&[u8]; 3] = [&big[..1], &big[1..150_000], &big[150_000..]];
    let r = w.post("/input/read", Body::Chunked(&chunks));
    assert_ok(&r);
    assert_eq!(r.body(), big);
    let r = w.post("/input/read?size=7000", Body::Chunked(&chunks));
    assert_eq!(r.body(), big);
    assert_eq!(r.header("x-read-calls").as_deref(), Some("29"));

    let r = w.post("/input/read", Body::None);
    assert_ok(&r);
    assert_eq!(r.body(), b"");

    let text = b"one\ntwo\n\nthree is longer\nlast";
    let lines = serde_json::json!(["one\n", "two\n", "\n", "three is longer\n", "last"]);
    let limited =
        serde_json::json!(["one\n", "two\n", "\n", "three", " is l", "onger", "\n", "last"]);
    let pieces: [&[u8]; 4] = [b"on", b"e\ntwo\n\nthr", b"ee is longer\nla", b"st"];
    for body in [Body::Length(text), Body::Chunked(&pieces)] {
        assert_eq!(w.post("/input/readline", body).json(), lines);
        assert_eq!(w.post("/input/readline?limit=5", body).json(), limited);
        assert_eq!(w.post("/input/readlines", body).json(), lines);
        assert_eq!(
            w.post("/input/readlines?hint=6", body).json(),
            serde_json::json!(["one\n", "two\n"])
        );
        assert_eq!(w.post("/input/iter", body).json(), lines);
    }
}

#[test]
fn unread_body_is_drained_and_the_next_request_is_in_sync() {
    let mut w = Worker::conformance();
    let big = vec![b'z'; 300_000];
    let r = w.post("/input/partial?n=3", Body::Length(b"abcdefgh"));
    assert_eq!(r.json()["got"], "abc");
    let r = w.post("/input/ignore", Body::Length(&big));
    assert_eq!(r.text(), "ignored");
    let chunks: [&[u8]; 3] = [b"abc", &big, b"tail"];
    let r = w.post("/input/partial?n=5", Body::Chunked(&chunks));
    assert_eq!(r.json()["got"], "abczz");
    let r = w.post("/input/ignore", Body::Chunked(&chunks));
    assert_eq!(r.text(), "ignored");
    // A body the app never reads, on a route that errors.
    let r = w.post("/raise_before", Body::Length(&big));
    assert_eq!(r.status, 500);
    assert_eq!(
        w.post("/echo", Body::Length(b"still in sync")).text(),
        "still in sync"
    );

    // Two requests in one write (the second already buffered when the first ends).
    let mut two = Worker::request_bytes("POST", b"/input/partial?n=2", &[], Body::Length(b"xyz"));
    two.extend(Worker::request_bytes("GET", b"/hello", &[], Body::None));
    w.send(&two);
    assert_eq!(w.read_response().json()["got"], "xy");
    assert_eq!(w.read_response().text(), "hello");
}

#[test]
fn write_streaming_big_and_file_wrapper() {
    let mut w = Worker::conformance();
    let r = w.get("/write");
    assert_ok(&r);
    assert_eq!(
        r.frames,
        vec![b"w1".to_vec(), b"w2".to_vec(), b"it".to_vec()]
    );

    let r = w.get("/stream?n=4");
    assert_ok(&r);
    assert_eq!(r.frames.len(), 4, "each yielded chunk is its own frame");
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert!(r.header("content-length").is_none());

    // Streaming: the first chunk arrives before the generator has produced the second.
    let t0 = Instant::now();
    w.send(&Worker::request_bytes(
        "GET",
        b"/stream?n=2&delay=700",
        &[],
        Body::None,
    ));
    w.fill(1);
    let first = t0.elapsed();
    let r = w.read_response();
    assert_eq!(r.frames.len(), 2);
    assert!(
        first < Duration::from_millis(500),
        "first byte after {first:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(700));

    let r = w.get("/big?n=3000000");
    assert_ok(&r);
    assert_eq!(r.body().len(), 3_000_000);
    assert!(r.body().iter().all(|&b| b == b'x'));

    let before = w.closes();
    let r = w.get("/filewrapper?size=100000&blksize=30000");
    assert_ok(&r);
    let expect: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(r.body(), expect);
    let sizes: Vec<usize> = r.frames.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![30000, 30000, 30000, 10000]);
    assert_eq!(
        w.closes(),
        before + 1,
        "file_wrapper's close() reaches the file"
    );
}

#[test]
fn app_errors_give_500_or_abort_and_the_worker_lives_on() {
    let mut w = Worker::conformance();
    let r = w.request_full(
        "GET",
        "/raise_before",
        &[("WEIR_REQUEST_ID", b"r-boom")],
        Body::None,
    );
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-weir-error").as_deref(), Some("app-exception"));
    assert_eq!(r.text(), "Internal Server Error");
    assert!(!r.aborted);

    for path in [
        "/raise_in_iter",
        "/not_bytes",
        "/no_start_response",
        "/twice",
        "/bad_header",
        "/cl_short",
    ] {
        let r = w.get(path);
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(
            r.header("x-weir-error").as_deref(),
            Some("app-exception"),
            "{path}"
        );
        assert_eq!(r.text(), "Internal Server Error", "{path}");
    }

    let r = w.get("/exc_info");
    assert_eq!(r.status_line, "HTTP/1.1 500 Internal Server Error");
    assert_eq!(r.text(), "recovered");
    assert!(!r.aborted);

    for (path, sent) in [
        ("/raise_after", &b"partial"[..]),
        ("/exc_info_after", b"first"),
        ("/cl_short_stream", b"12345"),
    ] {
        let r = w.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.aborted, "{path}: ABORT after the head");
        assert_eq!(r.body(), sent, "{path}");
    }

    for shape in ["one", "list", "gen"] {
        let r = w.request_full(
            "GET",
            &format!("/cl_long?shape={shape}"),
            &[("WEIR_REQUEST_ID", format!("r-long-{shape}").as_bytes())],
            Body::None,
        );
        assert_ok(&r);
        assert!(!r.aborted, "{shape}");
        assert_eq!(r.body(), b"abc", "{shape}: never more than Content-Length");
    }

    let r = w.get("/hop");
    assert_ok(&r);
    assert!(r.header("connection").is_none() && r.header("transfer-encoding").is_none());
    assert_eq!(r.header("x-ok").as_deref(), Some("1"));

    let r = w.get("/latin1");
    assert_eq!(
        r.headers.iter().find(|(n, _)| n == "X-Latin").unwrap().1,
        b"caf\xe9".to_vec()
    );

    let r = w.get("/status?code=204");
    assert_eq!(r.status_line, "HTTP/1.1 204 Whatever");
    assert!(r.frames.is_empty());

    assert_eq!(w.get("/hello").text(), "hello", "still serving");
    let (status, err) = w.finish();
    assert_eq!(status.code(), Some(0));
    assert!(
        err.contains("weir worker 7 request r-boom: exception in the app:")
            && err.contains("ValueError: raised before start_response"),
        "{err}"
    );
    assert!(!err.contains("Internal Server Error\n"), "{err}");
    // The excess is not dropped silently: one warning per request, with its id.
    for shape in ["one", "list", "gen"] {
        let want = format!(
            "weir worker 7 request r-long-{shape}: warning: the app's body is longer than its Content-Length (3 bytes): 3 more bytes dropped"
        );
        assert_eq!(err.matches(&want).count(), 1, "{want}\n{err}");
    }
}

#[test]
fn close_is_always_called_and_head_sends_no_body() {
    let mut w = Worker::conformance();
    let n0 = w.closes();
    let r = w.get("/tracked");
    assert_ok(&r);
    assert_eq!(r.text(), "tracked");
    assert_eq!(w.closes(), n0 + 1);

    let r = w.get("/tracked?raise=1");
    assert_eq!(r.status, 500);
    assert_eq!(w.closes(), n0 + 2, "close() after an exception");

    let r = w.request_full("HEAD", "/tracked", &[], Body::None);
    assert_ok(&r);
    assert!(r.frames.is_empty(), "HEAD: no body frames");
    assert_eq!(r.header("content-length").as_deref(), Some("7"));
    assert_eq!(w.closes(), n0 + 3, "close() on HEAD");

    let r = w.request_full("HEAD", "/hello", &[], Body::None);
    assert_ok(&r);
    assert!(r.frames.is_empty());
    let r = w.request_full("HEAD", "/raise_before", &[], Body::None);
    assert_eq!(r.status, 500);
    assert!(r.frames.is_empty());
    let r = w.request_full("HEAD", "/write", &[], Body::None);
    assert_ok(&r);
    assert!(r.frames.is_empty());
    let r = w.request_full("HEAD", "/stream", &[], Body::None);
    assert_ok(&r);
    assert!(r.frames.is_empty());
    let (_, err) = w.finish();
    assert!(!err.contains("Content-Length"), "{err}");
}

#[test]
fn a_body_aborted_by_the_master_raises_in_the_app_and_keeps_sync() {
    let mut w = Worker::conformance();
    let mut bytes = Worker::request_bytes("POST", b"/input/read", &[], Body::Chunked(&[b"abc"]));
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&frame::ABORT_FRAME);
    w.send(&bytes);
    let r = w.read_response();
    assert_eq!(r.status, 500, "read() raised: {}", r.text());
    // Unread and aborted: the worker skips to the ABORT and stays in sync.
    let mut bytes = Worker::request_bytes("POST", b"/input/ignore", &[], Body::Chunked(&[b"abc"]));
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&frame::ABORT_FRAME);
    w.send(&bytes);
    assert_eq!(w.read_response().text(), "ignored");
    assert_eq!(w.get("/hello").text(), "hello");
    let (status, err) = w.finish();
    assert_eq!(status.code(), Some(0));
    assert!(err.contains("aborted the request body"), "{err}");
}

#[test]
fn malformed_packets_get_400_and_the_worker_keeps_serving() {
    let mut w = Worker::conformance();
    // A var whose length runs past the vars block.
    w.send(&[0, 4, 0, 0, 9, 0, b'a', b'b']);
    let r = w.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(r.header("x-weir-error").as_deref(), Some("bad-request"));
    assert_eq!(w.get("/hello").text(), "hello");

    // An unknown modifier1, with vars.
    let mut out = Vec::new();
    let mut b = packet::Builder::new(&mut out, 42, 0);
    b.var(b"A", b"B").unwrap();
    b.finish().unwrap();
    w.send(&out);
    let r = w.read_response();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-weir-error").as_deref(), Some("bad-request"));

    // A CONTENT_LENGTH that is not a number.
    let bytes = Worker::request_bytes("POST", b"/echo", &[("CONTENT_LENGTH", b"12x")], Body::None);
    w.send(&bytes);
    assert_eq!(w.read_response().status, 400);
    assert_eq!(w.get("/hello").text(), "hello");

    let (status, err) = w.finish();
    assert_eq!(status.code(), Some(0));
    assert!(err.contains("bad request"), "{err}");
}

#[test]
fn ready_check_answers_200_or_503() {
    let mut w = Worker::conformance();
    let mut check = Vec::new();
    packet::encode_control(&mut check, packet::MODIFIER_READY_CHECK);
    w.send(&check);
    let r = w.read_response();
    assert_ok(&r);
    assert_eq!(r.text(), "ok");

    w.get("/set_ready?v=0");
    w.send(&check);
    let r = w.read_response();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("false"), "{}", r.text());

    w.get("/set_ready?v=raise");
    w.send(&check);
    let r = w.read_response();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("RuntimeError"), "{}", r.text());

    w.get("/set_ready?v=1");
    w.send(&check);
    assert_eq!(w.read_response().status, 200);

    // Without --ready-check, a ready check is simply "ok".
    let mut plain = Worker::start("conformance", &[]);
    plain.send(&check);
    assert_eq!(plain.read_response().text(), "ok");
}

#[test]
fn import_failures_exit_3_with_the_traceback() {
    let mut w = Worker::spawn("broken", &[]);
    let (status, err) = w.wait();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("Traceback") && err.contains("broken on purpose"),
        "{err}"
    );

    let mut w = Worker::spawn("conformance:nope", &[]);
    let (status, err) = w.wait();
    assert_eq!(status.code(), Some(3));
    assert!(err.contains("nope"), "{err}");

    let mut w = Worker::spawn("no_such_module_here", &[]);
    let (status, err) = w.wait();
    assert_eq!(status.code(), Some(3));
    assert!(err.contains("ModuleNotFoundError"), "{err}");

    let mut w = Worker::spawn("conformance", &["--ready-check", "conformance:missing"]);
    let (status, err) = w.wait();
    assert_eq!(status.code(), Some(3));
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn broken_body_framing_or_eof_mid_body_exits_nonzero() {
    let mut w = Worker::conformance();
    let mut bytes = Worker::request_bytes("POST", b"/input/ignore", &[], Body::Chunked(&[]));
    // Replace the END frame with an oversized length prefix.
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&u32::MAX.wrapping_sub(1).to_le_bytes());
    w.send(&bytes);
    let r = w.read_response();
    assert_eq!(r.text(), "ignored");
    let (status, err) = w.wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("framing"), "{err}");

    let mut w = Worker::conformance();
    let mut bytes = Worker::request_bytes("POST", b"/echo", &[], Body::Length(&[b'a'; 100]));
    bytes.truncate(bytes.len() - 50);
    w.send(&bytes);
    let (status, _) = w.finish();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn stdin_is_dev_null_and_wsgi_errors_lines_carry_the_request_id() {
    let mut w = Worker::conformance();
    let r = w.get("/stdin");
    assert_eq!(r.json()["stdin"], "");
    let r = w.request_full(
        "GET",
        "/errors",
        &[("WEIR_REQUEST_ID", b"r-err")],
        Body::None,
    );
    assert_eq!(r.text(), "logged");
    let (_, err) = w.finish();
    assert!(
        err.contains("weir worker 7 request r-err: line one\n"),
        "{err}"
    );
    assert!(
        err.contains("weir worker 7 request r-err: line two\n"),
        "{err}"
    );
}

#[test]
fn virtualenv_site_packages_come_first() {
    let venv = std::env::temp_dir().join(format!("weir-venv-{}", std::process::id()));
    for minor in 6..=20 {
        let sp = venv.join(format!("lib/python3.{minor}/site-packages"));
        std::fs::create_dir_all(&sp).unwrap();
        std::fs::write(sp.join("weir_venv_probe.py"), "X = 1\n").unwrap();
    }
    let mut w = Worker::start("venvapp", &["--virtualenv", venv.to_str().unwrap()]);
    let r = w.get("/");
    assert_ok(&r);
    let text = r.text();
    let (probe, first) = text.split_once('\n').unwrap();
    assert!(probe.starts_with(venv.to_str().unwrap()), "{text}");
    assert_eq!(
        Path::new(first),
        apps_dir().canonicalize().unwrap(),
        "--chdir is first on sys.path"
    );
    drop(w);
    let _ = std::fs::remove_dir_all(&venv);
}

#[test]
fn repeated_header_vars_are_joined() {
    let mut w = Worker::conformance();
    let e = w
        .request_full(
            "GET",
            "/environ",
            &[
                ("HTTP_X_REP", b"a"),
                ("HTTP_X_REP", b"b"),
                ("HTTP_COOKIE", b"x=1"),
                ("HTTP_X_REP", b"c d"),
                ("HTTP_COOKIE", b"y=2"),
            ],
            Body::None,
        )
        .json();
    assert_eq!(e["HTTP_X_REP"], "a, b, c d");
    assert_eq!(e["HTTP_COOKIE"], "x=1; y=2");

    // A vars block near the 64 KiB limit (bigger than the worker's read buffer).
    let big = vec![b'q'; 60_000];
    let e = w
        .request_full("GET", "/environ", &[("HTTP_X_BIG", &big)], Body::None)
        .json();
    assert_eq!(e["HTTP_X_BIG"].as_str().unwrap().len(), 60_000);
    assert_eq!(w.get("/hello").text(), "hello");
}

#[test]
fn cancel_stops_a_stream_and_is_ignored_between_requests() {
    let mut w = Worker::conformance();
    let mut cancel = Vec::new();
    packet::encode_control(&mut cancel, weir_worker_cancel());
    // Between requests a CANCEL is a no-op (it crossed the END of its response).
    w.send(&cancel);
    assert_eq!(w.get("/hello").text(), "hello");

    let n0 = w.closes();
    let t0 = Instant::now();
    w.send(&Worker::request_bytes(
        "GET",
        b"/stream?n=200&delay=20",
        &[],
        Body::None,
    ));
    w.fill(1);
    w.send(&cancel);
    let r = w.read_response();
    assert!(r.aborted, "a cancelled response ends with ABORT");
    assert!(
        r.frames.len() < 50,
        "{} chunks were produced",
        r.frames.len()
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(w.closes(), n0 + 1, "close() after a cancel");
    assert_eq!(w.get("/hello").text(), "hello");
}

#[test]
fn sigint_is_ignored_and_the_worker_dies_with_its_parent() {
    let mut w = Worker::conformance();
    let pid = w.get("/pid").text();
    let st = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        w.get("/hello").text(),
        "hello",
        "SIGINT is the master's business"
    );

    // A worker whose parent (a shell here) is killed gets SIGKILL (PR_SET_PDEATHSIG).
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut shell = Command::new("sh")
        .arg("-c")
        // (an asynchronous list's stdin is /dev/null unless redirected explicitly)
        .arg("exec 3<&0; \"$0\" worker --app conformance --chdir \"$1\" <&3 3<&- & wait")
        .arg(weir_bin())
        .arg(apps_dir())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut orphan = Worker {
        child: Command::new("true").spawn().unwrap(),
        sock: Some(ours),
        buf: Vec::new(),
    };
    orphan.expect_ready();
    let pid = orphan.get("/pid").text();
    shell.kill().unwrap();
    shell.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').unwrap().1.trim().chars().next().unwrap())
            .unwrap_or('X');
        if state == 'Z' || state == 'X' {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker outlived its parent (state {state})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CANCEL control packet's modifier1 (weir_worker::MODIFIER_CANCEL).
fn weir_worker_cancel() -> u8 {
    0xF2
}

/// Per-request cost on /hello (run with `--ignored --nocapture`, ideally a release build).
#[test]
#[ignore]
fn bench_hello() {
    let mut w = Worker::conformance();
    let req = Worker::request_bytes(
        "GET",
        b"/hello",
        &[("HTTP_USER_AGENT", b"bench"), ("HTTP_ACCEPT", b"*/*")],
        Body::None,
    );
    for _ in 0..2000 {
        w.send(&req);
        w.read_response();
    }
    let pid = w.child.id();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        (f[11].parse::<u64>().unwrap(), f[12].parse::<u64>().unwrap())
    };
    let n = 50_000u64;
    let (u0, s0) = cpu();
    let t0 = Instant::now();
    for _ in 0..n {
        w.send(&req);
        w.read_response();
    }
    let wall = t0.elapsed();
    let (u1, s1) = cpu();
    let tick = 10_000.0; // µs per clock tick (USER_HZ = 100)
    println!(
        "{n} requests: {:.1} µs wall/request, worker cpu {:.1} µs user + {:.1} µs sys per request",
        wall.as_secs_f64() * 1e6 / n as f64,
        (u1 - u0) as f64 * tick / n as f64,
        (s1 - s0) as f64 * tick / n as f64,
    );
}
