//! `firebreak proxy`: a reliability sidecar. Any OpenAI-compatible SDK pointed at it, with its
//! own retries off, gets firebreak's behaviour.
//!
//! A request passes, in order:
//! 1. the connection's timers ([`conn`]: keep-alive, header, write stall), the cap on
//!    connections (further ones wait in the accept backlog), and a request head of at most
//!    [`MAX_HEAD`] (64 KiB; 431 beyond);
//! 2. admission ([`guard`]: Host, browsers, routes, methods, dot-segments, caller tokens);
//! 3. the caller's preset and deadline ([`caller`]);
//! 4. the request body, under `--max-body`, `--body-timeout` and the `--body-memory` budget
//!    shared by all connections ([`body`]);
//! 5. header hygiene ([`headers`]: hop-by-hop, `X-Forwarded-For` policy);
//! 6. the firebreak stack, one for all presets, each request carrying its own timers;
//! 7. the response body back ([`body::ProxyBody`]), whose cut stream ends with an SSE `error`
//!    event, and whose end logs one line.
//!
//! Only HTTP/1.1 is served: h2c (HTTP/2 without TLS, by prior knowledge or upgrade) is off, as
//! the SDKs speak HTTP/1.1 to a local sidecar.

/// The largest request head (request line and headers) the proxy reads: 64 KiB. hyper checks
/// the limit between reads, so a head may pass it by at most one read (another 64 KiB); one far
/// larger always gets 431. SDK requests send well under 2 KiB.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

mod body;
mod caller;
mod conn;
mod exporter;
mod guard;
mod headers;

use crate::args::{TimeoutArgs, api_key, base_url};
use body::{Buffered, CallLog, ProxyBody, ReadError, Stop};
use clap::Args;
use conn::{ConnLimits, ConnState, GuardedIo, InFlight, Shedder};
use firebreak::Deadline;
use firebreak::{
    BoxStack, FireworksClient, Stack, client::ClientConfig, timeout::TimeoutConfig,
    timeout::Workload,
};
use firebreak::{Class, Error};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Flags of `firebreak proxy`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProxyArgs {
    /// Address to listen on (`HOST:PORT`; `localhost:PORT` works).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,
    /// Upstream base URL, e.g. https://api.fireworks.ai/inference/v1. Must not hold credentials.
    #[arg(long)]
    upstream: String,
    /// The Fireworks key to send upstream. Prefer the FIREWORKS_API_KEY environment variable:
    /// this flag is visible in the process list. Never printed.
    #[arg(long)]
    api_key: Option<String>,
    /// Environment variable holding caller tokens (comma-separated); repeat for more. Callers
    /// must then present one, as `Authorization: Bearer` or `x-api-key`, and the configured key
    /// is sent in its place. Required to listen beyond loopback with a configured key.
    #[arg(long = "auth-token-env", value_name = "NAME")]
    auth_token_env: Vec<String>,
    /// A Host name callers may use besides IP literals and localhost (`*` for any); repeat for
    /// more. Other names get a 403 (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_host: Vec<String>,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    #[command(flatten)]
    fleet: crate::args::FleetArgs,
    /// Largest request body, in bytes; larger ones get a 413 (before `100 Continue`). The 8 MiB
    /// default fits a long conversation with a few base64 images.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    max_body: u64,
    /// Memory for request bodies across all connections, in bytes; a body that does not fit
    /// gets a 503 with `Retry-After`.
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    body_memory: u64,
    /// Seconds a request body may take to arrive in full (408 after).
    #[arg(long, default_value_t = 30.0)]
    body_timeout: f64,
    /// Seconds a request head may take to arrive, from its first byte.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds an idle keep-alive connection is kept.
    #[arg(long, default_value_t = 60.0)]
    keepalive_timeout: f64,
    /// Seconds a write to a caller may make no progress before the connection is dropped (a
    /// caller that stopped reading a stream frees its capacity after this).
    #[arg(long, default_value_t = 30.0)]
    write_stall_timeout: f64,
    /// Connections served at once; further ones wait in the accept backlog.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Seconds SIGTERM or SIGINT lets in-flight streams finish before cutting them with an SSE
    /// error event.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Distinct models that get a `model` label of their own on /metrics; later ones are
    /// counted as `model="other"`, so hostile model names cannot grow the series (0: no model
    /// labels).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(0..=10_000))]
    model_labels: u16,
    /// Scrape Fireworks' per-deployment metrics exporter for this account (with the configured
    /// key) and serve its series under this proxy's /metrics, beside firebreak's own: one
    /// scrape gets both views (see `firebreak reconcile`).
    #[arg(long, value_name = "ACCOUNT")]
    scrape_account: Option<String>,
    /// Where the exporter lives (with --scrape-account).
    #[arg(long, default_value = firebreak_reconcile::FIREWORKS_API_URL)]
    scrape_base_url: String,
    /// Seconds between scrapes. The exporter refreshes every 30 s and allows 6 requests a
    /// minute; the scraper never sends more, whatever this says.
    #[arg(long, default_value_t = 60.0)]
    scrape_every: f64,
    /// Route aliases through fallback chains of targets, each with a circuit breaker: a TOML
    /// file (format: `firebreak::route` docs and the README). A call whose `model` is an
    /// alias answers with a `firebreak-target` header; other models go to --upstream unchanged.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
}

