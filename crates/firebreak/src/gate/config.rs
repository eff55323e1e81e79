//! Settings of the 429 gate.

use std::fmt;
use std::time::Duration;

/// How `x-ratelimit-limit-requests` is read when the server does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderUnit {
    /// Per second first (Fireworks' current docs state its limits per second, and the higher
    /// reading never stalls anyone), as a hypothesis: a rate-limit 429 that arrives while the
    /// client sent less than half the per-second reading drops it for per minute; `recovery` without
    /// a throttle brings it back.
    #[default]
    Detect,
    /// Always per minute.
    PerMinute,
    /// Always per second.
    PerSecond,
}

/// Every setting of the gate. The defaults follow Fireworks' guidance: ramp up gradually (fast
/// ramps earn 429s on serverless), back off as a fleet on a 429, pace just under the stated
/// limit.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GateConfig {
    /// Requests in flight at first, per key (16, Fireworks' own SDK's start). Until the first
    /// fleet-wide signal the window doubles every `ramp_interval` by the clock, whatever the
    /// answers' latency, so a healthy key reaches `max_concurrency` within a few hundred ms.
    pub initial_concurrency: u32,
    /// How often the window doubles before any evidence (50 ms).
    pub ramp_interval: Duration,
    /// Lowest concurrency limit.
    pub min_concurrency: u32,
    /// Highest concurrency limit.
    pub max_concurrency: u32,
    /// After a decrease: successes, in multiples of the current limit, before the limit grows
    /// by one (on top of the recovery with time).
    pub increase_after: u32,
    /// Multiplier on a decrease (of the concurrency limit or of the learned rate).
    pub decrease: f64,
    /// Fraction of a header-stated limit to pace at.
    pub headroom: f64,
    /// How to read header limits.
    pub header_unit: HeaderUnit,
    /// A static cap in requests per minute.
    pub requests_per_minute: Option<u32>,
    /// A static cap in tokens per minute (prompt + completion), with the estimate of
    /// [`crate::gate::TokenEstimate`].
    pub tokens_per_minute: Option<u32>,
    /// Completion tokens assumed for a request that does not say (no `TokenEstimate`).
    pub default_completion_tokens: u32,
    /// Longest server delay trusted fleet-wide. A longer one cools nobody down: only the
    /// request that got it fails (the retry layer refuses to wait past its own cap).
    pub max_cooldown: Duration,
    /// Requests allowed to wait at once per key; one more is refused at once.
    pub max_queue: usize,
    /// Capacity refusals (503 "overloaded", a 429 that is not a rate limit), each from a request
    /// that was in flight with the previous one, that make fleet-wide evidence (3). Fewer
    /// concern those requests alone.
    pub fleet_signals: u32,
    /// Time without a fleet-wide throttle after which a key is back at full speed: a learned
    /// rate is forgotten and the window is back at `max_concurrency` (30 s). The window starts
    /// growing again by the clock after a sixth of it.
    pub recovery: Duration,
    /// After a quota-exhausted answer, how long calls on the same key fail fast, client-side,
    /// before one is let through to recheck (60 s).
    pub quota_recheck: Duration,
    /// Keys kept at most; idle ones are evicted, least recently used first (10,000).
    pub max_keys: usize,
    /// Where the model runs ([`TargetKind`](crate::TargetKind)). `Auto` (the default): a gate
    /// per (API key, model) reads each model's kind from its id, and where the id does not say,
    /// each answer tells a rate limit from a capacity refusal. `Serverless` takes every 429 for
    /// a rate limit; `Dedicated` takes every 429 and 503 "overloaded" for a capacity refusal
    /// (the concurrency window, never a pace), ignores rate headers, reads the queueing time,
    /// and gives the [`CapacityAdvice`](crate::gate::CapacityAdvice). The route module sets it
    /// per target.
    pub kind: crate::TargetKind,
    /// On a dedicated target, a success whose `fireworks-prefill-queue-duration` exceeds this
    /// is capacity evidence like a refusal (0.5 s, the target of Fireworks' own SDK, which
    /// steers its concurrency on that queueing time): the window settles where requests stop
    /// queueing, before the deployment starts refusing.
    pub queue_target: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            initial_concurrency: 16,
            ramp_interval: Duration::from_millis(50),
            min_concurrency: 1,
            max_concurrency: 1024,
            increase_after: 2,
            decrease: 0.8,
            headroom: 0.98,
            header_unit: HeaderUnit::Detect,
            requests_per_minute: None,
            tokens_per_minute: None,
            default_completion_tokens: 256,
            max_cooldown: Duration::from_secs(60),
            max_queue: 4096,
            fleet_signals: 3,
            recovery: Duration::from_secs(30),
            quota_recheck: Duration::from_secs(60),
            max_keys: 10_000,
            kind: crate::TargetKind::Auto,
            queue_target: Duration::from_millis(500),
        }
    }
}

