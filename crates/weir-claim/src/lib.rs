//! The claim word of a prefetched request (`[app] prefetch`).
//!
//! When every worker is busy, the master may write the next queued request into a busy
//! worker's socket right behind the one it is running ("offers" it), so the worker goes
//! from one request to the next without sleeping. Bytes written to a socket cannot be
//! taken back, so whether the offered request runs there is decided by this word instead:
//! a page of shared memory (a `memfd` the worker creates and passes to the master with its
//! READY) holding [`WORDS`] `u64` words, `seq << 2 | state`; offer `seq` uses word
//! `seq % WORDS`.
//!
//! - The master [`offers`](ClaimWords::offer) request `seq` (state OFFERED) before writing it.
//! - The worker, on reading the request's CLAIM packet, [`takes`](ClaimWords::take) it:
//!   OFFERED -> TAKEN for that `seq`, and runs it only if that swap won.
//! - The master [`revokes`](ClaimWords::revoke) it (OFFERED -> REVOKED) when it wants the
//!   request elsewhere (another worker freed up first, this one died or was killed, the
//!   client left); only if that swap won does it run the request elsewhere. The worker
//!   then skips the request's bytes.
//!
//! Exactly one of the two swaps can win, so a request is never run twice and never lost.
//! The `seq` in the word keeps an old CLAIM from matching a newer offer.
//!
//! Why several words: the master tops up a worker's offers as soon as it has read the
//! answer of the request before the first offered one, which may be before the worker has
//! swapped the claim of that first one; with one word the new offer would overwrite it and
//! the worker would skip a request the master counts as running. The master offers to a
//! worker only when that worker starts a new request, and keeps at most `WORDS - 1` offers
//! outstanding on it, so by the time an offer reuses a word, the one that had it (a
//! request before the one now starting, whose answer has been read) has been settled.
//! Sequence numbers are per worker.
//!
//! Written over `libc` by hand: memfd + mmap of one page is four calls, and the crates that
//! wrap shared memory bring far more than that. All `unsafe` of the feature is in this
//! file, each block with its `// SAFETY:` line.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

const OFFERED: u64 = 1;
const TAKEN: u64 = 2;
const REVOKED: u64 = 3;
/// Bytes mapped: one page is the smallest mapping anyway.
const LEN: usize = 4096;
/// Claim words per worker: a worker may have up to `WORDS - 1` offers outstanding.
pub const WORDS: u64 = 8;

/// The claim words of one worker in a shared mapping (the master's view and the worker's
/// are two mappings of the same memfd).
#[derive(Debug)]
pub struct ClaimWords {
    word: NonNull<AtomicU64>,
    fd: OwnedFd,
}

// SAFETY: the mapping is only ever accessed through the AtomicU64, which is Sync; the
// pointer stays valid until Drop unmaps it, and Drop needs &mut self.
unsafe impl Send for ClaimWords {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for ClaimWords {}

impl ClaimWords {
    /// A new word (the worker's side), zero: nothing offered.
    pub fn create() -> io::Result<ClaimWords> {
        // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"weir-claim".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just created fd for us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), LEN as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd)
    }

    /// Maps a word created by [`ClaimWords::create`] in another process (the master's
    /// side), from the descriptor that process passed. A descriptor of the wrong kind or
    /// size is an `InvalidInput` error.
    pub fn open(fd: OwnedFd) -> io::Result<ClaimWords> {
        // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into st, which lives for the call.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_mode & libc::S_IFMT) != libc::S_IFREG || (st.st_size as usize) < LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the worker's claim descriptor is not a one-page memory file",
            ));
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<ClaimWords> {
        // SAFETY: a fresh shared read-write mapping of LEN bytes of a file we own that is
        // at least LEN long; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let word = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(ClaimWords { word, fd })
    }

    /// The word of offer `seq`.
    fn atomic(&self, seq: u64) -> &AtomicU64 {
        let i = (seq % WORDS) as usize;
        // SAFETY: word points at the start of a live, page-aligned (so 8-aligned) shared
        // mapping of LEN = 4096 >= 8 * WORDS bytes, unmapped only by Drop, so word i is in
        // it; all access to the words in either process is atomic.
        unsafe { &*self.word.as_ptr().add(i) }
    }

    /// The descriptor to pass to the other process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Master: request `seq` is offered (call before writing it to the worker).
    pub fn offer(&self, seq: u64) {
        self.atomic(seq)
            .store(seq << 2 | OFFERED, Ordering::Release);
    }

    /// Worker: starts request `seq` if it is still offered. `false`: revoked (skip it).
    pub fn take(&self, seq: u64) -> bool {
        self.swap(seq, TAKEN)
    }

