//! The one public error type, the timeout error, and the per-response classification.

use crate::class::{Class, ConnectKind, TimeoutPhase};
use crate::parse::body::ApiError;
use crate::parse::delay::{DelayVerdict, server_delay};
use crate::parse::ratelimit::RateLimitHeaders;
use crate::parse::{request_id_header, should_retry};
use crate::transport::{BoxError, Stage, classify_error};
use http::{HeaderMap, StatusCode};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the classify layer concluded about one response; attached to its extensions.
///
/// A success is 16 bytes with nothing parsed; the details of a failure (delay, rate-limit
/// headers, parsed body, request id) sit behind one allocation.
#[derive(Debug, Clone)]
pub struct Classification {
    class: Class,
    status: StatusCode,
    details: Option<Box<Details>>,
}

#[derive(Debug, Clone, Default)]
struct Details {
    should_retry: Option<bool>,
    delay: DelayVerdict,
    rate_limit: Option<RateLimitHeaders>,
    api_error: Option<Arc<ApiError>>,
    request_id: Option<Arc<str>>,
}

impl Classification {
    /// The classification of a success: no header or body parsing beyond the status.
    pub(crate) fn success(status: StatusCode) -> Self {
        Classification {
            class: Class::from_status(status),
            status,
            details: None,
        }
    }

    /// The classification [`ClassifyLayer`](crate::classify::ClassifyLayer) gave `resp`. Plain successes
    /// carry none (attaching one would allocate on every call); for them this is
    /// `Classification::success`. A failure that never passed through the layer is classified
    /// here from its status and headers (its body is not read).
    pub fn of<B>(resp: &http::Response<B>) -> Classification {
        match resp.extensions().get::<Classification>() {
            Some(c) => c.clone(),
            None if resp.status().as_u16() < 400 => Classification::success(resp.status()),
            None => Classification::from_response(
                resp.status(),
                resp.headers(),
                None,
                SystemTime::now(),
            ),
        }
    }

    /// The class of `resp`: its classification's, or the status's when it carries none.
    pub fn class_of<B>(resp: &http::Response<B>) -> Class {
        resp.extensions()
            .get::<Classification>()
            .map_or_else(|| Class::from_status(resp.status()), Classification::class)
    }

    /// Classifies a response from its status, headers and (for errors) its parsed body.
    /// `now` resolves HTTP-date `Retry-After` values.
    pub fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        api_error: Option<ApiError>,
        now: SystemTime,
    ) -> Self {
        let class = match Class::from_status(status) {
            Class::RateLimited | Class::ClientError(_)
                if crate::parse::body::quota_exhausted(status.as_u16(), api_error.as_ref()) =>
            {
                Class::QuotaExhausted
            }
            c => c,
        };
        let request_id = request_id_header(headers).map(Arc::from).or_else(|| {
            api_error
                .as_ref()
                .and_then(|e| e.request_id.as_deref())
                .map(Arc::from)
        });
        let details = Details {
            should_retry: should_retry(headers),
            delay: if class.is_success() {
                DelayVerdict::Absent
            } else {
                server_delay(headers, now)
            },
            rate_limit: {
                let r = RateLimitHeaders::from_headers(headers);
                (!r.is_empty()).then_some(r)
            },
            api_error: api_error.map(Arc::new),
            request_id,
        };
        Classification {
            class,
            status,
            details: Some(Box::new(details)),
        }
    }

    /// The classification of a gRPC response whose `grpc-status` is in its headers (a
    /// "trailers-only" answer, how unary calls usually fail); `None` without one. UNAVAILABLE
    /// and RESOURCE_EXHAUSTED are retryable, with `grpc-retry-pushback-ms` as the server's delay
    /// (a negative pushback, gRPC's "do not retry", makes the call not retryable).
    #[cfg_attr(not(feature = "classify"), allow(dead_code))]
    pub(crate) fn from_grpc_headers(
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Self> {
        let s = crate::parse::grpc::GrpcStatus::read(headers, now)?;
        let code = s.code?;
        let (class, refused, delay, message) =
            (s.class(), s.refuses_retry(), s.pushback, s.message);
        let api = ApiError {
            code: Some(crate::parse::body::grpc_code_name(i64::from(code)).to_owned()),
            message,
            shape: crate::BodyShape::GrpcGateway,
            ..ApiError::default()
        };
        Some(Classification {
            class,
            status,
            details: Some(Box::new(Details {
                should_retry: refused.then_some(false),
                delay,
                rate_limit: None,
                api_error: Some(Arc::new(api)),
                request_id: None,
            })),
        })
    }

    /// Marks the response as having carried an error event inside its SSE stream.
    pub(crate) fn with_stream_error(mut self, e: ApiError) -> Self {
        self.class = Class::StreamError;
        self.details.get_or_insert_with(Box::default).api_error = Some(Arc::new(e));
        self
    }

    /// Marks the response as a stream whose first event was an error: nothing reached the
    /// caller yet, so, unlike an error after content, it is retryable.
    #[cfg_attr(not(feature = "classify"), allow(dead_code))]
    pub(crate) fn with_stream_error_before_content(self, e: ApiError) -> Self {
        let mut c = self.with_stream_error(e);
        c.details.get_or_insert_with(Box::default).should_retry = Some(true);
        c
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `x-should-retry` override, if the server sent a valid one.
    pub(crate) fn should_retry(&self) -> Option<bool> {
        self.details.as_ref().and_then(|d| d.should_retry)
    }

    /// Whether to retry: the `x-should-retry` override if present, else the class default.
    pub fn is_retryable(&self) -> bool {
        self.class.is_retryable_given(self.should_retry())
    }

    /// What the delay headers said.
    pub(crate) fn delay(&self) -> DelayVerdict {
        self.details.as_ref().map(|d| d.delay).unwrap_or_default()
    }

    /// The usable server-requested delay.
    pub fn retry_after(&self) -> Option<Duration> {
        self.delay().delay()
    }

    /// The `x-ratelimit-*` snapshot, when any such header was present (not parsed on success).
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    pub(crate) fn rate_limit(&self) -> Option<&RateLimitHeaders> {
        self.details.as_ref().and_then(|d| d.rate_limit.as_ref())
    }

    /// The parsed error body.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.details.as_ref().and_then(|d| d.api_error.as_deref())
    }

    /// The request id (`x-request-id`, else the body's `request_id`).
    pub fn request_id(&self) -> Option<&str> {
        self.details.as_ref().and_then(|d| d.request_id.as_deref())
    }
}

