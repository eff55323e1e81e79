//! [`ServiceBuilderExt`]: firebreak's layers one by one on a `tower::ServiceBuilder`.

use crate::classify::ClassifyLayer;
use crate::gate::GateLayer;
use crate::gate::{GateConfig, KeyBy};
use crate::retry::RetryConfig;
use crate::retry::RetryLayer;
use crate::timeout::TimeoutConfig;
use crate::timeout::{AttemptTimeoutLayer, DeadlineLayer};
use crate::{Stack, StackError, StackLayer};
use std::time::Duration;
use tower::ServiceBuilder;
use tower::layer::util::Stack as Layered;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds firebreak's layers to a `ServiceBuilder`, one by one or all at once. Sealed: only
/// `ServiceBuilder` implements it. Put them in the order the [crate docs](crate) give, and why,
/// or use [`ServiceBuilderExt::fireworks_stack`], which does.
///
/// ```
/// use bytes::Bytes;
/// use firebreak::{ServiceBuilderExt, Stack};
/// use firebreak_sim::{Sim, SimConfig};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let sim = Sim::start(SimConfig::default()).await?; // a local stand-in for Fireworks
/// // Any hyper-util client, with the request body the stack sends. `SharedClient` puts it
/// // behind one `Arc`: the layers clone the service below them on every call.
/// let hyper_client = firebreak::client::SharedClient::new(
///     hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
///         .build_http::<firebreak::InnerBody<Full<Bytes>>>(),
/// );
/// let svc = ServiceBuilder::new()
///     .fireworks_stack(&Stack::interactive())?
///     .service(hyper_client);
/// let req = http::Request::post(format!("{}/chat/completions", sim.base_url()))
///     .header("authorization", "Bearer fw_example")
///     .body(Full::new(Bytes::from_static(br#"{"model":"m","messages":[]}"#)))?;
/// let resp = svc.oneshot(req).await?;
/// assert_eq!(resp.status(), 200);
/// let body = resp.into_body().collect().await?.to_bytes();
/// assert!(body.starts_with(b"{"));
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// The whole stack, in order.
    ///
    /// # Errors
    /// [`StackError`] for an invalid setting.
    fn fireworks_stack(
        self,
        stack: &Stack,
    ) -> Result<ServiceBuilder<Layered<StackLayer, L>>, StackError>;
    /// The overall deadline.
    ///
    /// # Errors
    /// [`StackError::Timeout`] for a zero or over-a-day duration.
    fn fireworks_deadline(
        self,
        total: Duration,
    ) -> Result<ServiceBuilder<Layered<DeadlineLayer, L>>, StackError>;
    /// The retry layer.
    ///
    /// # Errors
    /// [`StackError::Retry`] for an invalid policy.
    fn fireworks_retry(
        self,
        cfg: RetryConfig,
    ) -> Result<ServiceBuilder<Layered<RetryLayer, L>>, StackError>;
    /// The 429 gate.
    ///
    /// # Errors
    /// [`StackError::Gate`] for invalid settings.
    fn fireworks_gate(
        self,
        cfg: GateConfig,
        key_by: KeyBy,
    ) -> Result<ServiceBuilder<Layered<GateLayer, L>>, StackError>;
    /// The per-attempt timeouts.
    ///
    /// # Errors
    /// [`StackError::Timeout`] for invalid timeouts.
    fn fireworks_attempt_timeouts(
        self,
        cfg: &TimeoutConfig,
    ) -> Result<ServiceBuilder<Layered<AttemptTimeoutLayer, L>>, StackError>;
    /// The classification layer.
    fn fireworks_classify(self) -> ServiceBuilder<Layered<ClassifyLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn fireworks_stack(
        self,
        stack: &Stack,
    ) -> Result<ServiceBuilder<Layered<StackLayer, L>>, StackError> {
        Ok(self.layer(stack.layer()?))
    }

    fn fireworks_deadline(
        self,
        total: Duration,
    ) -> Result<ServiceBuilder<Layered<DeadlineLayer, L>>, StackError> {
        Ok(self.layer(DeadlineLayer::new(total).map_err(StackError::Timeout)?))
    }

    fn fireworks_retry(
        self,
        cfg: RetryConfig,
    ) -> Result<ServiceBuilder<Layered<RetryLayer, L>>, StackError> {
        Ok(self.layer(RetryLayer::new(cfg).map_err(StackError::Retry)?))
    }

    fn fireworks_gate(
        self,
        cfg: GateConfig,
        key_by: KeyBy,
    ) -> Result<ServiceBuilder<Layered<GateLayer, L>>, StackError> {
        Ok(self.layer(GateLayer::new(cfg, key_by).map_err(StackError::Gate)?))
    }

    fn fireworks_attempt_timeouts(
        self,
        cfg: &TimeoutConfig,
    ) -> Result<ServiceBuilder<Layered<AttemptTimeoutLayer, L>>, StackError> {
        Ok(self.layer(AttemptTimeoutLayer::new(cfg).map_err(StackError::Timeout)?))
    }

    fn fireworks_classify(self) -> ServiceBuilder<Layered<ClassifyLayer, L>> {
        self.layer(ClassifyLayer::new())
    }
}
