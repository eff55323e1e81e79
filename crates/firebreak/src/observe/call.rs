//! [`ObserveLayer`]: one span and one outcome per call.

use crate::RetryInfo;
use crate::observe::instruments::{Instruments, ModelCounters, Observer, Outcome, ms};
use crate::{Class, Classification, Error};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
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

/// Observes calls: the outermost layer of the stack. See the [module docs](crate::observe).
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    obs: Observer,
}

impl ObserveLayer {
    /// A layer recording through `obs`.
    pub fn new(obs: Observer) -> Self {
        ObserveLayer { obs }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            obs: self.obs.clone(),
        }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    obs: Observer,
}

impl<S> Observe<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, obs: Observer) -> Self {
        Observe { inner, obs }
    }

    /// A layer for this service.
    pub fn layer(obs: Observer) -> ObserveLayer {
        ObserveLayer::new(obs)
    }

    crate::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Observe<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = Error>,
    ResB: Body,
{
    type Response = Response<ObservedBody<ResB>>;
    type Error = Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let watch = CallWatch::start(&self.obs, &mut req);
        // The first attempt is made inside `call` by the retry layer below: in this span.
        let inner = {
            let _entered = watch.span.enter();
            self.inner.call(req)
        };
        CallFuture { inner, watch }
    }
}

/// One call's observation, from its request to its outcome (which the body settles for a
/// success): the call span and the call counters. [`Observe`]'s future keeps one.
pub(crate) struct CallWatch {
    span: Span,
    record: Option<Record>,
}

impl CallWatch {
    /// Starts observing the call of `req`, whose credential headers it marks sensitive.
    pub(crate) fn start<B>(obs: &Observer, req: &mut Request<B>) -> Self {
        mark_sensitive(req.headers_mut());
        let Some(ins) = &obs.inner else {
            return CallWatch {
                span: Span::none(),
                record: None,
            };
        };
        let span = tracing::debug_span!(
            crate::names::CALL_SPAN,
            method = %req.method(),
            uri = %req.uri(),
            version = ?req.version(),
            request_id = Empty,
            attempts = Empty,
            status = Empty,
            class = Empty,
            outcome = Empty,
            ttfb_ms = Empty,
            total_ms = Empty,
        );
        if let Some(id) = req.headers().get("x-request-id") {
            span.record("request_id", tracing::field::debug(id));
        }
        let model = ins.model_of(req.extensions());
        CallWatch {
            span,
            record: Some(Record::new(ins.clone(), model)),
        }
    }

    /// The call's result: a failure is counted now, a success when its body ends.
    pub(crate) fn finish<B: Body>(
        &mut self,
        result: Result<Response<B>, Error>,
    ) -> Result<Response<ObservedBody<B>>, Error> {
        let Some(mut record) = self.record.take() else {
            return result.map(|r| r.map(ObservedBody::passthrough));
        };
        let span = std::mem::replace(&mut self.span, Span::none());
        match result {
            Ok(resp) => {
                let class = Classification::class_of(&resp);
                if !span.is_disabled() {
                    span.record("status", resp.status().as_u16());
                    span.record("class", class.label());
                    span.record("attempts", RetryInfo::of(&resp).attempts());
                    let c = resp.extensions().get::<Classification>();
                    if let Some(id) = c.and_then(Classification::request_id) {
                        span.record("request_id", id);
                    }
                }
                if !class.is_success() {
                    // A non-success answer is a failure whatever its body holds.
                    record.finish(Outcome::Failure, Some(class), &span);
                    return Ok(resp.map(ObservedBody::passthrough));
                }
                let ended = resp.body().is_end_stream();
                let mut resp = resp.map(|b| ObservedBody {
                    inner: b,
                    record: Some(record),
                    span,
                    first_byte: false,
                });
                if ended {
                    resp.body_mut().end();
                }
                Ok(resp)
            }
            Err(e) => {
                if !span.is_disabled() {
                    if let Some(s) = e.status() {
                        span.record("status", s.as_u16());
                    }
                    if let Some(id) = e.request_id() {
                        span.record("request_id", id);
                    }
                }
                record.finish(Outcome::Failure, Some(e.class()), &span);
                Err(e)
            }
        }
    }
}

/// Marks the credentials a caller may have set as sensitive, so that nothing below (a
/// tower-http `TraceLayer` logging headers, a `Debug` of the request) can print them.
pub(crate) fn mark_sensitive(headers: &mut http::HeaderMap) {
    static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
    if let Some(v) = headers.get_mut(http::header::AUTHORIZATION) {
        v.set_sensitive(true);
    }
    if let Some(v) = headers.get_mut(&X_API_KEY) {
        v.set_sensitive(true);
    }
}