/// State shared by every connection.
struct Shared {
    svc: BoxStack,
    /// Aliases routed through chains of targets (`--config`).
    router: Option<firebreak::route::Router>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    upstream: Arc<str>,
    policy: guard::Policy,
    default_preset: Workload,
    presets: [(Workload, TimeoutConfig); 4],
    max_body: usize,
    body_timeout: Duration,
    budget: Arc<Semaphore>,
    cut: CancellationToken,
    scrub: Arc<dyn Fn(&str) -> String + Send + Sync>,
    warned: Mutex<HashSet<u64>>,
    exporter: Option<Arc<exporter::ExporterPage>>,
}

/// A non-streaming answer up to this size is read whole before it is sent, so that one that
/// breaks off becomes an error answer, not a truncated 200; a longer one is streamed.
const MAX_BUFFERED_ANSWER: usize = 16 * 1024 * 1024;

/// Clients warned about their SDK's own retries; past this many, warnings stop being recorded.
const MAX_WARNED: usize = 4096;

impl Shared {
    fn preset(&self, w: Workload) -> &TimeoutConfig {
        self.presets
            .iter()
            .find(|(p, _)| *p == w)
            .map(|(_, t)| t)
            .unwrap_or(&self.presets[0].1)
    }
}

/// An OpenAI-shaped error answer.
fn error_response(
    status: StatusCode,
    message: &str,
    code: &str,
    retry_after: Option<Duration>,
    mut log: CallLog,
    inflight: InFlight,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "firebreak_error", "code": code, "param": null}
    });
    log.status = status.as_u16();
    let mut r = Response::new(ProxyBody::full(body.to_string(), log, Some(inflight)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(d) = retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The status an upstream failure is answered with.
fn status_for(e: &Error) -> StatusCode {
    match e.class() {
        Class::GateRefused | Class::RateLimited | Class::QuotaExhausted => {
            StatusCode::TOO_MANY_REQUESTS
        }
        c if c.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The headers firebreak adds to an answer: `firebreak-target` (the route target that
/// answered) and, while a dedicated deployment keeps refusing for capacity, `firebreak-advice`.
fn route_headers<B>(resp: &Response<B>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(by) = resp.extensions().get::<firebreak::route::AnsweredBy>() {
        if let Ok(v) = HeaderValue::from_str(&by.target) {
            h.insert("firebreak-target", v);
        }
    }
    if let Some(a) = resp.extensions().get::<firebreak::gate::CapacityAdvice>() {
        if let Ok(v) = HeaderValue::from_str(&a.0) {
            h.insert("firebreak-advice", v);
        }
    }
    h
}

/// A request id: the caller's `x-request-id` when it is short and printable, else a new one.
fn request_id(h: &http::HeaderMap) -> String {
    h.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("fb-{:032x}", rand::random::<u128>()))
}

/// Adds `x-firebreak-attempts` and `x-request-id` (the id in the log line: the caller's, or the
/// proxy's). An upstream's own request id is kept as `x-upstream-request-id`.
fn stamp(r: &mut Response<ProxyBody>, attempts: u32, id: &str) {
    let h = r.headers_mut();
    h.insert("x-firebreak-attempts", HeaderValue::from(attempts));
    if let Some(up) = h.remove("x-request-id") {
        if up != id {
            h.insert("x-upstream-request-id", up);
        }
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
}

/// What the proxy reads from a JSON request body, in one parse: whether it asks for a stream,
/// and its model (for the per-(key, model) gate).
fn peek_body(body: &[u8]) -> (bool, Option<firebreak::Model>) {
    // Each field is read leniently, so a bad value in one never hides the other.
    #[derive(serde::Deserialize)]
    struct Peek {
        stream: Option<serde_json::Value>,
        model: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Peek>(body) {
        Ok(p) => (
            p.stream.and_then(|v| v.as_bool()).unwrap_or(false),
            p.model
                .as_ref()
                .and_then(|v| v.as_str())
                .map(|m| firebreak::Model(Arc::from(m))),
        ),
        Err(_) => (false, None),
    }
}

async fn handle(
    p: Arc<Shared>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let inflight = conn.begin();
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let id = request_id(&parts.headers);
    let log = CallLog {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        request_id: id.clone(),
        status: 0,
        attempts: 0,
        started,
        outcome: "refused",
    };
    let route = match guard::admit(
        &parts.method,
        parts.uri.path(),
        parts.version,
        &parts.headers,
        &p.policy,
    ) {
        Ok(r) => r,
        Err(r) => {
            let mut resp = error_response(r.status, &r.message, r.code, None, log, inflight);
            if r.status == StatusCode::METHOD_NOT_ALLOWED {
                resp.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
            }
            stamp(&mut resp, 0, &id);
            return resp;
        }
    };
    let mut resp = match route {
        guard::Route::Health => {
            let mut log = log;
            (log.status, log.outcome) = (200, "ok");
            Response::new(ProxyBody::full("ok", log, Some(inflight)))
        }
        guard::Route::Metrics => metrics_text(&p, log, inflight),
        guard::Route::Forward {
            rest,
            authenticated,
        } => {
            forward(
                &p,
                parts,
                body,
                &rest,
                authenticated,
                peer,
                &id,
                log,
                inflight,
            )
            .await
        }
    };
    if !resp.headers().contains_key("x-firebreak-attempts") {
        stamp(&mut resp, 0, &id);
    }
    resp
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    p: &Shared,
    parts: http::request::Parts,
    body: Incoming,
    rest: &str,
    authenticated: bool,
    peer: SocketAddr,
    id: &str,
    mut log: CallLog,
    inflight: InFlight,
) -> Response<ProxyBody> {
    let started = log.started;
    let caller = match caller::CallerLimits::from_headers(&parts.headers) {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                "bad_request",
                None,
                log,
                inflight,
            );
        }
    };
    if caller.sdk_retry.is_some_and(|n| n > 0) {
        warn_sdk_retries(p, &parts.headers, peer);
    }
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (bytes, permit) =
        match body::read_request(body, length, p.max_body, &p.budget, p.body_timeout).await {
            Ok(b) => b,
            Err(e) => {
                let (status, code, msg, retry) = match e {
                    ReadError::TooLarge(max) => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body over the proxy's {max}-byte limit (--max-body)"),
                        None,
                    ),
                    ReadError::Busy => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "proxy_busy",
                        "the proxy's memory for request bodies is in use; retry shortly".into(),
                        Some(Duration::from_secs(1)),
                    ),
                    ReadError::Timeout(d) => (
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("the request body did not arrive within {d:?}"),
                        None,
                    ),
                    ReadError::Malformed(why) => (
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("malformed or truncated request body: {why}"),
                        None,
                    ),
                };
                return error_response(status, &msg, code, retry, log, inflight);
            }
        };
    let (stream, model) = peek_body(&bytes);
    let preset = p.preset(caller.preset.unwrap_or(p.default_preset));
    let plan = caller::plan(preset, &caller, stream);
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut up = Request::new(Full::new(bytes.clone()));
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = match format!("{}{rest}{query}", p.upstream).parse() {
        Ok(u) => u,
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "the request target cannot be forwarded",
                "bad_request",
                None,
                log,
                inflight,
            );
        }
    };
    *up.headers_mut() = headers::upstream_request(&parts.headers, authenticated);
    if let Ok(v) = HeaderValue::from_str(id) {
        up.headers_mut().insert("x-request-id", v);
    }
    // Each caller's key and model get their own gate: one tenant's 429s never hold another.
    if let Some(m) = &model {
        up.extensions_mut().insert(m.clone());
    }
    drop(bytes);
    up.extensions_mut().insert(plan.attempt);
    if let Some(d) = plan.deadline {
        let left = d.saturating_sub(started.elapsed());
        up.extensions_mut()
            .insert(Deadline::after(left.max(Duration::from_millis(1))));
    }
    // An alias goes through its chain of targets; its path is relative to their base URLs.
    let router = model
        .as_ref()
        .and_then(|m| p.router.as_ref().filter(|r| r.routes(&m.0)));
    let call: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = match router {
        Some(r) => {
            *up.uri_mut() = match format!("{rest}{query}").parse() {
                Ok(u) => u,
                Err(_) => up.uri().clone(),
            };
            Box::pin(r.clone().oneshot(up))
        }
        None => Box::pin(p.svc.clone().oneshot(up)),
    };
    let result = match plan.head.filter(|_| stream) {
        Some(h) => {
            let left = h.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, call).await {
                Ok(r) => r,
                Err(_) => Err(
                    Error::timeout(firebreak::TimeoutPhase::Deadline, h).with_detail(
                        "the caller's own timeout (x-stainless-read-timeout) would pass first",
                    ),
                ),
            }
        }
        None => call.await,
    };
    // The body is sent: its memory is no longer held for a retry.
    drop(permit);
    match result {
        Ok(resp) => {
            let attempts = firebreak::RetryInfo::of(&resp).attempts();
            let routed = route_headers(&resp);
            let (rp, body) = resp.into_parts();
            let sse = rp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            // Until the body ends: a caller that goes away (or stalls) first leaves it so.
            (log.status, log.attempts, log.outcome) = (rp.status.as_u16(), attempts, "caller_gone");
            let (prefix, body) = if sse {
                (None, body)
            } else {
                match body::buffer(body, MAX_BUFFERED_ANSWER).await {
                    Buffered::Whole(b) => {
                        let mut out = Response::new(ProxyBody::full(b, log, Some(inflight)));
                        *out.status_mut() = rp.status;
                        *out.headers_mut() = headers::caller_response(&rp.headers);
                        out.headers_mut().extend(routed);
                        stamp(&mut out, attempts, id);
                        return out;
                    }
                    Buffered::Prefix(b, rest) => (Some(b), rest),
                    Buffered::Failed(e) => {
                        let msg = format!(
                            "the upstream answer broke off before its end: {}",
                            (p.scrub)(&e.to_string())
                        );
                        let mut r = error_response(
                            status_for(&e),
                            &msg,
                            e.class().label(),
                            None,
                            log,
                            inflight,
                        );
                        stamp(&mut r, attempts, id);
                        return r;
                    }
                }
            };
            if let Some(d) = plan.deadline {
                inflight.set_deadline(tokio::time::Instant::from_std(started + d));
            }
            let body = ProxyBody::upstream(
                prefix,
                body,
                sse,
                Stop {
                    shutdown: p.cut.clone().cancelled_owned(),
                    deadline: plan
                        .deadline
                        .map(|d| tokio::time::Instant::from_std(started + d)),
                },
                p.scrub.clone(),
                log,
                Some(inflight),
            );
            let mut out = Response::new(body);
            *out.status_mut() = rp.status;
            *out.headers_mut() = headers::caller_response(&rp.headers);
            out.headers_mut().extend(routed);
            stamp(&mut out, attempts, id);
            out
        }
        Err(e) => {
            let attempts = e.attempts().unwrap_or(0);
            log.attempts = attempts;
            let retry = e
                .retry_after()
                .filter(|_| e.is_retryable() || e.is_rate_limited());
            let msg = (p.scrub)(&e.to_string());
            let mut r = error_response(
                status_for(&e),
                &msg,
                e.class().label(),
                retry,
                log,
                inflight,
            );
            stamp(&mut r, attempts, id);
            r
        }
    }
}

