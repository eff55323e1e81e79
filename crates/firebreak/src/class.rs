//! The taxonomy: what happened to one attempt.

use http::StatusCode;
use std::fmt;

/// What happened to one attempt.
///
/// Every class answers two questions: is it [retryable by default](Class::is_retryable_by_default),
/// and did the request [reach the server](Class::reached_server)? The second matters because
/// Fireworks' dashboard counts only requests its servers acknowledged: connect failures, DNS
/// failures, connect and pool timeouts, and requests the client's own 429 gate rejected never show
/// there, so they must be counted on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    // ---- server answers ----
    /// 1xx/2xx/3xx.
    Success,
    /// 429: rate limited (or, on a dedicated deployment, capacity exceeded).
    RateLimited,
    /// 503: overloaded / load shedding.
    Overloaded,
    /// 500, 502, 504 and other 5xx.
    ServerError,
    /// 408.
    RequestTimeout,
    /// A 4xx other than 408 and 429, named.
    ClientError(ClientErrorKind),
    /// An error event inside an SSE stream (an event whose data has an `error` key).
    StreamError,
    // ---- transport failures ----
    /// The connection could not be made; the request never left the client.
    Connect(ConnectKind),
    /// A timeout, by phase.
    Timeout(TimeoutPhase),
    /// The connection was reset or closed before a response head arrived.
    ResetBeforeResponse,
    /// The connection was reset or closed while the response body was being read.
    ResetMidBody,
    /// The peer broke the protocol (unparseable response, HTTP/2 protocol error).
    Protocol,
    /// The client's own 429 gate refused to send the request (it could not be admitted in time,
    /// or the key's quota was found exhausted moments ago).
    GateRefused,
    /// Anything else (a bug, a user error in building the request, an unknown transport error).
    Other,
    /// The account's quota, spending limit or billing is exhausted (402, an `insufficient_quota`
    /// 429, a 412 "account suspended", …): not a rate limit, and retrying will not help.
    QuotaExhausted,
    /// 501 Not Implemented: the server does not support the request; retrying will not help.
    NotImplemented,
}

/// The named 4xx classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientErrorKind {
    /// 400: fix the request.
    BadRequest,
    /// 401: check the key.
    Unauthorized,
    /// 402: payment required. Not produced any more: a 402 is [`Class::QuotaExhausted`]; kept
    /// so that the metric label set stays stable.
    PaymentRequired,
    /// 403.
    Forbidden,
    /// 404: check the model or deployment.
    NotFound,
    /// 412: account suspended, or a LoRA failed to load.
    PreconditionFailed,
    /// 413.
    PayloadTooLarge,
    /// 422: fix the body.
    Unprocessable,
    /// Any other 4xx.
    Other,
}

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectKind {
    /// Name resolution failed.
    Dns,
    /// The peer refused the connection.
    Refused,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// Any other connect failure.
    Other,
}

/// Which phase of an attempt timed out. The variants are named as
/// `TimeoutConfig`'s fields (`write`, `headers`, `idle`, …); their class labels on
/// the metrics (`timeout_request_write`, `timeout_response_headers`, `timeout_body_idle`) keep
/// the spelling they first had, so that users' dashboards and alerts keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// TCP (and TLS) connect. Never reached the server.
    Connect,
    /// Waiting for a pooled connection or for the service to become ready. Never reached the server.
    Ready,
    /// Sending the request body.
    Write,
    /// Waiting for the response head (time to first byte).
    Headers,
    /// Waiting for the first SSE event after the head.
    FirstEvent,
    /// The longest gap between two body frames.
    Idle,
    /// The whole attempt.
    Attempt,
    /// The overall deadline across attempts, backoff and rate-limit waits.
    Deadline,
}

