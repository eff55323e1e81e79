//! The outermost step: the call's identity and record. It gives the call its request id (the
//! caller's `x-request-id` when short and printable, else a new one; tower-http's
//! `SetRequestId` would keep any value the caller sent), marks the connection busy while the
//! call lasts, stamps `x-request-id` and `x-firebreak-attempts` on every answer (an upstream's
//! own id is kept as `x-upstream-request-id`), and hands the answer's body the log line it
//! writes when it ends.

use super::Shared;
use super::body::CallLog;
use super::conn::ConnState;
use super::step::{Answer, Next};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

/// The call's id and start, in the request's extensions for the steps below.
#[derive(Debug, Clone)]
pub(crate) struct CallId {
    pub(crate) id: Arc<str>,
    pub(crate) started: Instant,
}

/// The header that counts the attempts the stack made for an answer.
const ATTEMPTS_HEADER: &str = "x-firebreak-attempts";

/// The attempts the stack made for an answer, which the steps below put in its extensions
/// (none: an answer the proxy made itself, 0 attempts).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempts(pub(crate) u32);

/// The step.
pub(crate) async fn record(
    _: Arc<Shared>,
    mut req: Request<Incoming>,
    next: Next<Incoming>,
) -> Answer {
    let started = Instant::now();
    let inflight = req
        .extensions()
        .get::<Arc<ConnState>>()
        .map(ConnState::begin);
    let id: Arc<str> = request_id(req.headers()).into();
    let mut log = CallLog {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        request_id: id.to_string(),
        status: 0,
        attempts: 0,
        started,
        outcome: "refused",
    };
    req.extensions_mut().insert(CallId {
        id: id.clone(),
        started,
    });
    // A caller that goes away before its answer drops this future: the log line says
    // `refused`, with no status, as it did when the proxy was written as functions.
    let mut answer = next.run(req).await;
    log.attempts = stamp(&mut answer, &id);
    log.status = answer.status().as_u16();
    answer.body_mut().attach(log, inflight);
    answer
}

/// A request id: the caller's `x-request-id` when it is short and printable, else a new one.
fn request_id(h: &http::HeaderMap) -> String {
    h.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("fb-{:032x}", rand::random::<u128>()))
}

/// Sets `x-request-id` (the upstream's own moves to `x-upstream-request-id`) and
/// `x-firebreak-attempts` (0 for an answer the proxy made itself). Returns the attempts.
fn stamp(a: &mut Answer, id: &str) -> u32 {
    let attempts = a.extensions().get::<Attempts>().map_or(0, |n| n.0);
    let h = a.headers_mut();
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    if let Some(up) = h.remove("x-request-id") {
        if up != id {
            h.insert("x-upstream-request-id", up);
        }
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    attempts
}
