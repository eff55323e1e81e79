//! [`RetryLayer`] and the [`Retry`] service.

use crate::Error;
use crate::retry::config::{RetryConfig, RetryConfigError};
use crate::retry::policy::{FireworksPolicy, PolicyShared, idempotency_key};
use crate::retry::replay::ReplayBody;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

type TowerFuture<S, B> =
    tower::retry::future::ResponseFuture<FireworksPolicy, S, Request<ReplayBody<B>>>;

pin_project! {
    /// The future of [`Retry`] (tower's retry future driven by [`FireworksPolicy`], whose type
    /// stays tower's business).
    pub struct ResponseFuture<S, B, ResB>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = Error>,
        ReplayBody<B>: crate::retry::Replayable,
    {
        #[pin]
        inner: TowerFuture<S, B>,
    }
}

impl<S, B, ResB> std::fmt::Debug for ResponseFuture<S, B, ResB>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = Error>,
    ReplayBody<B>: crate::retry::Replayable,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B, ResB>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = Error> + Clone,
    ReplayBody<B>: crate::retry::Replayable,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

/// Retries failed attempts: see the [module docs](crate::retry). Clones share the budget.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<PolicyShared>,
}

impl RetryLayer {
    /// A layer with `cfg`.
    ///
    /// # Errors
    /// [`RetryConfigError`] when `cfg` does not validate.
    pub fn new(cfg: RetryConfig) -> Result<Self, RetryConfigError> {
        cfg.validate()?;
        Ok(RetryLayer {
            shared: Arc::new(PolicyShared::new(cfg)),
        })
    }
}

/// The request as the attempts see it: its body replayable (up to the configured size), the
/// attempt header and the idempotency key set when configured.
fn prepare<B>(cfg: &RetryConfig, req: Request<B>) -> Request<ReplayBody<B>> {
    let mut req = req.map(|b| ReplayBody::new(b, cfg.max_replay_body));
    if let Some(h) = &cfg.attempt_header {
        req.headers_mut()
            .insert(h.clone(), HeaderValue::from_static("0"));
    }
    if cfg.idempotency_key && !req.headers().contains_key("idempotency-key") {
        req.headers_mut()
            .insert("idempotency-key", idempotency_key());
    }
    req
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner: tower::retry::Retry::new(
                FireworksPolicy::from_shared(self.shared.clone()),
                inner,
            ),
            shared: self.shared.clone(),
        }
    }
}

/// The service [`RetryLayer`] makes. The inner service sees `Request<ReplayBody<B>>` and must
/// fail with [`Error`](crate::Error) (a firebreak layer below, or `map_err(Error::transport)` over any client).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: tower::retry::Retry<FireworksPolicy, S>,
    shared: Arc<PolicyShared>,
}

impl<S> Retry<S> {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// As [`RetryLayer::new`].
    pub fn new(inner: S, cfg: RetryConfig) -> Result<Self, RetryConfigError> {
        Ok(RetryLayer::new(cfg)?.layer(inner))
    }

    /// A layer making this service.
    ///
    /// # Errors
    /// As [`RetryLayer::new`].
    pub fn layer(cfg: RetryConfig) -> Result<RetryLayer, RetryConfigError> {
        RetryLayer::new(cfg)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = Error> + Clone,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let req = prepare(&self.shared.cfg, req);
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}