impl Class {
    /// For a client-side failure (one the provider's dashboard never sees), its kind as a
    /// metric label: `dns`, `refused`, `tls`, `connect_other`, `connect_timeout`,
    /// `ready_timeout` or `gate_refused`. `None` when the request reached the server.
    /// The `kind` label of `firebreak_client_failures_total` for a failure that never reached
    /// the server (`dns`, `refused`, `tls`, `connect_other`, `connect_timeout`,
    /// `ready_timeout`, `gate_refused`); `None` for a class that reached it.
    pub fn client_side_kind(self) -> Option<&'static str> {
        Some(match self {
            Class::Connect(ConnectKind::Dns) => "dns",
            Class::Connect(ConnectKind::Refused) => "refused",
            Class::Connect(ConnectKind::Tls) => "tls",
            Class::Connect(ConnectKind::Other) => "connect_other",
            Class::Timeout(TimeoutPhase::Connect) => "connect_timeout",
            Class::Timeout(TimeoutPhase::Ready) => "ready_timeout",
            Class::GateRefused => "gate_refused",
            _ => return None,
        })
    }

    /// The class of an HTTP status.
    pub fn from_status(status: StatusCode) -> Class {
        match status.as_u16() {
            100..=399 => Class::Success,
            429 => Class::RateLimited,
            503 => Class::Overloaded,
            501 => Class::NotImplemented,
            402 => Class::QuotaExhausted,
            408 => Class::RequestTimeout,
            400..=499 => Class::ClientError(ClientErrorKind::from_status(status.as_u16())),
            _ => Class::ServerError,
        }
    }

    /// Whether this is a success.
    pub fn is_success(self) -> bool {
        self == Class::Success
    }

    /// Whether the request reached the server (and so may show on the provider's dashboard).
    ///
    /// `false` for connect failures, connect and pool timeouts, and requests the local 429
    /// gate refused. Resets before a response count as reached: the request was sent, and the
    /// client cannot know how far it got.
    pub fn reached_server(self) -> bool {
        !matches!(
            self,
            Class::Connect(_)
                | Class::Timeout(TimeoutPhase::Connect | TimeoutPhase::Ready)
                | Class::GateRefused
        )
    }

    /// Whether this is a client-side failure (the inverse of [`Class::reached_server`]).
    pub(crate) fn is_client_side(self) -> bool {
        !self.reached_server()
    }

    /// The one retryability rule: the server's word wins when it gave one (`x-should-retry`,
    /// or gRPC's negative pushback, which means "do not retry"); otherwise the class default
    /// ([`Class::is_retryable_by_default`]). Every other `is_retryable` calls this.
    pub(crate) fn is_retryable_given(self, should_retry: Option<bool>) -> bool {
        should_retry.unwrap_or_else(|| self.is_retryable_by_default())
    }

    /// The default retry decision, following Fireworks' guidance: retry 429 (a rate limit, not an
    /// exhausted quota), 500, 502, 503, 504 and other 5xx but 501, and 408, connect failures (but not TLS: a bad certificate will not fix itself), resets
    /// before the response, and connect, pool and response-header timeouts. Never retry 400, 401,
    /// 402, 403, 404, 412, 413, 422, mid-body failures (the caller may already hold part of the
    /// body), or a blown deadline. `x-should-retry` overrides this for server answers.
    pub fn is_retryable_by_default(self) -> bool {
        match self {
            Class::RateLimited
            | Class::Overloaded
            | Class::ServerError
            | Class::RequestTimeout
            | Class::ResetBeforeResponse => true,
            Class::Connect(k) => k != ConnectKind::Tls,
            Class::Timeout(p) => matches!(
                p,
                TimeoutPhase::Connect
                    | TimeoutPhase::Ready
                    | TimeoutPhase::Headers
                    | TimeoutPhase::FirstEvent
            ),
            Class::Success
            | Class::ClientError(_)
            | Class::StreamError
            | Class::ResetMidBody
            | Class::Protocol
            | Class::GateRefused
            | Class::Other
            | Class::QuotaExhausted
            | Class::NotImplemented => false,
        }
    }

    /// Whether this is a timeout of any phase.
    pub fn is_timeout(self) -> bool {
        matches!(self, Class::Timeout(_) | Class::RequestTimeout)
    }

    /// Whether this is a rate limit: a 429 from the server, or the local gate's refusal.
    pub fn is_rate_limited(self) -> bool {
        matches!(self, Class::RateLimited | Class::GateRefused)
    }
}

