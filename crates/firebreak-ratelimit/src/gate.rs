//! The per-process part of a key's gate: an adaptive concurrency limit over a fair (FIFO)
//! semaphore, the wait queue's bound, and the counters metrics read.

use crate::config::GateConfig;
use crate::store::{GateKey, RateStore, Reserve};
use firebreak_classify::{Class, Error};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The metric names the gate records (documented with the others in `firebreak-observe`).
pub mod metric_names {
    /// Time a request waited in the gate, in ms, by `reason` (`concurrency`, `pacing`,
    /// `cooldown`): only requests that waited.
    pub const GATE_WAIT_MS: &str = "firebreak_gate_wait_ms";
    /// The adaptive concurrency limit, summed over keys.
    pub const GATE_LIMIT: &str = "firebreak_gate_concurrency_limit";
    /// Requests waiting to be admitted, summed over keys.
    pub const GATE_QUEUE: &str = "firebreak_gate_queue_length";
}

/// Why a request waited in the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitReason {
    /// For a free slot under the concurrency limit.
    Concurrency = 0,
    /// For its paced send slot.
    Pacing = 1,
    /// For a fleet-wide cooldown after a 429 to end.
    Cooldown = 2,
}

impl WaitReason {
    fn label(self) -> &'static str {
        match self {
            WaitReason::Concurrency => "concurrency",
            WaitReason::Pacing => "pacing",
            WaitReason::Cooldown => "cooldown",
        }
    }
}

/// The gate's metric handles, registered with the current recorder when the layer is built
/// (see `firebreak-observe` for why up front). All no-ops when no recorder is installed.
#[derive(Debug, Clone)]
pub(crate) struct GateMetrics {
    wait: [metrics::Histogram; 3],
    limit: metrics::Gauge,
    queue: metrics::Gauge,
}

impl GateMetrics {
    pub(crate) fn register() -> Self {
        use metric_names::*;
        metrics::describe_histogram!(
            GATE_WAIT_MS,
            metrics::Unit::Milliseconds,
            "Time a request waited in the 429 gate before being sent, by reason"
        );
        metrics::describe_gauge!(
            GATE_LIMIT,
            metrics::Unit::Count,
            "The 429 gate's adaptive concurrency limit, summed over keys"
        );
        metrics::describe_gauge!(
            GATE_QUEUE,
            metrics::Unit::Count,
            "Requests waiting in the 429 gate, summed over keys"
        );
        GateMetrics {
            wait: [
                WaitReason::Concurrency,
                WaitReason::Pacing,
                WaitReason::Cooldown,
            ]
            .map(|r| metrics::histogram!(GATE_WAIT_MS, "reason" => r.label())),
            limit: metrics::gauge!(GATE_LIMIT),
            queue: metrics::gauge!(GATE_QUEUE),
        }
    }
}

#[derive(Debug)]
struct Limit {
    limit: u32,
    slow_start: bool,
    successes: u32,
    /// When the limit was last lowered: refusals of requests sent before then are already
    /// accounted for (one decrease per round trip, as TCP does).
    last_decrease: Option<Instant>,
}

/// A key's local gate.
#[derive(Debug)]
pub(crate) struct LocalGate {
    pub(crate) key: GateKey,
    sem: Arc<Semaphore>,
    limit: Mutex<Limit>,
    /// Permits still to remove after a decrease (taken back as they are released). Changed
    /// under the `limit` lock when the limit moves; a release only needs the atomic, so the
    /// common release (no debt) takes no lock.
    debt: AtomicU32,
    pub(crate) in_flight: AtomicU32,
    pub(crate) waiting: AtomicUsize,
    pub(crate) waited_ns: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) admitted: AtomicU64,
    metrics: GateMetrics,
}

/// Held while a request is in flight (until its response body ends).
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<LocalGate>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = self.permit.take() {
            let paid = self
                .gate
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
            if paid.is_ok() {
                p.forget();
            }
        }
    }
}

/// Decrements the waiting count when the wait ends, however it ends.
struct Waiting<'a>(&'a LocalGate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queue.decrement(1.0);
    }
}

