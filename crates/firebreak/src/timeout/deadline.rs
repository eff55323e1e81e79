//! The overall deadline: carried on the request, respected by every layer below it.

use crate::deadline::SCOPED;
use crate::timeout::body::{EndBy, TimedResponseBody};
use crate::{BoxError, Deadline, Error, TimeoutPhase};
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Stamps a [`Deadline`] on every request and enforces it on the response and its body.
/// Put it outside the retry and 429 layers, so backoff sleeps and 429 waits count against it.
///
/// ```
/// use firebreak::timeout::DeadlineLayer;
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
    /// [`crate::timeout::TimeoutConfigError`] for zero or more than [`crate::timeout::MAX_TIMEOUT`].
    pub fn new(total: Duration) -> Result<Self, crate::timeout::TimeoutConfigError> {
        if total.is_zero() {
            return Err(crate::timeout::TimeoutConfigError::Zero("deadline"));
        }
        if total > crate::timeout::MAX_TIMEOUT {
            return Err(crate::timeout::TimeoutConfigError::TooLong(
                "deadline", total,
            ));
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
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn scoped(mut self) -> Self {
        self.scoped = true;
        self
    }

    /// Stamps the deadline without arming a timer of its own, for stacks in which every wait
    /// below already ends at the deadline: firebreak's `Stack`, where the attempt timeouts
    /// (and the response body they return) end at it, the retry layer refuses a backoff that
    /// would pass it, and the 429 gate refuses or gives up a wait at it. Saves one timer and one
    /// allocation per call. With any other inner service, keep the default.
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn enforced_below(mut self) -> Self {
        self.enforce = false;
        self
    }

    /// The deadline per call.
    #[cfg(feature = "stack")]
    pub(crate) fn total(&self) -> Duration {
        self.total
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
            let dl = Deadline::after(self.total).shortened_by(Deadline::of(&req));
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

#[cfg(test)]
mod tests {
    //! The two modes only firebreak's `Stack` uses.
    use super::*;
    use crate::timeout::{AttemptTimeoutLayer, TimedRequestBody, TimeoutConfig};
    use bytes::Bytes;
    use firebreak_testkit::bounded;
    use http_body_util::Full;
    use tokio::time::Instant;
    use tower::ServiceExt;
    use tower_test::mock;

    fn cfg() -> TimeoutConfig {
        TimeoutConfig {
            headers: Some(Duration::from_secs(20)),
            attempt: Some(Duration::from_secs(100)),
            ..TimeoutConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_enforced_below_is_stamped_and_still_ends_the_call_through_the_attempt() {
        bounded(3600, async {
            let (m, mut h) =
                mock::pair::<Request<TimedRequestBody<Full<Bytes>>>, Response<Full<Bytes>>>();
            let svc = DeadlineLayer::new(Duration::from_secs(8))
                .unwrap()
                .enforced_below()
                .layer(AttemptTimeoutLayer::new(&cfg()).unwrap().layer(m));
            let t0 = Instant::now();
            let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
            let (req, _send) = h.next_request().await.unwrap();
            assert!(Deadline::of(&req).is_some(), "stamped");
            // The attempt layer, which reads the stamp, ends the call at the deadline.
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(
                e.timeout_parts(),
                (TimeoutPhase::Deadline, Duration::from_secs(8))
            );
            assert_eq!(t0.elapsed(), Duration::from_secs(8));
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_scoped_deadline_is_seen_below_without_an_extension_and_only_shortens() {
        bounded(3600, async {
            let (m, mut h) =
                mock::pair::<Request<TimedRequestBody<Full<Bytes>>>, Response<Full<Bytes>>>();
            // An outer (extension) deadline of 5 s around a scoped one of 8 s: 5 s is in force.
            let svc = DeadlineLayer::new(Duration::from_secs(5)).unwrap().layer(
                DeadlineLayer::new(Duration::from_secs(8))
                    .unwrap()
                    .scoped()
                    .layer(AttemptTimeoutLayer::new(&cfg()).unwrap().layer(m)),
            );
            let t0 = Instant::now();
            let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
            let (req, _send) = h.next_request().await.unwrap();
            assert!(Deadline::of(&req).is_some(), "the outer extension");
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(e.timeout_parts().0, TimeoutPhase::Deadline);
            assert_eq!(t0.elapsed(), Duration::from_secs(5));

            // Scoped alone: no extension on the request, yet the attempt layer below sees it.
            let (m, mut h) =
                mock::pair::<Request<TimedRequestBody<Full<Bytes>>>, Response<Full<Bytes>>>();
            let svc = DeadlineLayer::new(Duration::from_secs(3))
                .unwrap()
                .scoped()
                .layer(AttemptTimeoutLayer::new(&cfg()).unwrap().layer(m));
            let t0 = Instant::now();
            let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
            let (req, _send) = h.next_request().await.unwrap();
            assert!(req.extensions().get::<Deadline>().is_none(), "no extension");
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(
                e.timeout_parts(),
                (TimeoutPhase::Deadline, Duration::from_secs(3))
            );
            assert_eq!(t0.elapsed(), Duration::from_secs(3));
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_enforced_below_arms_no_timer_of_its_own() {
        bounded(3600, async {
            // An inner service that ignores the stamp: only a deadline that enforces itself ends it.
            let (m, mut h) = mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
            let svc = DeadlineLayer::new(Duration::from_secs(1))
                .unwrap()
                .enforced_below()
                .layer(m);
            let call = svc.oneshot(Request::new(Full::new(Bytes::new())));
            let serve = async {
                let _keep = h.next_request().await;
                std::future::pending::<()>().await
            };
            let raced = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::select! {
                    r = call => r.map(|_| ()),
                    () = serve => Ok(()),
                }
            })
            .await;
            assert!(
                raced.is_err(),
                "nothing ended the call before 5 s: no timer was armed"
            );
        })
        .await
    }
}
