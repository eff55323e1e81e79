//! Body wrappers: the response body's idle / first-event / end-by timers, and the request body's
//! write-progress tracking.

use crate::{BoxError, Error, TimeoutPhase};
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A hard end for a body: the attempt total or the overall deadline, whichever is earlier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndBy {
    pub(crate) at: Instant,
    pub(crate) phase: TimeoutPhase,
    pub(crate) configured: Duration,
}

/// Arms `sleep` for `at`, reusing its allocation. It is only moved when it must fire earlier
/// than it is set to or has already fired: a later deadline is picked up when the earlier
/// timer fires and the deadlines are recomputed. So a stream of frames costs no timer
/// operation per frame.
pub(crate) fn arm(sleep: &mut Option<Pin<Box<Sleep>>>, at: Instant, fired: bool) {
    match sleep {
        Some(s) if !fired && s.deadline() <= at => {}
        Some(s) => s.as_mut().reset(at),
        None => *sleep = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

pin_project! {
    /// A response body with timeouts: the gap between frames (`idle`), the wait for the first
    /// SSE `data:` event (`first_event`), the attempt total, and the overall deadline.
    /// A timeout ends the body with an [`Error`] naming the phase and duration; the frames
    /// delivered before it reached the caller intact.
    ///
    /// Clocks are read only when the body has to wait (its inner body is pending): a frame that
    /// is ready costs no clock read and no timer operation. The idle gap is measured from the
    /// first wait after a frame, which follows the frame at once when the caller keeps reading.
    pub struct TimedResponseBody<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        timers: Timers,
        done: bool,
    }
}

/// The earliest of several deadlines, with the phase and configured duration it stands for.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Earliest(pub(crate) Option<(Instant, TimeoutPhase, Duration)>);

impl Earliest {
    pub(crate) fn consider(&mut self, at: Instant, phase: TimeoutPhase, configured: Duration) {
        if self.0.is_none_or(|(b, _, _)| at < b) {
            self.0 = Some((at, phase, configured));
        }
    }
}

/// A response body's timers: plain data, so the pinned body can borrow it whole.
#[derive(Debug)]
struct Timers {
    idle: Option<Duration>,
    idle_at: Option<Instant>,
    saw_frame: bool,
    first_at: Option<(Instant, Duration)>,
    attempt: Option<(Option<Instant>, Duration)>,
    deadline: Option<EndBy>,
}

impl Timers {
    /// The earliest pending deadline and what it bounds, anchoring lazy timers at `now`.
    fn next(&mut self, now: Instant) -> Option<(Instant, TimeoutPhase, Duration)> {
        if let Some(d) = self.idle {
            if self.saw_frame || self.idle_at.is_none() {
                self.idle_at = Some(now + d);
                self.saw_frame = false;
            }
        }
        if let Some((start @ None, _)) = &mut self.attempt {
            *start = Some(now);
        }
        let mut e = Earliest::default();
        if let (Some(at), Some(d)) = (self.idle_at, self.idle) {
            e.consider(at, TimeoutPhase::Idle, d);
        }
        if let Some((at, d)) = self.first_at {
            e.consider(at, TimeoutPhase::FirstEvent, d);
        }
        if let Some((Some(start), d)) = self.attempt {
            e.consider(start + d, TimeoutPhase::Attempt, d);
        }
        if let Some(end) = self.deadline {
            e.consider(end.at, end.phase, end.configured);
        }
        e.0
    }
}

impl<B> std::fmt::Debug for TimedResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedResponseBody")
            .field("idle", &self.timers.idle)
            .field("waiting_first_event", &self.timers.first_at.is_some())
            .field("attempt", &self.timers.attempt)
            .field("deadline", &self.timers.deadline)
            .finish()
    }
}

impl<B> TimedResponseBody<B> {
    /// `attempt` is the attempt total and, when the attempt already had to wait, the instant it
    /// started; `first_event` applies from now.
    pub(crate) fn new(
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        idle: Option<Duration>,
        first_event: Option<Duration>,
        attempt: Option<(Option<Instant>, Duration)>,
        deadline: Option<EndBy>,
    ) -> Self {
        TimedResponseBody {
            inner,
            sleep,
            timers: Timers {
                idle,
                idle_at: None,
                saw_frame: false,
                first_at: first_event.map(|d| (Instant::now() + d, d)),
                attempt,
                deadline,
            },
            done: false,
        }
    }
}

impl<B> Body for TimedResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.as_mut().project().inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let t = self.project().timers;
                t.saw_frame = true;
                if t.first_at.is_some() {
                    if let Some(d) = frame.data_ref() {
                        if memchr::memmem::find(d, b"data:").is_some() {
                            t.first_at = None;
                        }
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                *self.as_mut().project().done = true;
                return Poll::Ready(Some(Err(Error::body(e))));
            }
            Poll::Ready(None) => {
                *self.as_mut().project().done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // At most two turns: the second re-arms the timer at the earliest deadline, and then it
        // is either pending (waker registered) or has fired, which means that deadline passed.
        let mut fired = false;
        loop {
            let now = Instant::now();
            let Some((at, phase, d)) = self.as_mut().project().timers.next(now) else {
                return Poll::Pending;
            };
            if now >= at {
                *self.as_mut().project().done = true;
                return Poll::Ready(Some(Err(Error::timeout(phase, d))));
            }
            let this = self.as_mut().project();
            arm(this.sleep, at, fired);
            match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                // The timer was set for an earlier, stale deadline: recompute and re-arm.
                Some(Poll::Ready(())) if !fired => fired = true,
                // Re-armed at `at` and fired at once: by the timer's clock, `at` has passed.
                Some(Poll::Ready(())) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(Error::timeout(phase, d))));
                }
                _ => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Shared between a tracked request body and its attempt's future: when the body was fully
