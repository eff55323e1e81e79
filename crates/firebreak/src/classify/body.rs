//! The response body the classify layer hands on.

use crate::error::Error;
use crate::parse::sse::SseScanner;
use crate::transport::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        // Success path: the body as it came, not moved to the heap.
        Direct { #[pin] body: B },
        // Error path: the body was partly read by the layer's future, which needed to own it.
        Boxed { body: Pin<Box<B>> },
    }
}

pin_project! {
    /// The classify layer's response body.
    ///
    /// - On success it passes frames through untouched (zero-copy). For `text/event-stream`
    ///   responses it also scans for error events: after the frame that completes one, the
    ///   next poll yields an [`Error`] of class `StreamError` (unless disabled on the layer).
    /// - On an error status it first replays the prefix the layer read to classify the
    ///   response, then the rest of the original body, so the caller gets every byte.
    /// - Body errors become [`Error`]s classified as mid-body failures (reset, idle timeout…).
    pub struct ClassifiedBody<B> {
        #[pin]
        inner: Inner<B>,
        prefix: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
        inner_done: bool,
        pending: Option<Error>,
        sse: Option<Box<SseScanner>>,
        sse_errors: bool,
    }
}

impl<B> std::fmt::Debug for ClassifiedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifiedBody")
            .field("replay_frames", &self.prefix.len())
            .field("scanning_sse", &self.sse.is_some())
            .finish()
    }
}

impl<B> ClassifiedBody<B> {
    /// Passes `body` through.
    pub(crate) fn direct(body: B, sse: bool, sse_errors: bool) -> Self {
        ClassifiedBody {
            inner: Inner::Direct { body },
            prefix: VecDeque::new(),
            trailers: None,
            inner_done: false,
            pending: None,
            sse: sse.then(|| Box::new(SseScanner::new())),
            sse_errors,
        }
    }

    /// Replays `prefix` (and `trailers`, `pending`), then the rest of `body` unless it ended,
    /// scanning what follows for SSE error events with `sse` when given.
    pub(crate) fn replay(
        body: Pin<Box<B>>,
        prefix: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
        inner_done: bool,
        pending: Option<Error>,
        sse: Option<Box<SseScanner>>,
    ) -> Self {
        let sse_errors = sse.is_some();
        ClassifiedBody {
            inner: Inner::Boxed { body },
            prefix,
            trailers,
            inner_done,
            pending,
            sse,
            sse_errors,
        }
    }
}

impl<B> Body for ClassifiedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.project();
        if let Some(b) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(e) = this.pending.take() {
            *this.inner_done = true;
            *this.trailers = None;
            return Poll::Ready(Some(Err(e)));
        }
        if *this.inner_done {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let polled = match this.inner.project() {
            InnerProj::Direct { body } => body.poll_frame(cx),
            InnerProj::Boxed { body } => body.as_mut().poll_frame(cx),
        };
        match ready!(polled) {
            None => {
                *this.inner_done = true;
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let (Some(scanner), Some(data)) = (this.sse.as_mut(), frame.data_ref()) {
                    if let Some(api) = scanner.feed(data) {
                        if *this.sse_errors && this.pending.is_none() {
                            *this.pending = Some(Error::stream_error(api));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                *this.inner_done = true;
                Poll::Ready(Some(Err(Error::body(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.prefix.is_empty() || self.pending.is_some() {
            return false;
        }
        if self.inner_done {
            return self.trailers.is_none();
        }
        match &self.inner {
            Inner::Direct { body } => body.is_end_stream(),
            Inner::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        if self.inner_done {
            return SizeHint::with_exact(pre);
        }
        let inner = match &self.inner {
            Inner::Direct { body } => body.size_hint(),
            Inner::Boxed { body } => body.size_hint(),
        };
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + pre);
        if let Some(u) = inner.upper() {
            h.set_upper(u + pre);
        }
        h
    }
}
