//! Retry settings, their defaults and their validation.

use crate::retry::backoff::{Backoff, Jitter};
use http::HeaderName;
use std::fmt;
use std::time::Duration;

/// Default cap on a server-requested delay: longer requests fail at once with a typed error
/// carrying the delay (the Fireworks SDK caps at 60 s too).
pub(crate) const DEFAULT_MAX_SERVER_DELAY: Duration = Duration::from_secs(60);

/// Default bound on the replay buffer: long-context prompts are large.
pub(crate) const DEFAULT_MAX_REPLAY_BODY: usize = 16 * 1024 * 1024;

/// The retry budget, shared by every clone of the layer: each *successful* call deposits
/// `ratio` of a retry, each retry withdraws one, and a retry that succeeds refunds what it
/// cost. A retry the server scheduled (it sent a usable `Retry-After` or similar) is not
/// charged: the server is pacing that load itself. `min_per_sec` retries per second (over `window`) are always allowed, for quiet clients.
///
/// Why this shape, having weighed the usual designs:
/// - tower's `TpsBudget` (as usually used) and Envoy's budget cap retries at a fixed fraction of
///   *calls* (20%). Under independent faults at a 30% rate a call needs about 0.43 retries on
///   average, so they refuse retries that would have worked; and under overload, when calls
///   fail at once and come back at a high rate, a fraction of calls is still a lot of retries.
/// - gRPC's retry throttling drains a token on every failure and refills a tenth of one on
///   every success: at a 30% fault rate it drains and stops retrying altogether.
/// - AWS's retry quota (500 tokens, 5 per retry, 1 back per success) is generous in bursts and
///   like gRPC's in steady failure.
/// - Depositing on *successes* makes the budget follow useful traffic: with independent faults
///   nearly every call succeeds in the end, so the budget grows with the traffic; under
///   overload few calls succeed, so it shrinks with them and amplification stays under about
///   `1 + ratio × success rate`. Refunding successful retries adds margin exactly when retrying
///   works (70% of retries succeed at a 30% independent fault rate) and almost none when it
///   does not (an overloaded server rejects retries too).
///
/// The default is `ratio` 0.5, `min_per_sec` 1, a 10 s `window` and an `initial` credit of 32
/// retries. The standing reserve is kept small on purpose: `min_per_sec × window` retries are
/// always free, and a large reserve (tower's examples use 10/s) lets every burst of failures
/// retry without limit; the one-off initial credit covers a cold start instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries deposited per successful call (0 to 10).
    pub ratio: f32,
    /// Retries per second always allowed.
    pub min_per_sec: u32,
    /// How long deposits count (1 to 60 s).
    pub window: Duration,
    /// Retries credited once at start (they expire with the first window), so that a client's
    /// first burst of failures, before any success could deposit, is not refused.
    pub initial: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.5,
            min_per_sec: 1,
            window: Duration::from_secs(10),
            initial: 32,
        }
    }
}

/// Which answers are retried, beyond the shared classification's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Statuses retried although their class is not (e.g. 409).
    pub also: Vec<u16>,
    /// Statuses never retried although their class is (e.g. 504 for a non-idempotent call).
    pub never: Vec<u16>,
    /// Ignore the server's `x-should-retry` header and decide from the status alone. Off by
    /// default: the header is honoured.
    pub ignore_should_retry: bool,
}

/// Every retry setting: `RetryConfig::default().max_attempts(3)`; the
/// layer validates it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The backoff schedule.
    pub backoff: Backoff,
    /// The schedule after an attempt that could not reach the endpoint at all (a refused
    /// connection, a DNS failure, a connect timeout): nobody is listening at the address, which
    /// is an outage of the endpoint (a restart, a deploy), not of one replica, and lasts
    /// seconds. `None` uses [`RetryConfig::backoff`].
    pub unreachable_backoff: Option<Backoff>,
    /// Longest time from the first attempt's end to the start of a retry; `None`: unbounded
    /// (the overall deadline still applies).
    pub max_retry_time: Option<Duration>,
    /// Server-requested delays above this are not slept: the call fails with a typed error
    /// that carries the delay.
    pub max_server_delay: Duration,
    /// The retry budget; `None` disables it.
    pub budget: Option<BudgetConfig>,
    /// Status overrides.
    pub retry_on: RetryOn,
    /// Largest request body kept for replay; a larger one is sent once and never retried.
    pub max_replay_body: usize,
    /// A header carrying the retry number on each attempt (0 on the first), e.g.
    /// `x-stainless-retry-count`. Off by default.
    pub attempt_header: Option<HeaderName>,
    /// Send an `Idempotency-Key`, generated once per call and reused on every attempt.
    pub idempotency_key: bool,
    /// Seed for the jitter; `None` draws from the thread's RNG.
    pub seed: Option<u64>,
}

impl Default for RetryConfig {
    /// Five attempts; full jitter from 100 ms, capped at 10 s (from 500 ms when the endpoint
    /// could not be reached at all); at most 60 s of retrying;
    /// server delays honoured up to 60 s; a success-based budget with refunds; 16 MiB replay.
    ///
    /// Why 100 ms: a transient failure (a reset, a 502, a replica's 503) concerns one request,
    /// and its retry usually meets another replica, so waiting long buys nothing (async-openai
    /// starts at 100 ms, Envoy at 25 ms). Waiting as a fleet when the server is overloaded or
    /// rate limited is the gate's job, on evidence, and a server's delay is honoured as sent.
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            backoff: Backoff {
                jitter: Jitter::Full,
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
            unreachable_backoff: Some(Backoff {
                jitter: Jitter::Full,
                base: Duration::from_millis(500),
                cap: Duration::from_secs(10),
            }),
            max_retry_time: Some(Duration::from_secs(60)),
            max_server_delay: DEFAULT_MAX_SERVER_DELAY,
            budget: Some(BudgetConfig::default()),
            retry_on: RetryOn::default(),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            attempt_header: None,
            idempotency_key: false,
            seed: None,
        }
    }
}

