//! The composed stack: [`Stack`], its layer, and the ready-made [`FireworksClient`].

use crate::classify::{Classify, ClassifyLayer};
use crate::client::{ApiKey, ClientConfig, FIREWORKS_BASE_URL};
use crate::gate::{Gate, GateConfig, GateLayer, KeyBy};
use crate::observe::{AttemptObserve, AttemptObserveLayer, Observe, ObserveLayer, Observer};
use crate::retry::RetryConfig;
use crate::retry::{ReplayBody, Retry, RetryLayer};
use crate::timeout::{AttemptTimeout, AttemptTimeoutLayer, ConnectTimeoutLayer};
use crate::timeout::{DeadlineLayer, DeadlineService, TimedRequestBody};
use crate::timeout::{TimeoutConfig, Workload};
use crate::{Class, Error};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use std::fmt;
use std::sync::Arc;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// The composed service around an inner service `S`: every layer, nested in the order
/// ARCHITECTURE.md gives (outermost first).
pub type StackService<S> =
    Observe<DeadlineService<Retry<AttemptObserve<Gate<AttemptTimeout<Classify<S>>>>>>>;

/// The request body the innermost service (the hyper client) receives for callers' bodies `B`.
pub type InnerBody<B> = TimedRequestBody<ReplayBody<B>>;

/// A response body, boxed.
pub type FireworksBody = BoxBody<Bytes, Error>;

/// The whole stack as one boxed, cloneable service, for callers who do not want to name types.
pub type BoxStack = BoxCloneSyncService<Request<Full<Bytes>>, Response<FireworksBody>, Error>;

/// A stack that cannot be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum StackConfigError {
    /// A timeout setting.
    Timeout(crate::timeout::TimeoutConfigError),
    /// A retry setting.
    Retry(crate::retry::RetryConfigError),
    /// A 429 gate setting.
    Gate(crate::gate::GateConfigError),
    /// The HTTP client or the key.
    Client(crate::client::ClientError),
    /// The base URL.
    BaseUrl(crate::client::BaseUrlError),
}

impl fmt::Display for StackConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackConfigError::Timeout(e) => write!(f, "{e}"),
            StackConfigError::Retry(e) => write!(f, "{e}"),
            StackConfigError::Gate(e) => write!(f, "{e}"),
            StackConfigError::Client(e) => write!(f, "{e}"),
            StackConfigError::BaseUrl(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StackConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StackConfigError::Timeout(e) => Some(e),
            StackConfigError::Retry(e) => Some(e),
            StackConfigError::Gate(e) => Some(e),
            StackConfigError::Client(e) => Some(e),
            StackConfigError::BaseUrl(e) => Some(e),
        }
    }
}

/// The settings of every layer: a preset, with any setting replaced by its builder-style
/// setter (one per field, named as the field). Build the layer with [`Stack::layer`], which
/// validates them.
///
/// ```
/// use firebreak::{Stack, retry::RetryConfig, timeout::Workload};
///
/// let stack = Stack::preset(Workload::Agentic).retry(RetryConfig::default().max_attempts(3));
/// assert!(stack.layer().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stack {
    /// Timeouts, per phase, and the overall deadline.
    pub timeouts: TimeoutConfig,
    /// Retry policy.
    pub retry: RetryConfig,
    /// The 429 gate.
    pub gate: GateConfig,
    /// How the gate groups requests.
    pub key_by: KeyBy,
    /// Whether an error event inside an SSE stream ends the body with an error (the default), or
    /// passes through untouched (what a proxy wants).
    pub sse_errors_as_failures: bool,
    /// Whether to record tracing spans and metrics (on by default; see [`observe`](crate::observe)).
    pub observe: bool,
    /// How many distinct models get a `model` label on the call and attempt counters
    /// ([`Observer::with_model_cap`]; `0`, the default, for none; `firebreak proxy` uses 64).
    /// [`FireworksClient::post`] reads the model from the body when this is on. A model's
    /// series are registered when it is first seen, with the recorder current then: turn this
    /// on with a globally installed exporter.
    pub model_labels: usize,
    /// Other processes sharing the gate's account limits (`None`: this process alone). See
    /// [`Fleet`](crate::gate::Fleet); `firebreak-redis` gives one over Redis.
    pub fleet: Option<std::sync::Arc<dyn crate::gate::Fleet>>,
}

impl Stack {
    crate::setters! {
        timeouts: TimeoutConfig,
        retry: RetryConfig,
        gate: GateConfig,
        key_by: KeyBy,
        sse_errors_as_failures: bool,
        observe: bool,
        model_labels: usize,
        fleet: Option<std::sync::Arc<dyn crate::gate::Fleet>>,
    }