impl GateConfig {
    crate::setters! {
        initial_concurrency: u32,
        ramp_interval: Duration,
        min_concurrency: u32,
        max_concurrency: u32,
        increase_after: u32,
        decrease: f64,
        headroom: f64,
        header_unit: HeaderUnit,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u32>,
        default_completion_tokens: u32,
        max_cooldown: Duration,
        max_queue: usize,
        fleet_signals: u32,
        recovery: Duration,
        quota_recheck: Duration,
        max_keys: usize,
        kind: crate::TargetKind,
        queue_target: Duration,
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`GateConfigError`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), GateConfigError> {
        let bad = |m: String| Err(GateConfigError(m));
        if self.min_concurrency == 0 {
            return bad("min_concurrency must be at least 1".into());
        }
        if !(self.min_concurrency <= self.initial_concurrency
            && self.initial_concurrency <= self.max_concurrency)
        {
            return bad(format!(
                "need min_concurrency ({}) <= initial_concurrency ({}) <= max_concurrency ({})",
                self.min_concurrency, self.initial_concurrency, self.max_concurrency
            ));
        }
        if self.max_concurrency > 1 << 20 {
            return bad(format!(
                "max_concurrency {} is absurd",
                self.max_concurrency
            ));
        }
        if self.increase_after == 0 {
            return bad("increase_after must be at least 1".into());
        }
        if !(self.decrease.is_finite() && self.decrease > 0.0 && self.decrease < 1.0) {
            return bad(format!("decrease {} must be in (0, 1)", self.decrease));
        }
        if !(self.headroom.is_finite() && self.headroom > 0.0 && self.headroom <= 1.0) {
            return bad(format!("headroom {} must be in (0, 1]", self.headroom));
        }
        if self.requests_per_minute == Some(0) || self.tokens_per_minute == Some(0) {
            return bad("a static cap of 0 would refuse every request; use None for no cap".into());
        }
        if self.max_queue == 0 {
            return bad("max_queue must be at least 1".into());
        }
        if self.ramp_interval.is_zero() || self.ramp_interval > Duration::from_secs(60) {
            return bad(format!(
                "ramp_interval {:?} must be in (0, 60 s]",
                self.ramp_interval
            ));
        }
        if self.fleet_signals == 0 {
            return bad("fleet_signals must be at least 1".into());
        }
        if self.recovery < Duration::from_millis(600) || self.recovery > Duration::from_secs(3600) {
            return bad(format!(
                "recovery {:?} must be in [600 ms, 1 h]",
                self.recovery
            ));
        }
        if self.quota_recheck.is_zero() || self.quota_recheck > Duration::from_secs(3600) {
            return bad(format!(
                "quota_recheck {:?} must be in (0, 1 h]",
                self.quota_recheck
            ));
        }
        if self.queue_target.is_zero() || self.queue_target > Duration::from_secs(60) {
            return bad(format!(
                "queue_target {:?} must be in (0, 60 s]",
                self.queue_target
            ));
        }
        if self.max_keys == 0 {
            return bad("max_keys must be at least 1".into());
        }
        if self.max_cooldown.is_zero() || self.max_cooldown > Duration::from_secs(3600) {
            return bad(format!(
                "max_cooldown {:?} must be in (0, 1 h]",
                self.max_cooldown
            ));
        }
        Ok(())
    }
}

/// A gate setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfigError(String);

impl fmt::Display for GateConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid 429 gate setting: {}", self.0)
    }
}

impl std::error::Error for GateConfigError {}