fn find_ours<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    crate::transport::chain(e).find_map(|c| c.downcast_ref::<Error>())
}

#[cfg(test)]
impl Error {
    /// For unit tests: the phase and configured duration of a timeout error (its class and its
    /// `TimeoutError` source, which must agree).
    pub(crate) fn timeout_parts(&self) -> (TimeoutPhase, Duration) {
        let Class::Timeout(p) = self.class() else {
            panic!("not a timeout: {self:?}")
        };
        let t = find_timeout(self).expect("a TimeoutError source");
        assert_eq!(t.phase(), p);
        (p, t.after())
    }
}

#[cfg(test)]
fn find_timeout(e: &Error) -> Option<&TimeoutError> {
    crate::transport::chain(e).find_map(|c| c.downcast_ref::<TimeoutError>())
}

/// A timeout of one phase; the source of a timeout [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutError {
    phase: TimeoutPhase,
    after: Duration,
}

impl TimeoutError {
    /// A timeout of `phase` after the configured `after`.
    pub fn new(phase: TimeoutPhase, after: Duration) -> Self {
        TimeoutError { phase, after }
    }

    /// The phase.
    pub fn phase(&self) -> TimeoutPhase {
        self.phase
    }

    /// The configured duration that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timeout after {:?}", self.phase.name(), self.after)
    }
}

impl std::error::Error for TimeoutError {}

