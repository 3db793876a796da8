//! Generations and shutdown: a reload makes a new generation the one that serves (the old
//! one's idle workers retire at once, busy ones when their request ends); a failed reload
//! abandons its generation; a stop retires everyone and takes no more work. See the
//! supervisor for how generations start.

use std::sync::atomic::Ordering;

use super::{Pool, State};
use crate::error::DispatchError;
use crate::slot::{RestartReason, WorkerHandle};

impl Pool {
    pub(super) fn retiring(&self, st: &State, generation: u64) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
            || generation < self.inner.generation.load(Ordering::Relaxed)
            || st.cancelled.contains(&generation)
    }

    /// Makes `generation` the one that serves; idle workers of older ones retire now,
    /// busy ones when their request ends.
    pub(crate) fn switch_generation(&self, generation: u64) {
        self.inner.generation.store(generation, Ordering::Relaxed);
        self.retire_idle(|w| w.generation < generation, RestartReason::Reload);
    }

    /// Abandons a generation whose reload failed.
    pub(crate) fn cancel_generation(&self, generation: u64) {
        self.state().cancelled.push(generation);
        self.retire_idle(|w| w.generation == generation, RestartReason::Reload);
    }

    pub(crate) fn current_generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    pub(crate) fn is_cancelled(&self, generation: u64) -> bool {
        self.state().cancelled.contains(&generation)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
    }

    /// Stops taking work: queued requests get [`DispatchError::ShuttingDown`], idle
    /// workers retire, busy ones retire when done.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let waiters = self.state().queue.take_all();
        for w in waiters {
            // Submitters still waiting hear ShuttingDown when their sender drops; a taken
            // back offer's submitter waits for a head instead.
            if w.tx.is_none() {
                let _ = w.job.reply.send(Err(DispatchError::ShuttingDown));
            }
        }
        self.retire_idle(|_| true, RestartReason::Shutdown);
    }

    pub(super) fn retire_idle(&self, which: impl Fn(&WorkerHandle) -> bool, reason: RestartReason) {
        let leaving: Vec<WorkerHandle> = {
            let mut st = self.state();
            let (leaving, staying) = std::mem::take(&mut st.idle).into_iter().partition(&which);
            st.idle = staying;
            self.inner
                .stats
                .idle
                .store(st.idle.len(), Ordering::Relaxed);
            leaving
        };
        for w in leaving {
            w.retire(reason);
        }
    }
}