/// The one list of classes, in a fixed order, with each class's label. [`Class::ALL`],
/// [`Class::index`] and [`Class::label`] are generated from it, and a match generated from it
/// must cover every class (the compiler checks that), so a new class cannot be forgotten.
macro_rules! classes {
    ($($variant:ident $(($inner:path))? => $label:literal,)+) => {
        impl Class {
            /// Every class, in a fixed order: `Class::ALL[c.index()] == c`. Metrics use it to
            /// register one series per class up front, so label cardinality is bounded by this
            /// list.
            pub const ALL: [Class; classes!(@count $($variant)+)] = [$(Class::$variant $(($inner))?),+];

            const LABELS: [&'static str; classes!(@count $($variant)+)] = [$($label),+];

            /// This class's position in [`Class::ALL`].
            pub(crate) fn index(self) -> usize {
                let mut i = 0;
                $(
                    if matches!(self, Class::$variant $(($inner))?) {
                        return i;
                    }
                    i += 1;
                )+
                let _ = i;
                unreachable!("`covers_every_class` proves at compile time that the list names every class")
            }

            /// A short, stable, low-cardinality label for metrics and traces, e.g.
            /// `rate_limited`, `connect_refused`, `timeout_body_idle`, `client_error_not_found`.
            pub fn label(self) -> &'static str {
                Class::LABELS[self.index()]
            }

            /// The class whose [`label`](Class::label) this is, for reading metrics back
            /// (`None` for any other string).
            ///
            /// ```
            /// use firebreak::Class;
            /// assert_eq!(Class::from_label("rate_limited"), Some(Class::RateLimited));
            /// assert_eq!(Class::from_label("nope"), None);
            /// ```
            pub fn from_label(label: &str) -> Option<Class> {
                Class::LABELS.iter().position(|l| *l == label).map(|i| Class::ALL[i])
            }
        }

        /// Compiles only if the list names every class.
        #[allow(dead_code)]
        fn covers_every_class(c: Class) {
            match c {
                $(Class::$variant $(($inner))? => {})+
            }
        }
    };
    (@count $($v:ident)+) => { 0 $(+ classes!(@one $v))+ };
    (@one $v:ident) => { 1 };
}

classes! {
    Success => "success",
    RateLimited => "rate_limited",
    Overloaded => "overloaded",
    ServerError => "server_error",
    RequestTimeout => "request_timeout",
    ClientError(ClientErrorKind::BadRequest) => "client_error_bad_request",
    ClientError(ClientErrorKind::Unauthorized) => "client_error_unauthorized",
    ClientError(ClientErrorKind::PaymentRequired) => "client_error_payment_required",
    ClientError(ClientErrorKind::Forbidden) => "client_error_forbidden",
    ClientError(ClientErrorKind::NotFound) => "client_error_not_found",
    ClientError(ClientErrorKind::PreconditionFailed) => "client_error_precondition_failed",
    ClientError(ClientErrorKind::PayloadTooLarge) => "client_error_payload_too_large",
    ClientError(ClientErrorKind::Unprocessable) => "client_error_unprocessable",
    ClientError(ClientErrorKind::Other) => "client_error_other",
    StreamError => "stream_error",
    Connect(ConnectKind::Dns) => "connect_dns",
    Connect(ConnectKind::Refused) => "connect_refused",
    Connect(ConnectKind::Tls) => "connect_tls",
    Connect(ConnectKind::Other) => "connect_other",
    Timeout(TimeoutPhase::Connect) => "timeout_connect",
    Timeout(TimeoutPhase::Ready) => "timeout_ready",
    Timeout(TimeoutPhase::Write) => "timeout_request_write",
    Timeout(TimeoutPhase::Headers) => "timeout_response_headers",
    Timeout(TimeoutPhase::FirstEvent) => "timeout_first_event",
    Timeout(TimeoutPhase::Idle) => "timeout_body_idle",
    Timeout(TimeoutPhase::Attempt) => "timeout_attempt",
    Timeout(TimeoutPhase::Deadline) => "timeout_deadline",
    ResetBeforeResponse => "reset_before_response",
    ResetMidBody => "reset_mid_body",
    Protocol => "protocol",
    GateRefused => "gate_refused",
    Other => "other",
    QuotaExhausted => "quota_exhausted",
    NotImplemented => "not_implemented",
}

impl ClientErrorKind {
    /// The kind for a 4xx status (any other status gives [`ClientErrorKind::Other`]).
    pub(crate) fn from_status(status: u16) -> ClientErrorKind {
        match status {
            400 => ClientErrorKind::BadRequest,
            401 => ClientErrorKind::Unauthorized,
            402 => ClientErrorKind::PaymentRequired,
            403 => ClientErrorKind::Forbidden,
            404 => ClientErrorKind::NotFound,
            412 => ClientErrorKind::PreconditionFailed,
            413 => ClientErrorKind::PayloadTooLarge,
            422 => ClientErrorKind::Unprocessable,
            _ => ClientErrorKind::Other,
        }
    }
}

