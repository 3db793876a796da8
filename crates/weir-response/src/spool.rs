//! Bounded response buffering (NGINX's `proxy_buffers` and `proxy_max_temp_file_size`):
//! a spool between a backend that produces a response and the client that takes it.
//!
//! The backend ([`SpoolWriter`]) appends chunks; the client's body ([`SpoolReader`], in
//! [`crate::ResponseBody::Spooled`]) takes them in order. A chunk goes to memory while
//! this response holds less than `response_buffer` bytes there and all responses
//! together less than `response_buffers_total` (one budget shared by every spool of a
//! [`Spooler`], counted in bytes buffered, not in chunks); beyond, it is appended to the
//! response's temp file (created on first need, unlinked at once: O_TMPFILE, or create and
//! unlink, in `temp_path`, so a crash leaves nothing; closed when both ends are dropped),
//! up to `max_temp_file_size`; beyond both, the writer waits until the client has taken
//! something (backpressure: the backend is read only as fast as the client takes it). An
//! empty spool always takes one chunk, so a response always moves.
//!
//! Memory and file segments are read back in the order they were written (FIFO); the
//! file is read and written with positional I/O on the blocking pool, never on the
//! async threads, and it restarts at offset 0 whenever the client has caught up, so it
//! never grows past `max_temp_file_size`.
//!
//! Dropping the reader (the client left, or was dropped by `send_timeout`) frees its
//! memory and file at once, and the writer's next `send` says so ([`SpoolError::Gone`]).

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::body::BodyError;

/// The most bytes read back from a temp file at once.
const READ_PIECE: usize = 64 * 1024;

/// How responses are buffered (`[server] response_buffer`, `response_buffers_total`,
/// `temp_path`, `max_temp_file_size`).
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Memory per response.
    pub response_buffer: usize,
    /// Memory for all responses together.
    pub buffers_total: usize,
    /// Where temp files are made.
    pub temp_path: PathBuf,
    /// Bytes per response on disk (0: no temp files).
    pub max_temp_file_size: u64,
}

/// The shared side of response buffering: the memory budget and the temp directory.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spooler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SpoolConfig,
    /// Bytes of every spool's memory segments.
    used: AtomicUsize,
    /// Temp files open now.
    files: AtomicUsize,
    /// Bytes written to temp files, ever.
    spilled: AtomicU64,
}

impl Inner {
    fn try_reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.config.buffers_total).then_some(u + n)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

