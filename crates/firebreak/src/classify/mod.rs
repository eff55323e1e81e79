//! `firebreak-classify`: one vocabulary for what happened to an attempt.
//!
//! Every other firebreak layer, every metric and every caller reads the same verdict:
//!
//! - [`Class`], the taxonomy: server answers (success, rate limited, overloaded, server error,
//!   request timeout, named client errors, an error event inside an SSE stream) and transport
//!   failures (connect failed by DNS / refused / TLS / other, timeouts by phase, resets before the
//!   response or mid-body, protocol errors, local throttling). Each class knows whether it is
//!   [retryable by default](Class::is_retryable_by_default) and whether the request
//!   [reached the server](Class::reached_server): Fireworks' dashboard counts only requests that
//!   did, so client-side failures must be counted by the client.
//! - [`parse`], pure and total parsers: error bodies in every shape seen from Fireworks, the
//!   server-requested delay in all its forms, `x-should-retry`, and the `x-ratelimit-*` headers.
//! - [`ClassifyLayer`], a tower layer that attaches a [`Classification`] to the extensions of
//!   every response that is not a plain success (read it with [`Classification::of`], which
//!   gives plain successes theirs without the allocation), and turns transport errors into
//!   [`Error`]. Success bodies stream through
//!   untouched; error bodies are read up to a bound (64 KiB), parsed, and replayed to the caller
//!   followed by the rest of the body, so nothing is lost and nothing large is held. An SSE
//!   success is read up to its first event (within the same bound) before it is handed on: a
//!   stream whose first event is an error reached nobody, so it is classified
//!   [`Class::StreamError`] with `should_retry` set and the retry layer sends it again; after
//!   any other first event, an error event is never retried. That first read runs under the
//!   attempt's response-headers timer (the presets give it the first-event timeout's value).
//! - [`Class::QuotaExhausted`] (402, `insufficient_quota`, a spending limit, a suspended account:
//!   [`parse::body::quota_exhausted`]) and [`Class::NotImplemented`] (501) are never retried;
//!   `x-ratelimit-reset-*` is never a retry delay.
//! - [`Error`], the one public error: predicates (`is_timeout`, `is_rate_limited`,
//!   `is_retryable`, `is_client_side`), accessors (`status`, `api_error`, `request_id`,
//!   `retry_after`) and a `source()` chain.
//! - [`FireworksClassifier`] and [`GrpcClassifier`] implement tower-http's classification
//!   traits, so `TraceLayer` and other tower-http middleware use the same verdicts, for HTTP and
//!   for gRPC (tonic).
//! - [`ClassifyLayer::errors_for_status`] gives `Result` semantics: non-success responses become
//!   `Err`.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use firebreak::{Class, Classification, classify::ClassifyLayer};
//! use http_body_util::Full;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A stand-in for the hyper client: always answers 429 with a Fireworks error body.
//! let upstream = service_fn(|_req: http::Request<()>| async {
//!     let body = r#"{"error":{"message":"Request rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","type":"error"}}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder()
//!             .status(429)
//!             .header("retry-after", "2")
//!             .body(Full::new(Bytes::from(body)))
//!             .unwrap(),
//!     )
//! });
//! let svc = ClassifyLayer::new().layer(upstream);
//! let resp = svc.oneshot(http::Request::new(())).await.unwrap();
//! let c = resp.extensions().get::<Classification>().unwrap();
//! assert_eq!(c.class(), Class::RateLimited);
//! assert!(c.is_retryable());
//! assert_eq!(c.retry_after(), Some(std::time::Duration::from_secs(2)));
//! assert_eq!(c.api_error().unwrap().code.as_deref(), Some("RATE_LIMIT_EXCEEDED"));
//! # }
//! ```
//!
//! # Differences from tower-http's classifiers
//! tower-http's `ServerErrorsAsFailures` looks at the status alone. This crate also reads the
//! body (bounded), the delay headers, `x-should-retry` and the rate-limit headers, scans SSE
//! streams for error events, and splits transport errors by what they mean for retrying and
//! for the provider's dashboard.

mod body;
mod future;
mod grpc;
mod layer;
mod tower_http;

pub use body::ClassifiedBody;
pub use future::ResponseFuture;
pub use grpc::{GrpcClassifier, GrpcEos, GrpcFailure};
pub use layer::{Classify, ClassifyLayer};
pub use tower_http::FireworksClassifier;
