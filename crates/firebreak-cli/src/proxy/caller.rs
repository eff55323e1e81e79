//! What the caller says about its call: its preset, and how long it will wait. Pure functions of
//! the request head, so they are property-tested without a server.
//!
//! # The caller-deadline rule
//! A caller that states how long it waits must get an answer (a success, or an OpenAI-shaped
//! error) before it gives up, and a hung attempt must be abandoned early enough that a retry
//! still fits:
//!
//! - `x-stainless-read-timeout` (openai-python) and `x-stainless-timeout` (openai-node) say how
//!   long the SDK waits for the response head; for a stream, openai-python also waits that long
//!   between two chunks. Call the smaller one the caller's head budget `B`.
//! - `x-firebreak-timeout` is a whole-call deadline, body included, in seconds.
//! - A safety margin of `B / 10`, between 50 ms and 1 s, is kept back for the network and for
//!   the caller's own clock: the proxy's head budget is `H = B − margin`.
//! - Each attempt may wait at most `H / 2` for its head (and first SSE event), so that after a
//!   hung first attempt a second one still fits. (A head timeout is retried; the attempt total
//!   is left to the deadline.)
//! - A non-streaming call's head comes with its whole answer, so its overall deadline is also
//!   at most `H`. A stream's idle gap is at most `H`, since the SDK gives up after that too.
//! - Caller values only ever shorten the preset's limits; they never lengthen them.

use firebreak::timeout::AttemptTimeouts;
use firebreak::{timeout::TimeoutConfig, timeout::Workload};
use http::HeaderMap;
use std::time::Duration;

/// Names the caller's preset for one request: `interactive`, `agentic`, `long-context` or
/// `batch-submit`.
pub(crate) const PRESET_HEADER: &str = "x-firebreak-preset";
/// The caller's whole-call deadline, in seconds (fractions allowed), body included.
pub(crate) const TIMEOUT_HEADER: &str = "x-firebreak-timeout";
const STAINLESS_READ: &str = "x-stainless-read-timeout";
const STAINLESS_TOTAL: &str = "x-stainless-timeout";
const STAINLESS_RETRIES: &str = "x-stainless-retry-count";

/// A request header the proxy cannot act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallerError {
    /// `x-firebreak-preset` names no preset.
    UnknownPreset(String),
    /// `x-firebreak-timeout` is not a number of seconds in (0, 86400].
    BadTimeout(String),
}

impl std::fmt::Display for CallerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerError::UnknownPreset(v) => write!(
                f,
                "{PRESET_HEADER} {v:?} is not a preset: use interactive, agentic, long-context or batch-submit"
            ),
            CallerError::BadTimeout(v) => write!(
                f,
                "{TIMEOUT_HEADER} {v:?} is not a number of seconds in (0, 86400]"
            ),
        }
    }
}

/// Parses a preset name as the CLI and the header spell it.
pub(crate) fn parse_preset(s: &str) -> Option<Workload> {
    match s.trim().to_ascii_lowercase().as_str() {
        "interactive" => Some(Workload::Interactive),
        "agentic" => Some(Workload::Agentic),
        "long-context" | "long_context" => Some(Workload::LongContext),
        "batch-submit" | "batch_submit" => Some(Workload::BatchSubmit),
        _ => None,
    }
}

/// Seconds as the SDKs send them ("3", "3.0", "600"), within (0, 86400].
fn seconds(v: &str) -> Option<Duration> {
    let x: f64 = v.trim().parse().ok()?;
    (x.is_finite() && x > 0.0 && x <= 86_400.0).then(|| Duration::from_secs_f64(x))
}

/// What the request's headers say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CallerLimits {
    /// The preset it asks for, if any.
    pub(crate) preset: Option<Workload>,
    /// How long the caller waits for the response head (`B` in the module docs).
    pub(crate) head: Option<Duration>,
    /// Its whole-call deadline.
    pub(crate) total: Option<Duration>,
    /// The SDK's own retry count for this request (`x-stainless-retry-count`).
    pub(crate) sdk_retry: Option<u32>,
}

impl CallerLimits {
    /// Reads the headers. A bad `x-firebreak-*` header is an error (it is ours, and the caller
    /// meant something by it); a malformed SDK header is ignored, since the SDK wrote it.
    pub(crate) fn from_headers(h: &HeaderMap) -> Result<CallerLimits, CallerError> {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let preset = match h.get(PRESET_HEADER) {
            None => None,
            Some(v) => {
                let s = v.to_str().unwrap_or("");
                Some(parse_preset(s).ok_or_else(|| CallerError::UnknownPreset(s.into()))?)
            }
        };
        let total = match h.get(TIMEOUT_HEADER) {
            None => None,
            Some(v) => {
                let s = v.to_str().unwrap_or("");
                Some(seconds(s).ok_or_else(|| CallerError::BadTimeout(s.into()))?)
            }
        };
        let head = [STAINLESS_READ, STAINLESS_TOTAL]
            .into_iter()
            .filter_map(|n| text(n).and_then(seconds))
            .min();
        let sdk_retry = text(STAINLESS_RETRIES).and_then(|v| v.trim().parse().ok());
        Ok(CallerLimits {
            preset,
            head,
            total,
            sdk_retry,
        })
    }
}

