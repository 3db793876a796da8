//! The queue's promises on paused time (tokio's test clock: a wait of ten seconds takes
//! none): a request with no worker waits at most the queue timeout or its deadline,
//! whichever is sooner; the queue's bound holds; a waiter whose client left is dropped
//! and stops counting. No worker is started: these are the requests that wait.

use std::time::Duration;

use tokio::time::Instant as TokioInstant;

use super::*;
use crate::request::RequestBody;

fn request(deadline: Option<Instant>) -> WorkerRequest {
    let mut packet = Vec::new();
    weir_uwsgi::packet::encode_control(&mut packet, 0);
    WorkerRequest {
        packet,
        body: RequestBody::Empty,
        harakiri: None,
        deadline,
        hold: None,
        body_timeout: Duration::from_secs(60),
        service: None,
        fair_key: 0,
        spool: None,
    }
}

fn pool(max_queue: usize, timeout: Duration) -> Pool {
    let policy = weir_queue::QueuePolicy {
        max_size: max_queue,
        timeout,
        codel: None,
        fair: false,
        per_key_max: None,
    };
    Pool::new(policy, None, true)
}

/// A request submitted in a task of its own, returned once it waits in the queue (the
/// queue's depth has reached `depth`).
async fn queued(p: &Pool, depth: usize) -> tokio::task::JoinHandle<Result<Started, DispatchError>> {
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.submit(request(None)).await }
    });
    while p.queue_depth() < depth {
        tokio::task::yield_now().await;
    }
    task
}

#[tokio::test(start_paused = true)]
async fn with_no_worker_free_a_request_waits_the_queue_timeout_then_503() {
    let p = pool(4, Duration::from_secs(10));
    let t0 = TokioInstant::now();
    let r = p.submit(request(None)).await;
    assert!(
        matches!(r, Err(DispatchError::QueueTimeout(d)) if d == Duration::from_secs(10)),
        "{r:?}"
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    assert_eq!(
        p.queue_depth(),
        0,
        "a request that timed out no longer waits"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_sooner_than_the_queue_timeout_ends_the_wait_as_deadline() {
    let p = pool(4, Duration::from_secs(10));
    let t0 = TokioInstant::now();
    let deadline = Instant::now() + Duration::from_secs(2);
    let r = p.submit(request(Some(deadline))).await;
    assert!(matches!(r, Err(DispatchError::DeadlineExceeded)), "{r:?}");
    assert!(t0.elapsed() <= Duration::from_secs(2));
    // A deadline already past is refused at once.
    let r = p.submit(request(Some(Instant::now()))).await;
    assert!(matches!(r, Err(DispatchError::DeadlineExceeded)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn the_queue_bound_holds_and_counts_waiters_from_outside_the_pool() {
    let p = pool(2, Duration::from_secs(10));
    let a = queued(&p, 1).await;
    let slot = p.enter_queue().expect("room for a route-slot waiter");
    assert_eq!(p.queue_depth(), 2);
    let r = p.submit(request(None)).await;
    assert!(
        matches!(r, Err(DispatchError::QueueFull { max: 2 })),
        "{r:?}"
    );
    assert!(matches!(
        p.enter_queue(),
        Err(DispatchError::QueueFull { max: 2 })
    ));
    drop(slot);
    assert_eq!(p.queue_depth(), 1);
    let r = a.await.expect("the waiter's task");
    assert!(matches!(r, Err(DispatchError::QueueTimeout(_))), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_client_left_stops_counting() {
    let p = pool(1, Duration::from_secs(10));
    let a = queued(&p, 1).await;
    // The client goes away: its connection task drops the submission.
    a.abort();
    let _ = a.await;
    assert_eq!(p.queue_depth(), 0);
    // Its place is free again: the next request is queued, not refused.
    let t0 = TokioInstant::now();
    let r = p.submit(request(None)).await;
    assert!(matches!(r, Err(DispatchError::QueueTimeout(_))), "{r:?}");
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_stopping_pool_takes_no_work() {
    let p = pool(4, Duration::from_secs(10));
    p.begin_shutdown();
    let r = p.submit(request(None)).await;
    assert!(matches!(r, Err(DispatchError::ShuttingDown)), "{r:?}");
}
