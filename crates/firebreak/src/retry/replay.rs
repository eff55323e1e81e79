//! A request body that can be sent again: bounded, zero-copy, and never delaying the first
//! attempt.

use crate::BoxError;
use crate::NotReplayable;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

impl std::error::Error for NotReplayable {}

const READING_PAST_CAP: usize = usize::MAX;

struct Shared<B> {
    inner: Option<Pin<Box<B>>>,
    /// The chunks kept for a replay. Most request bodies are one chunk (`Full<Bytes>`): kept
    /// inline, that costs no allocation.
    frames: SmallVec<[Bytes; 1]>,
    len: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    inner_done: bool,
    broken: Option<NotReplayable>,
}

/// The request body the retry layer sends. The first attempt streams the caller's body as it
/// comes, keeping zero-copy clones of its chunks (up to the bound); a retry replays those chunks
/// and then, if the first attempt did not read the whole body, goes on reading the original.
/// A body over the bound is not kept: it is sent once, and the call is not retried.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    pos: usize,
    ended: bool,
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ReplayBody")
            .field("buffered", &s.len)
            .field("cap", &s.cap)
            .field("broken", &s.broken)
            .finish()
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body`, keeping at most `cap` bytes for replay.
    pub(crate) fn new(body: B, cap: usize) -> Self {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                inner: Some(Box::pin(body)),
                frames: SmallVec::new(),
                len: 0,
                cap,
                trailers: None,
                inner_done: false,
                broken: None,
            })),
            pos: 0,
            ended: false,
        }
    }

    /// A handle that sends the body again from its start.
    ///
    /// # Errors
    /// [`NotReplayable`] when it cannot be.
    pub(crate) fn try_clone(&self) -> Result<Self, NotReplayable> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = s.broken {
            return Err(b);
        }
        drop(s);
        Ok(ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            ended: false,
        })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The handle is `Unpin`: borrow its fields apart (the shared state, and our position).
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        // `pos == READING_PAST_CAP` marks the handle that read past the bound: only it may go on.
        if let (Some(broken), false) = (s.broken, this.pos == READING_PAST_CAP) {
            this.ended = true;
            return Poll::Ready(Some(Err(Box::new(broken))));
        }
        if let Some(b) = s.frames.get(this.pos).cloned() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if s.inner_done {
            this.ended = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(inner) = s.inner.as_mut() else {
            this.ended = true;
            return Poll::Ready(Some(Err("request body already consumed".into())));
        };
        match inner.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.inner_done = true;
                s.inner = None;
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.broken = Some(NotReplayable::ReadFailed);
                s.frames = SmallVec::new();
                this.ended = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if s.broken.is_none() {
                        s.len += data.len();
                        if s.len > s.cap {
                            let cap = s.cap;
                            s.broken = Some(NotReplayable::OverCap { cap });
                            s.frames = SmallVec::new();
                            this.pos = READING_PAST_CAP;
                        } else {
                            // A zero-copy clone: the replay buffer shares the caller's bytes.
                            s.frames.push(data.clone());
                            this.pos = s.frames.len();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    s.trailers = frame.trailers_ref().cloned();
                    s.inner_done = true;
                    s.inner = None;
                    this.ended = true;
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            return true;
        }
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let replayed = self.pos >= s.frames.len();
        replayed
            && (s.inner_done && s.trailers.is_none()
                || s.inner.as_ref().is_some_and(|i| i.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let kept: u64 = s.frames.iter().skip(self.pos).map(|b| b.len() as u64).sum();
        match s.inner.as_ref() {
            None => SizeHint::with_exact(kept),
            Some(i) => {
                let h = i.size_hint();
                // The original's hint covers what it has not yielded yet; add what we replay.
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + kept);
                if let Some(u) = h.upper() {
                    out.set_upper(u + kept);
                }
                out
            }
        }
    }
}
