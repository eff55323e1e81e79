//! [`Observer`]: the metric handles, registered once when it is built.

use crate::Class;
use crate::DelayReason;
use crate::names;
use metrics::{Counter, Histogram, Unit};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const CLASSES: usize = Class::ALL.len();

/// How a logical request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A success answer whose body (if any) was read to its end.
    Success,
    /// An error, a non-success answer, or a body that failed part way.
    Failure,
    /// The caller dropped the future or the body before the end.
    Cancelled,
}

impl Outcome {
    /// The metric label: `success`, `failure` or `cancelled`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The metric handles and the switch. Cheap to clone (one `Arc`).
///
/// Every series is registered with the recorder that is current when the observer is built
/// (the global one, or a local one set with `metrics::with_local_recorder`), so the hot path
/// does no name lookup and no allocation: it increments handles it already holds. **Install
/// the recorder (for example the Prometheus exporter) before building the stack**; an observer
/// built earlier keeps the no-op handles. Because every series exists from the start at zero,
/// `rate()` works from the first scrape, and the set of series is fixed: label cardinality is
/// bounded by [`Class::ALL`], never by request ids or URLs.
#[derive(Clone)]
pub struct Observer {
    pub(crate) inner: Option<Arc<Instruments>>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

pub(crate) struct Instruments {
    requests_success: Counter,
    requests_failure: [Counter; CLASSES],
    requests_cancelled: Counter,
    attempts: [Counter; CLASSES],
    retries: [Counter; CLASSES],
    http_429: Counter,
    client_failures: [Counter; CLASSES],
    ttfb: Histogram,
    latency: [Histogram; 3],
    backoff: [Histogram; 2],
}

impl Observer {
    /// An observer whose handles belong to the current recorder. With no recorder installed,
    /// the handles are no-ops and tracing costs one check per span.
    pub fn new() -> Self {
        describe();
        let per_class = |name: &'static str| {
            std::array::from_fn(|i| {
                let c = Class::ALL[i];
                metrics::counter!(name, "class" => c.label(), "reached_server" => bool_label(c.reached_server()))
            })
        };
        let inner = Instruments {
            requests_success: metrics::counter!(names::REQUESTS, "outcome" => "success", "class" => "success"),
            requests_failure: std::array::from_fn(|i| {
                let c = Class::ALL[i];
                if c.is_success() {
                    Counter::noop()
                } else {
                    metrics::counter!(names::REQUESTS, "outcome" => "failure", "class" => c.label())
                }
            }),
            requests_cancelled: metrics::counter!(names::REQUESTS, "outcome" => "cancelled", "class" => "none"),
            attempts: per_class(names::ATTEMPTS),
            retries: std::array::from_fn(|i| {
                let c = Class::ALL[i];
                if c.is_success() {
                    Counter::noop()
                } else {
                    metrics::counter!(names::RETRIES, "reason" => c.label())
                }
            }),
            http_429: metrics::counter!(names::HTTP_429),
            client_failures: std::array::from_fn(|i| match Class::ALL[i].client_side_kind() {
                Some(kind) => metrics::counter!(names::CLIENT_FAILURES, "kind" => kind),
                None => Counter::noop(),
            }),
            ttfb: metrics::histogram!(names::FIRST_BYTE_MS),
            latency: [Outcome::Success, Outcome::Failure, Outcome::Cancelled]
                .map(|o| metrics::histogram!(names::OVERALL_MS, "outcome" => o.label())),
            backoff: [DelayReason::Backoff, DelayReason::Server]
                .map(|r| metrics::histogram!(names::BACKOFF_MS, "reason" => r.label())),
        };
        Observer {
            inner: Some(Arc::new(inner)),
        }
    }

    /// An observer that does nothing: no spans, no metrics, no clock reads. The layers become
    /// pass-throughs.
    pub fn disabled() -> Self {
        Observer { inner: None }
    }
}

impl Instruments {
    pub(crate) fn request_done(&self, outcome: Outcome, class: Option<Class>, total: Duration) {
        match outcome {
            Outcome::Success => self.requests_success.increment(1),
            Outcome::Failure => {
                self.requests_failure[class.unwrap_or(Class::Other).index()].increment(1);
            }
            Outcome::Cancelled => self.requests_cancelled.increment(1),
        }
        self.latency[outcome.index()].record(ms(total));
    }

    pub(crate) fn first_byte(&self, after: Duration) {
        self.ttfb.record(ms(after));
    }

    pub(crate) fn retry(&self, after: Class, reason: DelayReason, slept: Duration) {
        self.retries[after.index()].increment(1);
        let i = match reason {
            DelayReason::Server => 1,
            _ => 0,
        };
        self.backoff[i].record(ms(slept));
    }

    pub(crate) fn attempt_done(&self, class: Class, status: Option<u16>) {
        let i = class.index();
        self.attempts[i].increment(1);
        self.client_failures[i].increment(1);
        if status == Some(429) {
            self.http_429.increment(1);
        }
    }
}

/// Milliseconds, as Fireworks' own latency metrics use.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bool_label(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        names::REQUESTS,
        Unit::Count,
        "Logical requests (all attempts of one call), by outcome and final class"
    );
    describe_counter!(
        names::ATTEMPTS,
        Unit::Count,
        "Attempts, by class; reached_server=false ones never reach the provider's dashboard"
    );
    describe_counter!(
        names::RETRIES,
        Unit::Count,
        "Retries, by the class of the answer that caused them"
    );
    describe_counter!(names::HTTP_429, Unit::Count, "429 answers received");
    describe_counter!(
        names::CLIENT_FAILURES,
        Unit::Count,
        "Attempts that failed before reaching the server, by kind"
    );
    describe_histogram!(
        names::FIRST_BYTE_MS,
        Unit::Milliseconds,
        "Time from the call to the first body byte reaching the caller, retries included"
    );
    describe_histogram!(
        names::OVERALL_MS,
        Unit::Milliseconds,
        "Time from the call to the end of the response body (or the error)"
    );
    describe_histogram!(
        names::BACKOFF_MS,
        Unit::Milliseconds,
        "Time slept before a retry, by reason (backoff or server-requested)"
    );
}