/// The pending outcome of one call; counted once, when it ends, however it ends
/// (a drop before the end counts as cancelled).
struct Record {
    ins: Arc<Instruments>,
    model: Option<Arc<ModelCounters>>,
    start: Instant,
    done: bool,
}

impl Record {
    fn new(ins: Arc<Instruments>, model: Option<Arc<ModelCounters>>) -> Self {
        Record {
            ins,
            model,
            start: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, outcome: Outcome, class: Option<Class>, span: &Span) {
        if self.done {
            return;
        }
        self.done = true;
        let total = self.start.elapsed();
        self.ins
            .request_done(outcome, class, total, self.model.as_deref());
        span.record("outcome", outcome.label());
        span.record("total_ms", ms(total));
        if let Some(c) = class {
            span.record("class", c.label());
        }
        let latency_ms = ms(total);
        match (outcome, class) {
            (Outcome::Failure, Some(c)) if !matches!(c, Class::ClientError(_)) => {
                tracing::error!(parent: span, class = c.label(), latency_ms, "response failed");
            }
            _ => {
                tracing::debug!(parent: span, outcome = outcome.label(), latency_ms, "finished processing request");
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.ins.request_done(
                Outcome::Cancelled,
                None,
                self.start.elapsed(),
                self.model.as_deref(),
            );
        }
    }
}

pin_project! {
    /// The future of [`Observe`].
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        watch: CallWatch,
    }
}

impl<F> fmt::Debug for CallFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFuture").finish_non_exhaustive()
    }
}

impl<F, B> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<B>, Error>>,
    B: Body,
{
    type Output = Result<Response<ObservedBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.watch.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        Poll::Ready(this.watch.finish(result))
    }
}

pin_project! {
    /// The response body: it reports the first byte and the end of the call.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
        span: Span,
        first_byte: bool,
    }
}

impl<B> ObservedBody<B> {
    fn passthrough(inner: B) -> Self {
        ObservedBody {
            inner,
            record: None,
            span: Span::none(),
            first_byte: true,
        }
    }

    fn end(&mut self) {
        settle(
            &mut self.record,
            Outcome::Success,
            Class::Success,
            &self.span,
        );
    }
}

/// Counts the request's outcome, if it is still pending.
fn settle(record: &mut Option<Record>, outcome: Outcome, class: Class, span: &Span) {
    if let Some(mut r) = record.take() {
        r.finish(outcome, Some(class), span);
    }
}

impl<B> fmt::Debug for ObservedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedBody")
            .field("pending", &self.record.is_some())
            .finish()
    }
}

/// The class of a body error, for the call's outcome. Implemented for firebreak's [`Error`]
/// (its own class), boxed errors (firebreak's class when one is inside, else `other`) and
/// `Infallible`. Sealed: public only because it bounds [`ObservedBody`]'s `Body` impl, and not
/// nameable outside the crate.
#[allow(unreachable_pub)]
pub trait BodyErrorClass {
    /// The class of this error.
    fn class(&self) -> Class;
}

impl BodyErrorClass for Error {
    fn class(&self) -> Class {
        Error::class(self)
    }
}

impl BodyErrorClass for crate::BoxError {
    fn class(&self) -> Class {
        self.downcast_ref::<Error>()
            .map_or(Class::Other, Error::class)
    }
}

impl BodyErrorClass for std::convert::Infallible {
    fn class(&self) -> Class {
        match *self {}
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: BodyErrorClass,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        let Some(record) = this.record.as_mut() else {
            return r;
        };
        let ended = match &r {
            Poll::Pending => None,
            Poll::Ready(Some(Ok(frame))) => {
                if !*this.first_byte && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    *this.first_byte = true;
                    let after = record.start.elapsed();
                    record.ins.first_byte(after);
                    this.span.record("ttfb_ms", ms(after));
                }
                // Some readers (hyper's server among them) stop at `is_end_stream` and never
                // poll for the final `None`.
                this.inner
                    .is_end_stream()
                    .then_some((Outcome::Success, Class::Success))
            }
            Poll::Ready(Some(Err(e))) => Some((Outcome::Failure, e.class())),
            Poll::Ready(None) => Some((Outcome::Success, Class::Success)),
        };
        if let Some((outcome, class)) = ended {
            settle(this.record, outcome, class, this.span);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
