//! `firebreak proxy`: a reliability sidecar. Any OpenAI-compatible SDK pointed at it, with its
//! own retries off, gets firebreak's behaviour.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use clap::Args;
use firebreak::classify::{Class, Error};
use firebreak::{
    ApiKey, BoxStack, ClientConfig, FireworksClient, Stack, StackError, TimeoutConfig, Workload,
};
use http_body_util::{BodyExt, Full, Limited};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

/// Flags of `firebreak proxy`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Upstream base URL, e.g. https://api.fireworks.ai/inference/v1.
    #[arg(long)]
    upstream: String,
    /// Key to send when the caller sends none (default: FIREWORKS_API_KEY, if set). A caller's own
    /// `Authorization` is passed through. Never printed.
    #[arg(long)]
    api_key: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get a 413.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_body: usize,
    /// Time-to-first-byte timeout, in seconds (default: the interactive preset's).
    #[arg(long)]
    first_byte_timeout: Option<f64>,
}

#[derive(Clone)]
struct Proxy {
    svc: BoxStack,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    upstream: Arc<str>,
    max_body: usize,
}

/// An OpenAI-shaped error answer.
fn error_response(
    status: StatusCode,
    message: &str,
    code: &str,
    retry_after: Option<std::time::Duration>,
) -> Response {
    let body = serde_json::json!({
        "error": {"message": message, "type": "firebreak_error", "code": code, "param": null}
    });
    let mut r = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(d) = retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
    }
    r
}

/// The status an upstream failure is answered with.
fn status_for(e: &Error) -> StatusCode {
    match e.class() {
        Class::Throttled | Class::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        c if c.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

fn forwardable(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers.iter().filter(|(k, _)| {
        !HOP_BY_HOP.contains(&k.as_str()) && *k != axum::http::header::CONTENT_LENGTH
    })
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let rest = path
        .strip_prefix("/inference/v1")
        .or_else(|| path.strip_prefix("/v1"))
        .unwrap_or(path);
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let bytes = match Limited::new(body, p.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over the proxy's {}-byte limit", p.max_body),
                "payload_too_large",
                None,
            );
        }
    };
    let mut up = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{rest}{query}", p.upstream));
    for (k, v) in forwardable(&parts.headers) {
        up = up.header(k, v);
    }
    // Each caller's key and model get their own gate: one tenant's 429s never hold another.
    if let Some(m) = firebreak::ratelimit::Model::from_json_body(&bytes) {
        up = up.extension(m);
    }
    let up = match up.body(Full::new(bytes)) {
        Ok(r) => r,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, &e.to_string(), "bad_request", None);
        }
    };
    match p.svc.oneshot(up).await {
        // Streams (SSE included) pass through frame by frame, under the body idle timeout.
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let mut out = Response::new(Body::new(body));
            *out.status_mut() = parts.status;
            for (k, v) in forwardable(&parts.headers) {
                out.headers_mut().append(k, v.clone());
            }
            out
        }
        Err(e) => error_response(
            status_for(&e),
            &e.to_string(),
            e.class().label(),
            e.retry_after(),
        ),
    }
}

/// The Prometheus text exposition of every firebreak metric (see `firebreak::observe`).
async fn metrics_text(State(p): State<Proxy>) -> Response {
    match &p.metrics {
        Some(h) => {
            h.run_upkeep();
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                h.render(),
            )
                .into_response()
        }
        None => error_response(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
            "not_found",
            None,
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

/// The proxy's router around a stack.
fn app(p: Proxy) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/inference/v1/{*rest}", any(forward))
        .route("/v1/{*rest}", any(forward))
        .with_state(p)
}

pub(crate) async fn run(args: ProxyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = match &args.api_key {
        Some(k) => Some(ApiKey::new(k)?),
        None => ApiKey::from_env().ok(),
    };
    let mut t = TimeoutConfig::preset(Workload::Interactive);
    if let Some(s) = args.first_byte_timeout {
        if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
            return Err(
                format!("--first-byte-timeout must be in (0, 86400] seconds, got {s}").into(),
            );
        }
        t.headers = Some(std::time::Duration::from_secs_f64(s));
    }
    let metrics = install_prometheus()?;
    // One gate per (caller's key, model): tenants are isolated (the configured key, filled in
    // below the gate, is used for callers that send none).
    let mut stack = Stack::interactive()
        .timeouts(t)
        .key_by(firebreak::KeyBy::ApiKeyAndModel);
    // SSE error events reach the caller as the upstream sent them.
    stack.sse_errors_as_failures = false;
    // The caller's own key passes through; the configured one fills in where there is none.
    let auth = key.map(|k| firebreak::client::AuthLayer::new(k).if_missing());
    let client = FireworksClient::with_auth(&args.upstream, auth, stack, &ClientConfig::default())
        .map_err(|e| match e {
            StackError::BaseUrl(u) => {
                format!("invalid --upstream {u:?}: expected http:// or https:// with a host")
            }
            other => other.to_string(),
        })?;
    let upstream = client.base_url().to_string();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("firebreak proxy listening on http://{addr} -> {upstream}");
    let p = Proxy {
        svc: client.service(),
        metrics: Some(metrics),
        upstream: upstream.into(),
        max_body: args.max_body,
    };
    axum::serve(listener, app(p))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
