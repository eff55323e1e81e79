//! Timeout settings, Fireworks workload presets, and their validation.

use std::fmt;
use std::time::Duration;

/// Longest duration accepted for any timeout: a day. Anything longer is taken as a mistake
/// (a value in the wrong unit, say); use `None` to disable a timeout instead.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The workloads of Fireworks' reliability guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Interactive / chat: 30–60 s.
    Interactive,
    /// Agentic (tool calls, multi-step): 5–30 min.
    Agentic,
    /// Large model inference with long context: 10–30 min.
    LongContext,
    /// Batch job submission: 60 s (results are asynchronous).
    BatchSubmit,
}

/// Every timeout of one call. `None` disables a phase.
///
/// | phase | what it bounds |
/// |---|---|
/// | `connect` | TCP + TLS connect, in the connector `FireworksClient` builds |
/// | `ready` | waiting for the inner service to be ready (pool, concurrency limits, the 429 gate below) |
/// | `write` | sending the request body |
/// | `headers` | from the end of the write to the response head (time to first byte) |
/// | `first_event` | from the head to the first SSE `data:` event, on `text/event-stream` responses |
/// | `idle` | the longest gap between two response body frames |
/// | `attempt` | one attempt, from the call to the end of the body |
/// | `deadline` | the whole call: every attempt, backoff sleep and rate-limit wait ([`DeadlineLayer`](crate::timeout::DeadlineLayer)) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeoutConfig {
    /// Connect.
    pub connect: Option<Duration>,
    /// Ready / pool wait.
    pub ready: Option<Duration>,
    /// Request write.
    pub write: Option<Duration>,
    /// Response headers (TTFB).
    pub headers: Option<Duration>,
    /// First SSE event.
    pub first_event: Option<Duration>,
    /// Body idle.
    pub idle: Option<Duration>,
    /// Per-attempt total.
    pub attempt: Option<Duration>,
    /// Overall deadline.
    pub deadline: Option<Duration>,
}

const fn s(secs: u64) -> Option<Duration> {
    Some(Duration::from_secs(secs))
}

impl TimeoutConfig {
    crate::setters! {
        connect: Option<Duration>,
        ready: Option<Duration>,
        write: Option<Duration>,
        headers: Option<Duration>,
        first_event: Option<Duration>,
        idle: Option<Duration>,
        attempt: Option<Duration>,
        deadline: Option<Duration>,
    }

    /// The preset for a workload. All presets use Fireworks' example split for connect (10 s),
    /// write (30 s; 120 s for long context, whose prompts are large) and pool (10 s). The read
    /// side is split in three: time to first byte (`headers`, which for a non-streaming call
    /// includes the whole generation), first SSE event, and the idle gap between chunks, which
    /// is much shorter: a stream that stops sending tokens is caught in seconds, not minutes.
    ///
    /// | preset | connect | ready | write | headers | first event | idle | attempt | deadline |
    /// |---|---|---|---|---|---|---|---|---|
    /// | Interactive | 10 s | 10 s | 30 s | 30 s | 30 s | 20 s | 60 s | 120 s |
    /// | Agentic | 10 s | 10 s | 30 s | 15 min | 10 min | 2 min | 30 min | 30 min |
    /// | LongContext | 10 s | 10 s | 2 min | 15 min | 15 min | 5 min | 30 min | 30 min |
    /// | BatchSubmit | 10 s | 10 s | 30 s | 25 s | 25 s | 25 s | 30 s | 60 s |
    ///
    /// The attempt total is the top of Fireworks' range for the workload. The deadline leaves
    /// room for a retry after a failed attempt where the range is short (interactive), and
    /// equals the range's top where one attempt may rightly take it all, or where the guide
    /// gives one figure for the whole call (batch submission's 60 s, which two 30 s attempts
    /// fit). `headers` is at most half the deadline and below `attempt` in every preset, so a
    /// server that hangs before its response head is cut by the retryable `headers` timer with
    /// room left for a second attempt (the timeout module's rule, "Hangs are retried"). The
    /// price: a non-streaming agentic or long-context call, whose head comes only when the
    /// generation ends, may take at most 15 min; a longer one should stream (its head comes at
    /// once, and `first_event` and `idle` time it) or raise `headers` and the deadline with it.
    pub const fn preset(w: Workload) -> TimeoutConfig {
        match w {
            Workload::Interactive => TimeoutConfig {
                connect: s(10),
                ready: s(10),
                write: s(30),
                headers: s(30),
                first_event: s(30),
                idle: s(20),
                attempt: s(60),
                deadline: s(120),
            },
            Workload::BatchSubmit => TimeoutConfig {
                connect: s(10),
                ready: s(10),
                write: s(30),
                headers: s(25),
                first_event: s(25),
                idle: s(25),
                attempt: s(30),
                deadline: s(60),
            },
            Workload::Agentic => TimeoutConfig {
                connect: s(10),
                ready: s(10),
                write: s(30),
                headers: s(900),
                first_event: s(600),
                idle: s(120),
                attempt: s(1800),
                deadline: s(1800),
            },
            Workload::LongContext => TimeoutConfig {
                connect: s(10),
                ready: s(10),
                write: s(120),
                headers: s(900),
                first_event: s(900),
                idle: s(300),
                attempt: s(1800),
                deadline: s(1800),
            },
        }
    }

