//! `firebreak`: reliable calls to the Fireworks AI inference API (and any OpenAI-compatible
//! endpoint), as tower layers: timeouts per phase and per workload, retries with backoff and
//! jitter, a 429 gate that backs off as a fleet on evidence, and one classification of every
//! answer and failure. [`Stack`] composes them in the one order that works; each layer also
//! works alone, around any hyper or tower client.
//!
//! # Quick start
//! ```no_run
//! use bytes::Bytes;
//! use firebreak::{FireworksClient, Stack};
//! use http_body_util::BodyExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = FireworksClient::from_env(Stack::interactive())?; // reads FIREWORKS_API_KEY
//! let body = br#"{"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[{"role":"user","content":"Hello"}]}"#;
//! let resp = client.post("/chat/completions", Bytes::from_static(body)).await?;
//! println!("{}", String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()));
//! # Ok(()) }
//! ```
//!
//! Presets follow Fireworks' workloads ([`Stack::preset`] with a [`timeout::Workload`]:
//! interactive, agentic, long context, batch submit); every setting has a builder-style setter
//! (`Stack::interactive().retry(RetryConfig::default().max_attempts(3))`).
//!
//! # The layers
//! One module and one cargo feature each, outermost first (why in this order: below):
//!
//! | module | feature | what it does |
//! |---|---|---|
//! | [`observe`] | `observe` | a span and metrics per call and per attempt, client-side failures counted apart |
//! | [`timeout`] | `timeout` | the overall deadline, and a timer per phase of each attempt (connect, ready, write, headers, first event, idle, attempt) |
//! | [`retry`] | `retry` | when and how often to retry, backoff with jitter, server delays, a budget, bounded body replay |
//! | [`gate`] | `gate` | the 429 gate: cooldown, concurrency window, pace and quota fail-fast, on fleet-wide evidence only |
//! | [`classify`] | `classify` | every answer and transport failure as one [`Class`] |
//! | [`client`] | `client` | the hyper-util HTTPS client and the API key |
//! | [`route`] | `route` | fallback chains of targets with a circuit breaker each, over a stack per target |
//!
//! The integrations, off by default: `firebreak::async_openai` (feature `async-openai`: the
//! stack as async-openai's HTTP service) and `firebreak::reqwest` (feature `reqwest`: a
//! reqwest-middleware `Middleware`).
//!
//! # The contracts
//! Every layer reads and writes these, and nothing of another layer:
//! - [`Class`], the taxonomy of what happened to an attempt: server answers (success, rate
//!   limited, overloaded, server error, request timeout, named client errors, an error event in
//!   an SSE stream) and transport failures (connect failed by DNS / refused / TLS / other,
//!   timeouts by phase, resets before the response or mid-body, protocol errors, the gate's
//!   refusal). Each class knows whether it is
//!   [retryable by default](Class::is_retryable_by_default) and whether the attempt
//!   [reached the server](Class::reached_server): Fireworks' dashboard counts only attempts that
//!   did. A quota answer (402, `insufficient_quota`, a spending limit, a suspended account) and
//!   501 are never retried; `x-ratelimit-reset-*` is never a retry delay.
//! - [`Classification`], an answer's class with its parsed error body, server delay and request
//!   id; [`Error`], the one error, with predicates (`is_timeout`, `is_rate_limited`,
//!   `is_retryable`, `is_client_side`), accessors and a `source()` chain.
//! - [`Deadline`], the call record ([`AttemptContext`], [`RetryInfo`], [`GaveUp`]) and the
//!   [`names`] of spans, fields and metrics.
//! - [`parse`], pure and total parsers for error bodies in every shape seen from Fireworks.
//!
#![doc = include_str!("../docs/request-flow.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// `get_ref`, `get_mut` and `into_inner` for a service whose inner service is the field
/// `inner` of type `S`, or of the type named (tower-http's `define_inner_service_accessors!`).
#[allow(unused_macros)]
macro_rules! inner_service_accessors {
    () => {
        crate::inner_service_accessors!(S);
    };
    ($s:ty) => {
        /// The inner service.
        pub fn get_ref(&self) -> &$s {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut $s {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> $s {
            self.inner
        }
    };
}
#[allow(unused_imports)]
pub(crate) use inner_service_accessors;

/// One builder-style setter per listed field of a settings struct, named as the field
/// (ARCHITECTURE.md's glossary, "settings").
#[allow(unused_macros)]
macro_rules! setters {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets `", stringify!($field), "` (see the field's docs).")]
            pub fn $field(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use setters;

// The contracts: every layer depends on these alone.
mod call;
mod class;
mod deadline;
mod error;
mod model;
pub mod names;
pub mod parse;
mod transport;

pub use call::{AttemptContext, DelayReason, GaveUp, NotReplayable, RetryInfo};
pub use class::{Class, ClientErrorKind, ConnectKind, TimeoutPhase};
pub use deadline::Deadline;
pub use error::{Classification, Error, TimeoutError};
pub use model::{Model, TargetKind};
pub use parse::body::{ApiError, BodyShape};
pub use transport::BoxError;

// The layers, one feature each.
#[cfg(feature = "classify")]
pub mod classify;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "gate")]
pub mod gate;
#[cfg(feature = "observe")]
pub mod observe;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "timeout")]
pub mod timeout;

// Integrations, each behind its own feature (not in the default).
#[cfg(feature = "async-openai")]
pub mod async_openai;
#[cfg(feature = "reqwest")]
pub mod reqwest;

// The composition.
#[cfg(feature = "stack")]
mod stack;
#[cfg(feature = "stack")]
pub use stack::*;
// Fallback chains and circuit breakers, over the composed stack.
#[cfg(feature = "route")]
pub mod route;
