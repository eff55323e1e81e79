//! The service under the steps: the call through the firebreak stack (or, for a model that is
//! an alias, the router), with the caller's timers and deadline, and its answer back.

use super::Shared;
use super::call::CallId;
use super::caller::{CallerLimits, plan};
use super::respond;
use super::step::Answer;
use bytes::Bytes;
use firebreak::{Deadline, Error};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Service, ServiceExt};

/// Where the guard admitted a call to: the path below the prefix (starting with `/`).
#[derive(Debug, Clone)]
pub(crate) struct Rest(pub(crate) String);

/// The innermost service.
#[derive(Clone)]
pub(crate) struct Forward(pub(crate) Arc<Shared>);

impl Service<Request<Bytes>> for Forward {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(forward(&p, req).await) })
    }
}

async fn forward(p: &Shared, req: Request<Bytes>) -> Answer {
    let (mut parts, bytes) = req.into_parts();
    let started = parts
        .extensions
        .get::<CallId>()
        .map_or_else(Instant::now, |c| c.started);
    let caller = parts
        .extensions
        .remove::<CallerLimits>()
        .unwrap_or_default();
    let rest = parts.extensions.remove::<Rest>().map(|r| r.0);
    let (stream, model) = peek_body(&bytes);
    let plan = plan(
        p.preset(caller.preset.unwrap_or(p.default_preset)),
        &caller,
        stream,
    );
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let rest = rest.unwrap_or_else(|| parts.uri.path().to_owned());
    // An alias goes through its chain of targets; its path is relative to their base URLs.
    let router = model
        .as_ref()
        .and_then(|m| p.router.as_ref().filter(|r| r.routes(&m.0)));
    let target = match router {
        Some(_) => format!("{rest}{query}"),
        None => format!("{}{rest}{query}", p.upstream),
    };
    let Ok(uri) = target.parse() else {
        return respond::refusal(
            StatusCode::BAD_REQUEST,
            "the request target cannot be forwarded",
            "bad_request",
            None,
        );
    };
    let up = upstream((parts, bytes), uri, model, &plan, started);
    let call = async {
        match router {
            Some(r) => r.clone().oneshot(up).await,
            None => p.svc.clone().oneshot(up).await,
        }
    };
    let result = match plan.head.filter(|_| stream) {
        Some(h) => tokio::time::timeout(h.saturating_sub(started.elapsed()), call)
            .await
            .unwrap_or_else(|_| {
                Err(
                    Error::timeout(firebreak::TimeoutPhase::Deadline, h).with_detail(
                        "the caller's own timeout (x-stainless-read-timeout) would pass first",
                    ),
                )
            }),
        None => call.await,
    };
    match result {
        Ok(resp) => respond::answer(p, resp, plan.deadline.map(|d| (started, d))).await,
        Err(e) => respond::failure(p, &e, "", e.attempts().unwrap_or(0)),
    }
}

/// The call as the stack gets it: the caller's method and (cleaned) headers, the proxy's
/// request id, the model for the per-(key, model) gate, and the caller's timers and deadline.
fn upstream(
    (parts, bytes): (http::request::Parts, Bytes),
    uri: http::Uri,
    model: Option<firebreak::Model>,
    plan: &super::caller::Plan,
    started: Instant,
) -> Request<Full<Bytes>> {
    let mut up = Request::new(Full::new(bytes));
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = parts.headers;
    if let Some(c) = parts.extensions.get::<CallId>() {
        if let Ok(v) = HeaderValue::from_str(&c.id) {
            up.headers_mut().insert("x-request-id", v);
        }
    }
    // Each caller's key and model get their own gate: one tenant's 429s never hold another.
    if let Some(m) = model {
        up.extensions_mut().insert(m);
    }
    up.extensions_mut().insert(plan.attempt);
    if let Some(d) = plan.deadline {
        let left = d.saturating_sub(started.elapsed());
        up.extensions_mut()
            .insert(Deadline::after(left.max(Duration::from_millis(1))));
    }
    up
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
