//! Settings of the 429 gate.

use std::fmt;
use std::time::Duration;

/// How `x-ratelimit-limit-*` values are read when the server does not say (Fireworks does not
/// document it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderUnit {
    /// Per minute (Fireworks states its account caps in RPM), switching to per second when the
    /// client sustains more than the per-minute reading allows without a 429.
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
pub struct GateConfig {
    /// Requests in flight at first, per key. The limit doubles each round trip without an
    /// overload signal (slow start), then grows by one every `increase_after` × limit successes.
    pub initial_concurrency: u32,
    /// Lowest concurrency limit.
    pub min_concurrency: u32,
    /// Highest concurrency limit.
    pub max_concurrency: u32,
    /// Successes, in multiples of the current limit, before the limit grows by one.
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
    /// [`crate::TokenEstimate`].
    pub tokens_per_minute: Option<u32>,
    /// Completion tokens assumed for a request that does not say (no `TokenEstimate`).
    pub default_completion_tokens: u32,
    /// Longest fleet-wide cooldown a server delay can impose (longer ones are capped).
    pub max_cooldown: Duration,
    /// Requests allowed to wait at once per key; one more is refused at once.
    pub max_queue: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            initial_concurrency: 4,
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
        }
    }
}

impl GateConfig {
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
pub struct GateConfigError(pub String);

impl fmt::Display for GateConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid 429 gate setting: {}", self.0)
    }
}

impl std::error::Error for GateConfigError {}
