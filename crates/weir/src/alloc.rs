//! The master's idle purge: jemalloc gives freed pages back to the system on its decay
//! schedule (dirty pages after about 10 s), but only when something calls into it, an
//! allocation or this. A master holding thousands of idle connections allocates nothing, so
//! the buffers of a burst of connections (hyper's, before they park) stayed resident until
//! the next busy moment. One thread asks jemalloc once a second to apply its schedule to
//! every arena (`arena.<all>.decay`): under load the allocations already do, so the call
//! finds little; while idle it is what returns the burst's pages.
//!
//! Not jemalloc's own background thread (`background_thread`): measured, it cost /hello
//! 6-8% of its throughput on two cores (bench/RESULTS.md), its wake-ups following the
//! allocation rate. The zygote and the workers are other (exec'd) processes and run none,
//! so the zygote's fork-safety check still sees one thread.
//!
//! Written here, with `unsafe`, because the control takes neither an old nor a new value
//! and tikv-jemalloc-ctl's safe calls always pass one.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the schedule is applied while idle.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// jemalloc's `MALLCTL_ARENAS_ALL`, as a control name: every arena.
const DECAY_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.decay";

/// Starts the purge thread (`weir serve` only). A failure to start it is not fatal: the
/// master then purges only inside its allocations.
pub fn purge_while_idle() {
    let started = std::thread::Builder::new()
        .name("weir-purge".into())
        .spawn(|| loop {
            std::thread::sleep(PURGE_EVERY);
            let _ = decay_all_arenas();
        });
    if let Err(e) = started {
        eprintln!("weir: the memory purge thread did not start ({e}); freed memory returns only while serving");
    }
}

/// Applies jemalloc's decay schedule to every arena: jemalloc's result, 0 when it took
/// the control (the thread has nothing to do with a failure but try again later).
fn decay_all_arenas() -> std::ffi::c_int {
    // SAFETY: a NUL-terminated control name, and no old or new value (null pointers and a
    // zero length), which is what `arena.<i>.decay` takes; it only locks and purges.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            DECAY_ALL_ARENAS.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_takes_the_decay_control() {
        let r = decay_all_arenas();
        assert_eq!(r, 0, "arena.4096.decay refused: error {r}");
    }
}
