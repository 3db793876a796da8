//! The framing gate refuses, with weir's own answer, everything hyper would refuse itself.
//!
//! hyper answers a request it cannot parse with a bare 400 or 431 of its own (no
//! `x-weir-error`, no request id). weir runs its framing gate (weir-http1) over the
//! connection's bytes first, so that every refusal is weir's. This test is the check
//! that the gate is at least as strict as hyper: for a set of requests, well formed and
//! broken in the ways real traffic and smuggling attempts break them, plus seeded
//! mutations of them (bytes flipped, dropped, duplicated, special bytes inserted), only
//! what the gate passes is fed to a real hyper HTTP/1.1 server configured as weir's, and
//! every answer hyper writes must be the app's own (the service answers 200 to anything).
//! A gate that let through something hyper refuses would show as a hyper-made status.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_http1::{Limits, RequestFramer, Step};

/// weir's default `[server] max_header_size`, and so hyper's `max_buf_size` (see
/// weir-front's http.rs: `max_header_size.max(8192)`).
const MAX_HEAD: usize = 8192;

/// What the gate lets through of `input`, fed whole.
fn gate_passes(input: &[u8]) -> Vec<u8> {
    let mut framer = RequestFramer::new(Limits { max_head: MAX_HEAD });
    let mut passed = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        match framer.step(rest) {
            Step::Pass(n) => {
                passed.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Step::More | Step::End | Step::Refuse(_) => break,
        }
    }
    passed
}

/// What a hyper server configured as weir's writes back for `input` (its write side
/// closed after the input, as a client that sent everything and waits).
async fn hyper_answers(input: Vec<u8>) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("x-app", "1")
                .body(Full::new(Bytes::from_static(b"ok")))
                .expect("a valid response"),
        )
    });
    let serve = tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .max_buf_size(MAX_HEAD)
            .half_close(true)
            .keep_alive(true);
        let _ = builder.serve_connection(TokioIo::new(server), svc).await;
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(&input).await.expect("write to the duplex");
    wr.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_to_end(&mut out));
    read.await
        .expect("hyper answers and closes within 5 s")
        .expect("read from the duplex");
    serve.abort();
    out
}

/// The status codes of the responses in `out` that are not the app's (hyper's own).
fn hyper_made(out: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(out);
    let mut found = Vec::new();
    for (i, _) in text.match_indices("HTTP/1.1 ") {
        let line = text[i..].lines().next().unwrap_or("");
        if !line.starts_with("HTTP/1.1 200") {
            found.push(line.to_string());
        }
    }
    found
}

fn seeds() -> Vec<Vec<u8>> {
    let v: Vec<&[u8]> = vec![
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /p?q=1&r=%20 HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\nUser-Agent: x/1\r\n\r\n",
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a.example/p HTTP/1.1\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    ];
    let mut seeds: Vec<Vec<u8>> = v.into_iter().map(<[u8]>::to_vec).collect();
    // A head at the limit, one over it, and many header fields.
    let pad = |n: usize| {
        let mut r = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        r.extend(std::iter::repeat_n(b'p', n));
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    seeds.push(pad(MAX_HEAD - 40));
    seeds.push(pad(MAX_HEAD + 10));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..120 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    seeds.push(many);
    let mut long_target = b"GET /".to_vec();
    long_target.extend(std::iter::repeat_n(b'a', 70_000));
    long_target.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    seeds.push(long_target);
    seeds
}

/// xorshift64*: seeded, so every run checks the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that parsers treat specially.
const SPECIAL: &[u8] = b"\0\r\n \t:;,/?#[]@%\"\\\x7f\x80\xff{}<>|^`";

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if v.is_empty() {
            break;
        }
        let at = rng.below(v.len());
        match rng.below(5) {
            0 => v[at] = SPECIAL[rng.below(SPECIAL.len())],
            1 => {
                v.remove(at);
            }
            2 => v.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
            3 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                let dup = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
            _ => v[at] ^= 1 << rng.below(8),
        }
    }
    v
}

#[tokio::test]
async fn hyper_never_refuses_what_the_gate_passed() {
    let mut rng = Rng(0x005E_ED0F_3E1F);
    let mut inputs = seeds();
    let n_seeds = inputs.len();
    for i in 0..20_000 {
        let seed = inputs[i % n_seeds].clone();
        inputs.push(mutate(&seed, &mut rng));
    }
    let mut failures = Vec::new();
    let (mut fed, mut refused_whole) = (0, 0);
    for input in &inputs {
        let passed = gate_passes(input);
        if passed.is_empty() {
            refused_whole += 1;
            continue;
        }
        fed += 1;
        let out = hyper_answers(passed.clone()).await;
        let made = hyper_made(&out);
        if !made.is_empty() {
            failures.push(format!(
                "{:?}\n  gate passed {:?}\n  hyper answered {made:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&passed)
            ));
        }
    }
    println!(
        "{} inputs: {fed} fed to hyper (whole or up to a refusal), {refused_whole} refused or incomplete before any byte passed",
        inputs.len()
    );
    // The mutations must reach hyper in numbers, and be refused in numbers, or this checks
    // nothing.
    assert!(
        fed > 3000 && refused_whole > 3000,
        "fed {fed}, refused {refused_whole}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} inputs: the gate passed what hyper then refused itself:\n{}",
        failures.len(),
        inputs.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn the_check_sees_hyper_refusals_when_the_gate_is_bypassed() {
    // Fed straight to hyper (no gate), these get hyper's own bare answers: the check
    // above would see a gate that let them through.
    for input in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"[..],
    ] {
        let out = hyper_answers(input.to_vec()).await;
        assert!(
            !hyper_made(&out).is_empty(),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(gate_passes(input).is_empty(), "the gate refuses it at once");
    }
}
