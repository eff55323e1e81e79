//! gRPC classification for tonic channels (and any tower-http middleware).
//!
//! gRPC reports failures in `grpc-status`, either in the response headers (a trailers-only
//! response) or in the trailers at the end of the stream. [`GrpcClassifier`] reads both and maps
//! each code onto firebreak's [`Class`], so gRPC and HTTP calls share one vocabulary.

use crate::class::Class;
use crate::parse::delay::server_delay;
use crate::parse::grpc::{GrpcStatus, negative_pushback};
use crate::transport::classify_display;
use http::{HeaderMap, Request, Response};
use std::fmt;
use std::time::{Duration, SystemTime};
use tower_http::classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse, MakeClassifier};

/// A failed gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcFailure {
    /// The shared class.
    pub class: Class,
    /// The gRPC status code; `None` for transport errors and malformed statuses.
    pub code: Option<i32>,
    /// The usable `grpc-retry-pushback-ms` (or other delay header) the server sent.
    pub pushback: Option<Duration>,
    /// A negative pushback: gRPC's "do not retry".
    refused: bool,
    /// `grpc-message`, if any (percent-encoding left as sent).
    pub message: Option<String>,
}

impl GrpcFailure {
    /// Whether a retry may help: the class default, unless the server's pushback was negative,
    /// which gRPC defines as "do not retry".
    pub fn is_retryable(&self) -> bool {
        self.class.is_retryable_given(self.refused.then_some(false))
    }
}

fn from_status_headers(h: &HeaderMap) -> Option<Result<(), GrpcFailure>> {
    let s = GrpcStatus::read(h, SystemTime::now())?;
    if s.code == Some(0) {
        return Some(Ok(()));
    }
    let (class, refused) = (s.class(), s.refuses_retry());
    Some(Err(GrpcFailure {
        class,
        code: s.code,
        message: s
            .message
            .or_else(|| s.code.is_none().then(|| "malformed grpc-status".into())),
        pushback: s.pushback.delay(),
        refused,
    }))
}

/// Classifies gRPC responses (tower-http `ClassifyResponse` / `MakeClassifier`).
///
/// ```
/// use firebreak::classify::GrpcClassifier;
/// use tower_http::trace::TraceLayer;
///
/// let trace = TraceLayer::new(GrpcClassifier);
/// # let _ = trace;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

/// Classifies the end of a gRPC stream from its trailers.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcEos;

impl ClassifyResponse for GrpcClassifier {
    type FailureClass = GrpcFailure;
    type ClassifyEos = GrpcEos;

    fn classify_response<B>(self, res: &Response<B>) -> ClassifiedResponse<GrpcFailure, GrpcEos> {
        if !res.status().is_success() {
            // A proxy in front of the gRPC server answered (e.g. 503): use the HTTP class.
            let pushback = server_delay(res.headers(), SystemTime::now());
            return ClassifiedResponse::Ready(Err(GrpcFailure {
                class: Class::from_status(res.status()),
                code: None,
                pushback: pushback.delay(),
                refused: negative_pushback(&pushback),
                message: None,
            }));
        }
        match from_status_headers(res.headers()) {
            Some(r) => ClassifiedResponse::Ready(r),
            None => ClassifiedResponse::RequiresEos(GrpcEos),
        }
    }

    fn classify_error<E: fmt::Display + 'static>(self, error: &E) -> GrpcFailure {
        transport_failure(error)
    }
}

impl ClassifyEos for GrpcEos {
    type FailureClass = GrpcFailure;

    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Result<(), GrpcFailure> {
        match trailers.and_then(from_status_headers) {
            Some(r) => r,
            // Every gRPC response ends with a status; a stream without one was cut short.
            None => Err(GrpcFailure {
                class: Class::Protocol,
                code: None,
                pushback: None,
                refused: false,
                message: Some("stream ended without grpc-status".into()),
            }),
        }
    }

    fn classify_error<E: fmt::Display + 'static>(self, error: &E) -> GrpcFailure {
        transport_failure(error)
    }
}

fn transport_failure<E: fmt::Display + 'static>(error: &E) -> GrpcFailure {
    GrpcFailure {
        class: classify_display(error),
        code: None,
        pushback: None,
        refused: false,
        message: None,
    }
}

impl MakeClassifier for GrpcClassifier {
    type Classifier = Self;
    type FailureClass = GrpcFailure;
    type ClassifyEos = GrpcEos;

    fn make_classifier<B>(&self, _req: &Request<B>) -> Self {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    #[test]
    fn codes() {
        assert!(crate::parse::grpc::class_of_code(14).is_retryable_by_default());
        assert!(crate::parse::grpc::class_of_code(8).is_retryable_by_default());
        for c in [3, 16, 5] {
            assert!(
                !crate::parse::grpc::class_of_code(c).is_retryable_by_default(),
                "{c}"
            );
        }
        assert_eq!(crate::parse::grpc::class_of_code(0), Class::Success);
    }

    #[test]
    fn trailers_only_and_eos() {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("8"));
        r.headers_mut()
            .insert("grpc-retry-pushback-ms", HeaderValue::from_static("150"));
        match GrpcClassifier.classify_response(&r) {
            ClassifiedResponse::Ready(Err(f)) => {
                assert_eq!(f.class, Class::RateLimited);
                assert_eq!(f.pushback, Some(Duration::from_millis(150)));
                assert!(f.is_retryable());
            }
            other => panic!("{other:?}"),
        }
        let r = Response::new(());
        let ClassifiedResponse::RequiresEos(eos) = GrpcClassifier.classify_response(&r) else {
            panic!("needs eos")
        };
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("14"));
        t.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
        let f = eos.classify_eos(Some(&t)).unwrap_err();
        assert_eq!(f.class, Class::Overloaded);
        assert!(!f.is_retryable(), "negative pushback means do not retry");
        // The same from a proxy's non-2xx answer in front of the gRPC server.
        let mut h = HeaderMap::new();
        h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        *resp.headers_mut() = h;
        match GrpcClassifier.classify_response(&resp) {
            ClassifiedResponse::Ready(Err(f)) => {
                assert_eq!(f.class, Class::Overloaded);
                assert!(
                    !f.is_retryable(),
                    "a negative pushback refuses the retry here too"
                );
            }
            _ => panic!("a 503 is a failure"),
        }
        t.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(GrpcEos.classify_eos(Some(&t)).is_ok());
        assert_eq!(
            GrpcEos.classify_eos(None).unwrap_err().class,
            Class::Protocol
        );
        t.insert("grpc-status", HeaderValue::from_static("zzz"));
        assert_eq!(
            GrpcEos.classify_eos(Some(&t)).unwrap_err().class,
            Class::Protocol
        );
    }
}