/// One WARN per client whose SDK retries on its own: two retry loops multiply attempts.
fn warn_sdk_retries(p: &Shared, h: &http::HeaderMap, peer: SocketAddr) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // The client: its credential (hashed, never kept or logged), else its address, and its SDK.
    match h
        .get(http::header::AUTHORIZATION)
        .or_else(|| h.get("x-api-key"))
    {
        Some(c) => c.as_bytes().hash(&mut hasher),
        None => peer.ip().hash(&mut hasher),
    }
    h.get(http::header::USER_AGENT)
        .map(|v| v.as_bytes())
        .hash(&mut hasher);
    let client = hasher.finish();
    let mut warned = p.warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned.len() < MAX_WARNED && warned.insert(client) {
        let ua = h
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        tracing::warn!(
            client = %peer.ip(),
            user_agent = ua,
            "the caller's SDK retries on its own (x-stainless-retry-count > 0): two retry loops multiply attempts; set max_retries=0 on the client"
        );
    }
}

/// The Prometheus text exposition of every firebreak metric (see `firebreak::observe`).
fn metrics_text(p: &Shared, mut log: CallLog, inflight: InFlight) -> Response<ProxyBody> {
    match &p.metrics {
        Some(h) => {
            h.run_upkeep();
            (log.status, log.outcome) = (200, "ok");
            let mut text = h.render();
            if let Some(e) = &p.exporter {
                text.push_str(&e.text());
            }
            let mut r = Response::new(ProxyBody::full(text, log, Some(inflight)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        None => error_response(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
            "not_found",
            None,
            log,
            inflight,
        ),
    }
}

/// Histogram buckets for the millisecond metrics: 5 ms to 30 min, roughly ×2.5 apart, so the
/// same series serve a chat call and a long-context one.
const MS_BUCKETS: [f64; 16] = [
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
];

/// Installs the Prometheus recorder for this process. It must come before the stack is built:
/// the stack registers its series with the recorder current at that moment.
fn install_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_ms".into()),
            &MS_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot set up /metrics: {e}"))
}

/// The caller tokens named by `--auth-token-env`.
fn tokens(names: &[String]) -> Result<Vec<guard::Token>, String> {
    let mut out = Vec::new();
    for n in names {
        let v = std::env::var(n).map_err(|_| {
            format!("--auth-token-env {n}: the environment variable {n} is not set")
        })?;
        let before = out.len();
        out.extend(
            v.split([',', ' ', '\n', '\t'])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(guard::Token::new),
        );
        if out.len() == before {
            return Err(format!("--auth-token-env {n}: the variable holds no token"));
        }
    }
    Ok(out)
}

fn secs_flag(name: &str, v: f64) -> Result<Duration, String> {
    crate::args::secs(name, Some(v)).map(|d| d.unwrap_or_default())
}

/// Every field the largest of the presets': the stack's own limits, which each request's
/// timers and deadline only ever shorten.
fn widest(presets: &[(Workload, TimeoutConfig)]) -> TimeoutConfig {
    let max =
        |f: fn(&TimeoutConfig) -> Option<Duration>| presets.iter().filter_map(|(_, t)| f(t)).max();
    TimeoutConfig {
        connect: max(|t| t.connect),
        ready: max(|t| t.ready),
        write: max(|t| t.write),
        headers: max(|t| t.headers),
        first_event: max(|t| t.first_event),
        idle: max(|t| t.idle),
        attempt: max(|t| t.attempt),
        deadline: max(|t| t.deadline),
    }
}

async fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(s)
        .await
        .map_err(|e| format!("invalid --listen {s:?}: {e} (expected HOST:PORT)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("invalid --listen {s:?}: it names no address"))
}

pub(crate) async fn run(args: ProxyArgs) -> Result<(), Box<dyn std::error::Error>> {
    crate::logging::init();
    let key = api_key(args.api_key.as_deref())?;
    let upstream = base_url("--upstream", &args.upstream)?;
    let tokens = tokens(&args.auth_token_env)?;
    let default_t = args.timeouts.resolve()?;
    let default_preset = args.timeouts.preset.workload();
    let listen = listen_addr(&args.listen).await?;
    let loopback = listen.ip().is_loopback();
    if key.is_some() && tokens.is_empty() && !loopback {
        return Err(format!(
            "refusing to listen on {listen} with a configured key and no caller authentication: anyone who can reach it would use the key. Set --auth-token-env, or listen on loopback"
        )
        .into());
    }
    let limits = ConnLimits {
        keepalive: secs_flag("keepalive-timeout", args.keepalive_timeout)?,
        header: secs_flag("header-timeout", args.header_timeout)?,
        write_stall: secs_flag("write-stall-timeout", args.write_stall_timeout)?,
    };
    let body_timeout = secs_flag("body-timeout", args.body_timeout)?;
    let grace = secs_flag("shutdown-grace", args.shutdown_grace)?;
    let presets = [
        Workload::Interactive,
        Workload::Agentic,
        Workload::LongContext,
        Workload::BatchSubmit,
    ]
    .map(|w| {
        let t = if w == default_preset {
            default_t
        } else {
            TimeoutConfig::preset(w)
        };
        (w, t)
    });
    let metrics = install_prometheus()?;
    // One gate per (caller's key, model): tenants are isolated (the configured key, filled in
    // below the gate, is used for callers that send none).
    let mut stack = Stack {
        // Connecting is the upstream's matter, not the workload's: the connect timer lives in
        // the shared connector, so it is the resolved one (an explicit --connect-timeout
        // included), not the widest preset's.
        timeouts: TimeoutConfig {
            connect: default_t.connect,
            ..widest(&presets)
        },
        key_by: firebreak::gate::KeyBy::ApiKeyAndModel,
        model_labels: usize::from(args.model_labels),
        ..Stack::preset(default_preset)
    };
    // SSE error events reach the caller as the upstream sent them.
    stack.sse_errors_as_failures = false;
    let stack = args.fleet.apply(stack)?;
    let mode = match (&key, tokens.is_empty()) {
        (Some(_), false) => {
            "callers must present a token (--auth-token-env); the configured key is sent in its place"
        }
        (Some(_), true) => {
            "no caller authentication: the configured key is sent for any local caller that sends none (loopback only)"
        }
        (None, false) => {
            "callers must present a token (--auth-token-env); no key is configured, so the upstream sees none"
        }
        (None, true) => "no key configured: each caller's own key is passed through",
    };
    let exporter = match &args.scrape_account {
        None => None,
        Some(account) => {
            let k = key.clone().ok_or(
                "--scrape-account needs the Fireworks key: set FIREWORKS_API_KEY (or --api-key)",
            )?;
            let base = base_url("--scrape-base-url", &args.scrape_base_url)?;
            let every = secs_flag("scrape-every", args.scrape_every)?;
            let scraper = firebreak_reconcile::Scraper::new(&base, account, k)?;
            Some(exporter::start(scraper, every.max(Duration::from_secs(1))))
        }
    };
    let router = match &args.config {
        None => None,
        Some(path) => {
            let cfg = crate::routes::load(path, &upstream)?;
            Some(firebreak::route::Router::new(
                cfg,
                stack.clone(),
                key.clone(),
                &ClientConfig::default(),
            )?)
        }
    };
    let auth = key.map(|k| firebreak::client::AuthLayer::new(k).if_missing());
    let client = FireworksClient::with_auth(&upstream, auth, stack, &ClientConfig::default())?;
    let authority = url::Url::parse(&upstream)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some((format!("{host}:{}", u.port_or_known_default()?), host))
        })
        .unwrap_or_default();
    let scrub: Arc<dyn Fn(&str) -> String + Send + Sync> = Arc::new(move |s: &str| {
        let s = s.replace(&authority.0, "upstream");
        if authority.1.is_empty() {
            s
        } else {
            s.replace(&authority.1, "upstream")
        }
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    // One line on stdout (a supervisor may read just that line and close the pipe); the rest
    // goes to the log on stderr.
    println!("firebreak proxy listening on http://{addr} -> {upstream}; auth: {mode}");
    let shared = Arc::new(Shared {
        svc: client.service(),
        router,
        metrics: Some(metrics),
        upstream: upstream.into(),
        policy: guard::Policy {
            tokens,
            allowed_hosts: args
                .allowed_host
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        },
        default_preset,
        presets,
        max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        body_timeout,
        budget: Arc::new(Semaphore::new(
            usize::try_from(args.body_memory)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
        )),
        cut: CancellationToken::new(),
        scrub,
        warned: Mutex::new(HashSet::new()),
        exporter,
    });
    serve(
        listener,
        shared,
        limits,
        args.max_connections as usize,
        grace,
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// SIGTERM (what containers send) or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The accept loop: a connection cap, the connection timers, graceful shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    limits: ConnLimits,
    max_connections: usize,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let shedder = Shedder::default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_warn: Option<Instant> = None;
    // Runs until the shutdown signal; each turn accepts one connection or backs off.
    loop {
        // At the cap, close the idle connections to make room (again every 100 ms while
        // waiting, for the ones that turn idle), and stop accepting: further connections wait
        // in the kernel's backlog until a slot is free.
        let slot = if let Ok(s) = slots.clone().try_acquire_owned() {
            s
        } else {
            let mut wait = std::pin::pin!(slots.clone().acquire_owned());
            let slot = loop {
                shedder.shed();
                tokio::select! {
                    s = &mut wait => break s.ok(),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = &mut shutdown => break None,
                }
            };
            match slot {
                Some(s) => s,
                None => break,
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    // Out of file descriptors or memory: say so (once a second at most) and
                    // give connections in flight time to finish, instead of spinning or dying.
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "cannot accept a connection; backing off");
                        last_warn = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = ConnState::new();
        let io = TokioIo::new(GuardedIo::new(
            stream,
            state.clone(),
            limits,
            shedder.clone(),
        ));
        let p = shared.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (p, state) = (p.clone(), state.clone());
            async move { Ok::<_, std::convert::Infallible>(handle(p, state, peer, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        grace_s = grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    let drained = graceful.shutdown();
    let mut drained = std::pin::pin!(drained);
    tokio::select! {
        () = &mut drained => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over: cutting the remaining streams");
            shared.cut.cancel();
            if tokio::time::timeout(Duration::from_secs(5), &mut drained).await.is_err() {
                tracing::warn!("connections still open after the cut; exiting anyway");
            }
        }
    }
    tracing::info!("shut down");
}
