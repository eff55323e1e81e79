//! The overall deadline: carried on the request, respected by every layer below it.

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
        Ok(DeadlineLayer { total })
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService {
            inner,
            total: self.total,
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    total: Duration,
}

impl<S> DeadlineService<S> {
    crate::inner_service_accessors!();
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
        let dl = Deadline::after(self.total).apply(&mut req);
        DeadlineFuture {
            fut: self.inner.call(req),
            sleep: None,
            dl,
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
        match this.fut.poll(cx) {
            Poll::Ready(Ok(resp)) => {
                let end = EndBy {
                    at: this.dl.instant(),
                    phase: TimeoutPhase::Deadline,
                    configured: this.dl.total(),
                };
                let sleep = this.sleep.take();
                return Poll::Ready(Ok(
                    resp.map(|b| TimedResponseBody::new(b, sleep, None, None, None, Some(end)))
                ));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::transport(e))),
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
    //! The deadline layer alone.
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
    async fn a_deadline_is_stamped_only_shortens_and_ends_a_call_below_that_ignores_it() {
        bounded(3600, async {
            // An outer deadline of 5 s around an inner one of 8 s: 5 s is in force, and the
            // attempt layer below, which reads the stamp, ends the call then.
            let (m, mut h) =
                mock::pair::<Request<TimedRequestBody<Full<Bytes>>>, Response<Full<Bytes>>>();
            let svc = DeadlineLayer::new(Duration::from_secs(5)).unwrap().layer(
                DeadlineLayer::new(Duration::from_secs(8))
                    .unwrap()
                    .layer(AttemptTimeoutLayer::new(&cfg()).unwrap().layer(m)),
            );
            let t0 = Instant::now();
            let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
            let (req, _send) = h.next_request().await.unwrap();
            assert_eq!(
                Deadline::of(&req).map(|d| d.total()),
                Some(Duration::from_secs(5)),
                "the outer, earlier deadline stays on the request"
            );
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(e.timeout_parts().0, TimeoutPhase::Deadline);
            assert_eq!(t0.elapsed(), Duration::from_secs(5));

            // An inner service that ignores the stamp: the layer's own timer ends the call.
            let (m, mut h) = mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
            let svc = DeadlineLayer::new(Duration::from_secs(3)).unwrap().layer(m);
            let t0 = Instant::now();
            let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
            let _keep = h.next_request().await.unwrap();
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(
                e.timeout_parts(),
                (TimeoutPhase::Deadline, Duration::from_secs(3))
            );
            assert_eq!(t0.elapsed(), Duration::from_secs(3));
        })
        .await
    }
}
