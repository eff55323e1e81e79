//! [`ClassifyLayer`] and the [`Classify`] service.

use super::future::ResponseFuture;
use crate::error::Error;
use crate::transport::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Default bound on the error-body prefix read for classification: 64 KiB.
pub(crate) const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) max_error_body: usize,
    pub(crate) sse_errors: bool,
    pub(crate) errors_for_status: bool,
}

/// Classifies every attempt: see the [module docs](crate::classify).
#[derive(Debug, Clone, Copy)]
pub struct ClassifyLayer {
    cfg: Config,
}

impl Default for ClassifyLayer {
    fn default() -> Self {
        ClassifyLayer {
            cfg: Config {
                max_error_body: DEFAULT_MAX_ERROR_BODY,
                sse_errors: true,
                errors_for_status: false,
            },
        }
    }
}

impl ClassifyLayer {
    /// A layer with the defaults: 64 KiB error-body bound, SSE error events become body errors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds how much of an error body is read to classify it (at least 1 byte; 0 is taken as 1).
    /// The rest is never buffered: it streams on to the caller after the prefix.
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.cfg.max_error_body = bytes.max(1);
        self
    }

    /// Whether an error event inside a `text/event-stream` response ends the body with an
    /// [`Error`] of class `StreamError` (default `true`). The event's bytes reach the caller
    /// first either way. A proxy that passes streams through unchanged turns this off.
    pub fn sse_errors_as_failures(mut self, on: bool) -> Self {
        self.cfg.sse_errors = on;
        self
    }

    /// `Result` semantics (default `false`): every answer that is not a success becomes
    /// `Err(`[`Error`]`)`, carrying its classification (status, parsed error body, request id,
    /// server-requested delay). For callers outside a retry layer; the retry layer reads the
    /// classification of an `Ok` answer itself.
    pub fn errors_for_status(mut self, on: bool) -> Self {
        self.cfg.errors_for_status = on;
        self
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            cfg: self.cfg,
        }
    }
}

/// The service [`ClassifyLayer`] makes.
#[derive(Debug, Clone)]
pub struct Classify<S> {
    inner: S,
    cfg: Config,
}

impl<S> Classify<S> {
    /// Wraps `inner` with the default settings.
    pub fn new(inner: S) -> Self {
        ClassifyLayer::new().layer(inner)
    }

    /// The default layer.
    pub fn layer() -> ClassifyLayer {
        ClassifyLayer::new()
    }

    crate::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Classify<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<crate::classify::ClassifiedBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::transport)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture::call(&mut self.inner, req, self.cfg)
    }
}
