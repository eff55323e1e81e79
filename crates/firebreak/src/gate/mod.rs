//! The 429 gate (feature `gate`): back off as a fleet, but only on evidence.
//!
//! With every other client, each request handles its own 429: fifty concurrent requests all hit
//! the wall, all sleep, and all wake up together into the wall again. This layer sits inside the
//! retry layer and gates every attempt, retries included, through state shared by all clones and
//! keyed per client, or per (API key, model) ([`KeyBy`]). Its rule: **a shared reaction (a
//! cooldown, a smaller window, a slower pace) needs fleet-wide evidence, recovers with time,
//! and one request, header or tenant never slows the others.**
//!
//! What counts as evidence (`Signal`, `Answer::signal` in `store.rs`):
//! - **A rate-limit 429** (it carries `x-ratelimit-*` headers, or its body says "rate limit"):
//!   fleet-wide on its own. Its delay (`Retry-After`, `retry-after-ms`) becomes a cooldown for
//!   the key, and it lowers a learned pace (× `decrease`, once a second at most).
//! - **A capacity refusal** (503 "overloaded", or a 429 that speaks of capacity, as a dedicated
//!   deployment's does): fleet-wide only when `fleet_signals` (3) of them come from requests
//!   that were in flight together (each sent before the previous one's answer came back). One
//!   request's own retries come one after another, so they never add up. Fewer concern those
//!   requests alone: their delays are theirs (the retry layer honours them), nobody else waits.
//!   A refusal sent with `n` in flight while three of the key's last eight successes were sent
//!   with `n` or more in flight (within 2 s) is noise: the server just served that many, so
//!   the refusal is random load shedding or one replica's hiccup, not a limit.
//! - **Where the model runs** ([`GateConfig::kind`], set per target by the
//!   [route](crate::route) module): on a serverless target every 429 is a rate limit; on a
//!   dedicated one every 429 and 503 is a capacity refusal, rate headers never pace it, and a
//!   success whose `fireworks-prefill-queue-duration` exceeds `queue_target` (0.5 s, as
//!   Fireworks' own SDK) counts as a capacity refusal too, so the window settles where
//!   requests stop queueing, before the deployment refuses.
//! - **A quota answer** ([`Class::QuotaExhausted`](crate::Class): 402, an
//!   `insufficient_quota` 429, a 412 "account suspended", a spending-limit message): later calls
//!   on the key fail at once, client-side, for `quota_recheck` (60 s), with an error that says
//!   what to do ([`Error::is_quota_exhausted`](crate::Error::is_quota_exhausted)).
//! - **Nothing else**: a hang, a timeout, a reset, a 5xx other than 503, a stream stall, an
//!   unparseable or absurd header.
//!
//! What the gate does with it:
//! 1. **No cost without evidence.** A key starts with a window of `initial_concurrency` (16, as
//!    Fireworks' own SDK) that doubles every `ramp_interval` (50 ms) by the clock, whatever the
//!    answers' latency: 1024 in flight within 300 ms. Healthy 2 s answers are never held back
//!    (the healthy row of BENCHMARKS.md's scenarios).
//! 2. **A window only after fleet-wide capacity evidence**: it drops under the fewest requests in
//!    flight at which a refusal was sent (× `decrease`), grows by one every `increase_after`
//!    round trips of successes, grows again by the clock (doubling every `recovery / 6`) once
//!    the key has been quiet that long, and is back at `max_concurrency` after `recovery`
//!    (30 s) without evidence.
//! 3. **Pacing.** `x-ratelimit-limit-requests` paces sends just under the stated limit
//!    (`headroom`, 98%), read per second first ([`HeaderUnit::Detect`]): a per-second reading
//!    is a hypothesis that never stalls anyone, dropped for per minute when a rate-limit 429
//!    comes while the client (the fleet, with one) sent less than half of it, and tried again after `recovery` without a
//!    throttle. `x-ratelimit-remaining-requests: 0` holds the
//!    next send for one interval; after a 429 with no delay header, `x-ratelimit-reset-requests`
//!    is a pacing hint. A learned pace is forgotten `recovery` after the last throttle. Static
//!    caps in requests and tokens per minute are optional ([`GateConfig`]); tokens come from a
//!    [`TokenEstimate`] extension, else `body bytes / 4 + default_completion_tokens`.
//! 4. **Cooldowns end as a rate.** Waiters go out one pacing interval apart; with no known rate,
//!    20 ms apart for the first second after the cooldown, then at once.
//! 5. **Bad delays are contained.** A delay over `max_cooldown` (60 s) cools nobody down; only
//!    the request that got it fails, with its typed error, from the retry layer. Ignored headers
//!    are named in a DEBUG trace event. `x-ratelimit-reset-*` is never a retry delay.
//! 6. **A bounded, fair wait.** Requests wait in FIFO order, at most `max_queue` per key. One
//!    that cannot get a send slot before its deadline (the timeout module's
//!    [`Deadline`](crate::Deadline)) fails at once with a client-side `GateRefused`
//!    error carrying the wait it would have needed. A waiter that gives up returns its reserved
//!    slot at once.
//! 7. **Bounded keys.** At most `max_keys` (10,000) gates; idle ones are evicted, least recently
//!    used first, counted in `firebreak_gate_evictions_total`.
//! 8. **Many processes, one limit.** Processes that share an account limit link their gates
//!    through a [`Fleet`] ([`GateLayer::with_fleet`], or `Stack::fleet`); what is shared and
//!    what stays local is in [the architecture](crate#where-shared-state-lives).
//!
//! A request holds its place until its response body ends ([`PermitBody`]): what the window
//! measures is what the server is serving. Without evidence the window is wide, so long
//! generations never starve short calls; after evidence, a stalled reader holds its place only
//! as long as the body timeouts below allow.
//!
//! # Example
//! ```
//! use firebreak::gate::{GateConfig, KeyBy, GateLayer};
//!
//! let gate = GateLayer::new(GateConfig::default(), KeyBy::ApiKeyAndModel).unwrap();
//! // ServiceBuilder::new().layer(retry).layer(gate.clone()).layer(attempt_timeouts)...
//! for (key, s) in gate.snapshot() {
//!     println!("{key:?}: limit {} in flight {} queued {}", s.concurrency_limit, s.in_flight, s.queue_len);
//! }
//! ```

mod body;
mod config;
mod estimate;
mod fleet;
mod future;
mod key;
mod layer;
mod service;
mod state;
mod store;
#[cfg(test)]
mod tests;

pub use body::PermitBody;
pub use config::{GateConfig, GateConfigError, HeaderUnit};
pub use estimate::TokenEstimate;
#[cfg_attr(not(feature = "route"), allow(unused_imports))]
pub(crate) use fleet::FleetSink;
pub use fleet::{Fleet, FleetEvent, FleetInbox};
pub use future::ResponseFuture;
pub use key::{GateKey, KeyBy, RequestHead};
pub use layer::{GateLayer, GateSnapshot};
pub use service::Gate;
pub use state::CapacityAdvice;
