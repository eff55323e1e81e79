//! Routing (feature `route`): fallback chains of targets, a circuit breaker per target, one
//! deadline for the whole chain.
//!
//! A [`Router`] serves configured **aliases**. Each alias is a chain of tiers of
//! [`Target`]s (base URL, model, key, [`TargetKind`](crate::TargetKind), weight): say, my
//! dedicated deployment, then the serverless model, then a smaller model. A call names the
//! alias as its `model`; the router sends it to one target at a time, rewriting only the
//! body's `model` value, and the response carries [`AnsweredBy`].
//!
//! How a call goes:
//! - **One deadline** for the whole chain: the stack's deadline (or the caller's, if earlier)
//!   starts when the call does; a fallback never runs past it.
//! - **Order**: tier by tier; within a tier, by weight, without replacement.
//! - **Skipped**: a target whose breaker is open (`reason="open"`), or, unless it is the last
//!   one left, whose gate is cooling down after a rate limit or holding for quota
//!   (`"holding"`).
//! - **Moved on**: every target but the last one left gets one attempt; an answer the retry
//!   layer would retry (429, 5xx, a reset, a timeout of its own, a refused connect, unless the
//!   server's `x-should-retry` says otherwise) moves the call on at once
//!   (`"capacity"` for 429/503 and gate refusals, `"failed"` otherwise). The last target
//!   gets the stack's retries, backoff and server delays. An answer that is not retryable
//!   (a success, 400/401/404/422) ends the call there. Once the response head is returned,
//!   nothing moves: no duplicate token streams.
//! - **Each target has its own stack**: attempt observation, a gate for its kind
//!   (serverless: the rate and pacing gate; dedicated: the concurrency window steered by
//!   capacity refusals and the server's queueing time, rate headers ignored; see
//!   [`GateConfig::kind`](crate::gate::GateConfig::kind)), the per-attempt timeouts and
//!   classification, and its key.
//!
//! **The circuit breaker** (per target, every attempt counts): it opens after
//! [`BreakerConfig::consecutive_failures`] (5) failed attempts in a row, so within five
//! attempts of a target going fully down. Failures are 5xx, 503 included, resets, protocol
//! errors, connect failures and the target's own timeouts; a 429 is not (the gate handles
//! rate and capacity), nor a 4xx, nor the caller's deadline. Consecutive failures rather than
//! a failure rate: a rate needs a minimum volume before it can tell, and a target that is
//! fully down fails every attempt in a row anyway; a partly failing one is the retry layer's
//! business. Open for [`BreakerConfig::cooldown`] (10 s), then half-open: at most
//! [`BreakerConfig::probes`] (1) calls at once go through; a success closes it, a failure
//! opens it for another cooldown. While open, a target receives only probes. When every
//! target of a chain is open, the least recently opened one is tried (as a probe) rather than
//! failing blind. With a [`Fleet`](crate::gate::Fleet) attached (`Stack::fleet`), a breaker
//! that opens tells the other processes, whose breakers open for the same cooldown; each
//! process probes for itself.
//!
//! **Capacity advice** comes from a dedicated target's gate
//! ([`CapacityAdvice`](crate::gate::CapacityAdvice)): one WARN per episode naming the
//! deployment, and the same line on the answers it refuses meanwhile.
//!
//! **Metrics**, labelled by the configured target names only: `firebreak_target_attempts_total
//! {target, class}`, `firebreak_breaker_state {target}` (0 closed, 1 half-open, 2 open),
//! `firebreak_breaker_transitions_total {target, to}`, `firebreak_fallbacks_total {target,
//! reason}`. The call itself is observed once, as with [`Stack`](crate::Stack).
//!
//! # Example
//! ```no_run
//! use firebreak::route::{RouteConfig, Router, Target};
//! use firebreak::{client::ApiKey, Stack};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let base = "https://api.fireworks.ai/inference/v1";
//! let cfg = RouteConfig::new().alias("chat", vec![
//!     vec![Target::new("mine", base, "accounts/fireworks/models/llama-v3p1-70b-instruct#accounts/acme/deployments/d1")],
//!     vec![Target::new("serverless", base, "accounts/fireworks/models/llama-v3p1-70b-instruct")],
//! ]);
//! let router = Router::new(cfg, Stack::interactive(), Some(ApiKey::from_env()?), &Default::default())?;
//! let resp = router
//!     .post("/chat/completions", r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#.into())
//!     .await?;
//! let by = resp.extensions().get::<firebreak::route::AnsweredBy>().unwrap();
//! println!("answered by {}", by.target);
//! # Ok(()) }
//! ```

mod breaker;
mod config;
mod rewrite;
mod service;

pub use breaker::BreakerState;
pub use config::{BreakerConfig, RouteConfig, RouteConfigError, Target};
pub use service::{AnsweredBy, Router};