    /// The preset for a workload: its timeouts, and the default retry and gate settings.
    pub fn preset(w: Workload) -> Stack {
        Stack {
            timeouts: TimeoutConfig::preset(w),
            retry: RetryConfig::default(),
            gate: GateConfig::default(),
            key_by: KeyBy::Client,
            sse_errors_as_failures: true,
            observe: true,
            model_labels: 0,
            fleet: None,
        }
    }

    /// The interactive / chat preset (30–60 s), the common case: `preset(Workload::Interactive)`.
    pub fn interactive() -> Stack {
        Self::preset(Workload::Interactive)
    }

    /// Validates the settings and builds the layer. Metric handles are registered here, with
    /// the recorder current at that moment: install the exporter first.
    ///
    /// # Errors
    /// [`StackConfigError`] naming the first invalid setting.
    pub fn layer(&self) -> Result<StackLayer, StackConfigError> {
        let deadline = self
            .timeouts
            .deadline
            .unwrap_or(crate::timeout::MAX_TIMEOUT);
        let observer = if self.observe {
            Observer::with_model_cap(self.model_labels)
        } else {
            Observer::disabled()
        };
        Ok(StackLayer {
            model_labels: self.observe && self.model_labels > 0,
            observer,
            deadline: DeadlineLayer::new(deadline).map_err(StackConfigError::Timeout)?,
            retry: RetryLayer::new(self.retry.clone()).map_err(StackConfigError::Retry)?,
            gate: match &self.fleet {
                None => GateLayer::new(self.gate.clone(), self.key_by.clone()),
                Some(f) => GateLayer::with_fleet(self.gate.clone(), self.key_by.clone(), f.clone()),
            }
            .map_err(StackConfigError::Gate)?,
            attempt: AttemptTimeoutLayer::new(&self.timeouts).map_err(StackConfigError::Timeout)?,
            classify: ClassifyLayer::new().sse_errors_as_failures(self.sse_errors_as_failures),
        })
    }
}

/// The composed layer. Clones share the retry budget and the 429 gate.
#[derive(Debug, Clone)]
pub struct StackLayer {
    model_labels: bool,
    pub(crate) observer: Observer,
    pub(crate) deadline: DeadlineLayer,
    pub(crate) retry: RetryLayer,
    gate: GateLayer,
    pub(crate) attempt: AttemptTimeoutLayer,
    pub(crate) classify: ClassifyLayer,
}

impl StackLayer {
    /// The 429 gate, for metrics ([`GateLayer::snapshot`]).
    pub fn gate(&self) -> &GateLayer {
        &self.gate
    }

    /// The 429 gate's settings.
    pub(crate) fn gate_config(&self) -> &GateConfig {
        self.gate.config()
    }
}

impl<S> Layer<S> for StackLayer {
    type Service = StackService<S>;
    fn layer(&self, inner: S) -> StackService<S> {
        ServiceBuilder::new()
            .layer(ObserveLayer::new(self.observer.clone()))
            .layer(self.deadline)
            .layer(self.retry.clone())
            .layer(AttemptObserveLayer::new(self.observer.clone()))
            .layer(self.gate.clone())
            .layer(self.attempt)
            .layer(self.classify)
            .service(inner)
    }
}

/// The service under the stack in a [`FireworksClient`]: the shared HTTPS client, with or
/// without the auth layer.
pub(crate) type ClientService = tower::util::Either<crate::client::Auth<SharedHttps>, SharedHttps>;

pub(crate) type SharedHttps = crate::client::SharedClient<
    crate::timeout::ConnectTimeout<crate::client::Connector>,
    InnerBody<Full<Bytes>>,
>;

/// A ready client for the Fireworks API (or any OpenAI-compatible endpoint): HTTPS hyper
/// client, the key, and the stack.
#[derive(Clone)]
pub struct FireworksClient {
    // The concrete stack: `post` clones and calls it without boxing; `service` boxes it.
    svc: StackService<ClientService>,
    base: Arc<str>,
    layer: StackLayer,
}

impl fmt::Debug for FireworksClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FireworksClient")
            .field("base_url", &self.base)
            .finish_non_exhaustive()
    }
}

impl FireworksClient {
    /// A client for `base_url` (e.g. [`FIREWORKS_BASE_URL`]) with `key` and `stack`.
    ///
    /// # Errors
    /// [`StackConfigError`] for an invalid URL or setting.
    pub fn new(base_url: &str, key: ApiKey, stack: Stack) -> Result<Self, StackConfigError> {
        Self::with_auth(
            base_url,
            Some(crate::client::AuthLayer::new(key)),
            stack,
            &ClientConfig::default(),
        )
    }