impl LocalGate {
    pub(crate) fn new(key: GateKey, cfg: &GateConfig, metrics: GateMetrics) -> Self {
        metrics.limit.increment(f64::from(cfg.initial_concurrency));
        LocalGate {
            key,
            sem: Arc::new(Semaphore::new(cfg.initial_concurrency as usize)),
            limit: Mutex::new(Limit {
                limit: cfg.initial_concurrency,
                slow_start: true,
                successes: 0,
                last_decrease: None,
            }),
            debt: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            waited_ns: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.lock().unwrap_or_else(|e| e.into_inner()).limit
    }

    fn grant(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> (Permit, u32) {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.admitted.fetch_add(1, Ordering::Relaxed);
        (
            Permit {
                gate: self.clone(),
                permit: Some(permit),
            },
            n,
        )
    }

    fn throttled(&self, wait: Option<Duration>, why: &str) -> Error {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let mut e = Error::new(Class::Throttled).with_detail(why.to_string());
        if let Some(w) = wait {
            e = e.with_retry_after(w);
        }
        e
    }

    /// Admits at once if a permit is free and no wait is needed: the common case costs no
    /// allocation and no timer.
    pub(crate) fn try_admit<S: RateStore>(
        self: &Arc<Self>,
        store: &S,
        tokens: u32,
        now: Instant,
    ) -> Option<(Permit, u32)> {
        if self.waiting.load(Ordering::Acquire) > 0 {
            return None; // FIFO: do not overtake waiters.
        }
        // A cooldown shows as a send slot after `now`: `reserve` refuses it below.
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        match store.reserve(self.key, now, tokens, Some(now)) {
            Reserve::At(t) if t <= now => Some(self.grant(permit)),
            _ => None,
        }
    }

    /// Waits, first in line for a permit (FIFO), then for a send slot; fails at once when the
    /// slot is after the deadline, and at the deadline when no permit came.
    pub(crate) async fn admit<S: RateStore>(
        self: Arc<Self>,
        store: Arc<S>,
        cfg_max_queue: usize,
        tokens: u32,
        deadline: Option<Instant>,
    ) -> Result<(Permit, u32), Error> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= cfg_max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.throttled(None, "not sent: the rate-limit queue is full"));
        }
        self.metrics.queue.increment(1.0);
        let _waiting = Waiting(&self);
        let t0 = Instant::now();
        let mut reason = WaitReason::Concurrency;
        let acquire = self.sem.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => match tokio::time::timeout_at(d, acquire).await {
                Ok(p) => p,
                Err(_) => {
                    return Err(
                        self.throttled(None, "not sent: no capacity freed up before the deadline")
                    );
                }
            },
            None => acquire.await,
        }
        .map_err(|_| self.throttled(None, "not sent: the gate was closed"))?;
        // Bounded: a wait is only redone when a new cooldown started while sleeping.
        for _ in 0..8 {
            let now = Instant::now();
            match store.reserve(self.key, now, tokens, deadline) {
                Reserve::Refused { wait } => {
                    return Err(self.throttled(
                        Some(wait),
                        &format!(
                            "not sent: the next send slot is {wait:?} away, after the deadline"
                        ),
                    ));
                }
                Reserve::At(t) if t <= now => break,
                Reserve::At(t) => {
                    reason = if store.cooldown_until(self.key, now).is_some() {
                        WaitReason::Cooldown
                    } else if reason == WaitReason::Cooldown {
                        reason
                    } else {
                        WaitReason::Pacing
                    };
                    tokio::time::sleep_until(t).await;
                    let now = Instant::now();
                    if store.cooldown_until(self.key, now).is_none() {
                        break;
                    }
                }
            }
        }
        let waited = t0.elapsed();
        self.waited_ns.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !waited.is_zero() {
            let ms = waited.as_secs_f64() * 1000.0;
            self.metrics.wait[reason as usize].record(ms);
            // The attempt span (firebreak-observe's, when it is in the stack) is current here.
            let span = tracing::Span::current();
            span.record("gate_wait_ms", ms);
            span.record("gate_wait_reason", reason.label());
        }
        Ok(self.grant(permit))
    }

    /// Adapts the concurrency limit to one answer.
    pub(crate) fn observe(
        &self,
        class: Class,
        capacity_signal: bool,
        in_flight_at_send: u32,
        sent_at: Instant,
        cfg: &GateConfig,
    ) {
        let mut l = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        if class.is_success() {
            l.successes += 1;
            let step = if l.slow_start {
                l.limit
            } else {
                l.limit.saturating_mul(cfg.increase_after)
            };
            if l.successes >= step && l.limit < cfg.max_concurrency {
                l.successes = 0;
                let grow = if l.slow_start { l.limit } else { 1 };
                let new = (l.limit + grow).min(cfg.max_concurrency);
                let added = new - l.limit;
                l.limit = new;
                self.metrics.limit.increment(f64::from(added));
                let repaid = self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                        Some(d - added.min(d))
                    })
                    .map_or(0, |d| added.min(d));
                self.sem.add_permits((added - repaid) as usize);
            }
        } else if capacity_signal {
            // A refusal says something about capacity only when this client was using a good
            // part of its window (a refusal with 1 of 8 in flight is a transient fault, not a
            // limit), and only once per round trip: requests sent before the last decrease saw
            // the old limit.
            let stale = l.last_decrease.is_some_and(|t| sent_at <= t);
            if stale || in_flight_at_send.saturating_mul(2) < l.limit {
                return;
            }
            // The server refused with `in_flight_at_send` in flight: its capacity is below that.
            // Aim under it, so the next probe above capacity is a few round trips away.
            l.last_decrease = Some(Instant::now());
            l.slow_start = false;
            l.successes = 0;
            let estimate =
                (f64::from(in_flight_at_send.saturating_sub(1).max(1)) * cfg.decrease) as u32;
            let new = estimate
                .clamp(cfg.min_concurrency, cfg.max_concurrency)
                .min(l.limit);
            if new < l.limit {
                let remove = l.limit - new;
                l.limit = new;
                self.metrics.limit.decrement(f64::from(remove));
                let forgotten = self.sem.forget_permits(remove as usize) as u32;
                self.debt.fetch_add(remove - forgotten, Ordering::AcqRel);
            }
        }
    }
}
