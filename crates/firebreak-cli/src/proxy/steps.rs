//! The server-side steps between the call's record ([`super::call`]) and the upstream call
//! ([`super::forward`]), in the order `mod.rs` composes them. Each is thin: the rules are in
//! the module it names.

use super::Shared;
use super::body::{ReadError, read_request};
use super::caller::CallerLimits;
use super::forward::Rest;
use super::guard::{self, Route};
use super::respond::refusal;
use super::step::{Answer, Next};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Clients warned about their SDK's own retries; past this many, warnings stop being recorded.
const MAX_WARNED: usize = 4096;

/// Who sent a request: the connection's peer, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// Admission ([`guard`]): Host, browsers, routes, methods, dot-segments, caller tokens;
/// `/healthz` and `/metrics` are answered here.
pub(crate) async fn admit(
    p: Arc<Shared>,
    mut req: Request<Incoming>,
    next: Next<Incoming>,
) -> Answer {
    let admitted = guard::admit(
        req.method(),
        req.uri().path(),
        req.version(),
        req.headers(),
        &p.policy,
    );
    match admitted {
        Err(r) => {
            let mut a = refusal(r.status, &r.message, r.code, None);
            if r.status == StatusCode::METHOD_NOT_ALLOWED {
                a.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
            }
            a
        }
        Ok(Route::Health) => Response::new(super::body::ProxyBody::full("ok")),
        Ok(Route::Metrics) => super::metrics::page(&p),
        Ok(Route::Forward {
            rest,
            authenticated,
        }) => {
            req.extensions_mut().insert(Rest(rest));
            req.extensions_mut().insert(Authenticated(authenticated));
            next.run(req).await
        }
    }
}

/// Whether the caller authenticated with a proxy token.
#[derive(Debug, Clone, Copy)]
struct Authenticated(bool);

/// The caller's preset and deadline ([`super::caller`]); one WARN per client whose SDK
/// retries on its own.
pub(crate) async fn caller(
    p: Arc<Shared>,
    mut req: Request<Incoming>,
    next: Next<Incoming>,
) -> Answer {
    let limits = match CallerLimits::from_headers(req.headers()) {
        Ok(c) => c,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, &e.to_string(), "bad_request", None),
    };
    if limits.sdk_retry.is_some_and(|n| n > 0) {
        let peer = req.extensions().get::<Peer>().map(|p| p.0);
        warn_sdk_retries(&p.warned, req.headers(), peer);
    }
    req.extensions_mut().insert(limits);
    next.run(req).await
}

/// The request body ([`super::body`]), under `--max-body`, `--body-timeout` and the
/// `--body-memory` budget shared by all connections. The budget is held until the answer is
/// back (a retry may resend the body). tower-http's `RequestBodyLimit` bounds one body; the
/// shared budget and the timeout are ours.
pub(crate) async fn body(p: Arc<Shared>, req: Request<Incoming>, next: Next<Bytes>) -> Answer {
    let (parts, body) = req.into_parts();
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = read_request(body, length, p.max_body, &p.budget, p.body_timeout).await;
    let (bytes, permit) = match read {
        Ok(b) => b,
        Err(e) => return body_refusal(e),
    };
    let answer = next.run(Request::from_parts(parts, bytes)).await;
    drop(permit);
    answer
}

/// Header hygiene ([`super::headers`]): hop-by-hop headers and `X-Forwarded-For` go, and so
/// does a caller's credential once it authenticated with a proxy token.
pub(crate) async fn hygiene(_: Arc<Shared>, mut req: Request<Bytes>, next: Next<Bytes>) -> Answer {
    let authenticated = req.extensions().get::<Authenticated>().is_some_and(|a| a.0);
    *req.headers_mut() = super::headers::upstream_request(req.headers(), authenticated);
    next.run(req).await
}

fn body_refusal(e: ReadError) -> Answer {
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
    refusal(status, &msg, code, retry)
}

/// One WARN per client whose SDK retries on its own: two retry loops multiply attempts.
fn warn_sdk_retries(
    warned: &std::sync::Mutex<HashSet<u64>>,
    h: &http::HeaderMap,
    peer: Option<SocketAddr>,
) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // The client: its credential (hashed, never kept or logged), else its address, and its SDK.
    match h
        .get(http::header::AUTHORIZATION)
        .or_else(|| h.get("x-api-key"))
    {
        Some(c) => c.as_bytes().hash(&mut hasher),
        None => peer.map(|p| p.ip()).hash(&mut hasher),
    }
    h.get(http::header::USER_AGENT)
        .map(|v| v.as_bytes())
        .hash(&mut hasher);
    let client = hasher.finish();
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned.len() < MAX_WARNED && warned.insert(client) {
        let ua = h
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        let client = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        tracing::warn!(
            client = %client,
            user_agent = ua,
            "the caller's SDK retries on its own (x-stainless-retry-count > 0): two retry loops multiply attempts; set max_retries=0 on the client"
        );
    }
}
