//! [`AttemptObserveLayer`]: one child span and one class per attempt.

use crate::AttemptContext;
use crate::observe::instruments::{Instruments, ModelCounters, Observer, ms};
use crate::{Classification, Error};
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

/// Observes each attempt: between the retry layer and the 429 gate, so it sees every attempt
/// the retry layer makes, the gate's refusals included (they are client-side failures).
#[derive(Debug, Clone)]
pub struct AttemptObserveLayer {
    obs: Observer,
}

impl AttemptObserveLayer {
    /// A layer recording through `obs`.
    pub fn new(obs: Observer) -> Self {
        AttemptObserveLayer { obs }
    }
}

impl<S> Layer<S> for AttemptObserveLayer {
    type Service = AttemptObserve<S>;
    fn layer(&self, inner: S) -> AttemptObserve<S> {
        AttemptObserve {
            inner,
            obs: self.obs.clone(),
        }
    }
}

/// The service [`AttemptObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct AttemptObserve<S> {
    inner: S,
    obs: Observer,
}

impl<S> AttemptObserve<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, obs: Observer) -> Self {
        AttemptObserve { inner, obs }
    }

    /// A layer for this service.
    pub fn layer(obs: Observer) -> AttemptObserveLayer {
        AttemptObserveLayer::new(obs)
    }

    crate::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AttemptObserve<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = Error>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let watch = AttemptWatch::start(&self.obs, req.extensions());
        let inner = {
            let _entered = watch.span.enter();
            self.inner.call(req)
        };
        AttemptFuture { inner, watch }
    }
}

/// One attempt's observation, from its start to its outcome: the attempt span and counters.
/// [`AttemptObserve`]'s future keeps one.
pub(crate) struct AttemptWatch {
    span: Span,
    ins: Option<Arc<Instruments>>,
    model: Option<Arc<ModelCounters>>,
    start: Option<Instant>,
}

impl AttemptWatch {
    /// Starts observing the attempt whose request carries `ext` (its [`AttemptContext`] and
    /// model): the retry counters, and the span, which the caller enters while it calls and
    /// polls the attempt.
    pub(crate) fn start(obs: &Observer, ext: &http::Extensions) -> Self {
        let Some(ins) = &obs.inner else {
            return AttemptWatch {
                span: Span::none(),
                ins: None,
                model: None,
                start: None,
            };
        };
        let ctx = ext.get::<AttemptContext>().copied();
        let model = ins.model_of(ext);
        if let Some(c) = ctx {
            ins.retry(c.after, c.reason, c.delay);
        }
        let span = tracing::debug_span!(
            crate::names::ATTEMPT_SPAN,
            attempt = ctx.map_or(1, |c| c.attempt),
            delay_ms = ctx.map_or(0.0, |c| ms(c.delay)),
            delay_reason = ctx.map_or("none", |c| c.reason.label()),
            retry_after_class = ctx.map(|c| c.after.label()),
            gate_wait_ms = Empty,
            gate_wait_reason = Empty,
            status = Empty,
            class = Empty,
            headers_ms = Empty,
        );
        // The clock is read only for the span's `headers_ms`: no subscriber, no clock read.
        let start = (!span.is_disabled()).then(Instant::now);
        AttemptWatch {
            span,
            ins: Some(ins.clone()),
            model,
            start,
        }
    }

    /// Counts the attempt's outcome (once) and records it on the span.
    pub(crate) fn done<B>(&mut self, result: &Result<Response<B>, Error>) {
        let Some(ins) = self.ins.take() else {
            return;
        };
        let (class, status) = match result {
            Ok(resp) => (Classification::class_of(resp), Some(resp.status().as_u16())),
            Err(e) => (e.class(), e.status().map(|s| s.as_u16())),
        };
        ins.attempt_done(class, status, self.model.as_deref());
        let span = &self.span;
        if !span.is_disabled() {
            span.record("class", class.label());
            if let Some(s) = status {
                span.record("status", s);
            }
            if let Some(t) = self.start {
                span.record("headers_ms", ms(t.elapsed()));
            }
            if class.is_success() {
                tracing::debug!(parent: span, class = class.label(), "attempt answered");
            } else {
                tracing::debug!(parent: span, class = class.label(), client_side = class.is_client_side(), "attempt failed");
            }
        }
    }
}

pin_project! {
    /// The future of [`AttemptObserve`].
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        watch: AttemptWatch,
    }
}

impl<F> fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptFuture").finish_non_exhaustive()
    }
}

impl<F, B> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.watch.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        this.watch.done(&result);
        Poll::Ready(result)
    }
}