impl RetryConfig {
    crate::setters! {
        max_attempts: u32,
        backoff: Backoff,
        unreachable_backoff: Option<Backoff>,
        max_retry_time: Option<Duration>,
        max_server_delay: Duration,
        budget: Option<BudgetConfig>,
        retry_on: RetryOn,
        max_replay_body: usize,
        attempt_header: Option<HeaderName>,
        idempotency_key: bool,
        seed: Option<u64>,
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`RetryConfigError`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        use RetryConfigError as E;
        if self.max_attempts == 0 {
            return Err(E::ZeroAttempts);
        }
        if self.max_attempts > 100 {
            return Err(E::TooManyAttempts(self.max_attempts));
        }
        for b in std::iter::once(&self.backoff).chain(&self.unreachable_backoff) {
            if b.base.is_zero() || b.cap.is_zero() {
                return Err(E::ZeroBackoff);
            }
            if b.base > b.cap {
                return Err(E::BaseOverCap {
                    base: b.base,
                    cap: b.cap,
                });
            }
        }
        let b = &self.backoff;
        if let Jitter::Proportional(f) = b.jitter {
            if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                return Err(E::BadJitter(f));
            }
        }
        if self.max_server_delay.is_zero() {
            return Err(E::ZeroServerDelayCap);
        }
        if let Some(bc) = &self.budget {
            if !(bc.ratio.is_finite() && (0.0..=10.0).contains(&bc.ratio)) {
                return Err(E::BadBudget(format!(
                    "ratio {} is not in [0, 10]",
                    bc.ratio
                )));
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&bc.window) {
                return Err(E::BadBudget(format!(
                    "window {:?} is not in [1 s, 60 s]",
                    bc.window
                )));
            }
            if bc.initial > 1_000_000 {
                return Err(E::BadBudget(format!("initial {} is absurd", bc.initial)));
            }
            if bc.min_per_sec > 1_000_000 {
                return Err(E::BadBudget(format!(
                    "min_per_sec {} is absurd",
                    bc.min_per_sec
                )));
            }
        }
        Ok(())
    }
}

/// A retry setting that cannot work.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RetryConfigError {
    /// `max_attempts` is 0: not even one attempt.
    ZeroAttempts,
    /// More than 100 attempts: a retry storm by configuration.
    TooManyAttempts(u32),
    /// A zero backoff base or cap.
    ZeroBackoff,
    /// The backoff base is larger than its cap.
    BaseOverCap {
        /// The base.
        base: Duration,
        /// The cap.
        cap: Duration,
    },
    /// A jitter factor that is NaN, infinite or outside `[0, 1]`.
    BadJitter(f64),
    /// A zero cap on server-requested delays would refuse every one.
    ZeroServerDelayCap,
    /// A budget value out of range.
    BadBudget(String),
}

impl fmt::Display for RetryConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroAttempts => {
                f.write_str("max_attempts is 0; it counts the first attempt, so use at least 1")
            }
            Self::TooManyAttempts(n) => write!(f, "max_attempts {n} is over 100"),
            Self::ZeroBackoff => f.write_str("the backoff base and cap must be greater than zero"),
            Self::BaseOverCap { base, cap } => write!(
                f,
                "the backoff base ({base:?}) is larger than its cap ({cap:?})"
            ),
            Self::BadJitter(x) => write!(f, "the jitter factor {x} is not a number in [0, 1]"),
            Self::ZeroServerDelayCap => {
                f.write_str("max_server_delay is zero; it would refuse every Retry-After")
            }
            Self::BadBudget(m) => write!(f, "invalid retry budget: {m}"),
        }
    }
}

impl std::error::Error for RetryConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misconfigurations_are_rejected() {
        let ms = Duration::from_millis;
        let with_backoff = |jitter, base, cap| RetryConfig {
            backoff: Backoff { jitter, base, cap },
            ..RetryConfig::default()
        };
        let zero = RetryConfig {
            max_attempts: 0,
            ..RetryConfig::default()
        };
        assert_eq!(zero.validate(), Err(RetryConfigError::ZeroAttempts));
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
        assert!(matches!(
            with_backoff(Jitter::Full, ms(500), ms(100)).validate(),
            Err(RetryConfigError::BaseOverCap { .. })
        ));
        assert!(matches!(
            with_backoff(Jitter::Proportional(f64::NAN), ms(100), ms(500)).validate(),
            Err(RetryConfigError::BadJitter(_))
        ));
        assert!(matches!(
            with_backoff(Jitter::Proportional(1.5), ms(100), ms(500)).validate(),
            Err(RetryConfigError::BadJitter(_))
        ));
        let bad_budget = RetryConfig {
            budget: Some(BudgetConfig {
                ratio: f32::NAN,
                ..Default::default()
            }),
            ..RetryConfig::default()
        };
        assert!(matches!(
            bad_budget.validate(),
            Err(RetryConfigError::BadBudget(_))
        ));
        RetryConfig::default().validate().unwrap();
    }
}
