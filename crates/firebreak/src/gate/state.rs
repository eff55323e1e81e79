//! The per-process part of a key's gate: an adaptive concurrency limit over a fair (FIFO)
//! semaphore, the wait queue's bound, and the counters metrics read.

use crate::gate::config::GateConfig;
use crate::gate::key::GateKey;
use crate::gate::store::{Reserve, Signal, Store};
use crate::{Class, Error, TargetKind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
/// (see the observe module for why up front). All no-ops when no recorder is installed.
#[derive(Debug, Clone)]
pub(crate) struct GateMetrics {
    wait: [metrics::Histogram; 3],
    limit: metrics::Gauge,
    queue: metrics::Gauge,
    pub(crate) evictions: metrics::Counter,
}

impl GateMetrics {
    pub(crate) fn register() -> Self {
        use crate::names::*;
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
        metrics::describe_counter!(
            GATE_EVICTIONS,
            metrics::Unit::Count,
            "Idle keys the 429 gate evicted to stay within max_keys"
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
            evictions: metrics::counter!(GATE_EVICTIONS),
        }
    }
}

#[derive(Debug)]
struct Limit {
    limit: u32,
    /// Before any evidence: the window doubles by the clock from here.
    ramp_from: Option<Instant>,
    /// The last fleet-wide evidence, and the window right after it: the window grows back by the
    /// clock from there and is back at the maximum `recovery` later.
    evidence: Option<(Instant, u32)>,
    successes: u32,
    /// The fewest in flight at which a capacity refusal was sent since the last decrease: the
    /// best bound on the capacity there is.
    refused_at_min: u32,
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
    /// Whether the window still changes with the clock (ramping, or recovering): only then does
    /// an admission take the `limit` lock.
    growing: AtomicBool,
    /// Permits still to remove after a decrease (taken back as they are released). Changed
    /// under the `limit` lock when the limit moves; a release only needs the atomic, so the
    /// common release (no debt) takes no lock.
    debt: AtomicU32,
    pub(crate) in_flight: AtomicU32,
    pub(crate) waiting: AtomicUsize,
    pub(crate) waited_ns: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) admitted: AtomicU64,
    /// Nanoseconds since the layer's epoch at the last use (for eviction).
    pub(crate) last_used: AtomicU64,
    metrics: GateMetrics,
    /// Where the key's model runs: the gate's `kind`, or, for a per-(key, model) gate left at
    /// `Auto`, what the model id says.
    pub(crate) kind: TargetKind,
    /// The key's model id, when the gate is per (key, model): named in the capacity advice.
    model: Option<Arc<str>>,
    advice: Mutex<AdviceState>,
}

/// Capacity refusals within this window that make "keeps refusing".
const ADVICE_WINDOW: Duration = Duration::from_secs(10);
/// Refusals within [`ADVICE_WINDOW`] that make "keeps refusing".
const ADVICE_AFTER: u32 = 3;
/// Time without a capacity refusal that ends an episode (the advice is given again after it).
const ADVICE_QUIET: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct AdviceState {
    window_start: Option<Instant>,
    count: u32,
    last: Option<Instant>,
    advised: bool,
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

/// A send slot reserved in the store and not used yet: given back if the waiter goes away
/// (cancelled, or timed out) before its time.
struct Reservation<'a> {
    store: &'a Store,
    key: GateKey,
    slot: Instant,
    tokens: u32,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store
                .release(self.key, self.slot, self.tokens, Instant::now());
        }
    }
}

impl LocalGate {
    /// A dedicated key's answer of class `class` arrived: counts capacity refusals, and logs
    /// the advice once per episode (three within 10 s; an episode ends after 60 s without).
    fn note_capacity(&self, class: Class, now: Instant) {
        if self.kind != TargetKind::Dedicated
            || !matches!(class, Class::RateLimited | Class::Overloaded)
        {
            return;
        }
        let warn = {
            let mut a = self.advice.lock().unwrap_or_else(|e| e.into_inner());
            if a.last
                .is_some_and(|l| now.saturating_duration_since(l) > ADVICE_QUIET)
            {
                a.advised = false;
            }
            if a.window_start
                .is_none_or(|w| now.saturating_duration_since(w) > ADVICE_WINDOW)
            {
                a.window_start = Some(now);
                a.count = 0;
            }
            a.count += 1;
            a.last = Some(now);
            let warn = a.count >= ADVICE_AFTER && !a.advised;
            a.advised |= warn;
            warn
        };
        if warn {
            tracing::warn!("{}", self.advice_text());
        }
    }

    /// Counts a capacity refusal of class `class` and, while this dedicated key keeps
    /// refusing, the advice to attach to it.
    pub(crate) fn advice_for(&self, class: Class) -> Option<CapacityAdvice> {
        if self.kind != TargetKind::Dedicated
            || !matches!(class, Class::RateLimited | Class::Overloaded)
        {
            return None;
        }
        let now = Instant::now();
        self.note_capacity(class, now);
        self.advising(now)
    }

