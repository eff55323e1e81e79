//! The flags of `firebreak proxy`.

use crate::args::TimeoutArgs;
use clap::Args;

/// Flags of `firebreak proxy`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProxyArgs {
    /// Address to listen on (`HOST:PORT`; `localhost:PORT` works).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub(crate) listen: String,
    /// Upstream base URL, e.g. https://api.fireworks.ai/inference/v1. Must not hold credentials.
    #[arg(long)]
    pub(crate) upstream: String,
    /// The Fireworks key to send upstream. Prefer the FIREWORKS_API_KEY environment variable:
    /// this flag is visible in the process list. Never printed.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// Environment variable holding caller tokens (comma-separated); repeat for more. Callers
    /// must then present one, as `Authorization: Bearer` or `x-api-key`, and the configured key
    /// is sent in its place. Required to listen beyond loopback with a configured key.
    #[arg(long = "auth-token-env", value_name = "NAME")]
    pub(crate) auth_token_env: Vec<String>,
    /// A Host name callers may use besides IP literals and localhost (`*` for any); repeat for
    /// more. Other names get a 403 (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub(crate) allowed_host: Vec<String>,
    #[command(flatten)]
    pub(crate) timeouts: TimeoutArgs,
    #[command(flatten)]
    pub(crate) fleet: crate::args::FleetArgs,
    /// Largest request body, in bytes; larger ones get a 413 (before `100 Continue`). The 8 MiB
    /// default fits a long conversation with a few base64 images.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub(crate) max_body: u64,
    /// Memory for request bodies across all connections, in bytes; a body that does not fit
    /// gets a 503 with `Retry-After`.
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    pub(crate) body_memory: u64,
    /// Seconds a request body may take to arrive in full (408 after).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) body_timeout: f64,
    /// Seconds a request head may take to arrive, from its first byte.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) header_timeout: f64,
    /// Seconds an idle keep-alive connection is kept.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) keepalive_timeout: f64,
    /// Seconds a write to a caller may make no progress before the connection is dropped (a
    /// caller that stopped reading a stream frees its capacity after this).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) write_stall_timeout: f64,
    /// Connections served at once; further ones wait in the accept backlog.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections: u32,
    /// Seconds SIGTERM or SIGINT lets in-flight streams finish before cutting them with an SSE
    /// error event.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) shutdown_grace: f64,
    /// Distinct models that get a `model` label of their own on /metrics; later ones are
    /// counted as `model="other"`, so hostile model names cannot grow the series (0: no model
    /// labels).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(0..=10_000))]
    pub(crate) model_labels: u16,
    /// Scrape Fireworks' per-deployment metrics exporter for this account (with the configured
    /// key) and serve its series under this proxy's /metrics, beside firebreak's own: one
    /// scrape gets both views (see `firebreak reconcile`).
    #[arg(long, value_name = "ACCOUNT")]
    pub(crate) scrape_account: Option<String>,
    /// Where the exporter lives (with --scrape-account).
    #[arg(long, default_value = firebreak_reconcile::FIREWORKS_API_URL)]
    pub(crate) scrape_base_url: String,
    /// Seconds between scrapes. The exporter refreshes every 30 s and allows 6 requests a
    /// minute; the scraper never sends more, whatever this says.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) scrape_every: f64,
    /// Route aliases through fallback chains of targets, each with a circuit breaker: a TOML
    /// file (format: `firebreak::route` docs and the README). A call whose `model` is an
    /// alias answers with a `firebreak-target` header; other models go to --upstream unchanged.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<String>,
}
