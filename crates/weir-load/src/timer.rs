//! A sub-millisecond sleep for the scheduler, inside the tokio runtime.
//!
//! tokio's timer wheel ticks in whole milliseconds, too coarse for slots 50 µs apart. On
//! Linux the scheduler arms a `timerfd` (an hrtimer, precise to microseconds) for each slot
//! and waits for it to become readable through the runtime's own epoll, so the thread
//! sleeps in `epoll_wait` until either I/O or the slot is due.
//!
//! The engine sleeps on it until shortly before each slot and yields in a loop for the
//! rest (see `engine::wait_until`). Measured on this project's 2-core VM at 20k req/s:
//! sleeping on the timerfd up to the slot itself started requests ~50-100 µs late at the
//! median (the wakeup of a halted vCPU), yielding in a loop ~1 µs; a timer on its own OS
//! thread, handing slots over a channel, ~37 µs. Yielding alone (after tokio's ms timer)
//! spins for the last 1.5 ms before every slot, the whole CPU at 1000 req/s; with the
//! timerfd the spin is 250 µs.

use std::io;

use tokio::time::Instant;

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    use tokio::time::Instant;

    /// tokio's `AsyncFd` wants `AsRawFd`; nix's `TimerFd` offers `AsFd`.
    struct Fd(TimerFd);

    impl std::os::fd::AsRawFd for Fd {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            use std::os::fd::AsFd;
            self.0.as_fd().as_raw_fd()
        }
    }

    /// A one-shot timerfd registered with the runtime.
    pub struct Timer {
        fd: AsyncFd<Fd>,
    }

    impl Timer {
        pub fn new() -> io::Result<Timer> {
            let fd = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )?;
            // tokio 1.54 deprecates the safe constructor because a borrowed fd could be
            // closed while registered; `Fd` owns its timerfd (an `OwnedFd` inside nix's
            // `TimerFd`), so the fd lives exactly as long as the registration. This keeps the
            // crate free of `unsafe`.
            #[allow(deprecated)]
            let fd = AsyncFd::with_interest(Fd(fd), Interest::READABLE)?;
            Ok(Timer { fd })
        }

        pub async fn sleep_until(&self, due: Instant) -> io::Result<()> {
            loop {
                let now = Instant::now();
                if now >= due {
                    return Ok(());
                }
                let left = TimeSpec::from_duration(due - now);
                self.fd
                    .get_ref()
                    .0
                    .set(Expiration::OneShot(left), TimerSetTimeFlags::empty())?;
                let mut ready = self.fd.readable().await?;
                // A read of the expiration count; EAGAIN means the readiness was stale,
                // and try_io clears it so the next wait really waits.
                if let Ok(r) = ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                    r?;
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    use tokio::time::Instant;

    /// Elsewhere: tokio's millisecond timer.
    pub struct Timer;

    impl Timer {
        pub fn new() -> io::Result<Timer> {
            Ok(Timer)
        }

        pub async fn sleep_until(&self, due: Instant) -> io::Result<()> {
            tokio::time::sleep_until(due).await;
            Ok(())
        }
    }
}

/// The scheduler's timer.
pub struct Timer(imp::Timer);

impl Timer {
    /// A timer registered with the current runtime (call from inside it).
    pub fn new() -> io::Result<Timer> {
        imp::Timer::new().map(Timer)
    }

    /// Sleeps until `due` (returns at once when it has passed).
    pub async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        self.0.sleep_until(due).await
    }
}