    /// The advice, while this dedicated key keeps refusing for capacity.
    fn advising(&self, now: Instant) -> Option<CapacityAdvice> {
        let a = self.advice.lock().unwrap_or_else(|e| e.into_inner());
        let on = a.advised
            && a.last
                .is_some_and(|l| now.saturating_duration_since(l) <= ADVICE_QUIET);
        drop(a);
        on.then(|| CapacityAdvice(self.advice_text().into()))
    }

    fn advice_text(&self) -> String {
        // A deployment named after `#` ends with its id; `deployedModels/…` names none.
        let id = self
            .model
            .as_deref()
            .map(|m| match crate::Model(m.into()).deployment() {
                Some(d) => d.rsplit('/').next().unwrap_or(m).to_owned(),
                None => m.to_owned(),
            });
        match id {
            Some(id) => format!(
                "dedicated deployment {id} keeps refusing for capacity: raise its replica count or autoscaling limits (`firectl deployment update {id}`)"
            ),
            None => "a dedicated deployment keeps refusing for capacity: raise its replica count or autoscaling limits (`firectl deployment update <deployment id>`)".to_owned(),
        }
    }

    pub(crate) fn new(
        key: GateKey,
        cfg: &GateConfig,
        metrics: GateMetrics,
        now: Instant,
        model: Option<&crate::Model>,
    ) -> Self {
        let ramping = cfg.initial_concurrency < cfg.max_concurrency;
        metrics.limit.increment(f64::from(cfg.initial_concurrency));
        LocalGate {
            key,
            sem: Arc::new(Semaphore::new(cfg.initial_concurrency as usize)),
            limit: Mutex::new(Limit {
                limit: cfg.initial_concurrency,
                ramp_from: ramping.then_some(now),
                evidence: None,
                successes: 0,
                refused_at_min: u32::MAX,
                last_decrease: None,
            }),
            growing: AtomicBool::new(ramping),
            debt: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            waited_ns: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            kind: model.map_or(cfg.kind, |m| cfg.kind.resolve(&m.0)),
            model: model.map(|m| m.0.clone()),
            advice: Mutex::new(AdviceState::default()),
            last_used: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.lock().unwrap_or_else(|e| e.into_inner()).limit
    }

    /// Whether nothing is in flight or waiting (the gate may be evicted).
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.waiting.load(Ordering::Acquire) == 0
    }

    /// Gives the gauge back its share when the gate is evicted.
    pub(crate) fn retire(&self) {
        self.metrics.limit.decrement(f64::from(self.limit()));
    }

    /// Moves the limit to `new`, adding permits or taking them back (as they are released).
    fn set_limit(&self, l: &mut Limit, new: u32) {
        if new > l.limit {
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
        } else if new < l.limit {
            let remove = l.limit - new;
            l.limit = new;
            self.metrics.limit.decrement(f64::from(remove));
            let forgotten = self.sem.forget_permits(remove as usize) as u32;
            self.debt.fetch_add(remove - forgotten, Ordering::AcqRel);
        }
    }

    /// Applies the growth that time alone brings (the ramp, or the recovery after evidence);
    /// returns when to look again, if the window may still grow by the clock.
    fn grow_by_clock(&self, l: &mut Limit, now: Instant, cfg: &GateConfig) -> Option<Instant> {
        let (target, next) = if let Some(from) = l.ramp_from {
            let steps = (now.saturating_duration_since(from).as_nanos()
                / cfg.ramp_interval.as_nanos().max(1))
            .min(32) as u32;
            let t = u64::from(cfg.initial_concurrency) << steps;
            let t = t.min(u64::from(cfg.max_concurrency)) as u32;
            if t >= cfg.max_concurrency {
                l.ramp_from = None;
                (t, None)
            } else {
                (t, Some(from + cfg.ramp_interval * (steps + 1)))
            }
        } else if let Some((at, floor)) = l.evidence {
            let quiet = now.saturating_duration_since(at);
            let step = cfg.recovery / 6;
            if quiet >= cfg.recovery {
                l.evidence = None;
                (cfg.max_concurrency, None)
            } else if quiet <= step {
                (l.limit, Some(at + step))
            } else {
                // Doubling every `step` once the key has been quiet for one.
                let k = (quiet - step).as_secs_f64() / step.as_secs_f64();
                let t = (f64::from(floor) * k.exp2()).min(f64::from(cfg.max_concurrency)) as u32;
                (t, Some(now + (step / 8).max(Duration::from_millis(10))))
            }
        } else {
            (l.limit, None)
        };
        if target > l.limit {
            self.set_limit(l, target);
        }
        self.growing.store(next.is_some(), Ordering::Release);
        next
    }

