//! `firebreak`: reliable calls to the Fireworks AI inference API, as one tower stack.
//!
//! [`Stack`] composes firebreak's layers in the one order that works; the architecture below
//! (the repository's `ARCHITECTURE.md`, included here so that it is written once) says which
//! order and why. See [`observe`] for the spans and the metrics table.
//!
//! Presets follow Fireworks' workloads ([`Stack::preset`] with a [`timeout::Workload`]; the
//! table is in the timeout module's docs); every part can be overridden.
//! [`FireworksClient`] is the ready-made client: base URL, API key and a stack.
//!
//! # Example
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
#![doc = ""]
#![doc = include_str!("../../../ARCHITECTURE.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The contracts: every layer depends on these alone.
mod call;
mod class;
mod deadline;
mod error;
pub mod names;
pub mod parse;
mod transport;

pub use call::{AttemptContext, DelayReason, GaveUp, NotReplayable, RetryInfo};
pub use class::{Class, ClientErrorKind, ConnectKind, TimeoutPhase};
pub use deadline::Deadline;
pub use error::{Classification, Error, TimeoutError};
pub use parse::body::{ApiError, BodyShape};
#[cfg(feature = "gate")]
pub(crate) use parse::ratelimit::RateLimitHeaders;
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

// The composition.
#[cfg(feature = "stack")]
mod stack;
#[cfg(feature = "stack")]
pub use stack::*;
