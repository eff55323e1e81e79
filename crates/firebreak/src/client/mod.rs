//! The client (feature `client`): the hyper client that firebreak's layers wrap.
//!
//! - [`build`] makes a hyper-util legacy [`Client`] with HTTPS through rustls (ring provider,
//!   webpki roots), HTTP/1.1 and HTTP/2 (ALPN), a connect timeout that defaults to the 10 s
//!   Fireworks recommends, and pool settings. Plain `http://` is allowed for loopback tests, and
//!   [`ClientConfig::h2c`] speaks HTTP/2 with prior knowledge.
//! - [`ApiKey`] holds a key that never appears in `Debug`, `Display` or error messages.
//! - [`AuthLayer`] adds `Authorization: Bearer <key>` marked *sensitive*, so `Debug` of the
//!   request and tracing layers that honour the flag (tower-http's among them) never print it.
//!
//! # Example
//! ```no_run
//! use bytes::Bytes;
//! use firebreak::client::{ApiKey, AuthLayer, ClientConfig, build};
//! use http_body_util::Full;
//! use tower::{Layer, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = build::<Full<Bytes>>(&ClientConfig::default())?;
//! let svc = AuthLayer::new(ApiKey::from_env()?).layer(client);
//! let req = http::Request::post("https://api.fireworks.ai/inference/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[{"role":"user","content":"hi"}]}"#)))?;
//! let resp = svc.oneshot(req).await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```

mod auth;
mod base_url;
mod shared;

pub use auth::{ApiKey, Auth, AuthLayer};
pub use base_url::{BaseUrl, BaseUrlError};
pub use shared::SharedClient;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// The Fireworks inference base URL.
pub const FIREWORKS_BASE_URL: &str = "https://api.fireworks.ai/inference/v1";

/// The environment variable [`ApiKey::from_env`] reads.
pub const API_KEY_ENV: &str = "FIREWORKS_API_KEY";

/// The connector type of [`HttpsClient`].
pub type Connector = HttpsConnector<HttpConnector>;

/// The client [`build`] returns.
pub type HttpsClient<B> = Client<Connector, B>;

/// Errors building the client or reading the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No API key in the environment.
    #[error("no API key: set {API_KEY_ENV} or pass one explicitly")]
    MissingApiKey,
    /// The key cannot be sent in a header (empty, or with control characters). The key itself
    /// is never included in this message.
    #[error("the API key is not usable in an Authorization header: {0}")]
    InvalidApiKey(&'static str),
    /// A setting is out of range.
    #[error("invalid client setting: {0}")]
    Config(String),
    /// rustls could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Connection and pool settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// TCP connect timeout (Fireworks recommends 10 s). `None` disables it.
    pub connect_timeout: Option<Duration>,
    /// How long an idle pooled connection is kept. `None` keeps it forever.
    pub pool_idle_timeout: Option<Duration>,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Speak HTTP/2 with prior knowledge on `http://` URLs (h2c) and only HTTP/2 on `https://`.
    pub h2c: bool,
    /// Set `TCP_NODELAY` (on by default: requests are small and latency matters).
    pub nodelay: bool,
    /// TCP keepalive interval. `None` disables it.
    pub tcp_keepalive: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Some(Duration::from_secs(10)),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: 256,
            h2c: false,
            nodelay: true,
            tcp_keepalive: Some(Duration::from_secs(60)),
        }
    }
}

impl ClientConfig {
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, t: Option<Duration>) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Uses HTTP/2 with prior knowledge.
    pub fn h2c(mut self, on: bool) -> Self {
        self.h2c = on;
        self
    }

    /// Sets the pool's idle connections per host.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ClientError::Config(
                "connect_timeout of zero would fail every connect (leave it unset to turn it off)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The HTTP connector with the configured TCP settings (no TLS).
///
/// # Errors
/// [`ClientError::Config`] for a zero connect timeout.
pub(crate) fn http_connector(cfg: &ClientConfig) -> Result<HttpConnector, ClientError> {
    cfg.validate()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(cfg.connect_timeout);
    http.set_nodelay(cfg.nodelay);
    http.set_keepalive(cfg.tcp_keepalive);
    Ok(http)
}

/// The HTTPS-or-HTTP connector: rustls with the ring provider and webpki roots.
///
/// # Errors
/// [`ClientError::Config`] for bad settings, [`ClientError::Tls`] if rustls rejects the setup.
pub fn https_connector(cfg: &ClientConfig) -> Result<Connector, ClientError> {
    let http = http_connector(cfg)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_or_http();
    let conn = if cfg.h2c {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().enable_http2().wrap_connector(http)
    };
    Ok(conn)
}

/// Builds the hyper-util legacy client for request bodies of type `B`.
///
/// # Errors
/// As [`https_connector`].
pub fn build<B>(cfg: &ClientConfig) -> Result<HttpsClient<B>, ClientError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Ok(build_with(https_connector(cfg)?, cfg))
}

/// Builds the client around any connector (for example [`https_connector`] wrapped in
/// the stack's connect timer), with `cfg`'s pool settings.
pub fn build_with<C, B>(conn: C, cfg: &ClientConfig) -> Client<C, B>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .http2_only(cfg.h2c);
    b.build(conn)
}
