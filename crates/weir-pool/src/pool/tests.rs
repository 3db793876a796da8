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
        retry: false,
    }
}

fn pool(max_queue: usize, timeout: Duration) -> Pool {
    let policy = weir_queue::QueuePolicy {
        max_size: max_queue,
        timeout,
        codel: None,
        fair: false,
        per_key_max: None,
        admission: true,
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

/// A request of a route whose requests typically hold a worker `typical`.
fn routed(typical: Duration, deadline: Option<Instant>) -> (WorkerRequest, Arc<ServiceTime>) {
    let service = Arc::new(ServiceTime::new());
    service.record(typical);
    let mut req = request(deadline);
    req.service = Some(service.clone());
    (req, service)
}

/// Until the queue's depth is `depth` (bounded: a refused request would never get there).
async fn wait_depth(p: &Pool, depth: usize) {
    for _ in 0..10_000 {
        if p.queue_depth() >= depth {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "the queue's depth never reached {depth}: {}",
        p.queue_depth()
    );
}

fn pool_with_codel(max_queue: usize) -> Pool {
    let policy = weir_queue::QueuePolicy {
        max_size: max_queue,
        timeout: Duration::from_secs(10),
        codel: Some(Codel::new(Duration::from_secs(1), true)),
        fair: false,
        per_key_max: None,
        admission: true,
    };
    Pool::new(policy, None, true)
}

#[tokio::test(start_paused = true)]
async fn an_arrival_behind_more_work_than_its_target_is_refused_at_once() {
    // No worker yet (judged as one), a 30 ms route: its target is 2 x 30 = 60 ms, so
    // waits of 0, 30 and 60 ms are admitted, and the fourth arrival (90 ms) is refused
    // at once, queue-full, with a Retry-After from the estimate; those admitted keep
    // their place.
    let p = pool_with_codel(64);
    let ms30 = Duration::from_millis(30);
    let mut waiting = Vec::new();
    for depth in 1..=3 {
        let (req, _) = routed(ms30, None);
        let p2 = p.clone();
        waiting.push(tokio::spawn(async move { p2.submit(req).await }));
        wait_depth(&p, depth).await;
    }
    let t0 = TokioInstant::now();
    let (req, _) = routed(ms30, None);
    let r = p.submit(req).await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "refused without waiting");
    let e = r.expect_err("refused");
    assert_eq!(e.class(), weir_errors::ErrorClass::QueueFull);
    assert_eq!(e.retry_after(), Some(1));
    assert!(e.to_string().contains("delay target"), "{e}");
    assert_eq!(p.queue_depth(), 3, "the admitted keep their place");
    assert_eq!(
        p.stats().queue.refused_at_arrival.load(Ordering::Relaxed),
        1
    );
    // A request of a fast route (1 ms: its target is the 50 ms floor) is refused too:
    // 90 ms of work is ahead of it whatever its own time.
    let (req, _) = routed(Duration::from_millis(1), None);
    assert!(matches!(
        p.submit(req).await,
        Err(DispatchError::QueuePredicted(_))
    ));
    for w in waiting {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_short_deadline_is_refused_at_arrival_when_the_wait_ahead_is_longer() {
    let p = pool_with_codel(64);
    // A 5 s report route waiting: its target is the queue timeout (10 s).
    let (slow, _) = routed(Duration::from_secs(5), None);
    let p2 = p.clone();
    let waiting = tokio::spawn(async move { p2.submit(slow).await });
    wait_depth(&p, 1).await;
    // Another report is admitted: 5 s ahead, within its own 10 s.
    let (slow, _) = routed(Duration::from_secs(5), None);
    let p2 = p.clone();
    let second = tokio::spawn(async move { p2.submit(slow).await });
    wait_depth(&p, 2).await;
    // A request of a 200 ms route (target 600 ms) with 300 ms of deadline left, behind
    // 10 s of work: refused at once, judged by its deadline.
    let (req, _) = routed(
        Duration::from_millis(200),
        Some(Instant::now() + Duration::from_millis(300)),
    );
    let r = p.submit(req).await;
    match r {
        Err(DispatchError::QueuePredicted(weir_queue::QueueRefusal::Predicted {
            expected,
            budget: weir_queue::Budget::Deadline(_),
        })) => assert_eq!(expected, Duration::from_secs(10)),
        other => panic!("{other:?}"),
    }
    waiting.abort();
    second.abort();
}

#[tokio::test(start_paused = true)]
async fn with_admission_off_the_queue_fills_as_before() {
    let policy = weir_queue::QueuePolicy {
        admission: false,
        ..*pool_with_codel(3).policy()
    };
    let p = Pool::new(policy, None, true);
    let mut waiting = Vec::new();
    for depth in 1..=3 {
        let (req, _) = routed(Duration::from_secs(1), None);
        let p2 = p.clone();
        waiting.push(tokio::spawn(async move { p2.submit(req).await }));
        wait_depth(&p, depth).await;
    }
    let (req, _) = routed(Duration::from_secs(1), None);
    assert!(matches!(
        p.submit(req).await,
        Err(DispatchError::QueueFull { max: 3 })
    ));
    for w in waiting {
        w.abort();
    }
}
