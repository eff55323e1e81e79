//! [`ConnectTimeoutLayer`]: a timeout on the connector (DNS + TCP + TLS), whose error names the
//! phase and the configured duration and is classified as client-side.

// Used by the stack's connector (`FireworksClient`), the one owner of the connect timeout.
#![cfg_attr(not(feature = "stack"), allow(dead_code))]

use crate::{BoxError, Error, TimeoutPhase};
use http::Uri;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Wraps a connector (a `Service<Uri>`, such as hyper-util's `HttpConnector` or hyper-rustls'
/// `HttpsConnector`) with a connect timeout covering resolution, TCP and TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectTimeoutLayer {
    d: Duration,
}

impl ConnectTimeoutLayer {
    /// A connect timeout of `d`.
    ///
    /// # Errors
    /// [`crate::timeout::TimeoutConfigError`] for zero or more than [`crate::timeout::MAX_TIMEOUT`].
    pub(crate) fn new(d: Duration) -> Result<Self, crate::timeout::TimeoutConfigError> {
        if d.is_zero() {
            return Err(crate::timeout::TimeoutConfigError::Zero("connect"));
        }
        if d > crate::timeout::MAX_TIMEOUT {
            return Err(crate::timeout::TimeoutConfigError::TooLong("connect", d));
        }
        Ok(ConnectTimeoutLayer { d })
    }
}

impl<C> Layer<C> for ConnectTimeoutLayer {
    type Service = ConnectTimeout<C>;
    fn layer(&self, inner: C) -> ConnectTimeout<C> {
        ConnectTimeout { inner, d: self.d }
    }
}

/// The connector [`ConnectTimeoutLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct ConnectTimeout<C> {
    inner: C,
    d: Duration,
}

impl<C> Service<Uri> for ConnectTimeout<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Unpin,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ConnectFuture<C::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        ConnectFuture {
            fut: self.inner.call(dst),
            sleep: Box::pin(tokio::time::sleep(self.d)),
            d: self.d,
        }
    }
}

/// The future of [`ConnectTimeout`]. It is `Unpin`, as hyper-util's client requires of
/// connector futures.
pub(crate) struct ConnectFuture<F> {
    fut: F,
    sleep: Pin<Box<Sleep>>,
    d: Duration,
}

impl<F> std::fmt::Debug for ConnectFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectFuture")
            .field("timeout", &self.d)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ConnectFuture<F>
where
    F: Future<Output = Result<T, E>> + Unpin,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(Box::new(Error::timeout(TimeoutPhase::Connect, self.d))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, TimeoutPhase};
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn connect_timeout_names_its_phase_and_is_client_side() {
        let never =
            tower::service_fn(|_uri: Uri| std::future::pending::<Result<(), std::io::Error>>());
        let mut c = ConnectTimeoutLayer::new(Duration::from_secs(10))
            .unwrap()
            .layer(never);
        let t0 = Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(60),
            c.call(Uri::from_static("http://127.0.0.1:1/")),
        )
        .await
        .expect("bounded")
        .unwrap_err();
        let e = e.downcast::<Error>().expect("a firebreak error");
        assert_eq!(
            e.timeout_parts(),
            (TimeoutPhase::Connect, Duration::from_secs(10))
        );
        assert!(e.is_client_side() && e.is_connect());
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert!(matches!(
            ConnectTimeoutLayer::new(Duration::ZERO),
            Err(crate::timeout::TimeoutConfigError::Zero("connect"))
        ));
    }
}
