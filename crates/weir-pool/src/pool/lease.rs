//! A worker taken for one request ([`Lease`]): what returns a worker whatever way the
//! request ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::offers::Requeued;
use super::{Pool, Submission};
use crate::offer_policy::ServiceTime;
use crate::request::{ClaimPending, HeadReply, WorkerRequest};
use crate::slot::{RestartReason, WorkerHandle};

/// An idle worker taken for one request. Dropping a clean lease returns the worker to
/// the pool; dropping one marked dirty (mid-request) kills the worker, since its socket
/// is no longer at a request boundary.
#[derive(Debug)]
pub struct Lease {
    pub(crate) worker: Option<WorkerHandle>,
    pub(crate) pool: Pool,
    dirty: Option<RestartReason>,
    /// The worker's current request, when it turned out not started (see
    /// [`Lease::requeue_first`]).
    first: Option<Requeued>,
    /// The typical time of the request's route, updated when the lease drops.
    pub(super) service: Option<Arc<ServiceTime>>,
    /// When the lease was handed out (for the time-in-worker figure).
    pub started: Instant,
}

impl Lease {
    pub(super) fn new(worker: WorkerHandle, pool: Pool) -> Lease {
        Lease {
            worker: Some(worker),
            pool,
            dirty: None,
            first: None,
            service: None,
            started: Instant::now(),
        }
    }

    pub(crate) fn worker(&mut self) -> &mut WorkerHandle {
        self.worker
            .as_mut()
            .expect("a lease holds its worker until dropped")
    }

    /// Marks the worker as not reusable: it will be killed when the lease drops.
    pub(crate) fn poison(&mut self, reason: RestartReason) {
        self.dirty = Some(reason);
    }

    /// The worker's current request, an offer, turned out not started when the worker
    /// ended (its claim was taken back: `claim_pending`): when the lease drops, it is served
    /// elsewhere, ahead of the requests offered behind it.
    pub(crate) fn requeue_first(
        &mut self,
        claim_pending: ClaimPending,
        req: WorkerRequest,
        reply: HeadReply,
    ) {
        self.first = Some(Requeued {
            key: claim_pending.key,
            since: claim_pending.since,
            job: Submission {
                req,
                reply,
                expires: claim_pending.expires,
                offered: true,
            },
        });
    }

    /// The worker's process id.
    pub fn pid(&mut self) -> u32 {
        self.worker().pid
    }

    /// The worker's slot number.
    pub fn slot(&mut self) -> usize {
        self.worker().slot
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.pool
                .record_worker_time(self.started.elapsed(), self.service.as_deref());
            match self.dirty {
                Some(reason) => {
                    self.pool.inner.stats.busy.fetch_sub(1, Ordering::Relaxed);
                    let holder = worker.id;
                    worker.kill(reason);
                    // Its request departs, unless it never started and goes back to the
                    // queue (it departs once served).
                    if self.first.is_none() {
                        self.pool.depart_killed();
                    }
                    self.pool.requeue_offer(holder, self.first.take());
                }
                None => self.pool.release(worker),
            }
        }
    }
}
