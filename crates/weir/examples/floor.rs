//! The floor under weir's CPU per request: the same processes and system calls as `weir
//! serve` answering /hello, and nothing else (bench/floor, issue 19).
//!
//! weir's master reads a request from the client's TCP connection, hands it to a worker
//! process over a Unix socketpair, reads the answer back and writes it to the client: four
//! socket calls a request across two processes, plus the wake-ups between them. This
//! program does exactly that with no HTTP parsing, no admission, no environ and no Python,
//! so its CPU per request is what the process model itself costs on this machine: a
//! lower bound for weir's own CPU per request, whatever weir's code does.
//!
//! - `floor relay --listen ADDR [--workers N] [--threads T] [--answer-bytes N]`: the
//!   master (a tokio runtime of T threads, as `[server] threads`; a task per connection
//!   and one per worker, a oneshot back, as weir's exchange) and N worker processes (this
//!   program again, `floor worker`, its socketpair end as standard input: blocking reads
//!   and writes, as weir's worker). The worker answers every request with the same fixed HTTP answer: /hello's
//!   size, or a body of N bytes.
//! - `floor direct --listen ADDR [--threads T] [--answer-bytes N]`: the master answers
//!   itself; no worker, no hop. The difference from `relay` is the hop's own cost.
//! - `floor pingpong [N]`: N round trips of one byte over a socketpair with a child
//!   process (`floor echo`), both blocking: the CPU of the two wake-ups a hop to a worker
//!   process needs, whatever carries the bytes (a shared-memory ring would still sleep
//!   and wake through the kernel).
//! - `floor syscall [N]`: times N `getpid` system calls, the entry and exit that io_uring
//!   could save a call; the rest of a socket call's kernel time is the network stack's
//!   work, which io_uring does as well.
//!
//! Requests are HTTP/1.1 GETs without a body on kept-alive connections (wrk's); a request
//! is its head, up to the blank line. Not a server: a measuring instrument.

use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex};

/// The master's allocator, as in weir.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The fixed answer: what weir sends for examples/shop's /hello, near enough in size (the
/// date is fixed), or a body of `body` bytes (`--answer-bytes`: 17,000 is /items's size).
fn answer(body: Option<usize>) -> Vec<u8> {
    let body = match body {
        None => b"Hello, World!".to_vec(),
        Some(n) => vec![b'x'; n],
    };
    let mut a = format!(
        "HTTP/1.1 200 OK\r\nserver: weir\r\ndate: Sun, 06 Dec 2026 12:00:00 GMT\r\n\
         content-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    a.extend_from_slice(&body);
    a
}

/// A request on its way to a worker, and where its answer goes.
type Job = (Vec<u8>, oneshot::Sender<Vec<u8>>);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("worker") => worker(args.get(1).and_then(|n| n.parse().ok())),
        Some("echo") => echo(),
        Some("pingpong") => pingpong(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(200_000)),
        Some("syscall") => {
            let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(5_000_000);
            syscall_cost(n);
            Ok(())
        }
        Some(mode @ ("relay" | "direct")) => master(mode == "relay", &args[1..]),
        _ => Err("usage: floor relay|direct --listen ADDR [--workers N] [--threads T] [--answer-bytes N] | floor pingpong [N] | floor syscall [N]".into()),
    };
    if let Err(e) = result {
        eprintln!("floor: {e}");
        std::process::exit(2);
    }
}

