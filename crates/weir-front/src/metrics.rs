//! Prometheus metrics, written by hand: a few counters and fixed-bucket histograms on
//! atomics cost nothing on the request path and need no registry crate; the text format
//! is simple and stable (exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use weir_errors::ErrorClass;

use weir_pool::RestartReason;

use crate::backend::Dispatch;
use crate::front::Backend;

/// Bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Everything weir counts.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(u16, Option<ErrorClass>), u64>>,
    duration: Histogram,
    queue_wait: Histogram,
    /// Requests handed to a worker or the upstream (a cache hit is not one).
    pub backend_requests: AtomicU64,
}

impl Metrics {
    /// One finished request: its status, weir's error class (`None` when the app answered),
    /// total time and time queued.
    pub fn record(
        &self,
        status: u16,
        class: Option<ErrorClass>,
        total: Duration,
        queued: Duration,
    ) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((status, class))
            .or_default() += 1;
        self.duration.observe(total);
        self.queue_wait.observe(queued);
    }

    /// The Prometheus text.
    pub fn render(&self, backend: &Backend) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP weir_requests_total Requests answered, by status and weir error class (\"\" when the app answered).\n# TYPE weir_requests_total counter\n");
        for ((status, class), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let class = class.map_or("", ErrorClass::as_str);
            let _ = writeln!(
                out,
                "weir_requests_total{{status=\"{status}\",class=\"{class}\"}} {n}"
            );
        }
        self.duration.render(
            &mut out,
            "weir_request_duration_seconds",
            "Time from arrival to the response head.",
        );
        self.queue_wait.render(
            &mut out,
            "weir_queue_wait_seconds",
            "Time spent waiting for a worker.",
        );
        let _ = writeln!(
            out,
            "# HELP weir_backend_requests_total Requests handed to a worker or the upstream (answers from the cache are not).\n# TYPE weir_backend_requests_total counter\nweir_backend_requests_total {}",
            self.backend_requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_queue_depth Requests waiting now: for a worker (or an upstream connection), for a route's slot, and offered behind a busy worker but not yet started.\n# TYPE weir_queue_depth gauge\nweir_queue_depth {}",
            backend.queue_depth()
        );
        let pool = match backend {
            Backend::Workers(p) => p,
            Backend::Upstream(u) => {
                render_queue_stats(&mut out, u.queue_stats());
                return out;
            }
        };
        // Rate overload is judged at arrivals and departures; a quiet pool has neither.
        pool.judge_demand();
        let st = pool.stats();
        let _ = writeln!(
            out,
            "# HELP weir_workers Worker processes by state.\n# TYPE weir_workers gauge\nweir_workers{{state=\"idle\"}} {}\nweir_workers{{state=\"busy\"}} {}",
            st.idle.load(Ordering::Relaxed),
            st.busy.load(Ordering::Relaxed)
        );
        out.push_str("# HELP weir_worker_restarts_total Workers replaced, by reason.\n# TYPE weir_worker_restarts_total counter\n");
        for r in RestartReason::ALL {
            let _ = writeln!(
                out,
                "weir_worker_restarts_total{{reason=\"{}\"}} {}",
                r.as_str(),
                st.restarts[r as usize].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP weir_prefetch_total Requests written behind a busy worker's current one ([app] prefetch), and of those, taken back before they started.\n# TYPE weir_prefetch_total counter\nweir_prefetch_total{{outcome=\"offered\"}} {}\nweir_prefetch_total{{outcome=\"revoked\"}} {}",
            st.prefetch_offered.load(Ordering::Relaxed),
            st.prefetch_revoked.load(Ordering::Relaxed)
        );
        render_queue_stats(&mut out, &st.queue);
        out
    }
}

/// The queue's decisions (weir-queue's `QueueStats`): refusals at arrival and after
/// waiting, and the predicted against the actual wait of those that waited.
fn render_queue_stats(out: &mut String, q: &weir_queue::QueueStats) {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(
        out,
        "# HELP weir_queue_refused_total Requests the queue refused, by when: at arrival (their expected wait was beyond their budget, [queue] admission), shed after waiting past their route's delay target (CoDel), or expired (the queue timeout or their deadline).
# TYPE weir_queue_refused_total counter
weir_queue_refused_total{{when=\"arrival\"}} {}
weir_queue_refused_total{{when=\"shed\"}} {}
weir_queue_refused_total{{when=\"expired\"}} {}",
        n(&q.refused_at_arrival),
        n(&q.refused_shed),
        n(&q.refused_expired)
    );
    let waited = n(&q.waited);
    let _ = writeln!(
        out,
        "# HELP weir_queue_predicted_wait_seconds Predicted waits (at arrival) of the requests that waited for a worker (or an upstream connection) and got one.
# TYPE weir_queue_predicted_wait_seconds summary
weir_queue_predicted_wait_seconds_sum {}
weir_queue_predicted_wait_seconds_count {waited}",
        secs(&q.predicted_us)
    );
    let _ = writeln!(
        out,
        "# HELP weir_queue_actual_wait_seconds Actual waits of the same requests (compare with weir_queue_predicted_wait_seconds).
# TYPE weir_queue_actual_wait_seconds summary
weir_queue_actual_wait_seconds_sum {}
weir_queue_actual_wait_seconds_count {waited}",
        secs(&q.actual_us)
    );
    let _ = writeln!(
        out,
        "# HELP weir_queue_underestimated_total Of those, the ones that waited more than twice their prediction plus 20 ms (an estimate badly low).
# TYPE weir_queue_underestimated_total counter
weir_queue_underestimated_total {}",
        n(&q.underestimated)
    );
    let _ = writeln!(
        out,
        "# HELP weir_queue_rate_overloaded Whether new demand outruns the workers now (1: arrivals are held to the overload target, about one request per worker ahead).
# TYPE weir_queue_rate_overloaded gauge
weir_queue_rate_overloaded {}
# HELP weir_queue_rate_overloads_total Times new demand began to outrun the workers.
# TYPE weir_queue_rate_overloads_total counter
weir_queue_rate_overloads_total {}",
        n(&q.rate_overloaded),
        n(&q.rate_overloads)
    );
}
