//! `[[route]]`: per path-prefix limits. A route with `max_concurrency` lets at most that
//! many of its requests hold workers; the rest wait (bounded by the queue's timeout and
//! the request's deadline) without blocking other routes. This is what keeps a slow
//! endpoint from taking every worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_config::Config;
use weir_pool::ServiceTime;

/// One route.
#[derive(Debug)]
pub struct Route {
    /// The prefix.
    pub path: String,
    /// Its concurrency limit.
    pub limit: Option<Arc<Semaphore>>,
    /// Its request timeout.
    pub request_timeout: Option<Duration>,
    /// Its harakiri.
    pub harakiri: Option<Duration>,
    /// The typical time its requests hold a worker: what the pool judges a wait behind
    /// one of them by (prefetch offers, see weir-pool's `offer_policy`).
    pub service: Arc<ServiceTime>,
}

/// The route table, longest prefix first, plus the defaults for everything else.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    default: Route,
}

/// Why a route permit was not had.
#[derive(Debug, Clone, Copy)]
pub enum RouteWait {
    /// Waited the queue timeout.
    Timeout(Duration),
    /// The request's deadline came first.
    Deadline,
}

impl Routes {
    /// From the config.
    pub fn new(config: &Config) -> Routes {
        let harakiri = config.app.harakiri.map(|s| s.as_duration());
        let timeout = config.server.request_timeout.map(|s| s.as_duration());
        let mut routes: Vec<Route> = config
            .route
            .iter()
            .map(|r| Route {
                path: r.path.clone(),
                limit: r.max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
                request_timeout: r.request_timeout.map(|s| s.as_duration()).or(timeout),
                harakiri: r.harakiri.map(|s| s.as_duration()).or(harakiri),
                service: Arc::default(),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Routes {
            routes,
            default: Route {
                path: "/".into(),
                limit: None,
                request_timeout: timeout,
                harakiri,
                service: Arc::default(),
            },
        }
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
        self.limit
            .as_ref()
            .is_some_and(|s| s.available_permits() == 0)
    }

    /// Takes one of the route's slots, waiting up to `wait` or the deadline.
    pub async fn admit(
        &self,
        wait: Duration,
        deadline: Option<Instant>,
    ) -> Result<Option<OwnedSemaphorePermit>, RouteWait> {
        let Some(sem) = &self.limit else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let now = Instant::now();
        let (wait, by_deadline) = match deadline {
            Some(d) if d <= now => return Err(RouteWait::Deadline),
            Some(d) if d - now < wait => (d - now, true),
            _ => (wait, false),
        };
        match tokio::time::timeout(wait, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) if by_deadline => Err(RouteWait::Deadline),
            Ok(Err(_)) | Err(_) => Err(RouteWait::Timeout(wait)),
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
        let r = Routes::new(&c);
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
        Routes::new(&c)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_route_makes_its_request_wait_for_a_slot_up_to_the_queue_timeout() {
        let r = routes();
        let slow = r.find("/slow");
        let held = slow.admit(Duration::from_secs(10), None).await.unwrap();
        assert!(held.is_some() && slow.must_wait());
        let t0 = tokio::time::Instant::now();
        let w = slow.admit(Duration::from_secs(10), None).await;
        assert!(matches!(w, Err(RouteWait::Timeout(d)) if d == Duration::from_secs(10)));
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        // Another route is not held up by it.
        assert!(r
            .find("/fast")
            .admit(Duration::ZERO, None)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_frees_goes_to_the_waiter_and_a_deadline_ends_the_wait_sooner() {
        let r = routes();
        let slow = r.find("/slow");
        let held = slow.admit(Duration::from_secs(10), None).await.unwrap();
        let freed_at = Duration::from_secs(3);
        let waiter = async {
            let t0 = tokio::time::Instant::now();
            let p = slow.admit(Duration::from_secs(10), None).await;
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
        let w = slow.admit(Duration::from_secs(10), Some(deadline)).await;
        assert!(matches!(w, Err(RouteWait::Deadline)));
        assert!(t0.elapsed() <= Duration::from_secs(2));
        // One already past its deadline is refused at once.
        let w = slow
            .admit(Duration::from_secs(10), Some(Instant::now()))
            .await;
        assert!(matches!(w, Err(RouteWait::Deadline)));
    }

    async fn p_hold(route: &Route) -> OwnedSemaphorePermit {
        route
            .admit(Duration::ZERO, None)
            .await
            .unwrap()
            .expect("the route has a limit and a free slot")
    }
}
