//! [`AttemptTimeoutLayer`]: the per-attempt phases (ready, write, headers, first event, idle,
//! attempt total), bounded by the overall [`Deadline`] when the request carries one.

use crate::Deadline;
use crate::timeout::body::{
    Earliest, EndBy, TimedRequestBody, TimedResponseBody, WriteProgress, arm,
};
use crate::timeout::config::TimeoutConfig;
use crate::{BoxError, Error, TimeoutPhase};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// The per-attempt phases of a [`TimeoutConfig`] (everything but `connect` and `deadline`).
///
/// A request may carry its own in its extensions: [`AttemptTimeoutLayer`] then uses them, in
/// place of its configured ones, for every attempt of that request. This is how one stack
/// serves calls of several workloads (a proxy picking a preset per request, or sizing attempts
/// to the caller's own deadline). Pair it with a [`Deadline`] extension for the overall limit.
///
/// ```
/// use firebreak::timeout::{AttemptTimeouts, TimeoutConfig, Workload};
///
/// let mut req = http::Request::new(());
/// let agentic = AttemptTimeouts::from(&TimeoutConfig::preset(Workload::Agentic));
/// req.extensions_mut().insert(agentic);
/// ```
///
/// It is a [`TimeoutConfig`] (its fields are read through it) of which only the per-attempt
/// phases count: `ready`, `write`, `headers`, `first_event`, `idle`, `attempt`. The connect
/// timer is the connector's, and the overall limit is the [`Deadline`] extension's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptTimeouts(TimeoutConfig);

impl From<&TimeoutConfig> for AttemptTimeouts {
    fn from(c: &TimeoutConfig) -> Self {
        AttemptTimeouts(*c)
    }
}

impl std::ops::Deref for AttemptTimeouts {
    type Target = TimeoutConfig;
    fn deref(&self) -> &TimeoutConfig {
        &self.0
    }
}

impl std::ops::DerefMut for AttemptTimeouts {
    fn deref_mut(&mut self) -> &mut TimeoutConfig {
        &mut self.0
    }
}

/// Applies the per-attempt timeouts. Put it inside the retry and 429 layers, so each attempt is
/// timed on its own and time queued for admission is not charged to the attempt.
///
/// ```
/// use firebreak::timeout::{AttemptTimeoutLayer, TimeoutConfig, Workload};
/// use tower::Layer;
///
/// let cfg = TimeoutConfig::preset(Workload::Interactive);
/// let layer = AttemptTimeoutLayer::new(&cfg).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AttemptTimeoutLayer {
    t: AttemptTimeouts,
}

impl AttemptTimeoutLayer {
    /// A layer with `cfg`'s per-attempt phases.
    ///
    /// # Errors
    /// [`crate::timeout::TimeoutConfigError`] when `cfg` does not validate.
    pub fn new(cfg: &TimeoutConfig) -> Result<Self, crate::timeout::TimeoutConfigError> {
        cfg.validate()?;
        Ok(AttemptTimeoutLayer { t: cfg.into() })
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(&self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout {
            inner,
            t: self.t,
            ready_sleep: None,
        }
    }
}

/// The service [`AttemptTimeoutLayer`] makes.
#[derive(Debug)]
pub struct AttemptTimeout<S> {
    inner: S,
    t: AttemptTimeouts,
    ready_sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: Clone> Clone for AttemptTimeout<S> {
    fn clone(&self) -> Self {
        // A clone has not waited for readiness yet: its ready timer starts afresh.
        AttemptTimeout {
            inner: self.inner.clone(),
            t: self.t,
            ready_sleep: None,
        }
    }
}

impl<S> AttemptTimeout<S> {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// As [`AttemptTimeoutLayer::new`].
    pub fn new(inner: S, cfg: &TimeoutConfig) -> Result<Self, crate::timeout::TimeoutConfigError> {
        Ok(AttemptTimeoutLayer::new(cfg)?.layer(inner))
    }

    /// A layer making this service.
    ///
    /// # Errors
    /// As [`AttemptTimeoutLayer::new`].
    pub fn layer(
        cfg: &TimeoutConfig,
    ) -> Result<AttemptTimeoutLayer, crate::timeout::TimeoutConfigError> {
        AttemptTimeoutLayer::new(cfg)
    }