/// The value after `--name` in `args`, or `default`.
fn opt(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn master(relay: bool, args: &[String]) -> Result<(), String> {
    let listen = opt(args, "--listen", "127.0.0.1:8000");
    let workers: usize = opt(args, "--workers", "4")
        .parse()
        .map_err(|_| "--workers: not a number")?;
    let threads: usize = opt(args, "--threads", "2")
        .parse()
        .map_err(|_| "--threads: not a number")?;
    let body: Option<usize> = match opt(args, "--answer-bytes", "").as_str() {
        "" => None,
        n => Some(n.parse().map_err(|_| "--answer-bytes: not a number")?),
    };
    let fixed: Arc<[u8]> = answer(body).into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async move {
        let (jobs, queue) = mpsc::channel::<Job>(1024);
        let queue = Arc::new(Mutex::new(queue));
        let mut children = Vec::new();
        if relay {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            for _ in 0..workers {
                let (ours, theirs) =
                    StdUnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
                let mut cmd = Command::new(&exe);
                cmd.arg("worker");
                if let Some(n) = body {
                    cmd.arg(n.to_string());
                }
                let child = cmd
                    .stdin(Stdio::from(OwnedFd::from(theirs)))
                    .spawn()
                    .map_err(|e| format!("spawn worker: {e}"))?;
                children.push(child);
                ours.set_nonblocking(true).map_err(|e| e.to_string())?;
                let stream = UnixStream::from_std(ours).map_err(|e| e.to_string())?;
                tokio::spawn(exchange(stream, queue.clone()));
            }
        }
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        loop {
            let (sock, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accept: {e}"))?;
            let jobs = relay.then(|| jobs.clone());
            tokio::spawn(connection(sock, jobs, fixed.clone()));
        }
    })
}

/// One client connection: a request head in, its answer out, until the client closes.
async fn connection(mut sock: TcpStream, jobs: Option<mpsc::Sender<Job>>, fixed: Arc<[u8]>) {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let request: Vec<u8> = buf.drain(..end + 4).collect();
            let answer = match &jobs {
                None => fixed.to_vec(),
                Some(jobs) => {
                    let (tx, rx) = oneshot::channel();
                    if jobs.send((request, tx)).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(a) => a,
                        Err(_) => return,
                    }
                }
            };
            if sock.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

/// One worker's side in the master: takes the next request, writes it to the worker as a
/// 4-byte length and the bytes, reads the answer back the same way.
async fn exchange(mut stream: UnixStream, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut frame = Vec::with_capacity(4096);
    let mut answer = Vec::with_capacity(4096);
    loop {
        let next = queue.lock().await.recv().await;
        let Some((request, reply)) = next else { return };
        frame.clear();
        frame.extend_from_slice(&(request.len() as u32).to_le_bytes());
        frame.extend_from_slice(&request);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
        answer.clear();
        let len = loop {
            if stream.read_buf(&mut answer).await.unwrap_or(0) == 0 {
                return;
            }
            if answer.len() >= 4 {
                let len = u32::from_le_bytes([answer[0], answer[1], answer[2], answer[3]]) as usize;
                if answer.len() >= 4 + len {
                    break len;
                }
            }
        };
        let _ = reply.send(answer[4..4 + len].to_vec());
    }
}

/// The worker process: blocking reads and writes on its socketpair end (standard input).
fn worker(body: Option<usize>) -> Result<(), String> {
    let answer = answer(body);
    let stream = parent_socket()?;
    let mut reader = BufReader::with_capacity(8192, &stream);
    let mut writer = &stream;
    let mut out = Vec::with_capacity(4 + answer.len());
    out.extend_from_slice(&(answer.len() as u32).to_le_bytes());
    out.extend_from_slice(&answer);
    let mut request = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            return Ok(()); // the master closed: done
        }
        let len = u32::from_le_bytes(len) as usize;
        request.resize(len, 0);
        reader
            .read_exact(&mut request)
            .map_err(|e| format!("read: {e}"))?;
        writer.write_all(&out).map_err(|e| format!("write: {e}"))?;
    }
}

/// Times `n` getpid system calls and prints the cost of one.
fn syscall_cost(n: u64) {
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(u64::from(std::process::id()));
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("getpid: {ns:.0} ns a call ({n} calls, checksum {sum})");
}

/// A child's end of the socketpair its parent passed as standard input (`worker`, `echo`).
fn parent_socket() -> Result<StdUnixStream, String> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("stdin: {e}"))?;
    Ok(StdUnixStream::from(fd))
}

/// The child of `pingpong`: echoes what it reads on its socketpair end (standard input).
fn echo() -> Result<(), String> {
    let mut stream = parent_socket()?;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => stream
                .write_all(&buf[..n])
                .map_err(|e| format!("write: {e}"))?,
        }
    }
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: &str) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // The command may hold spaces: count fields after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or("bad /proc stat")
    };
    Ok(ticks(11)? + ticks(12)?)
}

/// `n` one-byte round trips with an `echo` child; prints the CPU (both processes) and the
/// wall time of one.
fn pingpong(n: u64) -> Result<(), String> {
    let (mut ours, theirs) = StdUnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .arg("echo")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .map_err(|e| format!("spawn echo: {e}"))?;
    let child_pid = child.id().to_string();
    let mut byte = [7u8; 1];
    let round = |s: &mut StdUnixStream, b: &mut [u8; 1]| -> Result<(), String> {
        s.write_all(b).map_err(|e| e.to_string())?;
        s.read_exact(b).map_err(|e| e.to_string())
    };
    for _ in 0..1000 {
        round(&mut ours, &mut byte)?;
    }
    let (ours0, theirs0) = (cpu_ticks("self")?, cpu_ticks(&child_pid)?);
    let start = Instant::now();
    for _ in 0..n {
        round(&mut ours, &mut byte)?;
    }
    let wall = start.elapsed().as_secs_f64();
    let (ours1, theirs1) = (cpu_ticks("self")?, cpu_ticks(&child_pid)?);
    drop(ours);
    let _ = child.wait();
    // Clock ticks are 100 a second on Linux (USER_HZ).
    let us = |ticks: u64| ticks as f64 * 1e4 / n as f64;
    println!(
        "pingpong: {:.1} us of CPU a round trip (this side {:.1}, the echo {:.1}), {:.1} us wall ({n} round trips)",
        us(ours1 - ours0 + theirs1 - theirs0),
        us(ours1 - ours0),
        us(theirs1 - theirs0),
        wall * 1e6 / n as f64
    );
    Ok(())
}