impl TimeoutPhase {
    /// A human name for the phase, e.g. "response headers".
    pub(crate) fn name(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::Ready => "ready",
            TimeoutPhase::Write => "request write",
            TimeoutPhase::Headers => "response headers",
            TimeoutPhase::FirstEvent => "first SSE event",
            TimeoutPhase::Idle => "body idle",
            TimeoutPhase::Attempt => "attempt",
            TimeoutPhase::Deadline => "overall deadline",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_index_agree_and_labels_are_unique() {
        let mut labels = std::collections::HashSet::new();
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
            assert!(labels.insert(c.label()), "duplicate label {}", c.label());
            assert_eq!(Class::from_label(c.label()), Some(*c));
            assert_eq!(c.client_side_kind().is_some(), c.is_client_side(), "{c:?}");
        }
    }

    #[test]
    fn every_classes_retry_default_is_written_out() {
        // #21 mutant 1: the default retry decision for every class, as a table written here
        // (not computed by the function under test).
        use ClientErrorKind as K;
        use TimeoutPhase as P;
        let retryable = [
            Class::RateLimited,
            Class::Overloaded,
            Class::ServerError,
            Class::RequestTimeout,
            Class::ResetBeforeResponse,
            Class::Connect(ConnectKind::Dns),
            Class::Connect(ConnectKind::Refused),
            Class::Connect(ConnectKind::Other),
            Class::Timeout(P::Connect),
            Class::Timeout(P::Ready),
            Class::Timeout(P::Headers),
            Class::Timeout(P::FirstEvent),
        ];
        let not = [
            Class::Success,
            Class::ClientError(K::BadRequest),
            Class::ClientError(K::Unauthorized),
            Class::ClientError(K::PaymentRequired),
            Class::ClientError(K::Forbidden),
            Class::ClientError(K::NotFound),
            Class::ClientError(K::PreconditionFailed),
            Class::ClientError(K::PayloadTooLarge),
            Class::ClientError(K::Unprocessable),
            Class::ClientError(K::Other),
            Class::StreamError,
            Class::Connect(ConnectKind::Tls),
            Class::Timeout(P::Write),
            Class::Timeout(P::Idle),
            Class::Timeout(P::Attempt),
            Class::Timeout(P::Deadline),
            Class::ResetMidBody,
            Class::Protocol,
            Class::GateRefused,
            Class::Other,
            Class::QuotaExhausted,
            Class::NotImplemented,
        ];
        assert_eq!(
            retryable.len() + not.len(),
            Class::ALL.len(),
            "every class is listed"
        );
        for c in retryable {
            assert!(c.is_retryable_by_default(), "{c}");
        }
        for c in not {
            assert!(!c.is_retryable_by_default(), "{c}");
        }
    }

    #[test]
    fn timeouts_and_client_error_kinds_are_written_out() {
        let timeouts: Vec<Class> = Class::ALL
            .iter()
            .copied()
            .filter(|c| c.is_timeout())
            .collect();
        let mut want: Vec<Class> = vec![Class::RequestTimeout];
        want.extend(
            Class::ALL
                .iter()
                .copied()
                .filter(|c| matches!(c, Class::Timeout(_))),
        );
        assert_eq!(timeouts.len(), 9, "408 and the eight phases: {timeouts:?}");
        assert!(want.iter().all(|c| timeouts.contains(c)));
        let kinds = [
            (400, ClientErrorKind::BadRequest),
            (401, ClientErrorKind::Unauthorized),
            (402, ClientErrorKind::PaymentRequired),
            (403, ClientErrorKind::Forbidden),
            (404, ClientErrorKind::NotFound),
            (405, ClientErrorKind::Other),
            (412, ClientErrorKind::PreconditionFailed),
            (413, ClientErrorKind::PayloadTooLarge),
            (422, ClientErrorKind::Unprocessable),
            (451, ClientErrorKind::Other),
        ];
        for (status, kind) in kinds {
            assert_eq!(ClientErrorKind::from_status(status), kind, "{status}");
        }
    }

