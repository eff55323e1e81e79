//! The answers the proxy writes: OpenAI-shaped refusals and failures, and the one way an
//! upstream answer is finished for the caller.

use super::Shared;
use super::body::{Buffered, ProxyBody, Stop};
use super::call::Attempts;
use super::headers;
use super::step::Answer;
use firebreak::{Class, Error, FireworksBody};
use http::{HeaderValue, Response, StatusCode};
use std::time::{Duration, Instant};

/// A non-streaming answer up to this size is read whole before it is sent, so that one that
/// breaks off becomes an error answer, not a truncated 200; a longer one is streamed.
const MAX_BUFFERED_ANSWER: usize = 16 * 1024 * 1024;

/// An OpenAI-shaped error answer the proxy makes itself.
pub(crate) fn refusal(
    status: StatusCode,
    message: &str,
    code: &str,
    retry_after: Option<Duration>,
) -> Answer {
    let body = serde_json::json!({
        "error": {"message": message, "type": "firebreak_error", "code": code, "param": null}
    });
    let mut r = Response::new(ProxyBody::refusal(body.to_string()));
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

/// The answer for a call the stack failed, or whose answer broke off before its end:
/// the status by class, the error's words without the upstream's address, and a
/// `Retry-After` where waiting can help.
pub(crate) fn failure(p: &Shared, e: &Error, prefix: &str, attempts: u32) -> Answer {
    let msg = format!("{prefix}{}", (p.scrub)(&e.to_string()));
    let mut r = refusal(
        status_for(e),
        &msg,
        e.class().label(),
        e.useful_retry_after(),
    );
    r.extensions_mut().insert(Attempts(attempts));
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

/// The upstream's answer for the caller: a non-streaming one read whole first (up to
/// [`MAX_BUFFERED_ANSWER`]), an event stream passed on as it comes, cut at the call's
/// deadline or at shutdown; the caller's headers, the route's (`firebreak-target`,
/// `firebreak-advice`) and the attempts.
pub(crate) async fn answer(
    p: &Shared,
    resp: Response<FireworksBody>,
    deadline: Option<(Instant, Duration)>,
) -> Answer {
    let attempts = firebreak::RetryInfo::of(&resp).attempts();
    let routed = route_headers(&resp);
    let (rp, body) = resp.into_parts();
    let sse = firebreak::parse::is_event_stream(&rp.headers);
    let body = if sse {
        stream(p, None, body, true, deadline)
    } else {
        match super::body::buffer(body, MAX_BUFFERED_ANSWER).await {
            Buffered::Whole(b) => ProxyBody::full(b),
            Buffered::Prefix(b, rest) => stream(p, Some(b), rest, false, deadline),
            Buffered::Failed(e) => {
                return failure(
                    p,
                    &e,
                    "the upstream answer broke off before its end: ",
                    attempts,
                );
            }
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = rp.status;
    *out.headers_mut() = headers::caller_response(&rp.headers);
    out.headers_mut().extend(routed);
    out.extensions_mut().insert(Attempts(attempts));
    out
}

fn stream(
    p: &Shared,
    prefix: Option<bytes::Bytes>,
    body: FireworksBody,
    sse: bool,
    deadline: Option<(Instant, Duration)>,
) -> ProxyBody {
    let stop = Stop {
        shutdown: p.cut.clone().cancelled_owned(),
        deadline: deadline.map(|(started, d)| tokio::time::Instant::from_std(started + d)),
    };
    ProxyBody::upstream(prefix, body, sse, stop, p.scrub.clone())
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
