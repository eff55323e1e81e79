//! [`ErrorForStatusLayer`]: `Result` semantics for callers who want non-success responses as errors.

use crate::error::{Classification, Error};
use crate::transport::BoxError;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Turns every non-success response into `Err(`[`Error`]`)`, carrying its classification
/// (status, parsed error body, request id, server-requested delay). Put it outside
/// [`ClassifyLayer`](crate::classify::ClassifyLayer) so the body has already been parsed; on its own it
/// classifies from the status and headers only.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorForStatusLayer;

impl ErrorForStatusLayer {
    /// The layer.
    pub fn new() -> Self {
        ErrorForStatusLayer
    }
}

impl<S> Layer<S> for ErrorForStatusLayer {
    type Service = ErrorForStatus<S>;
    fn layer(&self, inner: S) -> ErrorForStatus<S> {
        ErrorForStatus { inner }
    }
}

/// The service [`ErrorForStatusLayer`] makes.
#[derive(Debug, Clone)]
pub struct ErrorForStatus<S> {
    inner: S,
}

impl<S> ErrorForStatus<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ErrorForStatus { inner }
    }

    /// The layer.
    pub fn layer() -> ErrorForStatusLayer {
        ErrorForStatusLayer
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorForStatus<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ErrorForStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::transport)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let host = crate::error::HostLabel::of(req.uri());
        ErrorForStatusFuture {
            fut: self.inner.call(req),
            host,
        }
    }
}

pin_project! {
    /// The future of [`ErrorForStatus`].
    #[derive(Debug)]
    pub struct ErrorForStatusFuture<F> {
        #[pin]
        fut: F,
        host: Option<crate::error::HostLabel>,
    }
}

impl<F, B, E> Future for ErrorForStatusFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let with_host = |e: Error, h: &Option<crate::error::HostLabel>| match h {
            Some(h) => e.with_host(h.as_str()),
            None => e,
        };
        let resp = match ready!(this.fut.poll(cx)) {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(with_host(Error::transport(e), this.host))),
        };
        let failed = (!Classification::class_of(&resp).is_success())
            .then(|| Error::from_classification(&Classification::of(&resp)));
        Poll::Ready(match failed {
            None => Ok(resp),
            Some(e) => Err(with_host(e, this.host)),
        })
    }
}
