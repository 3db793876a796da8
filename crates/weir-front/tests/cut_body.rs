//! A response body that fails mid-stream (the app raised after its first chunk, or the
//! worker died) through a real hyper connection on a real socket: the client must get the
//! head and the chunks sent before the failure, then the connection closes. When the
//! chunk and the failure are both ready at hyper's first poll (a busy master reads them
//! together), hyper used to drop its unflushed buffer with the connection and the client
//! got nothing at all; weir_pool::ResponseBody holds the failure back one turn.

use std::convert::Infallible;
use std::io::{ErrorKind, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use weir_pool::{BodyError, ResponseBody};

/// Serves one connection whose response body is `items`, all queued before hyper polls
/// it (the channel closed after them when `close_channel`: the worker's end went away);
/// returns what a client read until the connection closed.
async fn client_reads(items: Vec<Result<Bytes, BodyError>>, close_channel: bool) -> Vec<u8> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        for i in items {
            tx.try_send(i).unwrap();
        }
        let _keep = (!close_channel).then_some(tx);
        let rx = Mutex::new(Some(rx));
        let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
            let rx = rx.lock().unwrap().take().expect("one request");
            async move { Ok::<_, Infallible>(Response::new(ResponseBody::Stream(rx))) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await;
    });
    let data = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
        data
    })
    .await
    .unwrap();
    server.await.unwrap();
    data
}

fn assert_cut_after_partial(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "no head: {text:?}");
    assert!(
        text.contains("partial-"),
        "the chunk before the failure was lost: {text:?}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the body ended cleanly although it failed: {text:?}"
    );
}

#[tokio::test]
async fn an_app_failure_ready_with_the_first_chunk_still_sends_the_chunk() {
    let data = client_reads(
        vec![
            Ok(Bytes::from_static(b"partial-")),
            Err(BodyError::AppAborted),
        ],
        false,
    )
    .await;
    assert_cut_after_partial(&data);
}

#[tokio::test]
async fn a_worker_gone_with_the_first_chunk_ready_still_sends_the_chunk() {
    let data = client_reads(vec![Ok(Bytes::from_static(b"partial-"))], true).await;
    assert_cut_after_partial(&data);
}
