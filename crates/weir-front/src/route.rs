//! `[[route]]`: per path-prefix limits. A route with `max_concurrency` lets at most that
//! many of its requests hold workers (or upstream connections); the rest wait in the
//! admission queue (a `weir_queue::Slots`: the queue's timeout and the request's deadline;
//! they count against the backend queue's bound, see `dispatch`) without blocking other
//! routes. This is what keeps a slow endpoint from taking every worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_config::Config;
use weir_queue::{QueuePolicy, QueueRefusal, ServiceTime, SlotPermit, Slots};

/// One route.
#[derive(Debug)]
pub struct Route {
    /// The prefix.
    pub path: String,
    /// Its concurrency limit.
    pub limit: Option<Arc<Slots>>,
    /// Its request timeout.
    pub request_timeout: Option<Duration>,
    /// Its harakiri.
    pub harakiri: Option<Duration>,
    /// Its `limit_req` and `limit_conn` zones, and its `limit_rate`.
    pub limits: weir_limits::RouteLimits,
    /// The typical time its requests hold a worker: what the pool judges a wait behind
    /// one of them by (prefetch offers, see weir-pool's `offer_policy`).
    pub service: Arc<ServiceTime>,
    /// Its `[route.cache]`, when its answers are cached.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    /// Its `buffering` (default true): streamed answers go through the spool.
    pub buffering: bool,
}

/// The route table, longest prefix first, plus the defaults for everything else.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    default: Route,
}

impl Routes {
    /// From the config; `limits` has the zones the routes name.
    pub fn new(
        config: &Config,
        limits: &weir_limits::Limits,
    ) -> Result<Routes, weir_limits::LimitsError> {
        let harakiri = config.app.harakiri.map(|s| s.as_duration());
        let timeout = config.server.request_timeout.map(|s| s.as_duration());
        // A route's waiters wait as long as the queue's; its bound is the backend queue's
        // (a waiter holds a place there), and CoDel sheds in the backend's queue.
        let policy = QueuePolicy {
            max_size: usize::MAX,
            timeout: config.queue.timeout.as_duration(),
            codel: None,
            fair: config.queue.fair_key.is_some(),
            per_key_max: None,
            admission: config.queue.admission,
        };
        let mut routes: Vec<Route> = config
            .route
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Route {
                    path: r.path.clone(),
                    limit: r.max_concurrency.map(|n| Slots::new(n, policy)),
                    request_timeout: r.request_timeout.map(|s| s.as_duration()).or(timeout),
                    harakiri: r.harakiri.map(|s| s.as_duration()).or(harakiri),
                    service: Arc::default(),
                    limits: limits.route(r)?,
                    cache: match &r.cache {
                        Some(c) => Some(Arc::new(crate::cache::RouteCache::new(i, c)?)),
                        None => None,
                    },
                    buffering: r.buffering.unwrap_or(true),
                })
            })
            .collect::<Result<_, weir_limits::LimitsError>>()?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Ok(Routes {
            routes,
            default: Route {
                path: "/".into(),
                limit: None,
                request_timeout: timeout,
                harakiri,
                service: Arc::default(),
                limits: weir_limits::RouteLimits::default(),
                cache: None,
                buffering: true,
            },
        })
    }

    /// The configured routes, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The route for a path: the longest prefix that matches at a segment boundary
    /// (`/api` matches `/api` and `/api/x`, not `/apix`), else the defaults.
    pub fn find(&self, path: &str) -> &Route {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.path, path))
            .unwrap_or(&self.default)
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    p.is_empty()
        || path == p
        || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
}

impl Route {
    /// Would a request wait for a slot now?
    pub fn must_wait(&self) -> bool {
        self.limit.as_ref().is_some_and(|s| s.available() == 0)
    }

    /// Takes one of the route's slots (`None`: the route has no limit), waiting up to the
    /// queue timeout or the deadline.
    pub async fn admit(
        &self,
        deadline: Option<Instant>,
        fair_key: u64,
    ) -> Result<Option<SlotPermit>, QueueRefusal> {
        match &self.limit {
            None => Ok(None),
            Some(slots) => slots.acquire(deadline, fair_key).await.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_at_segment_boundary() {
        let c = weir_config::Config::parse(
            "[app]\nworkers = 4\n[[route]]\npath = \"/api\"\nmax_concurrency = 1\n[[route]]\npath = \"/api/slow\"\nmax_concurrency = 2\n",
            std::path::Path::new("t"),
        )
        .unwrap();
        let r = Routes::new(&c, &weir_limits::Limits::from_config(&c).unwrap()).unwrap();
        assert_eq!(r.find("/api/slow/x").path, "/api/slow");
        assert_eq!(r.find("/api/x").path, "/api");
        assert_eq!(r.find("/api").path, "/api");
        assert_eq!(r.find("/apix").path, "/");
        assert_eq!(r.find("/other").path, "/");
    }

    fn routes() -> Routes {
        let c = weir_config::Config::parse(
            "[app]\nworkers = 4\n[[route]]\npath = \"/slow\"\nmax_concurrency = 1\n",
            std::path::Path::new("t"),
        )
        .unwrap();
        Routes::new(&c, &weir_limits::Limits::from_config(&c).unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_route_makes_its_request_wait_for_a_slot_up_to_the_queue_timeout() {
        let r = routes();
        let slow = r.find("/slow");
        let held = slow.admit(None, 0).await.unwrap();
        assert!(held.is_some() && slow.must_wait());
        let t0 = tokio::time::Instant::now();
        let w = slow.admit(None, 0).await;
        assert!(matches!(w, Err(QueueRefusal::Timeout(d)) if d == Duration::from_secs(10)));
        assert!(t0.elapsed() >= Duration::from_secs(10));
        assert!(t0.elapsed() <= Duration::from_millis(10_001));
        // Another route is not held up by it.
        assert!(r.find("/fast").admit(None, 0).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_frees_goes_to_the_waiter_and_a_deadline_ends_the_wait_sooner() {
        let r = routes();
        let slow = r.find("/slow");
        let held = slow.admit(None, 0).await.unwrap();
        let freed_at = Duration::from_secs(3);
        let waiter = async {
            let t0 = tokio::time::Instant::now();
            let p = slow.admit(None, 0).await;
            (p, t0.elapsed())
        };
        let release = async {
            tokio::time::sleep(freed_at).await;
            drop(held);
        };
        let ((p, waited), ()) = tokio::join!(waiter, release);
        assert!(p.unwrap().is_some());
        assert_eq!(waited, freed_at);
        // Held again; a request whose deadline is in 2 s waits 2 s, not 10.
        let _again = p_hold(slow).await;
        let t0 = tokio::time::Instant::now();
        let deadline = Instant::now() + Duration::from_secs(2);
        let w = slow.admit(Some(deadline), 0).await;
        assert!(matches!(w, Err(QueueRefusal::Deadline)));
        assert!(t0.elapsed() <= Duration::from_millis(2001));
        // One already past its deadline is refused at once.
        let w = slow.admit(Some(Instant::now()), 0).await;
        assert!(matches!(w, Err(QueueRefusal::Deadline)));
    }

    async fn p_hold(route: &Route) -> SlotPermit {
        route
            .admit(None, 0)
            .await
            .unwrap()
            .expect("the route has a limit and a free slot")
    }
}
