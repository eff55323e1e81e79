//! The overall deadline: carried on the request, respected by every layer below it.

use crate::body::{EndBy, TimedResponseBody};
use firebreak_classify::{BoxError, Error, TimeoutPhase};
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

tokio::task_local! {
    /// The deadline of a [`DeadlineLayer::scoped`] layer, for the code it calls and polls.
    static SCOPED: Deadline;
}

/// When the whole call must be over, across attempts, backoff sleeps and rate-limit waits.
///
/// [`DeadlineLayer`] puts it in the request extensions (or, [scoped](DeadlineLayer::scoped), in
/// a task-local); the retry and 429 layers read it with [`Deadline::of`] and never start an
/// attempt or a wait that cannot finish in time ([`Deadline::check_wait`]): they fail at once
/// instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// A deadline `total` from now.
    pub fn after(total: Duration) -> Self {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// The deadline a request carries, if any: in its extensions, else the one of the scoped
    /// [`DeadlineLayer`] whose call or poll this code runs in.
    pub fn of<B>(req: &Request<B>) -> Option<Deadline> {
        req.extensions()
            .get::<Deadline>()
            .copied()
            .or_else(|| SCOPED.try_with(|d| *d).ok())
    }

    /// Sets this deadline on `req`, unless it already carries an earlier one (a deadline is only
    /// ever shortened). Returns the one now in force.
    pub fn apply<B>(self, req: &mut Request<B>) -> Deadline {
        let d = match Deadline::of(req) {
            Some(existing) if existing.at <= self.at => existing,
            _ => self,
        };
        req.extensions_mut().insert(d);
        d
    }

    /// The instant it passes.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The configured total.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The error for a call that ran out of time.
    pub fn error(&self) -> Error {
        Error::timeout(TimeoutPhase::Deadline, self.total)
    }

    /// Checks that a wait of `wait` (a backoff sleep, a rate-limit wait) ends before the
    /// deadline, with `margin` left for the attempt that follows it.
    ///
    /// # Errors
    /// A deadline [`Error`] saying how long the wait was and how much time was left, so that
    /// the caller fails now instead of sleeping into a certain timeout.
    pub fn check_wait(&self, wait: Duration, margin: Duration) -> Result<(), Error> {
        let left = self.remaining();
        if wait.saturating_add(margin) < left {
            Ok(())
        } else {
            Err(self.error().with_detail(format!(
                "not waiting {wait:?}: only {left:?} of the {:?} deadline is left",
                self.total
            )))
        }
    }
}

/// Stamps a [`Deadline`] on every request and enforces it on the response and its body.
/// Put it outside the retry and 429 layers, so backoff sleeps and 429 waits count against it.
///
/// ```
/// use firebreak_timeout::DeadlineLayer;
/// use std::time::Duration;
///
/// let layer = DeadlineLayer::new(Duration::from_secs(120)).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    total: Duration,
    enforce: bool,
    scoped: bool,
}

impl DeadlineLayer {
    /// A deadline of `total` per call.
    ///
    /// # Errors
    /// [`crate::ConfigError`] for zero or more than [`crate::MAX_TIMEOUT`].
    pub fn new(total: Duration) -> Result<Self, crate::ConfigError> {
        if total.is_zero() {
            return Err(crate::ConfigError::Zero("deadline"));
        }
        if total > crate::MAX_TIMEOUT {
            return Err(crate::ConfigError::TooLong("deadline", total));
        }
        Ok(DeadlineLayer {
            total,
            enforce: true,
            scoped: false,
        })
    }

    /// Carries the deadline in a task-local, set while the layers below are called and polled,
    /// instead of in the request extensions. [`Deadline::of`] finds it either way, and it costs
    /// no allocation (an extension allocates the map, and a retry's copy of the request
    /// allocates it again). The catch: code that runs on another task (below a
    /// `tower::buffer::Buffer`, say) does not see it. firebreak's `Stack` uses it; keep the
    /// default when a layer below may move the call to another task.
    pub fn scoped(mut self) -> Self {
        self.scoped = true;
        self
    }

    /// Stamps the deadline without arming a timer of its own, for stacks in which every wait
    /// below already ends at the deadline: firebreak's `Stack`, where the attempt timeouts
    /// (and the response body they return) end at it, the retry layer refuses a backoff that
    /// would pass it, and the 429 gate refuses or gives up a wait at it. Saves one timer and one
    /// allocation per call. With any other inner service, keep the default.
    pub fn enforced_below(mut self) -> Self {
        self.enforce = false;
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService {
            inner,
            total: self.total,
            enforce: self.enforce,
            scoped: self.scoped,
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    total: Duration,
    enforce: bool,
    scoped: bool,
}

impl<S> DeadlineService<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for DeadlineService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<TimedResponseBody<ResB>>;
    type Error = Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::transport)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let (dl, fut) = if self.scoped {
            // A deadline is only ever shortened: an outer one that ends first stays in force.
            let mine = Deadline::after(self.total);
            let dl = match Deadline::of(&req) {
                Some(outer) if outer.at <= mine.at => outer,
                _ => mine,
            };
            (dl, SCOPED.sync_scope(dl, || self.inner.call(req)))
        } else {
            let dl = Deadline::after(self.total).apply(&mut req);
            (dl, self.inner.call(req))
        };
        DeadlineFuture {
            fut,
            sleep: None,
            dl,
            enforce: self.enforce,
            scoped: self.scoped,
        }
    }
}

pin_project! {
    /// The future of [`DeadlineService`].
    pub struct DeadlineFuture<F> {
        #[pin]
        fut: F,
        sleep: Option<Pin<Box<Sleep>>>,
        dl: Deadline,
        enforce: bool,
        scoped: bool,
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFuture")
            .field("deadline", &self.dl)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<TimedResponseBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = if *this.scoped {
            let fut = this.fut;
            SCOPED.sync_scope(*this.dl, || fut.poll(cx))
        } else {
            this.fut.poll(cx)
        };
        match polled {
            Poll::Ready(Ok(resp)) => {
                let end = (*this.enforce).then(|| EndBy {
                    at: this.dl.instant(),
                    phase: TimeoutPhase::Deadline,
                    configured: this.dl.total(),
                });
                let sleep = this.sleep.take();
                return Poll::Ready(Ok(
                    resp.map(|b| TimedResponseBody::new(b, sleep, None, None, None, end))
                ));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::transport(e))),
            Poll::Pending if !*this.enforce => return Poll::Pending,
            Poll::Pending => {}
        }
        // The timer is only created when the inner future is actually pending.
        let at = this.dl.instant();
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(this.dl.error())),
            Poll::Pending => Poll::Pending,
        }
    }
}