    /// Master: takes back request `seq` if the worker has not started it. `false`: the
    /// worker took it first (it runs there).
    pub fn revoke(&self, seq: u64) -> bool {
        self.swap(seq, REVOKED)
    }

    /// Worker: whether request `seq` was revoked (a look-ahead that changes nothing: the
    /// worker uses it to see past a revoked request to a CANCEL behind it).
    pub fn is_revoked(&self, seq: u64) -> bool {
        self.atomic(seq).load(Ordering::Acquire) == seq << 2 | REVOKED
    }

    /// Master: whether request `seq` is still offered, neither started nor taken back (a
    /// look that changes nothing: the queue's depth counts such requests as waiting).
    pub fn is_offered(&self, seq: u64) -> bool {
        self.atomic(seq).load(Ordering::Acquire) == seq << 2 | OFFERED
    }

    fn swap(&self, seq: u64, to: u64) -> bool {
        self.atomic(seq)
            .compare_exchange(
                seq << 2 | OFFERED,
                seq << 2 | to,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of a CLAIM's start-by time, the same in
/// every process of the machine (Rust's `Instant` reads it too, but has no absolute value
/// to pass to another process).
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is a valid value for clock_gettime to overwrite.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes into ts, which lives for the call; CLOCK_MONOTONIC is
    // always available on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The CLOCK_MONOTONIC time (see [`monotonic_ns`]) of `at`.
pub fn monotonic_ns_at(at: std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    let base = monotonic_ns();
    if at >= now {
        base.saturating_add((at - now).as_nanos().min(u128::from(u64::MAX)) as u64)
    } else {
        base.saturating_sub((now - at).as_nanos().min(u128::from(u64::MAX)) as u64)
    }
}

impl Drop for ClaimWords {
    fn drop(&mut self) {
        // SAFETY: word is the start of our LEN-byte mapping, and nothing can use it after
        // drop (the only access is through &self).
        unsafe {
            libc::munmap(self.word.as_ptr().cast(), LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (ClaimWords, ClaimWords) {
        let worker = ClaimWords::create().unwrap();
        let fd = worker.fd().try_clone_to_owned().unwrap();
        (ClaimWords::open(fd).unwrap(), worker)
    }

    #[test]
    fn taken_once_then_not_revocable() {
        let (master, worker) = pair();
        master.offer(7);
        assert!(worker.take(7));
        assert!(!master.revoke(7));
        assert!(!worker.take(7));
    }

    #[test]
    fn revoked_once_then_not_takable() {
        let (master, worker) = pair();
        master.offer(8);
        assert!(!worker.is_revoked(8));
        assert!(master.revoke(8));
        assert!(worker.is_revoked(8));
        assert!(!worker.is_revoked(9));
        assert!(!worker.take(8));
        assert!(!master.revoke(8));
    }

    #[test]
    fn an_old_claim_does_not_match_a_newer_offer() {
        let (master, worker) = pair();
        master.offer(1);
        assert!(master.revoke(1));
        master.offer(2);
        assert!(!worker.take(1), "the revoked request 1 must stay skipped");
        assert!(worker.take(2));
    }

    #[test]
    fn the_next_offer_does_not_overwrite_one_not_yet_taken() {
        let (master, worker) = pair();
        master.offer(4);
        master.offer(5);
        // The master read the answer before 4 and offers 6 behind 5 before the worker
        // has swapped 4's claim (three outstanding; up to WORDS - 1 may be).
        master.offer(6);
        assert!(
            worker.take(4),
            "4 is the request the master counts as running"
        );
        assert!(worker.take(5));
        assert!(master.revoke(6));
        assert!(!worker.take(6));
    }

    #[test]
    fn the_monotonic_clock_agrees_with_instant() {
        let soon = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let at = monotonic_ns_at(soon);
        let now = monotonic_ns();
        assert!(at > now && at - now <= 51_000_000, "{at} vs {now}");
    }

    #[test]
    fn nothing_offered_is_nothing_to_take() {
        let (master, worker) = pair();
        assert!(!worker.take(0));
        assert!(!master.revoke(0));
    }

    #[test]
    fn exactly_one_side_wins_a_race() {
        let (master, worker) = pair();
        let worker = std::sync::Arc::new(worker);
        for seq in 1..2000u64 {
            master.offer(seq);
            let w = worker.clone();
            let t = std::thread::spawn(move || w.take(seq));
            let revoked = master.revoke(seq);
            let taken = t.join().unwrap();
            assert!(
                revoked != taken,
                "seq {seq}: revoked {revoked}, taken {taken}"
            );
        }
    }

    #[test]
    fn a_plain_file_of_the_wrong_size_is_refused() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let e = ClaimWords::open(f.into()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