    /// The Fireworks endpoint with the key from `FIREWORKS_API_KEY`.
    ///
    /// # Errors
    /// [`StackConfigError::Client`] when the variable is unset or unusable.
    pub fn from_env(stack: Stack) -> Result<Self, StackConfigError> {
        let key = ApiKey::from_env().map_err(StackConfigError::Client)?;
        Self::new(FIREWORKS_BASE_URL, key, stack)
    }

    /// The general constructor: `auth` decides how requests are authenticated (`None` sends
    /// them as they come, e.g. a proxy passing its callers' keys through; `AuthLayer::if_missing`
    /// fills a key in only where there is none).
    ///
    /// # Errors
    /// [`StackConfigError`] for an invalid URL or setting.
    pub fn with_auth(
        base_url: &str,
        auth: Option<crate::client::AuthLayer>,
        stack: Stack,
        cfg: &ClientConfig,
    ) -> Result<Self, StackConfigError> {
        let base = crate::client::BaseUrl::parse(base_url).map_err(StackConfigError::BaseUrl)?;
        let client = shared_https(&stack, cfg)?;
        let mut layer = stack.layer()?;
        // The auth layer adds the key below the gate: a gate keyed per (API key, model) keys
        // requests that carry none by the key that layer will send.
        if let Some(a) = &auth {
            layer.gate = layer
                .gate
                .clone()
                .fallback_credential(a.key().header_value().as_bytes());
        }
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .option_layer(auth)
            .service(client);
        Ok(FireworksClient {
            svc,
            base: base.as_str().into(),
            layer,
        })
    }

    /// The boxed stack, for use as a tower service.
    pub fn service(&self) -> BoxStack {
        BoxCloneSyncService::new(
            self.svc
                .clone()
                .map_response(|r: Response<_>| r.map(BodyExt::boxed)),
        )
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The composed layer (for the gate's metrics).
    pub fn layer(&self) -> &StackLayer {
        &self.layer
    }

    /// A JSON POST to `base_url + path`.
    ///
    /// # Errors
    /// Any [`Error`] from the stack: a non-success answer is a response, not an error.
    pub async fn post(&self, path: &str, json: Bytes) -> Result<Response<FireworksBody>, Error> {
        // Token caps in the 429 gate use the body's size and its `max_tokens`. Reading
        // `max_tokens` means parsing the body, so it is done only when there is a token cap.
        let gate = self.layer.gate_config();
        let estimate = gate.tokens_per_minute.map(|_| {
            crate::gate::TokenEstimate::from_json_body(&json, gate.default_completion_tokens)
        });
        // A gate per (API key, model) and model labels need the model: read from the body,
        // only then.
        let model = (self.layer.model_labels
            || matches!(self.layer.gate.key_by(), KeyBy::ApiKeyAndModel))
        .then(|| crate::Model::from_json_body(&json))
        .flatten();
        let mut req = Request::post(format!("{}{path}", self.base))
            .body(Full::new(json))
            .map_err(|e| Error::new(Class::Other).with_source(e))?;
        // A static value: cloning it (the retry layer keeps a copy) allocates nothing.
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(e) = estimate {
            req.extensions_mut().insert(e);
        }
        if let Some(m) = model {
            req.extensions_mut().insert(m);
        }
        let resp = self.svc.clone().oneshot(req).await?;
        Ok(resp.map(BodyExt::boxed))
    }
}

/// The HTTPS client under a stack: the connect timeout is the stack's, in the connector, so its
/// error names the phase and the configured duration like every other timeout. Shared behind
/// one `Arc`: the layers clone the service below them on every call.
pub(crate) fn shared_https(
    stack: &Stack,
    cfg: &ClientConfig,
) -> Result<SharedHttps, StackConfigError> {
    let cfg = cfg.clone().connect_timeout(None);
    let connector = crate::client::https_connector(&cfg).map_err(StackConfigError::Client)?;
    let connect = stack
        .timeouts
        .connect
        .unwrap_or(crate::timeout::MAX_TIMEOUT);
    let connector = ConnectTimeoutLayer::new(connect)
        .map_err(StackConfigError::Timeout)?
        .layer(connector);
    Ok(crate::client::SharedClient::new(
        crate::client::build_with::<_, InnerBody<Full<Bytes>>>(connector, &cfg),
    ))
}

/// The README's Rust snippets, compiled as doc tests so they cannot rot.
#[doc = include_str!("../../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