/// The error of every firebreak layer: opaque, with predicates and a `source()` chain.
///
/// Its `Display` is one line a person can act on, e.g.
/// `401 Unauthorized from api.fireworks.ai: The API key you provided is invalid. (UNAUTHORIZED, request id 3f2…)`.
/// It never contains request headers, so never the API key.
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    class: Class,
    status: Option<StatusCode>,
    should_retry: Option<bool>,
    api_error: Option<Arc<ApiError>>,
    request_id: Option<Arc<str>>,
    retry_after: Option<Duration>,
    host: Option<Box<str>>,
    detail: Option<Box<str>>,
    quota: bool,
    attempts: u32,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `class` with no further details.
    pub fn new(class: Class) -> Self {
        Error {
            inner: Box::new(Inner {
                class,
                status: None,
                should_retry: None,
                api_error: None,
                request_id: None,
                retry_after: None,
                host: None,
                detail: None,
                quota: false,
                attempts: 0,
                source: None,
            }),
        }
    }

    /// A transport error from the inner service, classified from its source chain.
    pub fn transport(source: impl Into<BoxError>) -> Self {
        Self::classified_source(source.into(), Stage::BeforeResponse)
    }

    /// An error while reading the response body, classified from its source chain.
    #[cfg_attr(not(any(feature = "classify", feature = "timeout")), allow(dead_code))]
    pub(crate) fn body(source: impl Into<BoxError>) -> Self {
        Self::classified_source(source.into(), Stage::MidBody)
    }

    fn classified_source(source: BoxError, stage: Stage) -> Self {
        // Already ours: keep it as it is rather than wrapping it again.
        let source = match source.downcast::<Error>() {
            Ok(e) => return *e,
            Err(source) => source,
        };
        // One of ours deeper in the chain (e.g. a connect timeout inside hyper-util's client
        // error): lift it to the top, so its class, details and timeout duration stay one
        // `source()` away; the rest of the chain stays reachable when there is no timeout.
        if let Some(inner) = find_ours(&*source) {
            let mut e = Error::new(inner.inner.class);
            e.inner.status = inner.inner.status;
            e.inner.should_retry = inner.inner.should_retry;
            e.inner.api_error = inner.inner.api_error.clone();
            e.inner.request_id = inner.inner.request_id.clone();
            e.inner.retry_after = inner.inner.retry_after;
            e.inner.detail = inner.inner.detail.clone();
            e.inner.quota = inner.inner.quota;
            let timeout = inner
                .inner
                .source
                .as_deref()
                .and_then(|s| s.downcast_ref::<TimeoutError>())
                .copied();
            return match timeout {
                Some(t) => e.with_source(t),
                None => e.with_source(source),
            };
        }
        let class = classify_error(&*source, stage);
        Error::new(class).with_source(source)
    }

    /// An error event found inside an SSE stream.
    #[cfg_attr(not(feature = "classify"), allow(dead_code))]
    pub(crate) fn stream_error(api: ApiError) -> Self {
        let mut e = Error::new(Class::StreamError);
        e.inner.request_id = api.request_id.as_deref().map(Arc::from);
        e.inner.api_error = Some(Arc::new(api));
        e
    }

    /// A timeout of `phase` after `after`.
    pub fn timeout(phase: TimeoutPhase, after: Duration) -> Self {
        Error::new(Class::Timeout(phase)).with_source(TimeoutError::new(phase, after))
    }

    /// An error for a non-success response, from its classification.
    pub fn from_classification(c: &Classification) -> Self {
        let mut e = Error::new(c.class);
        e.inner.status = Some(c.status);
        e.inner.retry_after = c.retry_after();
        if let Some(d) = &c.details {
            e.inner.should_retry = d.should_retry;
            e.inner.api_error = d.api_error.clone();
            e.inner.request_id = d.request_id.clone();
        }
        e
    }

    /// Adds the cause.
    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Adds the host the request went to (shown in `Display`).
    pub fn with_host(mut self, host: impl Into<Box<str>>) -> Self {
        self.inner.host = Some(host.into());
        self
    }

    /// Adds a sentence of context, e.g. why a retry was not attempted.
    pub fn with_detail(mut self, detail: impl Into<Box<str>>) -> Self {
        self.inner.detail = Some(detail.into());
        self
    }

    /// Sets the server-requested (or, for [`Class::GateRefused`], the estimated) delay.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.inner.retry_after = Some(d);
        self
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.inner.class
    }

    /// Whether a timeout of any phase (or a 408).
    pub fn is_timeout(&self) -> bool {
        self.inner.class.is_timeout()
    }

    /// Whether rate limited: a 429, or the local gate refusing to send.
    pub fn is_rate_limited(&self) -> bool {
        self.inner.class.is_rate_limited()
    }

    /// Whether the account's quota, spending limit or billing is exhausted: the server said so
    /// ([`Class::QuotaExhausted`]), or the 429 gate refused to send because it said so moments
    /// ago on the same key. Retrying will not help; adding credits or raising the limit will.
    pub fn is_quota_exhausted(&self) -> bool {
        self.inner.class == Class::QuotaExhausted || self.inner.quota
    }

    /// Marks a client-side refusal as caused by an exhausted quota (see
    /// [`Error::is_quota_exhausted`]).
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    pub(crate) fn with_quota_exhausted(mut self) -> Self {
        self.inner.quota = true;
        self
    }

    /// Whether retrying could help: `x-should-retry` if the server sent it, else the class default.
    pub fn is_retryable(&self) -> bool {
        self.inner.class.is_retryable_given(self.inner.should_retry)
    }

    /// Whether the request never reached the server (connect failures, connect and pool
    /// timeouts, local throttling): these are not on the provider's dashboard.
    pub fn is_client_side(&self) -> bool {
        self.inner.class.is_client_side()
    }

    /// Whether the connection could not be made.
    pub fn is_connect(&self) -> bool {
        matches!(
            self.inner.class,
            Class::Connect(_) | Class::Timeout(TimeoutPhase::Connect)
        )
    }

    /// The HTTP status, for errors that are server answers.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The parsed error body.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.inner.api_error.as_deref()
    }

    /// The request id.
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// What the error's one-line message adds after its class: why a layer refused, or why a
    /// call was not retried.
    pub fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    /// The server-requested delay (or the local gate's estimate).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// [`retry_after`](Error::retry_after) where waiting can help: on a retryable or
    /// rate-limited failure only (a `Retry-After` on a 400 would mislead). What `Display` says
    /// and what `firebreak proxy` answers as `Retry-After`.
    pub fn useful_retry_after(&self) -> Option<Duration> {
        self.inner
            .retry_after
            .filter(|_| self.is_retryable() || self.is_rate_limited())
    }

    /// Records how many attempts the call made before failing (the retry layer sets it).
    pub fn with_attempts(mut self, n: u32) -> Self {
        self.inner.attempts = n;
        self
    }

    /// How many attempts the call made, when a retry layer recorded it.
    pub fn attempts(&self) -> Option<u32> {
        (self.inner.attempts > 0).then_some(self.inner.attempts)
    }

    fn what(&self) -> String {
        match self.inner.class {
            Class::Connect(ConnectKind::Dns) => "DNS lookup failed".into(),
            Class::Connect(ConnectKind::Refused) => "connection refused".into(),
            Class::Connect(ConnectKind::Tls) => "TLS handshake failed".into(),
            Class::Connect(ConnectKind::Other) => "connect failed".into(),
            Class::Timeout(p) => format!("{} timeout", p.name()),
            Class::ResetBeforeResponse => "connection closed before the response".into(),
            Class::ResetMidBody => "connection closed while reading the response body".into(),
            Class::Protocol => "protocol error".into(),
            Class::GateRefused if self.inner.quota => {
                "not sent: the account's quota or spending limit was found exhausted on this key"
                    .into()
            }
            Class::GateRefused => {
                "not sent: the client-side rate limiter could not admit the request in time".into()
            }
            Class::StreamError => "error event in the response stream".into(),
            Class::QuotaExhausted => "quota exhausted".into(),
            other => other.label().replace('_', " "),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let timeout = i
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<TimeoutError>());
        match (i.status, timeout) {
            (Some(s), _) if i.class != Class::StreamError => write!(
                f,
                "{} {}",
                s.as_str(),
                s.canonical_reason().unwrap_or("Error")
            )?,
            (_, Some(t)) => write!(f, "{t}")?,
            _ => f.write_str(&self.what())?,
        }
        if let Some(h) = &i.host {
            write!(f, " from {h}")?;
        }
        match (&i.api_error, &i.source) {
            (Some(api), _) => {
                if let Some(m) = &api.message {
                    write!(f, ": {m}")?;
                }
            }
            (None, Some(src)) if timeout.is_none() => write!(f, ": {src}")?,
            (None, _) => {}
        }
        let code = i.api_error.as_ref().and_then(|a| a.best_code());
        match (code, &i.request_id) {
            (Some(c), Some(r)) => write!(f, " ({c}, request id {r})")?,
            (Some(c), None) => write!(f, " ({c})")?,
            (None, Some(r)) => write!(f, " (request id {r})")?,
            (None, None) => {}
        }
        if i.class == Class::QuotaExhausted {
            // What to do, on the same line: this is not a rate limit that refills by itself.
            f.write_str("; the account's quota or spending limit is exhausted: add credits or raise the limit (retrying will not help)")?;
        } else if let Some(d) = self.useful_retry_after() {
            // Only where waiting can help: "retry after" on a 400 would mislead.
            write!(f, "; retry after {d:?}")?;
        }
        if let Some(d) = &i.detail {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("firebreak::Error");
        d.field("class", &i.class);
        if let Some(s) = i.status {
            d.field("status", &s);
        }
        if let Some(a) = &i.api_error {
            d.field("api_error", a);
        }
        if let Some(r) = &i.request_id {
            d.field("request_id", r);
        }
        if let Some(r) = i.retry_after {
            d.field("retry_after", &r);
        }
        if let Some(x) = &i.detail {
            d.field("detail", x);
        }
        if i.quota {
            d.field("quota_exhausted", &true);
        }
        if let Some(s) = &i.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::body::parse_error_body;
    use http::HeaderValue;

    #[test]
    fn display_is_one_actionable_line() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("3f2a"));
        let body = parse_error_body(br#"{"error":{"message":"The API key you provided is invalid.","code":"UNAUTHORIZED","type":"error"}}"#, false);
        let c = Classification::from_response(
            StatusCode::UNAUTHORIZED,
            &h,
            Some(body),
            SystemTime::now(),
        );
        let e = Error::from_classification(&c).with_host("api.fireworks.ai");
        assert_eq!(
            e.to_string(),
            "401 Unauthorized from api.fireworks.ai: The API key you provided is invalid. (UNAUTHORIZED, request id 3f2a)"
        );
        assert!(!e.is_retryable() && !e.is_client_side() && !e.is_rate_limited());
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(e.request_id(), Some("3f2a"));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn rate_limited_carries_the_delay_and_should_retry_overrides() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        h.insert("x-should-retry", HeaderValue::from_static("false"));
        let c = Classification::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            None,
            SystemTime::now(),
        );
        assert_eq!(c.retry_after(), Some(Duration::from_secs(7)));
        assert!(!c.is_retryable(), "x-should-retry: false wins");
        let e = Error::from_classification(&c);
        assert!(e.is_rate_limited() && !e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.to_string().ends_with("; retry after 7s"), "{e}");
        // A 400 that happens to carry Retry-After: waiting will not fix it, so it is not said.
        let c = Classification::from_response(StatusCode::BAD_REQUEST, &h, None, SystemTime::now());
        let e = Error::from_classification(&c);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(!e.to_string().contains("retry after"), "{e}");
    }

    #[test]
    fn timeouts_name_phase_and_duration() {
        let e = Error::timeout(TimeoutPhase::Idle, Duration::from_secs(30));
        assert_eq!(e.to_string(), "body idle timeout after 30s");
        assert!(e.is_timeout() && !e.is_client_side());
        let e = Error::timeout(TimeoutPhase::Connect, Duration::from_secs(10));
        assert!(e.is_client_side() && e.is_connect() && e.is_retryable());
        let src = std::error::Error::source(&e).unwrap();
        assert_eq!(
            src.downcast_ref::<TimeoutError>().unwrap().after(),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_nested_firebreak_error_is_lifted_with_its_timeout() {
        #[derive(Debug)]
        struct Wrapper(Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Error::transport(Wrapper(Error::timeout(
            TimeoutPhase::Connect,
            Duration::from_millis(300),
        )));
        assert_eq!(e.class(), Class::Timeout(TimeoutPhase::Connect));
        let t = std::error::Error::source(&e)
            .unwrap()
            .downcast_ref::<TimeoutError>()
            .unwrap();
        assert_eq!(t.after(), Duration::from_millis(300));
        assert_eq!(e.to_string(), "connect timeout after 300ms");
    }

    #[test]
    fn transport_does_not_double_wrap() {
        let inner = Error::timeout(TimeoutPhase::Ready, Duration::from_secs(1));
        let e = Error::transport(inner);
        assert_eq!(e.class(), Class::Timeout(TimeoutPhase::Ready));
        assert!(std::error::Error::source(&e).unwrap().is::<TimeoutError>());
    }
}

/// The request's host, copied inline so that capturing it costs no allocation (it is only
/// shown in error messages). Hosts longer than the buffer are cut.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "classify"), allow(dead_code))]
pub(crate) struct HostLabel {
    len: u8,
    buf: [u8; 63],
}

#[cfg_attr(not(feature = "classify"), allow(dead_code))]
impl HostLabel {
    pub(crate) fn of(uri: &http::Uri) -> Option<Self> {
        let a = uri.authority()?.as_str().as_bytes();
        let mut buf = [0u8; 63];
        let mut n = a.len().min(buf.len());
        // Never cut inside a UTF-8 sequence (authorities are ASCII, but be safe).
        while n > 0 && n < a.len() && (a[n] & 0xC0) == 0x80 {
            n -= 1;
        }
        buf[..n].copy_from_slice(&a[..n]);
        Some(HostLabel { len: n as u8, buf })
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Debug for HostLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
