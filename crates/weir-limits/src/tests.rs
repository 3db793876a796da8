//! The facade, on the memory store and tokio's paused clock.

use super::*;
use std::path::Path;

fn limits(toml: &str) -> (Limits, Config) {
    let mut c = Config::parse(
        &format!("[app]\nmodule = \"a:b\"\n{toml}"),
        Path::new("t.toml"),
    )
    .unwrap();
    c.apply_defaults();
    c.validate().unwrap();
    (Limits::from_config(&c).unwrap(), c)
}

fn req(ip: &str) -> SimpleRequest {
    SimpleRequest {
        remote_addr: ip.into(),
        path: "/".into(),
        scheme: "http".into(),
        host: "h".into(),
        method: "GET".into(),
        ..Default::default()
    }
}

fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    o.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.to_str().ok())
}

const ISSUE_14: &str = r#"
[limit_req.per_ip]
key = "$remote_addr"
rate = "10r/s"
burst = 2
nodelay = true
[limit_conn.per_ip]
key = "$remote_addr"
max = 1
status = 503
[[route]]
path = "/"
limit_req = ["per_ip"]
limit_conn = ["per_ip"]
limit_rate = "100k"
limit_rate_after = "1m"
"#;

#[tokio::test(start_paused = true)]
async fn refuses_with_status_retry_after_and_headers() {
    let (l, c) = limits(ISSUE_14);
    let route = l.route(&c.route[0]).unwrap();
    assert_eq!(route.limit_rate(), (100 * 1024, 1 << 20));
    let mut held = Vec::new();
    for i in 0..3 {
        let o = l.check(&route, &req(&format!("10.0.0.{i}"))).await;
        assert!(!o.is_refused());
        held.push(o.into_guard());
    }
    // one key: first free, then burst 2, then refused
    let a = req("10.0.0.9");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let o = l.decide(&route, &a).await;
        statuses.push(o.refusal.as_ref().map(|r| r.status.as_u16()));
        if let Some(r) = &o.refusal {
            assert_eq!(r.class, ErrorClass::RateLimited);
            assert_eq!(&*r.zone, "per_ip");
            assert_eq!(r.retry_after_secs, Some(1));
            assert_eq!(header(&o, "retry-after"), Some("1"));
            assert_eq!(header(&o, "ratelimit-policy"), Some("\"per_ip\";q=10;w=1"));
            assert_eq!(header(&o, "ratelimit"), Some("\"per_ip\";r=0;t=1"));
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        } else {
            assert!(
                header(&o, "ratelimit").is_none(),
                "not built for an admitted request"
            );
        }
    }
    assert_eq!(statuses, [None, None, None, Some(429)]);
    // limit_conn: one in progress per key; its status is the zone's 503
    let b = req("10.0.0.10");
    let first = l.check(&route, &b).await;
    assert!(!first.is_refused());
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = l.check(&route, &b).await;
    let r = second.refusal.as_ref().unwrap();
    assert_eq!(
        (r.class, r.status.as_u16(), r.retry_after_secs),
        (ErrorClass::ConnLimited, 503, None)
    );
    drop(first.into_guard());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        !l.check(&route, &b).await.is_refused(),
        "slot released on drop"
    );
    let mut m = String::new();
    l.render_metrics(&mut m);
    assert!(
        m.contains("weir_limit_req_total{zone=\"per_ip\",outcome=\"refused\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("weir_limit_conn_total{zone=\"per_ip\",outcome=\"refused\"} 1"),
        "{m}"
    );
    assert!(m.contains("weir_limit_req_keys{zone=\"per_ip\"} 5"), "{m}");
}

#[tokio::test(start_paused = true)]
async fn delay_is_waited_out_inside_check() {
    let (l, _) = limits("[limit_req.z]\nkey = \"$remote_addr\"\nrate = \"10r/s\"\nburst = 5\n");
    let route = l.zones(&["z".into()], &[]).unwrap();
    let t0 = tokio::time::Instant::now();
    let o = l.check(&route, &req("a")).await;
    assert!(o.delayed.is_none());
    let o = l.check(&route, &req("a")).await;
    assert_eq!(
        o.delayed.as_ref().map(|d| d.1),
        Some(Duration::from_millis(100))
    );
    assert_eq!(o.zone(), Some("z"));
    // the first was free; the second waited 100 ms (in paused time)
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn dry_run_reports_but_admits_and_empty_keys_are_not_limited() {
    let (l, _) = limits(
        "[limit_req.d]\nkey = \"$remote_addr\"\nrate = \"1r/s\"\ndry_run = true\n\
         [limit_req.e]\nkey = \"$http_x_api_key\"\nrate = \"1r/s\"\nnodelay = true\n",
    );
    let route = l.zones(&["d".into(), "e".into()], &[]).unwrap();
    let r = req("a"); // no x-api-key: zone e does not apply
    for i in 0..5 {
        let o = l.check(&route, &r).await;
        assert!(!o.is_refused() && o.delayed.is_none(), "{i}");
        if i > 0 {
            assert_eq!(
                o.dry_run,
                [DryRun {
                    zone: "d".into(),
                    would: Verdict::Refuse {
                        retry_after: Duration::from_secs(1)
                    }
                }]
            );
        }
    }
    let c = l.counters();
    let get = |zone: &str, o: &str| c.iter().find(|x| &*x.1 == zone && x.2 == o).unwrap().3;
    assert_eq!(
        (
            get("d", "admitted"),
            get("d", "dry_run_refused"),
            get("e", "admitted")
        ),
        (1, 4, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn two_zones_on_one_request_follow_nginx() {
    // per key 10r/s burst 1 nodelay, and a global zone (literal key) 2r/s burst 0 nodelay
    let (l, _) = limits(
        "[limit_req.ip]\nkey = \"$remote_addr\"\nrate = \"10r/s\"\nburst = 1\nnodelay = true\n\
         [limit_req.all]\nkey = \"all\"\nrate = \"2r/s\"\nnodelay = true\n",
    );
    let route = l.zones(&["ip".into(), "all".into()], &[]).unwrap();
    assert!(!l.check(&route, &req("a")).await.is_refused());
    let o = l.check(&route, &req("b")).await;
    assert_eq!(o.refusal.as_ref().map(|r| &*r.zone), Some("all"));
    // refused by the last zone: "b"'s bucket was created uncharged, so b is still free
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(!l.check(&route, &req("b")).await.is_refused());
}

#[tokio::test(start_paused = true)]
async fn memory_store_needs_no_connection_and_its_guards_hold_slots() {
    let (l, c) = limits(ISSUE_14);
    assert!(
        l.connect(Duration::from_secs(1)).await,
        "memory: nothing to connect"
    );
    assert!(!l.store_health().is_down());
    let route = l.zones(&[], &["per_ip".into()]).unwrap();
    let g = l.check(&route, &req("a")).await.into_guard();
    assert!(!g.is_empty());
    assert!(l.check(&route, &req("a")).await.is_refused());
    drop(g);
    assert!(!l.check(&route, &req("a")).await.is_refused());
    assert_eq!(l.shared_conn_leases(), 0);
    let none = l.check(&l.route(&c.route[0]).unwrap(), &req("")).await;
    assert!(none.into_guard().is_empty(), "an empty key takes no slot");
}
