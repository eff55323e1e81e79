//! Timeouts (feature `timeout`): every phase of a call timed on its own, workload presets from Fireworks'
//! guidance, and an overall deadline that the other layers respect.
//!
//! One big timeout is wrong for LLM traffic: a streamed generation can rightly take 30 minutes,
//! yet a connection that never opens, or a stream that stops sending tokens, must be caught in
//! seconds. So each phase has its own timer ([`TimeoutConfig`]):
//!
//! - **connect** — on the connector `FireworksClient` builds (DNS + TCP + TLS); client-side.
//! - **ready** — waiting for the inner service to be ready; client-side (class `timeout_ready`).
//! - **write** — sending the request body.
//! - **headers** — from the end of the write to the response head (time to first byte).
//! - **first_event** — from the head to the first SSE `data:` event of a `text/event-stream`.
//! - **idle** — the longest gap between two body frames: what catches a stalled stream.
//! - **attempt** — one attempt, from the call to the end of the body.
//! - **deadline** — the whole call across attempts, backoff sleeps and rate-limit waits
//!   ([`DeadlineLayer`]); carried on the request as a [`Deadline`](crate::Deadline) extension so the retry and
//!   429 layers can see how much time is left and fail fast instead of starting a wait that
//!   cannot finish in time ([`Deadline::check_wait`](crate::Deadline::check_wait)).
//!
//! # Hangs are retried
//! A server that never sends its response head is cut by the `headers` timer, and a
//! `headers` timeout is retryable; the attempt's total (`attempt`) is not (the attempt used
//! its whole budget). So `headers` must be below `attempt` ([`TimeoutConfig::validate`]
//! refuses the rest), and every preset keeps `headers` at most half its deadline: a hung first
//! attempt leaves room for a second one.
//!
//! Every timeout error is an [`Error`](crate::Error) whose class names the phase
//! (`Class::Timeout(phase)`) and whose source is a `TimeoutError` with the configured duration.
//! Connect and ready timeouts never reached the server; the others did.
//!
//! # Example
//! ```
//! use firebreak::timeout::{AttemptTimeoutLayer, DeadlineLayer, TimeoutConfig, Workload};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! # use bytes::Bytes;
//! # use http_body_util::Full;
//! # use firebreak::timeout::TimedRequestBody;
//!
//! // A preset, with one phase changed; the layers validate it.
//! let cfg = TimeoutConfig::preset(Workload::Interactive).idle(Some(Duration::from_secs(15)));
//! # let hyper_client = tower::service_fn(|_req: http::Request<TimedRequestBody<Full<Bytes>>>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//! # });
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(cfg.deadline.unwrap()).unwrap())
//!     // ... retry and 429 layers go here ...
//!     .layer(AttemptTimeoutLayer::new(&cfg).unwrap())
//!     .service(hyper_client);
//! # let _ = svc;
//! ```
//!
//! # Differences from `tower::timeout` and tower-http's timeouts
//! - `tower::timeout::Timeout` bounds only the response future: a streamed body is not timed at
//!   all, so a stream that hangs after its headers hangs forever.
//! - tower-http's `TimeoutLayer` answers with a 408 (server-side semantics), and its
//!   `ResponseBodyTimeoutLayer` times each frame, not the whole body, with no notion of a first
//!   SSE event or of the write phase.
//! - Here, one layer times every phase of an attempt, the errors are typed and classified (and
//!   say which phase fired), the attempt is bounded by the overall deadline, and the deadline is
//!   visible to the retry and 429 layers.
//!
//! # Bad input
//! Zero or over-a-day durations, and an attempt longer than the deadline, are rejected when the
//! layers are built ([`TimeoutConfigError`]); `None` disables a phase. Nothing panics at run time.

mod attempt;
mod body;
mod config;
mod connect;
mod deadline;

pub use attempt::{AttemptTimeout, AttemptTimeoutFuture, AttemptTimeoutLayer, AttemptTimeouts};
pub use body::{TimedRequestBody, TimedResponseBody};
pub use config::{MAX_TIMEOUT, TimeoutConfig, TimeoutConfigError, Workload};
#[cfg_attr(not(feature = "stack"), allow(unused_imports))]
pub(crate) use connect::{ConnectTimeout, ConnectTimeoutLayer};
pub use deadline::{DeadlineFuture, DeadlineLayer, DeadlineService};
