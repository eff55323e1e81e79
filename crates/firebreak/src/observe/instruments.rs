//! [`Observer`]: the metric handles, registered once when it is built.

use crate::Class;
use crate::DelayReason;
use crate::Model;
use crate::names;
use metrics::{Counter, Histogram, Unit};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

const CLASSES: usize = Class::ALL.len();

/// How a call ended.
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
    models: Option<ModelSeries>,
}

/// A model id longer than this (in bytes) is counted under `model="other"`: a label value is
/// kept in every series that carries it, so hostile input must not choose its size.
const MAX_MODEL_LABEL_LEN: usize = 256;

impl Observer {
    /// An observer whose handles belong to the current recorder, without model labels. With
    /// no recorder installed, the handles are no-ops and tracing costs one check per span.
    pub fn new() -> Self {
        Observer::with_model_cap(0)
    }

    /// An observer that labels `firebreak_requests_total` and `firebreak_attempts_total` of a
    /// call carrying a [`Model`] with `model` and `deployment` (see [`Model::deployment`]; empty
    /// for a model that names none), for at most `cap` distinct models: the first `cap` seen
    /// keep their own series, every later one (and any id over 256 bytes)
    /// is counted under `model="other"`. So under any input, even hostile ids through a proxy,
    /// each of those metrics has at most `cap + 1` model values (times the classes). `0` turns
    /// the labels off. Calls without a [`Model`] are counted without these labels.
    ///
    /// A model's series are registered when the model is first seen, with the recorder current
    /// then (the fixed series are registered now): install the exporter globally, as `firebreak
    /// proxy` does, for model labels to reach it.
    ///
    /// ```
    /// let obs = firebreak::observe::Observer::with_model_cap(16);
    /// # let _ = obs;
    /// ```
    pub fn with_model_cap(cap: usize) -> Self {
        describe();
        let per_class = |name: &'static str| {
            std::array::from_fn(|i| {
                let c = Class::ALL[i];
                metrics::counter!(name, "class" => c.label(), "reached_server" => bool_label(c.reached_server()))
            })
        };
        let inner = Instruments {
            requests_success: metrics::counter!(names::CALLS, "outcome" => "success", "class" => "success"),
            requests_failure: std::array::from_fn(|i| {
                let c = Class::ALL[i];
                if c.is_success() {
                    Counter::noop()
                } else {
                    metrics::counter!(names::CALLS, "outcome" => "failure", "class" => c.label())
                }
            }),
            requests_cancelled: metrics::counter!(names::CALLS, "outcome" => "cancelled", "class" => "none"),
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
            models: (cap > 0).then(|| ModelSeries::new(cap)),
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
    /// The series of the call's model, if model labels are on and the request names one.
    pub(crate) fn model_of(&self, ext: &http::Extensions) -> Option<Arc<ModelCounters>> {
        let series = self.models.as_ref()?;
        Some(series.get(ext.get::<Model>()?))
    }

    pub(crate) fn request_done(
        &self,
        outcome: Outcome,
        class: Option<Class>,
        total: Duration,
        model: Option<&ModelCounters>,
    ) {
        match (outcome, model) {
            (Outcome::Success, None) => self.requests_success.increment(1),
            (Outcome::Failure, None) => {
                self.requests_failure[class.unwrap_or(Class::Other).index()].increment(1);
            }
            (Outcome::Cancelled, None) => self.requests_cancelled.increment(1),
            (_, Some(m)) => m.request(outcome, class),
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

    pub(crate) fn attempt_done(
        &self,
        class: Class,
        status: Option<u16>,
        model: Option<&ModelCounters>,
    ) {
        let i = class.index();
        match model {
            None => self.attempts[i].increment(1),
            Some(m) => m.attempt(class),
        }
        self.client_failures[i].increment(1);
        if status == Some(429) {
            self.http_429.increment(1);
        }
    }
}

/// The per-model series: at most `cap` models of their own, then `other`.
struct ModelSeries {
    cap: usize,
    seen: RwLock<HashMap<Arc<str>, Arc<ModelCounters>>>,
    other: Arc<ModelCounters>,
}

impl ModelSeries {
    fn new(cap: usize) -> Self {
        ModelSeries {
            cap,
            seen: RwLock::new(HashMap::new()),
            other: Arc::new(ModelCounters::new("other", "")),
        }
    }

    fn get(&self, m: &Model) -> Arc<ModelCounters> {
        if m.0.len() > MAX_MODEL_LABEL_LEN {
            return self.other.clone();
        }
        // A poisoned lock only means a panic elsewhere while holding it; the map is still whole.
        if let Some(c) = self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&m.0)
        {
            return c.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = seen.get(&m.0) {
            return c.clone();
        }
        if seen.len() >= self.cap {
            return self.other.clone();
        }
        let c = Arc::new(ModelCounters::new(&m.0, m.deployment().unwrap_or("")));
        seen.insert(m.0.clone(), c.clone());
        c
    }
}

/// One model's call and attempt counters, each registered when first used, so that a model
/// adds only the series it has values for.
pub(crate) struct ModelCounters {
    model: metrics::SharedString,
    deployment: metrics::SharedString,
    requests: [OnceLock<Counter>; CLASSES],
    requests_cancelled: OnceLock<Counter>,
    attempts: [OnceLock<Counter>; CLASSES],
}

impl ModelCounters {
    fn new(model: &str, deployment: &str) -> Self {
        ModelCounters {
            model: model.to_owned().into(),
            deployment: deployment.to_owned().into(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            requests_cancelled: OnceLock::new(),
            attempts: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn request(&self, outcome: Outcome, class: Option<Class>) {
        let (outcome_label, class_label, slot) = match outcome {
            Outcome::Cancelled => ("cancelled", "none", &self.requests_cancelled),
            Outcome::Success => ("success", "success", &self.requests[Class::Success.index()]),
            Outcome::Failure => {
                let c = class.unwrap_or(Class::Other);
                ("failure", c.label(), &self.requests[c.index()])
            }
        };
        slot.get_or_init(|| {
            metrics::counter!(names::CALLS, "outcome" => outcome_label, "class" => class_label,
                "model" => self.model.clone(), "deployment" => self.deployment.clone())
        })
        .increment(1);
    }

    fn attempt(&self, class: Class) {
        self.attempts[class.index()]
            .get_or_init(|| {
                metrics::counter!(names::ATTEMPTS, "class" => class.label(),
                    "reached_server" => bool_label(class.reached_server()),
                    "model" => self.model.clone(), "deployment" => self.deployment.clone())
            })
            .increment(1);
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
        names::CALLS,
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
