//! Retry (feature `retry`): retries that follow Fireworks' guidance and do not make outages worse.
//!
//! - **What is retried** comes from the shared classification ([`Class`](crate::Class)): 429, 500,
//!   502, 503, 504 and 408; connect failures; resets before the response; response-header
//!   timeouts. 400, 401, 402, 403, 404, 412, 413 and 422 are not. `x-should-retry` overrides the
//!   status, and [`RetryOn`] changes the set.
//! - **Never after the body started reaching the caller**: the decision is made on the response
//!   head; once a response is handed on, a failure in its body is the caller's (a retried stream
//!   would deliver duplicate tokens and bill twice).
//! - **Backoff**: exponential with full, equal or decorrelated jitter, openai-python's
//!   proportional jitter, or the Fireworks docs' `base·2ⁿ + U(0, 1 s)` ([`Jitter`]); a base, a
//!   cap, a maximum number of attempts and a maximum retry time.
//! - **Server-requested delays** (`retry-after-ms`, `Retry-After` in seconds or as a date,
//!   `x-ratelimit-reset-*`, `grpc-retry-pushback-ms`): never retried earlier than asked. A delay
//!   over the cap (60 s by default), or one that would pass the overall deadline, is not slept:
//!   the call fails at once with a typed error carrying the requested delay.
//! - **A retry budget** shared by all clones ([`BudgetConfig`] says why its default is what it is).
//! - **Request body replay** through a bounded, zero-copy [`ReplayBody`]: the first attempt
//!   streams without waiting; a body over the bound (16 MiB by default) is sent once and not
//!   retried, and the final error says so.
//! - **Per attempt**: an optional attempt-number header (`x-stainless-retry-count`-compatible),
//!   an optional `Idempotency-Key` reused on every attempt, and [`RetryInfo`](crate::RetryInfo) in the final
//!   response's extensions (attempts, time slept, classes seen, why it gave up).
//! - **Cancellation**: dropping the response future stops every further attempt and sleep.
//!
//! The decision itself is [`FireworksPolicy`], a `tower::retry::Policy`; [`RetryLayer`] drives it
//! with tower's own retry service and adds body replay and the headers.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use firebreak::classify::ClassifyLayer;
//! use firebreak::RetryInfo;
//! use firebreak::retry::{RetryConfig, RetryLayer};
//! use http_body_util::Full;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A stand-in upstream: 503 twice, then 200.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = tower::service_fn(move |_req: http::Request<_>| {
//!     let n = calls.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if n < 2 { 503 } else { 200 };
//!         Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
//!     }
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryConfig::default()).unwrap())
//!     .layer(ClassifyLayer::new())
//!     .service(upstream);
//! let resp = svc.oneshot(http::Request::new(Full::new(Bytes::from_static(b"{}")))).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! assert_eq!(RetryInfo::of(&resp).attempts(), 3);
//! # }
//! ```

mod backoff;
mod config;
mod layer;
mod policy;
mod replay;

pub use backoff::{Backoff, Jitter};
pub use config::{BudgetConfig, RetryConfig, RetryConfigError, RetryOn};
pub use layer::{ResponseFuture, Retry, RetryLayer};
pub use policy::{FireworksPolicy, Replayable};
pub use replay::ReplayBody;