    /// Every phase disabled.
    pub const fn none() -> TimeoutConfig {
        TimeoutConfig {
            connect: None,
            ready: None,
            write: None,
            headers: None,
            first_event: None,
            idle: None,
            attempt: None,
            deadline: None,
        }
    }

    /// Checks every value: each enabled timeout must be in `(0, MAX_TIMEOUT]`, the attempt
    /// total must not exceed the deadline, and `headers` must be below `attempt` (else the
    /// attempt's total, which is not retried, always fires first on a hang before the head).
    ///
    /// # Errors
    /// [`TimeoutConfigError`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), TimeoutConfigError> {
        let fields = [
            ("connect", self.connect),
            ("ready", self.ready),
            ("write", self.write),
            ("headers", self.headers),
            ("first_event", self.first_event),
            ("idle", self.idle),
            ("attempt", self.attempt),
            ("deadline", self.deadline),
        ];
        for (name, v) in fields {
            match v {
                Some(d) if d.is_zero() => return Err(TimeoutConfigError::Zero(name)),
                Some(d) if d > MAX_TIMEOUT => return Err(TimeoutConfigError::TooLong(name, d)),
                _ => {}
            }
        }
        if let (Some(a), Some(d)) = (self.attempt, self.deadline) {
            if a > d {
                return Err(TimeoutConfigError::AttemptOverDeadline {
                    attempt: a,
                    deadline: d,
                });
            }
        }
        if let (Some(h), Some(a)) = (self.headers, self.attempt) {
            if h >= a {
                return Err(TimeoutConfigError::HeadersNotBelowAttempt {
                    headers: h,
                    attempt: a,
                });
            }
        }
        Ok(())
    }
}

impl Default for TimeoutConfig {
    /// The interactive preset.
    fn default() -> Self {
        Self::preset(Workload::Interactive)
    }
}