    crate::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AttemptTimeout<S>
where
    S: Service<Request<TimedRequestBody<ReqB>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<TimedResponseBody<ResB>>;
    type Error = Error;
    type Future = AttemptTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let inner = self.inner.poll_ready(cx);
        ready_within(inner, self.t.ready, &mut self.ready_sleep, cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match AttemptTimers::start(self.t, req) {
            Ok((timers, req)) => AttemptTimeoutFuture {
                state: State::Running {
                    fut: self.inner.call(req),
                },
                timers,
            },
            Err(err) => AttemptTimeoutFuture {
                state: State::Failed { err: Some(err) },
                timers: AttemptTimers::default(),
            },
        }
    }
}

/// The ready wait: `inner`'s readiness, or a [`TimeoutPhase::Ready`] error once it has been
/// pending for `ready` (timed by `sleep`, which a ready answer clears).
pub(crate) fn ready_within<E: Into<BoxError>>(
    inner: Poll<Result<(), E>>,
    ready: Option<Duration>,
    sleep: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Error>> {
    match inner {
        Poll::Ready(r) => {
            *sleep = None;
            Poll::Ready(r.map_err(Error::transport))
        }
        Poll::Pending => {
            let Some(d) = ready else {
                return Poll::Pending;
            };
            let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
            match s.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *sleep = None;
                    Poll::Ready(Err(Error::timeout(TimeoutPhase::Ready, d)))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

/// One attempt's timers, from its request to its response's head: the write, the headers
/// (TTFB), the attempt total and the overall deadline, on one reusable timer, which the
/// response body then takes over. [`AttemptTimeout`]'s future keeps one.
#[derive(Default)]
pub(crate) struct AttemptTimers {
    t: AttemptTimeouts,
    started: Option<Instant>,
    progress: Option<Arc<WriteProgress>>,
    deadline: Option<Deadline>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl AttemptTimers {
    /// Starts timing `req` with its own [`AttemptTimeouts`], or `default`. Fails when its
    /// deadline has already passed: the attempt is not started.
    pub(crate) fn start<B: Body<Data = Bytes>>(
        default: AttemptTimeouts,
        req: Request<B>,
    ) -> Result<(Self, Request<TimedRequestBody<B>>), Error> {
        let deadline = Deadline::of(&req);
        // A request's own timeouts replace the layer's (an empty extensions map costs nothing).
        let t = req
            .extensions()
            .get::<AttemptTimeouts>()
            .copied()
            .unwrap_or(default);
        if let Some(dl) = deadline {
            if dl.is_expired() {
                return Err(dl.error().with_detail("the attempt was not started"));
            }
        }
        let (parts, body) = req.into_parts();
        // Only a tracked write reads the clock here; otherwise timers start at the first wait.
        let progress = (t.write.is_some() && TimedRequestBody::needs_tracking(&body))
            .then(|| WriteProgress::new(Instant::now()));
        let started = progress.as_ref().map(|p| p.base());
        let req = Request::from_parts(parts, TimedRequestBody::new(body, progress.clone()));
        let timers = AttemptTimers {
            t,
            started,
            progress,
            deadline,
            sleep: None,
        };
        Ok((timers, req))
    }

    fn deadline_end(&self) -> Option<EndBy> {
        self.deadline.map(|dl| EndBy {
            at: dl.instant(),
            phase: TimeoutPhase::Deadline,
            configured: dl.total(),
        })
    }

    /// The response, its body timed from here on (idle, first SSE event, attempt total,
    /// deadline) on this attempt's timer.
    pub(crate) fn finish<B: Body>(&mut self, resp: Response<B>) -> Response<TimedResponseBody<B>> {
        let sse = crate::parse::is_event_stream(resp.headers());
        let first_event = if sse { self.t.first_event } else { None };
        let sleep = self.sleep.take();
        let attempt = self.t.attempt.map(|d| (self.started, d));
        let (idle, end) = (self.t.idle, self.deadline_end());
        resp.map(|b| TimedResponseBody::new(b, sleep, idle, first_event, attempt, end))
    }

    /// Ready with the error of the timer that fired, if one has; pending (the waker
    /// registered on the timer and the write's progress) otherwise.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let deadline_end = self.deadline_end();
        // At most two turns: the second re-arms the timer at the earliest deadline, and then it
        // is either pending (waker registered) or has fired, which means that deadline passed.
        let mut fired = false;
        loop {
            let now = Instant::now();
            let started = *self.started.get_or_insert(now);
            let mut next = Earliest::default();
            if let Some(d) = self.t.attempt {
                next.consider(started + d, TimeoutPhase::Attempt, d);
            }
            if let Some(e) = deadline_end {
                next.consider(e.at, e.phase, e.configured);
            }
            match self.progress.as_ref() {
                Some(p) => match p.done_at() {
                    None => {
                        p.register(cx);
                        if let Some(w) = self.t.write {
                            next.consider(started + w, TimeoutPhase::Write, w);
                        }
                    }
                    Some(done) => {
                        if let Some(h) = self.t.headers {
                            next.consider(done + h, TimeoutPhase::Headers, h);
                        }
                    }
                },
                None => {
                    if let Some(h) = self.t.headers {
                        next.consider(started + h, TimeoutPhase::Headers, h);
                    }
                }
            }
            let Some((at, phase, d)) = next.0 else {
                return Poll::Pending;
            };
            if now >= at {
                return Poll::Ready(attempt_timeout(phase, d));
            }
            arm(&mut self.sleep, at, fired);
            match self.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                // The timer was set for an earlier, stale deadline: recompute and re-arm.
                Some(Poll::Ready(())) if !fired => fired = true,
                // Re-armed at `at` and fired at once: by the timer's clock, `at` has passed.
                Some(Poll::Ready(())) => return Poll::Ready(attempt_timeout(phase, d)),
                _ => return Poll::Pending,
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] fut: F },
        Failed { err: Option<Error> },
    }
}

pin_project! {
    /// The future of [`AttemptTimeout`].
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        state: State<F>,
        timers: AttemptTimers,
    }
}

impl<F> std::fmt::Debug for AttemptTimeoutFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptTimeoutFuture")
            .field("timeouts", &self.timers.t)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for AttemptTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<TimedResponseBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let fut = match this.state.project() {
            StateProj::Failed { err } => {
                return Poll::Ready(Err(err
                    .take()
                    .expect("AttemptTimeoutFuture polled after completion")));
            }
            StateProj::Running { fut } => fut,
        };
        match fut.poll(cx) {
            Poll::Ready(Ok(resp)) => Poll::Ready(Ok(this.timers.finish(resp))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::transport(e))),
            Poll::Pending => this.timers.poll_expired(cx).map(Err),
        }
    }
}

/// The error of a timer that fired during an attempt.
fn attempt_timeout(phase: TimeoutPhase, d: Duration) -> Error {
    let e = Error::timeout(phase, d);
    if phase == TimeoutPhase::Deadline {
        e.with_detail("the overall deadline passed during the attempt")
    } else {
        e
    }
}
