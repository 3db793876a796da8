//! NGINX's `limit_rate` / `limit_rate_after`: a response body paced to the client.
//!
//! [`RateLimitedBody`] wraps any `http_body::Body<Data = Bytes>`. As in NGINX
//! (`ngx_http_write_filter`), the bytes a response may have sent `t` after it started are
//! `after + rate * (t + 1 s)`: the first `after` bytes go at full speed, and so does one
//! second's worth of `rate` (NGINX's `+ 1`), then the body keeps to `rate` bytes per
//! second. Differences: the clock is counted in milliseconds (NGINX's in whole seconds
//! for this sum), and from when the wrapper is made (the response's start; NGINX counts
//! from the request's). A frame larger than what may go now is split; the wrapper waits
//! until at least a small chunk (`rate / 16`, 1 byte to 16 KiB) may go, so a slow rate is
//! not sent a byte at a time. Trailers and other frames pass through in order.
//!
//! The front door wraps the response body after the worker's answer is complete in its
//! own buffer or stream, so the worker is released as soon as it answered, and only the
//! client's copy is paced.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// A body paced to `rate` bytes per second after its first `after` bytes.
    pub struct RateLimitedBody<B> {
        #[pin]
        inner: B,
        rate: u64,
        after: u64,
        start: Instant,
        sent: u64,
        pending: Option<Bytes>,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for RateLimitedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitedBody")
            .field("inner", &self.inner)
            .field("rate", &self.rate)
            .field("after", &self.after)
            .field("sent", &self.sent)
            .finish()
    }
}

impl<B> RateLimitedBody<B> {
    /// Paces `inner` to `rate` bytes per second (0: not at all) after `after` bytes.
    pub fn new(inner: B, rate: u64, after: u64) -> Self {
        RateLimitedBody {
            inner,
            rate,
            after,
            start: Instant::now(),
            sent: 0,
            pending: None,
            sleep: None,
        }
    }

    /// Bytes passed on so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// Bytes that may have been sent `elapsed_ms` after the start.
fn budget(rate: u64, after: u64, elapsed_ms: u64) -> u128 {
    u128::from(after) + u128::from(rate) * (u128::from(elapsed_ms) + 1000) / 1000
}

impl<B> Body for RateLimitedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        // bounded: each turn either returns or takes one frame from `inner`
        loop {
            if let Some(buf) = this.pending.as_mut() {
                if *this.rate == 0 {
                    let b = std::mem::take(buf);
                    *this.pending = None;
                    *this.sent += b.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                let chunk = (*this.rate / 16).clamp(1, 16 * 1024) as usize;
                let need = buf.len().min(chunk) as u128;
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(*this.start).as_millis() as u64;
                let may =
                    budget(*this.rate, *this.after, elapsed).saturating_sub(u128::from(*this.sent));
                if may >= need {
                    let n = (may.min(buf.len() as u128)) as usize;
                    let out = buf.split_to(n);
                    if buf.is_empty() {
                        *this.pending = None;
                    }
                    *this.sleep = None;
                    *this.sent += n as u64;
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                // the first millisecond at which `need` more bytes may go
                let target = u128::from(*this.sent) + need - u128::from(*this.after);
                let at_ms = (target * 1000)
                    .div_ceil(u128::from(*this.rate))
                    .saturating_sub(1000);
                let at_ms = u64::try_from(at_ms)
                    .unwrap_or(u64::MAX / 2)
                    .max(elapsed + 1);
                let deadline = *this.start + std::time::Duration::from_millis(at_ms);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                continue;
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => *this.pending = Some(data),
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.inner.size_hint();
        let extra = self.pending.as_ref().map_or(0, |b| b.len() as u64);
        h.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            h.set_upper(u + extra);
        }
        h
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::time::Duration;

    /// Reads the whole body, recording (ms since start, bytes) per frame.
    async fn timeline<B: Body<Data = Bytes> + Unpin>(mut b: B) -> Vec<(u64, usize)>
    where
        B::Error: std::fmt::Debug,
    {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for _ in 0..100_000 {
            match b.frame().await {
                Some(f) => {
                    if let Ok(d) = f.unwrap().into_data() {
                        out.push((t0.elapsed().as_millis() as u64, d.len()));
                    }
                }
                None => return out,
            }
        }
        panic!("body did not end");
    }

    #[tokio::test(start_paused = true)]
    async fn after_bytes_and_first_second_go_at_once_then_rate() {
        // 1 MiB body, 100 KiB/s after 200 KiB: 300 KiB at once, the rest over ~7.2 s
        let body = Full::new(Bytes::from(vec![7u8; 1 << 20]));
        let tl = timeline(RateLimitedBody::new(body, 100 * 1024, 200 * 1024)).await;
        assert_eq!(tl.iter().map(|x| x.1).sum::<usize>(), 1 << 20);
        assert_eq!(tl[0], (0, 300 * 1024), "{:?}", &tl[..3]);
        let end = tl.last().unwrap().0;
        // (1024 - 300) KiB at 100 KiB/s = 7.24 s
        assert!((7200..=7300).contains(&end), "{end}");
        // never ahead of the budget
        let mut total = 0u128;
        for (t, n) in &tl {
            total += *n as u128;
            assert!(total <= budget(100 * 1024, 200 * 1024, *t), "{t} {total}");
        }
        // split into chunks of about rate/16
        assert!(tl.len() > 100, "{}", tl.len());
    }

    #[tokio::test(start_paused = true)]
    async fn small_frames_and_trailers_pass_in_order() {
        let body = Frames(
            [
                Frame::data(Bytes::from_static(b"abc")),
                Frame::data(Bytes::new()),
                Frame::data(Bytes::from(vec![1u8; 4000])),
                Frame::trailers(http::HeaderMap::new()),
            ]
            .into(),
        );
        let mut b = RateLimitedBody::new(body, 1000, 0);
        let mut got = Vec::new();
        let t0 = Instant::now();
        while let Some(f) = b.frame().await {
            let f = f.unwrap();
            got.push((
                t0.elapsed().as_millis() as u64,
                f.is_trailers(),
                f.data_ref().map_or(0, |d| d.len()),
            ));
        }
        assert_eq!(got.iter().map(|g| g.2).sum::<usize>(), 4003);
        assert!(got.last().unwrap().1, "trailers last");
        // 4003 bytes at 1000 B/s with a first second's worth: done at about 3 s
        let end = got[got.len() - 2].0;
        assert!((2990..=3100).contains(&end), "{got:?}");
        assert_eq!(b.sent(), 4003);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let body = Full::new(Bytes::from(vec![0u8; 10 << 20]));
        let t0 = Instant::now();
        let tl = timeline(RateLimitedBody::new(body, 0, 0)).await;
        assert_eq!(tl, vec![(0, 10 << 20)]);
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    /// A body of given frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
}