impl Spooler {
    /// A spooler; checks that a temp file can be made in `temp_path` (when temp files are
    /// on at all).
    pub fn new(config: SpoolConfig) -> io::Result<Spooler> {
        if config.max_temp_file_size > 0 {
            let f = tempfile::tempfile_in(&config.temp_path)?;
            f.write_all_at(b"x", 0)?;
        }
        Ok(Spooler {
            inner: Arc::new(Inner {
                config,
                used: AtomicUsize::new(0),
                files: AtomicUsize::new(0),
                spilled: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SpoolConfig {
        &self.inner.config
    }

    /// Bytes buffered in memory now, over every response.
    pub fn memory_in_use(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Temp files open now.
    pub fn temp_files(&self) -> usize {
        self.inner.files.load(Ordering::Acquire)
    }

    /// Bytes written to temp files since start.
    pub fn spilled_bytes(&self) -> u64 {
        self.inner.spilled.load(Ordering::Relaxed)
    }

    /// A new spool for one response.
    pub fn spool(&self) -> (SpoolWriter, SpoolReader) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            progress: Notify::new(),
            spooler: self.inner.clone(),
        });
        (
            SpoolWriter {
                shared: shared.clone(),
                file: None,
            },
            SpoolReader {
                shared,
                reading: None,
            },
        )
    }
}

#[derive(Debug)]
enum Segment {
    Mem(Bytes),
    /// This many bytes of the file, from the read offset on.
    File(u64),
}

#[derive(Debug)]
enum End {
    Finished,
    Failed(BodyError),
}

#[derive(Debug, Default)]
struct State {
    segments: VecDeque<Segment>,
    /// Bytes of this response's memory segments.
    mem: usize,
    file: Option<Arc<TempFile>>,
    write_off: u64,
    read_off: u64,
    end: Option<End>,
    writer_gone: bool,
    reader_gone: bool,
    reader: Option<Waker>,
}

impl State {
    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The reader took something, or left.
    progress: Notify,
    spooler: Arc<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A temp file, counted while open.
#[derive(Debug)]
struct TempFile {
    file: File,
    spooler: Arc<Inner>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.spooler.files.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a chunk could not be spooled.
#[derive(Debug)]
pub enum SpoolError {
    /// The client's body was dropped: nobody takes the response any more.
    Gone,
    /// The temp file could not be made or written; the response is cut.
    Io(io::Error),
}

/// The backend's end of a spool.
#[derive(Debug)]
pub struct SpoolWriter {
    shared: Arc<Shared>,
    file: Option<Arc<TempFile>>,
}

enum Step {
    Stored,
    Write(u64),
    Wait,
}

impl SpoolWriter {
    /// Appends a chunk: to memory, to the temp file, or, when both are full, once the
    /// client has taken enough. Empty chunks are ignored.
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), SpoolError> {
        let n = chunk.len();
        if n == 0 {
            return Ok(());
        }
        loop {
            let step = {
                let mut st = self.shared.lock();
                let sp = &self.shared.spooler;
                let cfg = &sp.config;
                if st.reader_gone {
                    return Err(SpoolError::Gone);
                }
                if st.mem + n <= cfg.response_buffer && sp.try_reserve(n) {
                    push_mem(&mut st, chunk.clone(), n);
                    Step::Stored
                } else if st.write_off + n as u64 <= cfg.max_temp_file_size {
                    let off = st.write_off;
                    st.write_off += n as u64;
                    Step::Write(off)
                } else if st.segments.is_empty() {
                    // Nothing buffered: one chunk always goes, whatever the budgets.
                    sp.used.fetch_add(n, Ordering::AcqRel);
                    push_mem(&mut st, chunk.clone(), n);
                    Step::Stored
                } else {
                    Step::Wait
                }
            };
            match step {
                Step::Stored => return Ok(()),
                Step::Wait => self.shared.progress.notified().await,
                Step::Write(off) => return self.write(chunk, off).await,
            }
        }
    }

    async fn write(&mut self, chunk: Bytes, off: u64) -> Result<(), SpoolError> {
        let n = chunk.len();
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let dir = self.shared.spooler.config.temp_path.clone();
                let file = blocking(move || tempfile::tempfile_in(dir)).await?;
                let sp = self.shared.spooler.clone();
                sp.files.fetch_add(1, Ordering::AcqRel);
                let f = Arc::new(TempFile { file, spooler: sp });
                self.file = Some(f.clone());
                self.shared.lock().file = Some(f.clone());
                f
            }
        };
        blocking(move || file.file.write_all_at(&chunk, off)).await?;
        self.shared
            .spooler
            .spilled
            .fetch_add(n as u64, Ordering::Relaxed);
        let mut st = self.shared.lock();
        if st.reader_gone {
            return Err(SpoolError::Gone);
        }
        match st.segments.back_mut() {
            Some(Segment::File(len)) => *len += n as u64,
            _ => st.segments.push_back(Segment::File(n as u64)),
        }
        st.wake_reader();
        Ok(())
    }

    /// The response is complete: the reader ends after what is buffered.
    pub fn finish(mut self) {
        self.end(End::Finished);
    }

    /// The response failed: the reader fails after what is buffered.
    pub fn fail(mut self, e: BodyError) {
        self.end(End::Failed(e));
    }

    fn end(&mut self, end: End) {
        let mut st = self.shared.lock();
        st.end = Some(end);
        st.wake_reader();
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.writer_gone = true;
        st.wake_reader();
    }
}

fn push_mem(st: &mut State, chunk: Bytes, n: usize) {
    st.mem += n;
    st.segments.push_back(Segment::Mem(chunk));
    st.wake_reader();
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, SpoolError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(SpoolError::Io),
        Err(e) => Err(SpoolError::Io(io::Error::other(e))),
    }
}

/// The client's end of a spool. Yields what a streamed body's channel does: data, then
/// an empty chunk at the normal end, an error when the writer failed, or `None` when the
/// writer went without ending the response.
#[derive(Debug)]
pub struct SpoolReader {
    shared: Arc<Shared>,
    /// A read of the temp file in progress: its length.
    reading: Option<(JoinHandle<io::Result<Vec<u8>>>, usize)>,
}

impl SpoolReader {
    /// The next chunk (see the type's doc).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            if let Some((handle, n)) = &mut self.reading {
                let n = *n;
                let r = match Pin::new(handle).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                self.reading = None;
                let data = match r {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => {
                        return Poll::Ready(Some(Err(BodyError::TempFile(e.to_string()))))
                    }
                    Err(e) => return Poll::Ready(Some(Err(BodyError::TempFile(e.to_string())))),
                };
                let mut st = self.shared.lock();
                st.read_off += n as u64;
                if let Some(Segment::File(len)) = st.segments.front_mut() {
                    *len -= n as u64;
                    if *len == 0 {
                        st.segments.pop_front();
                    }
                }
                if st.read_off == st.write_off {
                    // Caught up, and no write in flight: the file starts over.
                    st.read_off = 0;
                    st.write_off = 0;
                }
                drop(st);
                self.shared.progress.notify_one();
                return Poll::Ready(Some(Ok(Bytes::from(data))));
            }
            let mut st = self.shared.lock();
            match st.segments.front() {
                Some(Segment::Mem(_)) => {
                    let Some(Segment::Mem(b)) = st.segments.pop_front() else {
                        unreachable!("just matched")
                    };
                    st.mem -= b.len();
                    drop(st);
                    self.shared.spooler.release(b.len());
                    self.shared.progress.notify_one();
                    return Poll::Ready(Some(Ok(b)));
                }
                Some(Segment::File(len)) => {
                    let n = (*len).min(READ_PIECE as u64) as usize;
                    let off = st.read_off;
                    let file = st.file.clone().expect("file segments come with their file");
                    drop(st);
                    let handle = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; n];
                        file.file.read_exact_at(&mut buf, off)?;
                        Ok(buf)
                    });
                    self.reading = Some((handle, n));
                }
                None => {
                    return match st.end.take() {
                        Some(End::Finished) => {
                            st.end = Some(End::Finished);
                            Poll::Ready(Some(Ok(Bytes::new())))
                        }
                        Some(End::Failed(e)) => Poll::Ready(Some(Err(e))),
                        None if st.writer_gone => Poll::Ready(None),
                        None => {
                            st.reader = Some(cx.waker().clone());
                            Poll::Pending
                        }
                    };
                }
            }
        }
    }

    /// The next chunk (see the type's doc).
    pub async fn recv(&mut self) -> Option<Result<Bytes, BodyError>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.reader_gone = true;
        let mem = std::mem::take(&mut st.mem);
        st.segments.clear();
        st.file = None;
        drop(st);
        self.shared.spooler.release(mem);
        self.shared.progress.notify_one();
    }
}

/// The system's temp directory, the default `temp_path`.
pub fn default_temp_path() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests;
