//! The classify layer (feature `classify`): one verdict per attempt, which every other layer,
//! every metric and every caller reads.
//!
//! - [`ClassifyLayer`] attaches a [`Classification`](crate::Classification) to the extensions of
//!   every response that is not a plain success (read it with
//!   [`Classification::of`](crate::Classification::of), which gives plain successes theirs
//!   without the allocation), and turns transport errors into [`Error`](crate::Error). Success
//!   bodies stream through untouched; error bodies are read up to a bound (64 KiB), parsed, and
//!   replayed to the caller followed by the rest of the body, so nothing is lost and nothing
//!   large is held.
//! - An SSE success is read up to its first event (within the same bound) before it is handed
//!   on: a stream whose first event is an error reached nobody, so it is classified
//!   `StreamError` with `should_retry` set and the retry layer sends it again; after any other
//!   first event, an error event is never retried. That first read runs under the attempt's
//!   response-headers timer (the presets give it the first-event timeout's value).
//! - [`ClassifyLayer::errors_for_status`] gives `Result` semantics: non-success answers become
//!   `Err`.
//! - [`FireworksClassifier`] and [`GrpcClassifier`] implement tower-http's classification
//!   traits, so `TraceLayer` and other tower-http middleware use the same verdicts, for HTTP and
//!   for gRPC (tonic).
//!
//! The taxonomy itself ([`Class`](crate::Class): what is retryable, what is client-side) and the
//! parsers behind it are the crate's contracts, at its root.
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
