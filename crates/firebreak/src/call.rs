//! What happened across one call's attempts: the contract between the retry layer, which
//! writes it, and the layers that read it (observation, the proxy).

use crate::Class;
use http::Response;
use std::fmt;
use std::time::Duration;

/// What the retry layer did for one call; in the final response's extensions, except after a
/// first-attempt success (the common case, kept free of allocations): read it with
/// [`RetryInfo::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryInfo {
    pub(crate) attempts: u32,
    pub(crate) slept: Duration,
    pub(crate) classes: [Option<Class>; 8],
    pub(crate) gave_up: Option<GaveUp>,
}

impl RetryInfo {
    /// The retry layer's record for `resp`: the one in its extensions, or, when there is none,
    /// a single attempt with no wait (what a first-attempt success means).
    pub fn of<B>(resp: &Response<B>) -> RetryInfo {
        resp.extensions()
            .get::<RetryInfo>()
            .copied()
            .unwrap_or_else(|| {
                let mut classes = [None; 8];
                classes[0] = Some(Class::from_status(resp.status()));
                RetryInfo {
                    attempts: 1,
                    slept: Duration::ZERO,
                    classes,
                    gave_up: None,
                }
            })
    }

    /// Attempts made, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Total time slept between attempts.
    pub fn slept(&self) -> Duration {
        self.slept
    }

    /// The class of each attempt, in order (the first eight).
    pub fn classes(&self) -> impl Iterator<Item = Class> + '_ {
        self.classes.iter().map_while(|c| *c)
    }

    /// Why retrying stopped short of a success, if it did.
    pub fn gave_up(&self) -> Option<GaveUp> {
        self.gave_up
    }
}

/// Why the retry layer waited before an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DelayReason {
    /// Its own exponential backoff with jitter.
    Backoff,
    /// The server asked for the wait (`Retry-After`, `retry-after-ms`), and it was longer than
    /// the backoff.
    Server,
}

impl DelayReason {
    /// A metric label: `backoff` or `server`.
    pub fn label(self) -> &'static str {
        match self {
            DelayReason::Backoff => "backoff",
            DelayReason::Server => "server",
        }
    }
}

/// In the request extensions of every retry (attempt 2 onwards), for the layers below it
/// (tracing and metrics): which attempt this is, the wait before it, why, and what the previous
/// attempt got. A first attempt carries none, so the common path inserts nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptContext {
    /// This attempt's number, from 2.
    pub attempt: u32,
    /// The wait before it.
    pub delay: Duration,
    /// Why that wait.
    pub reason: DelayReason,
    /// The previous attempt's class: the reason for the retry.
    pub after: Class,
}

/// Why the retry layer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// The last answer is not retryable (by class, `x-should-retry`, or the caller's overrides).
    NotRetryable,
    /// `max_attempts` attempts were made.
    AttemptsExhausted,
    /// The request body cannot be sent again.
    BodyNotReplayable(NotReplayable),
    /// The server asked for a longer wait than the cap allows.
    ServerDelayOverCap(Duration),
    /// The next wait would pass `max_retry_time`.
    RetryTimeExhausted,
    /// The next wait would pass the overall deadline.
    Deadline,
    /// The shared retry budget is spent (the service is failing for many callers).
    BudgetExhausted,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GaveUp::NotRetryable => f.write_str("not retryable"),
            GaveUp::AttemptsExhausted => f.write_str("no attempts left"),
            GaveUp::BodyNotReplayable(r) => write!(f, "{r}"),
            GaveUp::ServerDelayOverCap(d) => write!(
                f,
                "the server asked to wait {d:?}, over the cap: not waiting"
            ),
            GaveUp::RetryTimeExhausted => f.write_str("the retry time limit would be passed"),
            GaveUp::Deadline => f.write_str("the overall deadline would be passed"),
            GaveUp::BudgetExhausted => f.write_str("the retry budget is exhausted"),
        }
    }
}

/// Why a body cannot be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReplayable {
    /// It was larger than the replay bound, so it was not kept.
    OverCap {
        /// The bound.
        cap: usize,
    },
    /// Reading it failed, so what was sent is not known to be whole.
    ReadFailed,
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReplayable::OverCap { cap } => {
                write!(
                    f,
                    "not retried: the request body is larger than the {cap}-byte replay bound, so it was sent once"
                )
            }
            NotReplayable::ReadFailed => {
                f.write_str("not retried: reading the request body failed")
            }
        }
    }
}
