//! `limit_conn` shared through a real `redis-server` (Debian's package;
//! scripts/install-deps.sh installs it). Skipped, with a message, when it is not installed.
//!
//! Two independent `Limits` (two weir instances) on one Redis with a zone of `max = 2`:
//! together they never hold more than 2 slots of a key, and a released slot is free for
//! either. An instance that dies holding slots (its guards forgotten, the instance dropped:
//! no release, no renewal) holds them until their lease ends; a live instance keeps a slot
//! past its lease by renewing it. Redis killed: `on_store_error` (allow admits without a
//! slot, deny refuses `conn-limited`), at once; Redis back: shared again. Start-up
//! warm-up: [`Limits::connect`] connects, or says once that Redis does not answer.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, have_redis, redis_or_skip, Redis};
use weir_config::Config;
use weir_errors::ErrorClass;
use weir_limits::{Limits, Outcome, RedisOptions, RouteLimits, SimpleRequest};

const TIMEOUT: Duration = Duration::from_millis(25);

fn limits_with(url: &str, on_error: &str, lease: Duration) -> (Arc<Limits>, RouteLimits) {
    let text = format!(
        "[app]\nmodule = \"a:b\"\n\
         [limit_conn.c]\nkey = \"$remote_addr\"\nmax = 2\n\
         [limit_conn.d]\nkey = \"$remote_addr\"\nmax = 1\ndry_run = true\n\
         [limits]\nstore = \"{url}\"\non_store_error = \"{on_error}\"\n"
    );
    let mut c = Config::parse(&text, Path::new("t.toml")).unwrap();
    c.apply_defaults();
    c.validate().unwrap();
    let opts = RedisOptions {
        timeout: TIMEOUT,
        lease,
        ..RedisOptions::default()
    };
    let l = Arc::new(Limits::from_config_with(&c, opts).unwrap());
    let r = l.zones(&[], &["c".into()]).unwrap();
    (l, r)
}

fn limits(url: &str, on_error: &str) -> (Arc<Limits>, RouteLimits) {
    limits_with(url, on_error, Duration::from_secs(30))
}

fn req(ip: &str) -> SimpleRequest {
    SimpleRequest {
        remote_addr: ip.into(),
        path: "/".into(),
        ..Default::default()
    }
}

fn admitted(o: &Outcome) -> bool {
    !o.is_refused() && !o.store_error
}

fn conn_refused(o: &Outcome) -> bool {
    o.refusal
        .as_ref()
        .is_some_and(|r| r.class == ErrorClass::ConnLimited && !r.store_error)
}

fn zcard(url: &str, key: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_connection().unwrap();
    redis::cmd("ZCARD").arg(key).query(&mut c).unwrap()
}