/// handed to the connection, and who to wake then.
#[derive(Debug)]
pub(crate) struct WriteProgress {
    base: Instant,
    /// Nanoseconds after `base` at which the write ended; `u64::MAX` while in progress.
    done_at: AtomicU64,
    waker: AtomicWaker,
}

impl WriteProgress {
    pub(crate) fn new(base: Instant) -> Arc<Self> {
        Arc::new(WriteProgress {
            base,
            done_at: AtomicU64::new(u64::MAX),
            waker: AtomicWaker::new(),
        })
    }

    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    pub(crate) fn done_at(&self) -> Option<Instant> {
        match self.done_at.load(Ordering::Acquire) {
            u64::MAX => None,
            n => Some(self.base + Duration::from_nanos(n)),
        }
    }

    pub(crate) fn register(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
    }

    fn finish(&self) {
        let n = Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        let n = u64::try_from(n).unwrap_or(u64::MAX - 1);
        // Only the first finish counts.
        let _ = self
            .done_at
            .compare_exchange(u64::MAX, n, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }
}

/// Largest piece a tracked request body hands to the connection at once. The connection asks
/// for the next piece only once it can buffer more, so the end of the body is seen when it has
/// (nearly all) been written, not when one large buffer was handed over.
pub(crate) const WRITE_PIECE: usize = 64 * 1024;

pin_project! {
    /// The request body as the attempt layer sends it. Small bodies whose size is known (at most
    /// 64 KiB) pass through untouched and are not tracked: their write is one socket write, and
    /// the headers timer covers it. Others are handed over in pieces of at most 64 KiB
    /// (zero-copy slices), and their end is reported to the attempt's future, which runs the
    /// write timeout and then starts the headers timer.
    pub struct TimedRequestBody<B> {
        #[pin]
        inner: B,
        carry: Bytes,
        progress: Option<Arc<WriteProgress>>,
    }
}

impl<B> std::fmt::Debug for TimedRequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedRequestBody")
            .field("tracked", &self.progress.is_some())
            .finish()
    }
}

impl<B: Body> TimedRequestBody<B> {
    /// Wraps `inner`; tracked when `progress` is given.
    pub(crate) fn new(inner: B, progress: Option<Arc<WriteProgress>>) -> Self {
        TimedRequestBody {
            inner,
            carry: Bytes::new(),
            progress,
        }
    }

    /// Whether a body needs write tracking: unknown size, or larger than one piece.
    pub(crate) fn needs_tracking(body: &B) -> bool {
        !body.is_end_stream()
            && body
                .size_hint()
                .exact()
                .is_none_or(|n| n > WRITE_PIECE as u64)
    }
}

impl<B> Body for TimedRequestBody<B>
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
        let Some(progress) = this.progress.as_ref() else {
            return this.inner.poll_frame(cx);
        };
        if this.carry.is_empty() {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => *this.carry = data,
                    Err(frame) => {
                        // Trailers end the body.
                        progress.finish();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Poll::Ready(None) => {
                    progress.finish();
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
        let n = this.carry.remaining().min(WRITE_PIECE);
        let piece = this.carry.split_to(n);
        if this.carry.is_empty() && this.inner.is_end_stream() {
            progress.finish();
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.carry.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let c = self.carry.len() as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + c);
        if let Some(u) = inner.upper() {
            h.set_upper(u + c);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_request_body_cut_in_pieces_keeps_its_size_and_end() {
        // hyper derives `Content-Length` from the size hint and stops at the end: both must
        // count the piece held back, whatever has been read.
        let len = 2 * WRITE_PIECE + 5;
        let mut b = TimedRequestBody::new(
            Full::new(Bytes::from(vec![7u8; len])),
            Some(WriteProgress::new(Instant::now())),
        );
        assert_eq!(b.size_hint().exact(), Some(len as u64));
        assert!(!b.is_end_stream());
        let first = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), WRITE_PIECE);
        assert_eq!(b.size_hint().exact(), Some((len - WRITE_PIECE) as u64));
        assert!(!b.is_end_stream(), "a piece is still held back");
        let mut rest = 0;
        while let Some(f) = b.frame().await {
            rest += f.unwrap().into_data().unwrap().len();
        }
        assert_eq!(rest, len - WRITE_PIECE);
        assert!(b.is_end_stream());
        assert_eq!(b.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_response_body_reports_its_size_and_its_end() {
        let mut b = TimedResponseBody::new(
            Full::new(Bytes::from_static(b"abc")),
            None,
            None,
            None,
            None,
            None,
        );
        assert_eq!(b.size_hint().exact(), Some(3));
        assert!(!b.is_end_stream());
        let data = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"abc");
        assert!(
            b.is_end_stream(),
            "the inner body ended with its only frame"
        );
    }
}
