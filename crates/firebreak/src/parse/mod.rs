//! Pure parsers: no I/O, no clocks (the caller passes `now`), total on any input.

pub(crate) mod body;
pub(crate) mod delay;
pub(crate) mod grpc;
#[cfg(test)]
mod props;
pub(crate) mod ratelimit;
pub(crate) mod sse;

pub use body::{parse_error_body, quota_exhausted};

use http::HeaderMap;

/// Whether an answer is a server-sent event stream (its `Content-Type` is
/// `text/event-stream`, with or without parameters).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The `x-should-retry: true|false` override. Anything else is ignored (`None`).
pub(crate) fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let v = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The server's prefill queueing time (`fireworks-prefill-queue-duration`, seconds), which a
/// dedicated deployment sends on its answers. Anything unparseable is ignored (`None`).
#[cfg_attr(not(feature = "gate"), allow(dead_code))]
pub(crate) fn prefill_queue(headers: &HeaderMap) -> Option<std::time::Duration> {
    let v = headers
        .get("fireworks-prefill-queue-duration")?
        .to_str()
        .ok()?;
    delay::parse_seconds(v).ok()
}

/// The request id: the `x-request-id` header (also `fireworks-request-id`, `request-id`).
pub(crate) fn request_id_header(headers: &HeaderMap) -> Option<&str> {
    ["x-request-id", "fireworks-request-id", "request-id"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
}