/// Polls (bounded) until `l` admits a request of `key`; returns it and how long it took.
async fn until_admitted(l: &Limits, r: &RouteLimits, key: &str, within: Duration) -> Outcome {
    let deadline = Instant::now() + within;
    loop {
        let o = l.check(r, &req(key)).await;
        if admitted(&o) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "not admitted within {within:?}: {:?}",
            o.refusal
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(l: &Limits) {
    assert!(l.connect(Duration::from_secs(5)).await, "connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_slots_of_a_key() {
    let Some(_redis) = redis_or_skip() else {
        return;
    };
    let url = _redis.url();
    let (a, ra) = limits(&url, "allow");
    let (b, rb) = limits(&url, "allow");
    connected(&a).await;
    connected(&b).await;

    // A, B, A, B, A, B: two slots in all, then conn-limited on both instances
    let mut held = Vec::new();
    for i in 0..6 {
        let (l, r) = if i % 2 == 0 { (&a, &ra) } else { (&b, &rb) };
        let o = l.check(r, &req("10.0.0.1")).await;
        assert!(!o.store_error, "{i}");
        if i < 2 {
            assert!(admitted(&o), "{i}: {:?}", o.refusal);
            held.push(o.into_guard());
        } else {
            assert!(conn_refused(&o), "{i}: {:?}", o.refusal);
        }
    }
    assert_eq!(
        zcard(&url, "weir:lc:c:10.0.0.1"),
        2,
        "a refusal takes nothing"
    );
    assert_eq!((a.shared_conn_leases(), b.shared_conn_leases()), (1, 1));
    // another key has its own slots
    let other = a.check(&ra, &req("10.0.0.2")).await;
    assert!(admitted(&other));
    drop(other);

    // B's slot given back: A gets it (the release is in the background: poll)
    drop(held.pop());
    held.push(
        until_admitted(&a, &ra, "10.0.0.1", Duration::from_secs(5))
            .await
            .into_guard(),
    );
    assert!(conn_refused(&b.check(&rb, &req("10.0.0.1")).await));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while zcard(&url, "weir:lc:c:10.0.0.1") + zcard(&url, "weir:lc:c:10.0.0.2") > 0 {
        assert!(Instant::now() < deadline, "slots not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((a.shared_conn_leases(), b.shared_conn_leases()), (0, 0));

    // both instances hammering one key: never more than 2 in progress at once. `now`
    // counts holders and is decremented before the guard is dropped, so it never exceeds
    // what Redis counts.
    let now = Arc::new(AtomicU64::new(0));
    let (peak, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (l, r) = if t % 2 == 0 {
            (a.clone(), ra.clone())
        } else {
            (b.clone(), rb.clone())
        };
        let (now, peak, total) = (now.clone(), peak.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                let o = l.check(&r, &req("10.0.0.9")).await;
                if admitted(&o) {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    drop(o);
                } else {
                    assert!(conn_refused(&o), "{:?}", o.refusal);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (peak, total) = (peak.load(Ordering::SeqCst), total.load(Ordering::SeqCst));
    eprintln!("8 tasks on 2 instances, 320 checks: {total} admitted, at most {peak} at once");
    assert!(peak <= 2, "{peak} in progress at once, max is 2");
    assert!(total >= 10, "{total}");

    // a dry-run zone takes its slot when it has one, and reports instead of refusing
    let rd = a.zones(&[], &["d".into()]).unwrap();
    let first = a.check(&rd, &req("10.0.0.3")).await;
    let second = b.check(&rd, &req("10.0.0.3")).await;
    assert!(admitted(&first) && first.dry_run.is_empty());
    assert!(admitted(&second) && second.dry_run.len() == 1, "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_s_slots_end_with_their_lease_and_live_ones_are_renewed() {
    let Some(_redis) = redis_or_skip() else {
        return;
    };
    let url = _redis.url();
    let lease = Duration::from_millis(300);
    let (live, rl) = limits(&url, "allow");
    connected(&live).await;

    // an instance with a short lease holds both slots past three leases: renewed
    let (short, rs) = limits_with(&url, "allow", lease);
    connected(&short).await;
    let mut guards = Vec::new();
    for _ in 0..2 {
        let o = short.check(&rs, &req("10.0.0.1")).await;
        assert!(admitted(&o));
        guards.push(o.into_guard());
    }
    let until = Instant::now() + lease * 4;
    while Instant::now() < until {
        assert!(
            conn_refused(&live.check(&rl, &req("10.0.0.1")).await),
            "renewed leases hold"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // it dies: its guards are never dropped (no release) and it stops renewing
    std::mem::forget(guards);
    drop(short);
    let died = Instant::now();
    assert!(conn_refused(&live.check(&rl, &req("10.0.0.1")).await));
    let o = until_admitted(&live, &rl, "10.0.0.1", Duration::from_secs(5)).await;
    let waited = died.elapsed();
    eprintln!("a dead instance's slots freed {waited:?} after it died (lease {lease:?})");
    assert!(waited <= lease + Duration::from_secs(1), "{waited:?}");
    drop(o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_on_store_error_and_back_shares_again() {
    let Some(mut redis) = redis_or_skip() else {
        return;
    };
    let (port, url) = (redis.port, redis.url());
    let (a, ra) = limits(&url, "allow");
    let (b, rb) = limits(&url, "deny");
    connected(&a).await;
    connected(&b).await;
    let before = a.check(&ra, &req("10.0.0.1")).await;
    assert!(admitted(&before));

    drop(redis);
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let oa = a.check(&ra, &req("10.0.0.1")).await;
        let ob = b.check(&rb, &req("10.0.0.1")).await;
        worst = worst.max(t.elapsed() / 2);
        assert!(oa.store_error && !oa.is_refused(), "allow admits: {i}");
        assert!(
            oa.into_guard().is_empty(),
            "allow admits without a slot: {i}"
        );
        let r = ob.refusal.as_ref().expect("deny refuses");
        assert!(ob.store_error && r.store_error, "{i}");
        assert_eq!(
            (r.class, r.status.as_u16(), &*r.zone),
            (ErrorClass::ConnLimited, 429, "c")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("Redis down: worst limit_conn check {worst:?} (timeout {TIMEOUT:?})");
    assert!(worst < TIMEOUT + Duration::from_millis(100), "{worst:?}");
    assert!(a.store_health().is_down() && b.store_health().is_down());
    assert_eq!(a.store_health().outages(), 1, "one outage");
    drop(before); // its release cannot reach Redis: no panic, no wait
    let mut m = String::new();
    b.render_metrics(&mut m);
    assert!(
        m.contains("weir_limit_conn_total{zone=\"c\",outcome=\"store_error\"} 20"),
        "{m}"
    );
    assert!(
        m.contains("weir_limits_store_fallback_total{verdict=\"deny\"} 20"),
        "{m}"
    );

    // back (empty: the slot held before the outage is gone with it): shared again
    redis = Redis::start(port);
    let mut held = vec![
        until_admitted(&a, &ra, "10.0.0.1", Duration::from_secs(15)).await,
        until_admitted(&b, &rb, "10.0.0.1", Duration::from_secs(15)).await,
    ];
    assert!(!a.store_health().is_down());
    assert!(conn_refused(&a.check(&ra, &req("10.0.0.1")).await));
    assert!(conn_refused(&b.check(&rb, &req("10.0.0.1")).await));
    held.clear();
    until_admitted(&b, &rb, "10.0.0.1", Duration::from_secs(5)).await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_warms_up_or_says_once_that_redis_does_not_answer() {
    if !have_redis() {
        eprintln!("SKIPPED: redis-server is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let (a, ra) = limits(&url, "allow");
    let t = Instant::now();
    assert!(!a.connect(Duration::from_millis(300)).await);
    assert!(
        t.elapsed() < Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
    assert!(a.store_health().is_down());
    assert_eq!(a.store_health().outages(), 1);
    let o = a.check(&ra, &req("10.0.0.1")).await;
    assert!(o.store_error && !o.is_refused());
    assert_eq!(a.store_health().outages(), 1, "the same outage");

    let _redis = Redis::start(port);
    drop(until_admitted(&a, &ra, "10.0.0.1", Duration::from_secs(15)).await);
    assert!(!a.store_health().is_down());

    // warmed up: the very first check of a fresh instance reaches Redis
    let (b, rb) = limits(&url, "deny");
    let t = Instant::now();
    assert!(b.connect(Duration::from_secs(1)).await);
    eprintln!("connected and scripts loaded in {:?}", t.elapsed());
    assert!(admitted(&b.check(&rb, &req("10.0.0.2")).await));
    assert_eq!(b.store_health().outages(), 0);
}
