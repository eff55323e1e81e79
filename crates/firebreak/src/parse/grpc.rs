//! gRPC status headers: `grpc-status`, `grpc-message` and the pushback delay, read once for the
//! classify layer's `Classification` and for the tower-http gRPC classifier.

#![cfg_attr(not(feature = "classify"), allow(dead_code))]

use super::body::MAX_MESSAGE_CHARS;
use super::delay::{DelayError, DelayVerdict, server_delay};
use crate::class::{Class, ClientErrorKind, TimeoutPhase};
use http::HeaderMap;
use std::time::SystemTime;

/// A `grpc-status` found in headers or trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcStatus {
    /// The status code; `None` when `grpc-status` is not a number.
    pub(crate) code: Option<i32>,
    /// `grpc-retry-pushback-ms` (and any other delay header).
    pub(crate) pushback: DelayVerdict,
    /// `grpc-message`, bounded, percent-encoding left as sent.
    pub(crate) message: Option<String>,
}

impl GrpcStatus {
    /// Reads the status; `None` when the headers carry no `grpc-status`.
    pub(crate) fn read(h: &HeaderMap, now: SystemTime) -> Option<Self> {
        let v = h.get("grpc-status")?;
        let code = v.to_str().ok().and_then(|s| s.trim().parse::<i32>().ok());
        Some(GrpcStatus {
            code,
            pushback: server_delay(h, now),
            message: h
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect()),
        })
    }

    /// The class: a malformed status is a protocol error.
    pub(crate) fn class(&self) -> Class {
        self.code.map_or(Class::Protocol, class_of_code)
    }

    /// Whether the pushback is negative: gRPC's "do not retry".
    pub(crate) fn refuses_retry(&self) -> bool {
        negative_pushback(&self.pushback)
    }
}

/// Whether a pushback is negative: gRPC's "do not retry".
pub(crate) fn negative_pushback(d: &DelayVerdict) -> bool {
    matches!(
        d,
        DelayVerdict::Unusable {
            error: DelayError::Negative,
            ..
        }
    )
}

/// The class of a gRPC status code. UNAVAILABLE and RESOURCE_EXHAUSTED are retryable;
/// INVALID_ARGUMENT, UNAUTHENTICATED, NOT_FOUND and the other caller errors are not.
pub(crate) fn class_of_code(code: i32) -> Class {
    match code {
        0 => Class::Success,
        3 | 11 => Class::ClientError(ClientErrorKind::BadRequest),
        4 => Class::Timeout(TimeoutPhase::Deadline),
        5 => Class::ClientError(ClientErrorKind::NotFound),
        7 => Class::ClientError(ClientErrorKind::Forbidden),
        8 => Class::RateLimited,
        9 => Class::ClientError(ClientErrorKind::PreconditionFailed),
        14 => Class::Overloaded,
        16 => Class::ClientError(ClientErrorKind::Unauthorized),
        1 => Class::Other,
        6 | 12 => Class::ClientError(ClientErrorKind::Other),
        _ => Class::ServerError, // 2 UNKNOWN, 10 ABORTED, 13 INTERNAL, 15 DATA_LOSS, unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_code_message_and_pushback() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        h.insert("grpc-message", "busy".parse().unwrap());
        h.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        let s = GrpcStatus::read(&h, SystemTime::now()).unwrap();
        assert_eq!(s.code, Some(14));
        assert_eq!(s.class(), Class::Overloaded);
        assert_eq!(s.message.as_deref(), Some("busy"));
        assert!(s.refuses_retry());
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(
            GrpcStatus::read(&h, SystemTime::now()).unwrap().class(),
            Class::Protocol
        );
        assert!(GrpcStatus::read(&HeaderMap::new(), SystemTime::now()).is_none());
    }
}