/// The margin kept back from a caller's budget.
pub(crate) fn margin(budget: Duration) -> Duration {
    (budget / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The shortest per-attempt timer the rule hands out.
const FLOOR: Duration = Duration::from_millis(10);

/// What one request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per-attempt timers.
    pub(crate) attempt: AttemptTimeouts,
    /// The overall deadline, from the start of the call.
    pub(crate) deadline: Option<Duration>,
    /// The time within which the proxy must send its head (the caller's `H`).
    pub(crate) head: Option<Duration>,
}

/// Sizes a request's timers from its preset and what the caller said (the module docs' rule).
pub(crate) fn plan(preset: &TimeoutConfig, caller: &CallerLimits, stream: bool) -> Plan {
    let mut a = AttemptTimeouts::from(preset);
    if stream {
        // A stream's head comes before generation: wait for it no longer than for its first
        // event (the preset's long `headers` is for a non-streaming call's whole generation).
        a.headers = min_opt(a.headers, a.first_event);
    }
    let mut deadline = min_opt(preset.deadline, caller.total);
    let head = caller.head.map(|b| b.saturating_sub(margin(b)).max(FLOOR));
    if let Some(h) = head {
        let half = (h / 2).max(FLOOR);
        a.headers = min_opt(a.headers, Some(half));
        a.first_event = min_opt(a.first_event, Some(half));
        if stream {
            a.idle = min_opt(a.idle, Some(h));
        } else {
            deadline = min_opt(deadline, Some(h));
        }
    }
    if let Some(d) = deadline {
        a.attempt = min_opt(a.attempt, Some(d));
    }
    Plan {
        attempt: a,
        deadline,
        head,
    }
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_sdk_headers_and_ours_are_read() {
        let c = CallerLimits::from_headers(&headers(&[
            ("x-stainless-read-timeout", "3.0"),
            ("x-stainless-timeout", "5"),
            ("x-stainless-retry-count", "2"),
            ("x-firebreak-timeout", "7.5"),
            ("x-firebreak-preset", "Long-Context"),
        ]))
        .unwrap();
        assert_eq!(
            c.head,
            Some(Duration::from_secs(3)),
            "the smaller SDK value"
        );
        assert_eq!(c.total, Some(Duration::from_millis(7500)));
        assert_eq!(c.sdk_retry, Some(2));
        assert_eq!(c.preset, Some(Workload::LongContext));
    }

    #[test]
    fn bad_values_of_our_headers_are_errors_and_bad_sdk_values_are_ignored() {
        for bad in ["0", "-1", "abc", "NaN", "inf", "86401"] {
            let e = CallerLimits::from_headers(&headers(&[("x-firebreak-timeout", bad)]));
            assert_eq!(e, Err(CallerError::BadTimeout(bad.into())), "{bad}");
            let ok = CallerLimits::from_headers(&headers(&[("x-stainless-read-timeout", bad)]));
            assert_eq!(ok.unwrap().head, None, "{bad}");
        }
        let e = CallerLimits::from_headers(&headers(&[("x-firebreak-preset", "fast")]));
        assert!(e.unwrap_err().to_string().contains("interactive, agentic"));
    }

    #[test]
    fn three_seconds_and_a_hung_first_attempt_leave_room_for_a_retry() {
        let preset = TimeoutConfig::preset(Workload::Interactive);
        let caller = CallerLimits {
            head: Some(Duration::from_secs(3)),
            ..CallerLimits::default()
        };
        let p = plan(&preset, &caller, false);
        assert_eq!(p.head, Some(Duration::from_millis(2700)));
        assert_eq!(p.deadline, Some(Duration::from_millis(2700)));
        assert_eq!(p.attempt.headers, Some(Duration::from_millis(1350)));
        assert_eq!(
            p.attempt.attempt,
            Some(Duration::from_millis(2700)),
            "the deadline's"
        );
        // A stream keeps its overall deadline: only its head and its gaps are bounded.
        let s = plan(&preset, &caller, true);
        assert_eq!(s.deadline, preset.deadline);
        assert_eq!(s.attempt.idle, Some(Duration::from_millis(2700)));
    }

    #[test]
    fn a_non_streaming_agentic_call_may_wait_15_minutes_for_its_head() {
        let preset = TimeoutConfig::preset(Workload::Agentic);
        let p = plan(&preset, &CallerLimits::default(), false);
        assert_eq!(p.attempt.headers, Some(Duration::from_secs(900)));
        let s = plan(&preset, &CallerLimits::default(), true);
        assert_eq!(
            s.attempt.headers, preset.first_event,
            "a stream's head is quick"
        );
    }

    proptest! {
        #[test]
        fn caller_values_only_ever_shorten_and_two_attempts_fit(
            head_ms in proptest::option::of(1u64..10_000_000),
            total_ms in proptest::option::of(1u64..10_000_000),
            stream in any::<bool>(),
            w in 0usize..4,
        ) {
            let w = [Workload::Interactive, Workload::Agentic, Workload::LongContext, Workload::BatchSubmit][w];
            let preset = TimeoutConfig::preset(w);
            let caller = CallerLimits {
                head: head_ms.map(Duration::from_millis),
                total: total_ms.map(Duration::from_millis),
                ..CallerLimits::default()
            };
            let p = plan(&preset, &caller, stream);
            let base = plan(&preset, &CallerLimits::default(), stream);
            prop_assert!(p.deadline <= base.deadline);
            prop_assert!(p.attempt.headers <= base.attempt.headers);
            prop_assert!(p.attempt.idle <= base.attempt.idle);
            prop_assert!(p.attempt.attempt <= base.attempt.attempt);
            if let Some(h) = p.head {
                let b = caller.head.unwrap();
                prop_assert!(h < b || h == FLOOR, "the head budget ends before the caller's");
                let per = p.attempt.headers.unwrap();
                prop_assert!(per * 2 <= h.max(FLOOR * 2), "two attempts fit: {per:?} vs {h:?}");
            }
            if let (Some(t), Some(d)) = (caller.total, p.deadline) {
                prop_assert!(d <= t);
            }
        }
    }
}