    /// The clock's growth, when it may apply; when to look again.
    fn grow(&self, now: Instant, cfg: &GateConfig) -> Option<Instant> {
        if !self.growing.load(Ordering::Acquire) {
            return None;
        }
        let mut l = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        self.grow_by_clock(&mut l, now, cfg)
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

    fn refuse(&self, wait: Option<Duration>, why: &str) -> Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut e = Error::new(Class::GateRefused).with_detail(why.to_owned());
        if let Some(w) = wait {
            e = e.with_retry_after(w);
        }
        e
    }

    fn quota_refusal(&self, recheck_in: Duration) -> Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Error::new(Class::GateRefused)
            .with_quota_exhausted()
            .with_detail(format!(
                "a call on this key was just answered quota exhausted: add credits or raise the spending limit; the next call goes through in {recheck_in:.0?}"
            ))
    }

    /// Admits at once if a permit is free and no wait is needed: the common case costs no
    /// allocation and no timer.
    pub(crate) fn try_admit(
        self: &Arc<Self>,
        store: &Store,
        tokens: u32,
        now: Instant,
        cfg: &GateConfig,
    ) -> Option<(Permit, u32)> {
        if self.waiting.load(Ordering::Acquire) > 0 {
            // FIFO: do not overtake waiters. Equivalent to what follows without it (the audit's
            // mutant 9), kept to make the order obvious and to spare a store lookup: (a) tokio's
            // semaphore is fair, so a permit released while anyone is queued goes to the head of
            // the queue, never to `try_acquire`, and a waiter keeps its place while the window
            // grows (its acquire future stays pinned); (b) a waiter that holds a permit and
            // sleeps for its send slot has reserved that slot, so a newcomer's
            // `reserve(latest = now)` is refused until it has passed (pacing or cooldown).
            return None;
        }
        self.grow(now, cfg);
        // A cooldown shows as a send slot after `now`: `reserve` refuses it below.
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        match store.reserve(self.key, now, tokens, Some(now)) {
            Reserve::At(t) if t <= now => Some(self.grant(permit)),
            _ => None,
        }
    }

    /// Waits, first in line for a permit (FIFO), then for a send slot; fails at once when the
    /// slot is after the deadline or the key's quota is spent, and at the deadline when no
    /// permit came.
    pub(crate) async fn admit(
        self: Arc<Self>,
        store: Arc<Store>,
        cfg: Arc<GateConfig>,
        tokens: u32,
        deadline: Option<Instant>,
    ) -> Result<(Permit, u32), Error> {
        if let Some(recheck_in) = store.quota_recheck_in(self.key, Instant::now()) {
            return Err(self.quota_refusal(recheck_in));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= cfg.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(None, "not sent: the rate-limit queue is full"));
        }
        self.metrics.queue.increment(1.0);
        let _waiting = Waiting(&self);
        let t0 = Instant::now();
        let permit = self.acquire(&cfg, deadline).await?;
        let reason = self.wait_for_slot(&store, tokens, deadline).await?;
        let waited = t0.elapsed();
        self.waited_ns.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !waited.is_zero() {
            let ms = waited.as_secs_f64() * 1000.0;
            self.metrics.wait[reason as usize].record(ms);
            // The attempt span (the observe module's, when it is in the stack) is current here.
            let span = tracing::Span::current();
            span.record(crate::names::GATE_WAIT_MS_FIELD, ms);
            span.record(crate::names::GATE_WAIT_REASON_FIELD, reason.label());
        }
        Ok(self.grant(permit))
    }

    /// A place in the window, first in line (FIFO); fails at the deadline when none came.
    async fn acquire(
        &self,
        cfg: &GateConfig,
        deadline: Option<Instant>,
    ) -> Result<OwnedSemaphorePermit, Error> {
        // One acquire future for the whole wait, so the place in line is kept while the
        // window grows by the clock underneath it.
        let mut acquire = std::pin::pin!(self.sem.clone().acquire_owned());
        let mut permit = None;
        // Bounded: each turn ends with a permit, an error, or a clock step of the window
        // (the ramp has at most 32 steps; recovery ends after `recovery`).
        for _ in 0..4096 {
            let wake = self.grow(Instant::now(), cfg);
            let until = match (wake, deadline) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, d) => w.or(d),
            };
            let got = match until {
                Some(u) => tokio::time::timeout_at(u, &mut acquire).await.ok(),
                None => Some(acquire.as_mut().await),
            };
            match got {
                Some(p) => {
                    permit =
                        Some(p.map_err(|_| self.refuse(None, "not sent: the gate was closed"))?);
                    break;
                }
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(
                        self.refuse(None, "not sent: no capacity freed up before the deadline")
                    );
                }
                None => {}
            }
        }
        permit.ok_or_else(|| self.refuse(None, "not sent: no capacity freed up"))
    }

    /// Waits for the key's next send slot (pace, cooldown); fails at once when it is after
    /// the deadline or the key's quota is spent. Says what the wait was for.
    async fn wait_for_slot(
        &self,
        store: &Store,
        tokens: u32,
        deadline: Option<Instant>,
    ) -> Result<WaitReason, Error> {
        let mut reason = WaitReason::Concurrency;
        // Bounded: a wait is only redone when a new cooldown started while sleeping.
        for _ in 0..8 {
            let now = Instant::now();
            match store.reserve(self.key, now, tokens, deadline) {
                Reserve::Refused { wait } => {
                    return Err(self.refuse(
                        Some(wait),
                        &format!(
                            "not sent: the next send slot is {wait:?} away, after the deadline"
                        ),
                    ));
                }
                Reserve::QuotaExhausted { recheck_in } => {
                    return Err(self.quota_refusal(recheck_in));
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
                    let mut held = Reservation {
                        store,
                        key: self.key,
                        slot: t,
                        tokens,
                        armed: true,
                    };
                    tokio::time::sleep_until(t).await;
                    held.armed = false;
                    let now = Instant::now();
                    if store.cooldown_until(self.key, now).is_none() {
                        break;
                    }
                }
            }
        }
        Ok(reason)
    }

    /// Adapts the concurrency window to one answer. `fleet` says whether the store found it
    /// completes fleet-wide capacity evidence.
    pub(crate) fn learn(
        &self,
        signal: Signal,
        fleet: bool,
        in_flight_at_send: u32,
        sent_at: Instant,
        cfg: &GateConfig,
    ) {
        let now = Instant::now();
        match signal {
            Signal::None => {
                if !self.growing.load(Ordering::Acquire) {
                    return; // No evidence, or fully recovered: nothing to learn.
                }
                let mut l = self.limit.lock().unwrap_or_else(|e| e.into_inner());
                if l.evidence.is_none() {
                    return;
                }
                // After evidence: one more every `increase_after` round trips of successes.
                l.successes += 1;
                if l.successes >= l.limit.saturating_mul(cfg.increase_after)
                    && l.limit < cfg.max_concurrency
                {
                    l.successes = 0;
                    let new = l.limit + 1;
                    self.set_limit(&mut l, new);
                }
            }
            Signal::Gate => {
                // A rate limit is paced by the store; here it only ends the ramp, and the window
                // recovers with time like after any other evidence.
                let mut l = self.limit.lock().unwrap_or_else(|e| e.into_inner());
                l.ramp_from = None;
                l.evidence = Some((now, l.limit));
                self.growing.store(true, Ordering::Release);
            }
            Signal::Capacity => {
                let mut l = self.limit.lock().unwrap_or_else(|e| e.into_inner());
                // Before fleet-wide evidence, one request's refusal changes nothing for the
                // others. After it, a refusal says something about capacity only when this
                // client was using a good part of its window, and only once per round trip
                // (requests sent before the last decrease saw the old limit).
                let stale = l.last_decrease.is_some_and(|t| sent_at <= t);
                if !stale {
                    l.refused_at_min = l.refused_at_min.min(in_flight_at_send);
                }
                let engaged = l.evidence.is_some();
                if !fleet && !engaged {
                    return;
                }
                if stale || (!fleet && in_flight_at_send.saturating_mul(2) < l.limit) {
                    return;
                }
                // The server refused with `in_flight_at_send` in flight: its capacity is below
                // that. Aim under it, so the next probe above capacity is a few round trips away.
                l.last_decrease = Some(now);
                l.ramp_from = None;
                l.successes = 0;
                let at = l.refused_at_min.min(in_flight_at_send);
                l.refused_at_min = u32::MAX;
                let estimate = (f64::from(at.saturating_sub(1).max(1)) * cfg.decrease) as u32;
                let new = estimate
                    .clamp(cfg.min_concurrency, cfg.max_concurrency)
                    .min(l.limit);
                self.set_limit(&mut l, new);
                l.evidence = Some((now, l.limit));
                self.growing.store(true, Ordering::Release);
            }
            Signal::Quota => {}
        }
    }
}

/// What to do about a dedicated deployment that keeps refusing for capacity (three 429s or
/// 503s within 10 s), in one line naming the deployment: on the responses of the attempts it
/// refuses while it keeps refusing (an extension; `firebreak proxy` sends it as the
/// `firebreak-advice` header), in the detail of such an error, and once per episode (until
/// 60 s pass without a refusal) as a WARN event. Only for a dedicated key (see
/// [`GateConfig::kind`](crate::gate::GateConfig::kind)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityAdvice(pub Arc<str>);