    #[test]
    fn client_side_kinds_have_their_metric_labels() {
        let table = [
            (Class::Connect(ConnectKind::Dns), "dns"),
            (Class::Connect(ConnectKind::Refused), "refused"),
            (Class::Connect(ConnectKind::Tls), "tls"),
            (Class::Connect(ConnectKind::Other), "connect_other"),
            (Class::Timeout(TimeoutPhase::Connect), "connect_timeout"),
            (Class::Timeout(TimeoutPhase::Ready), "ready_timeout"),
            (Class::GateRefused, "gate_refused"),
        ];
        for (c, kind) in table {
            assert_eq!(c.client_side_kind(), Some(kind), "{c:?}");
        }
        let kinds = Class::ALL
            .iter()
            .filter_map(|c| c.client_side_kind())
            .count();
        assert_eq!(
            kinds,
            table.len(),
            "every client-side class is in the table"
        );
    }

    #[test]
    fn status_table() {
        let table = [
            (200, Class::Success, false),
            (204, Class::Success, false),
            (400, Class::ClientError(ClientErrorKind::BadRequest), false),
            (
                401,
                Class::ClientError(ClientErrorKind::Unauthorized),
                false,
            ),
            (402, Class::QuotaExhausted, false),
            (403, Class::ClientError(ClientErrorKind::Forbidden), false),
            (404, Class::ClientError(ClientErrorKind::NotFound), false),
            (405, Class::ClientError(ClientErrorKind::Other), false),
            (408, Class::RequestTimeout, true),
            (
                412,
                Class::ClientError(ClientErrorKind::PreconditionFailed),
                false,
            ),
            (
                413,
                Class::ClientError(ClientErrorKind::PayloadTooLarge),
                false,
            ),
            (
                422,
                Class::ClientError(ClientErrorKind::Unprocessable),
                false,
            ),
            (429, Class::RateLimited, true),
            (500, Class::ServerError, true),
            (501, Class::NotImplemented, false),
            (502, Class::ServerError, true),
            (503, Class::Overloaded, true),
            (504, Class::ServerError, true),
            (599, Class::ServerError, true),
        ];
        for (s, class, retry) in table {
            let c = Class::from_status(StatusCode::from_u16(s).unwrap());
            assert_eq!(c, class, "{s}");
            assert_eq!(c.is_retryable_by_default(), retry, "{s}");
            assert!(c.reached_server(), "{s}");
        }
    }

    #[test]
    fn client_side_classes() {
        for c in [
            Class::Connect(ConnectKind::Dns),
            Class::Connect(ConnectKind::Refused),
            Class::Connect(ConnectKind::Tls),
            Class::Connect(ConnectKind::Other),
            Class::Timeout(TimeoutPhase::Connect),
            Class::Timeout(TimeoutPhase::Ready),
            Class::GateRefused,
        ] {
            assert!(c.is_client_side(), "{c}");
        }
        for c in [
            Class::Timeout(TimeoutPhase::Headers),
            Class::Timeout(TimeoutPhase::Idle),
            Class::ResetBeforeResponse,
            Class::ResetMidBody,
            Class::StreamError,
        ] {
            assert!(c.reached_server(), "{c}");
        }
        assert!(!Class::Connect(ConnectKind::Tls).is_retryable_by_default());
        assert!(Class::Connect(ConnectKind::Refused).is_retryable_by_default());
        assert!(!Class::Timeout(TimeoutPhase::Idle).is_retryable_by_default());
        assert!(!Class::Timeout(TimeoutPhase::Deadline).is_retryable_by_default());
    }

    #[test]
    fn labels_are_unique() {
        let all = [
            Class::Success,
            Class::RateLimited,
            Class::Overloaded,
            Class::ServerError,
            Class::RequestTimeout,
            Class::StreamError,
            Class::ResetBeforeResponse,
            Class::ResetMidBody,
            Class::Protocol,
            Class::GateRefused,
            Class::Other,
            Class::ClientError(ClientErrorKind::BadRequest),
            Class::ClientError(ClientErrorKind::Other),
            Class::Connect(ConnectKind::Dns),
            Class::Timeout(TimeoutPhase::Idle),
            Class::Timeout(TimeoutPhase::Deadline),
        ];
        let mut labels: Vec<_> = all.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }
}
