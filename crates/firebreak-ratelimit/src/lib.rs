//! `firebreak-ratelimit`: back off as a fleet, pace to the limit, follow it as it grows.
//!
//! With every other client, each request handles its own 429: fifty concurrent requests all hit
//! the wall, all sleep, and all wake up together into the wall again. This layer sits inside the
//! retry layer and gates every attempt, retries included, through state shared by all clones and
//! keyed per client, or per (API key, model) ([`KeyBy`]):
//!
//! 1. **A shared cooldown.** A 429 with a server-requested delay holds every request on its key
//!    until the delay has passed; then waiting requests are released one pacing interval
//!    apart, not all at once.
//! 2. **An adaptive concurrency limit** (AIMD, with TCP-style slow start). It starts small (4),
//!    doubles each round trip while nothing is refused, and after the first overload signal
//!    grows by one every two round trips. On a 503 "overloaded" or a 429 without rate-limit
//!    headers (a dedicated deployment's "capacity exceeded") it drops below the in-flight count
//!    at which the refused request was sent, which is the best estimate of the capacity there is.
//!    A gradient limiter (Netflix's) needs stable latencies to work, and LLM latencies vary with
//!    output length by orders of magnitude; AWS's adaptive mode (CUBIC on a send rate) fits a
//!    rate limit but converges slowly. So a rate limit gets rate pacing (below) and a capacity
//!    limit gets AIMD on concurrency.
//! 3. **Pacing from headers.** `x-ratelimit-limit-requests` sets a pacing rate just under the
//!    stated limit (98%), read per minute (Fireworks states RPM) until the client sustains more
//!    than that without a 429, when it is read per second. `x-ratelimit-remaining-* = 0` holds
//!    the next send for one interval. A 429 despite pacing lowers the rate multiplicatively (once
//!    per second at most) and it then grows by 1% per success, so the client follows a limit that
//!    grows with sustained use without ramping into 429s.
//! 4. **Optional static caps** in requests and tokens per minute ([`GateConfig`]). Tokens are
//!    taken from a [`TokenEstimate`] extension when the caller sets one
//!    ([`TokenEstimate::from_json_body`] reads the body's size and its `max_tokens`;
//!    `firebreak::FireworksClient` sets it on every call), else estimated as the request body's
//!    bytes / 4 plus `default_completion_tokens` (256): an estimate, not a count.
//! 5. **A bounded, fair wait.** Requests wait in FIFO order (a fair semaphore), at most
//!    `max_queue` per key. A request that cannot get a send slot before its deadline (from
//!    `firebreak-timeout`'s [`Deadline`](firebreak_timeout::Deadline)) fails at once with a
//!    client-side `Throttled` error carrying the wait it would have needed; one that gets no
//!    capacity fails at its deadline. Nothing waits forever and nothing is dropped without an
//!    error.
//! 6. **The state behind a trait.** [`RateStore`] holds the shared pacing and cooldown state;
//!    [`InProcessStore`] is the default, and a distributed store can replace it
//!    ([`RateLimitLayer::with_store`]) without changing the layer.
//! 7. **Observability.** [`RateLimitLayer::snapshot`] reads, per key, the concurrency limit, the
//!    in-flight count, the queue length, the pacing rate, the cooldown left, the time spent
//!    waiting and the counts of admitted and throttled requests.
//!
//! A request holds its place until its response body ends ([`PermitBody`]): a streamed
//! generation occupies capacity for as long as it streams.
//!
//! # Example
//! ```
//! use firebreak_ratelimit::{GateConfig, KeyBy, RateLimitLayer};
//!
//! let gate = RateLimitLayer::new(GateConfig::default(), KeyBy::ApiKeyAndModel).unwrap();
//! // ServiceBuilder::new().layer(retry).layer(gate.clone()).layer(attempt_timeouts)...
//! for (key, s) in gate.snapshot() {
//!     println!("{key:?}: limit {} in flight {} queued {}", s.concurrency_limit, s.in_flight, s.queue_len);
//! }
//! ```

mod config;
mod gate;
mod layer;
mod store;

pub use config::{GateConfig, GateConfigError, HeaderUnit};
pub use gate::metric_names;
pub use layer::{
    GateSnapshot, KeyBy, Model, PermitBody, RateLimit, RateLimitLayer, RequestHead, ResponseFuture,
    TokenEstimate,
};
pub use store::{
    GateKey, InProcessStore, Observation, RateSnapshot, RateStore, Reserve, Signal,
};