/// A timeout setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutConfigError {
    /// A zero duration would fail every call; use `None` to disable a phase.
    Zero(&'static str),
    /// Longer than [`MAX_TIMEOUT`].
    TooLong(&'static str, Duration),
    /// The attempt total exceeds the overall deadline.
    AttemptOverDeadline {
        /// The attempt total.
        attempt: Duration,
        /// The deadline.
        deadline: Duration,
    },
    /// `headers` is not below `attempt`: on a server that hangs before its head, the
    /// attempt's total (not retried) would fire first, and the hang would never be retried.
    HeadersNotBelowAttempt {
        /// The headers timeout.
        headers: Duration,
        /// The attempt total.
        attempt: Duration,
    },
}

impl fmt::Display for TimeoutConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutConfigError::Zero(n) => write!(
                f,
                "timeout `{n}` is zero, which would fail every call (leave it unset to turn the phase off)"
            ),
            TimeoutConfigError::TooLong(n, d) => write!(
                f,
                "timeout `{n}` of {d:?} is longer than the {MAX_TIMEOUT:?} maximum"
            ),
            TimeoutConfigError::AttemptOverDeadline { attempt, deadline } => write!(
                f,
                "the attempt timeout ({attempt:?}) is longer than the overall deadline ({deadline:?})"
            ),
            TimeoutConfigError::HeadersNotBelowAttempt { headers, attempt } => write!(
                f,
                "the first-byte (`headers`) timeout ({headers:?}) must be below the attempt timeout ({attempt:?}): otherwise a server that hangs before answering is cut by the attempt timer, which is not retried"
            ),
        }
    }
}

impl std::error::Error for TimeoutConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_follow_the_guidance() {
        for w in [
            Workload::Interactive,
            Workload::Agentic,
            Workload::LongContext,
            Workload::BatchSubmit,
        ] {
            let c = TimeoutConfig::preset(w);
            c.validate().unwrap();
            assert_eq!(c.connect, s(10), "{w:?}");
            assert_eq!(c.ready, s(10), "{w:?}");
            let attempt = c.attempt.unwrap().as_secs();
            let range = match w {
                Workload::Interactive => 30..=60,
                Workload::Agentic => 300..=1800,
                Workload::LongContext => 600..=1800,
                Workload::BatchSubmit => 30..=60,
            };
            assert!(range.contains(&attempt), "{w:?}: {attempt}");
            assert!(
                c.idle < c.headers || w == Workload::BatchSubmit,
                "{w:?}: a stalled stream is caught before a slow first byte"
            );
            assert!(c.headers < c.attempt && c.first_event <= c.attempt, "{w:?}");
            // A hang before the head leaves room for a second attempt within the deadline.
            assert!(
                c.headers.unwrap() * 2 <= c.deadline.unwrap(),
                "{w:?}: a retry fits after a hung first attempt"
            );
            if w == Workload::BatchSubmit {
                assert_eq!(c.deadline, s(60), "the guide's 60 s for batch submission");
                assert!(2 * attempt <= 60, "a retry fits in the batch deadline");
            }
        }
    }

    #[test]
    fn a_day_is_the_longest_timeout_and_is_itself_accepted() {
        assert_eq!(MAX_TIMEOUT, Duration::from_secs(86_400));
        let mut c = TimeoutConfig::none();
        c.attempt = Some(MAX_TIMEOUT);
        c.deadline = Some(MAX_TIMEOUT);
        assert!(c.validate().is_ok());
        c.deadline = Some(MAX_TIMEOUT + Duration::from_secs(1));
        assert!(c.validate().is_err());
    }

    #[test]
    fn bad_values_are_rejected_with_a_clear_error() {
        let base = TimeoutConfig::preset(Workload::Interactive);
        let e = TimeoutConfig {
            headers: Some(Duration::ZERO),
            ..base
        }
        .validate()
        .unwrap_err();
        assert_eq!(e, TimeoutConfigError::Zero("headers"));
        assert!(e.to_string().contains("leave it unset"));
        let e = TimeoutConfig {
            idle: Some(Duration::from_secs(90_000)),
            ..base
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, TimeoutConfigError::TooLong("idle", _)));
        let e = TimeoutConfig {
            attempt: Some(Duration::from_secs(300)),
            ..base
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, TimeoutConfigError::AttemptOverDeadline { .. }));
        let unbounded = TimeoutConfig {
            deadline: None,
            attempt: Some(Duration::from_secs(300)),
            ..base
        };
        assert!(unbounded.validate().is_ok());
        TimeoutConfig::none().validate().unwrap();
    }
}
