//! The rate, cooldown and quota state shared by every clone of the layer, per key: pacing,
//! cooldowns and quota holds. Cheap and non-blocking: it is called on every attempt. Other
//! processes take part only through the [`Fleet`] seam.

use crate::gate::config::{GateConfig, HeaderUnit};
use crate::gate::fleet::{Fleet, FleetEvent};
use crate::gate::key::GateKey;
use crate::parse::ratelimit::RateLimitHeaders;
use crate::{Class, TargetKind};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

const MEASURE_WINDOW: Duration = Duration::from_secs(2);
/// After a cooldown with no known rate, waiters are released this far apart…
const RELEASE_SPACING: Duration = Duration::from_millis(20);
/// …for this long after it ends (at most 50 of them); later ones go at once.
const RELEASE_RAMP: Duration = Duration::from_secs(1);
/// Successes remembered per key to tell a capacity refusal from noise.
const SERVED: usize = 8;

/// Capacity refusals further apart than this never add up to fleet-wide evidence.
const SIGNAL_WINDOW: Duration = Duration::from_secs(2);

/// What kind of evidence one answer is (see the gate module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Signal {
    /// Nothing the fleet should react to: a success, or a fault of this request alone (a hang,
    /// a timeout, a reset, a 5xx other than 503, a stream stall).
    None,
    /// A 429 that is an account or model rate limit (it carries `x-ratelimit-*` headers, or
    /// its body says "rate limit"): fleet-wide on its own.
    Gate,
    /// A 503 "overloaded", or a 429 that is not a rate limit ("capacity exceeded" on a dedicated
    /// deployment): fleet-wide only once several requests in flight together get one.
    Capacity,
    /// The account's quota, spending limit or billing is exhausted.
    Quota,
}

/// What one answer told the gate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// The answer's class.
    pub(crate) class: Class,
    /// A usable server-requested delay.
    pub(crate) retry_after: Option<Duration>,
    /// The `x-ratelimit-*` headers, if any.
    pub(crate) rate_limit: Option<RateLimitHeaders>,
    /// Whether the error body names a rate limit (`RATE_LIMIT_EXCEEDED`, "rate limit …").
    pub(crate) rate_limit_body: bool,
    /// The server's prefill queueing time, read from a dedicated target's answers.
    pub(crate) queue: Option<Duration>,
    /// Where the key's model runs (the gate's `kind`, or read from the key's model id).
    pub(crate) kind: TargetKind,
    /// Requests this process had in flight on the key when this one was sent (itself included).
    pub(crate) in_flight_at_send: u32,
    /// When the attempt was sent.
    pub(crate) sent_at: Instant,
}

impl Answer {
    /// The kind of evidence this answer is, from a target of its `kind` ([`TargetKind`]): on a
    /// dedicated deployment every 429 is a capacity refusal, and so is a success that queued
    /// longer than `cfg.queue_target`; on serverless every 429 is a rate limit; otherwise its
    /// headers and body tell.
    pub(crate) fn signal(&self, cfg: &GateConfig) -> Signal {
        match (self.class, self.kind) {
            (Class::Success, TargetKind::Dedicated)
                if self.queue.is_some_and(|q| q > cfg.queue_target) =>
            {
                Signal::Capacity
            }
            (Class::QuotaExhausted, _) => Signal::Quota,
            (Class::RateLimited, TargetKind::Serverless) => Signal::Gate,
            (Class::RateLimited, TargetKind::Auto)
                if self.rate_limit.is_some() || self.rate_limit_body =>
            {
                Signal::Gate
            }
            (Class::RateLimited | Class::Overloaded, _) => Signal::Capacity,
            _ => Signal::None,
        }
    }
}

/// What one answer taught the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Learned {
    /// It completes fleet-wide capacity evidence.
    pub(crate) fleet: bool,
    /// A capacity refusal sent with `n` in flight while `fleet_signals` of the last successes
    /// were sent with `n` or more in flight, within the signal window: the server's capacity
    /// is not below `n`, so the refusal says nothing about it (random load shedding, a
    /// replica's hiccup). It concerns its own request alone.
    pub(crate) noise: bool,
}

/// A send slot, or why none can be had in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Reserve {
    /// Send at this instant (now, or later when pacing or cooling down).
    At(Instant),
    /// The first free slot is after the caller's deadline; it would have to wait this long.
    Refused {
        /// How long until a slot.
        wait: Duration,
    },
    /// The key's quota was found exhausted; nothing is sent until the recheck.
    QuotaExhausted {
        /// Time until the next request is let through to recheck.
        recheck_in: Duration,
    },
}

/// What a gate knows right now, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateSnapshot {
    /// The pacing rate in requests per second, when one is known.
    pub(crate) rate_per_sec: Option<f64>,
    /// Time left in a fleet-wide cooldown.
    pub(crate) cooldown_remaining: Duration,
    /// Whether header limits are read per second (else per minute).
    pub(crate) per_second_headers: bool,
    /// Time left before a key whose quota is exhausted is rechecked.
    pub(crate) quota_recheck_in: Duration,
}

#[derive(Debug)]
struct KeyRate {
    header_rate: Option<f64>,
    per_second: bool,
    aimd_rate: Option<f64>,
    next_free: Instant,
    /// The spacing the last reservation added (to give it back on release).
    last_interval: Duration,
    tokens_next_free: Instant,
    cooldown_until: Instant,
    /// Whether a cooldown was ever set (its end starts a release ramp).
    cooled: bool,
    quota_until: Instant,
    last_decrease: Option<Instant>,
    /// The last fleet-wide throttle (rate-limit 429 or capacity evidence): a learned rate is
    /// forgotten `recovery` after it.
    last_throttle: Option<Instant>,
    /// Capacity refusals in a row whose requests overlapped in time, and when the last came.
    chain: u32,
    chain_last: Option<Instant>,
    /// The last successes: how many requests were in flight when each was sent, and when it
    /// came back (see [`Learned::noise`]); a ring, `served_next` its next slot.
    served: [(u32, Option<Instant>); SERVED],
    served_next: usize,
    /// Admissions counted in the current measuring window (at least 2 s long, so a burst of
    /// near-simultaneous admissions never reads as a high sustained rate).
    win_start: Instant,
    win_count: u32,
    /// The last full window's admission rate, per second.
    sampled: Option<f64>,
}

impl KeyRate {
    fn new(now: Instant, per_second: bool) -> Self {
        KeyRate {
            header_rate: None,
            per_second,
            aimd_rate: None,
            next_free: now,
            last_interval: Duration::ZERO,
            tokens_next_free: now,
            cooldown_until: now,
            cooled: false,
            quota_until: now,
            last_decrease: None,
            last_throttle: None,
            chain: 0,
            chain_last: None,
            served: [(0, None); SERVED],
            served_next: 0,
            win_start: now,
            win_count: 0,
            sampled: None,
        }
    }

    fn rate(&self, static_rate: Option<f64>) -> Option<f64> {
        self.rate_shared(static_rate, 1.0)
    }

    /// The pace, with account-wide rates (stated by headers, or configured) cut to this
    /// process's `share` of them; a learned rate is this process's own already.
    fn rate_shared(&self, static_rate: Option<f64>, share: f64) -> Option<f64> {
        [
            self.header_rate.map(|r| r * share),
            self.aimd_rate,
            static_rate.map(|r| r * share),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
    }

    /// Admissions per second lately: the last full window, or the current one (at least 1 s
    /// long) when there is none yet.
    fn recent_rate(&self, now: Instant) -> f64 {
        let cur = f64::from(self.win_count)
            / now
                .saturating_duration_since(self.win_start)
                .as_secs_f64()
                .max(1.0);
        self.sampled.map_or(cur, |s| s.max(cur))
    }

    fn count_admission(&mut self, at: Instant) {
        // A window that spans a cooldown measures the cooldown, not the rate the server took:
        // start it again where the cooldown ended.
        if self.cooled && self.win_start < self.cooldown_until && at >= self.cooldown_until {
            self.win_start = self.cooldown_until;
            self.win_count = 0;
        }
        self.win_count += 1;
        let elapsed = at.saturating_duration_since(self.win_start);
        if elapsed >= MEASURE_WINDOW {
            self.sampled = Some(f64::from(self.win_count) / elapsed.as_secs_f64());
            self.win_start = at;
            self.win_count = 0;
        }
    }

    /// Forgets a learned rate once `recovery` has passed without a throttle.
    fn recover(&mut self, now: Instant, recovery: Duration) {
        if self
            .last_throttle
            .is_some_and(|t| now.saturating_duration_since(t) >= recovery)
        {
            self.last_throttle = None;
            self.aimd_rate = None;
        }
    }
}

/// The shared state: one small mutex per key behind a read-mostly map, so keys do not contend
/// with each other.
#[derive(Debug)]
pub(crate) struct Store {
    cfg: GateConfig,
    keys: RwLock<nohash_hasher::IntMap<GateKey, Mutex<KeyRate>>>,
    fleet: Option<Arc<dyn Fleet>>,
}

impl Store {
    /// A store for `cfg`.
    pub(crate) fn new(cfg: GateConfig) -> Self {
        Store {
            cfg,
            keys: RwLock::new(nohash_hasher::IntMap::default()),
            fleet: None,
        }
    }

    /// A store whose account-wide rates are shared with, and whose fleet-wide evidence is
    /// published to, `fleet`.
    pub(crate) fn with_fleet(cfg: GateConfig, fleet: Arc<dyn Fleet>) -> Self {
        Store {
            fleet: Some(fleet),
            ..Store::new(cfg)
        }
    }
}

impl crate::gate::fleet::FleetSink for Store {
    /// Another process's evidence (see [`FleetInbox`](crate::gate::FleetInbox)).
    fn apply_remote(&self, key: GateKey, event: FleetEvent, now: Instant) {
        self.with_key(key, now, |s| match event {
            FleetEvent::Cooldown(d) if d <= self.cfg.max_cooldown => {
                s.cooldown_until = s.cooldown_until.max(now + d);
                s.cooled = true;
                s.last_throttle = Some(now);
            }
            FleetEvent::QuotaExhausted(d) => {
                s.quota_until = s.quota_until.max(now + d.min(self.cfg.quota_recheck));
            }
            _ => {}
        });
    }
}

impl Store {
    /// This process's share of an account-wide rate on `key`: 1 without a fleet, or with one
    /// that cannot tell (`None`).
    fn share(&self, key: GateKey) -> f64 {
        self.fleet_share(key).unwrap_or(1.0)
    }

    /// The share, `None` when a fleet is attached but cannot tell.
    fn fleet_share(&self, key: GateKey) -> Option<f64> {
        match &self.fleet {
            None => Some(1.0),
            Some(f) => f
                .share(key)
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| s.min(1.0)),
        }
    }

    fn publish(&self, key: GateKey, event: FleetEvent) {
        if let Some(f) = &self.fleet {
            f.publish(key, event);
        }
    }

    /// Runs `f` on `k`'s state, under the read lock of the map and the key's own mutex (keys
    /// do not contend with each other; the map is written only when a key is first seen).
    fn with_key<R>(&self, k: GateKey, now: Instant, f: impl FnOnce(&mut KeyRate) -> R) -> R {
        {
            let map = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = map.get(&k) {
                let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
                s.recover(now, self.cfg.recovery);
                return f(&mut s);
            }
        }
        let per_second = self.cfg.header_unit != HeaderUnit::PerMinute;
        let mut map = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let m = map
            .entry(k)
            .or_insert_with(|| Mutex::new(KeyRate::new(now, per_second)));
        f(m.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    fn static_rate(&self) -> Option<f64> {
        self.cfg.requests_per_minute.map(|r| f64::from(r) / 60.0)
    }
}

impl Store {
    /// Reserves the next send slot for `key` at or after `now`, counting `tokens` against any
    /// token cap. Returns [`Reserve::Refused`] (reserving nothing) when the slot would be after
    /// `latest`, and [`Reserve::QuotaExhausted`] while the key's quota is known to be spent.
    pub(crate) fn reserve(
        &self,
        key: GateKey,
        now: Instant,
        tokens: u32,
        latest: Option<Instant>,
    ) -> Reserve {
        let share = self.share(key);
        self.with_key(key, now, |s| self.reserve_in(s, now, tokens, latest, share))
    }

    /// Gives back a slot reserved at `slot` by [`Store::reserve`] that was never used (its
    /// caller gave up while waiting for it), so that later callers do not wait for it.
    pub(crate) fn release(&self, key: GateKey, slot: Instant, tokens: u32, now: Instant) {
        self.with_key(key, now, |s| {
            // Later reservations keep theirs; the next one starts a slot earlier.
            if s.next_free > now && s.next_free >= slot && !s.last_interval.is_zero() {
                s.next_free = s
                    .next_free
                    .checked_sub(s.last_interval)
                    .unwrap_or(now)
                    .max(now);
            }
            if let Some(tpm) = self.cfg.tokens_per_minute {
                let give = Duration::from_secs_f64(f64::from(tokens) / (f64::from(tpm) / 60.0));
                if s.tokens_next_free > slot {
                    s.tokens_next_free =
                        s.tokens_next_free.checked_sub(give).unwrap_or(now).max(now);
                }
            }
        });
    }

    /// When the current fleet-wide cooldown ends, if one is on.
    pub(crate) fn cooldown_until(&self, key: GateKey, now: Instant) -> Option<Instant> {
        self.with_key(key, now, |s| {
            (s.cooldown_until > now).then_some(s.cooldown_until)
        })
    }

    /// While the key's quota is known to be exhausted: the time until it is rechecked.
    pub(crate) fn quota_recheck_in(&self, key: GateKey, now: Instant) -> Option<Duration> {
        self.with_key(key, now, |s| {
            (s.quota_until > now).then(|| s.quota_until - now)
        })
    }

    /// Learns from one answer: whether it completes fleet-wide capacity evidence
    /// (`fleet_signals` capacity refusals of requests that were in flight together), or is a
    /// capacity refusal that a success contradicts (noise).
    pub(crate) fn learn(&self, key: GateKey, obs: &Answer, now: Instant) -> Learned {
        self.with_key(key, now, |s| self.observe_in(key, s, obs, now))
    }

    /// The state, for metrics.
    pub(crate) fn snapshot(&self, key: GateKey, now: Instant) -> Option<RateSnapshot> {
        let map = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let s = map.get(&key)?.lock().unwrap_or_else(|e| e.into_inner());
        Some(RateSnapshot {
            rate_per_sec: s.rate(self.static_rate()),
            cooldown_remaining: s.cooldown_until.saturating_duration_since(now),
            per_second_headers: s.per_second,
            quota_recheck_in: s.quota_until.saturating_duration_since(now),
        })
    }

    /// Drops `key`'s state (the layer evicted its idle gate).
    pub(crate) fn forget(&self, key: GateKey) {
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

impl Store {
    fn reserve_in(
        &self,
        s: &mut KeyRate,
        now: Instant,
        tokens: u32,
        latest: Option<Instant>,
        share: f64,
    ) -> Reserve {
        if s.quota_until > now {
            return Reserve::QuotaExhausted {
                recheck_in: s.quota_until - now,
            };
        }
        let start = now
            .max(s.next_free)
            .max(s.cooldown_until)
            .max(s.tokens_next_free);
        if let Some(l) = latest {
            if start > l {
                return Reserve::Refused { wait: start - now };
            }
        }
        let rate = s.rate_shared(self.static_rate(), share);
        s.last_interval = match rate {
            Some(r) => Duration::from_secs_f64(1.0 / r),
            // A cooldown with no known rate ends in a bounded ramp, not all at once.
            None if s.cooled && start < s.cooldown_until + RELEASE_RAMP => RELEASE_SPACING,
            None => Duration::ZERO,
        };
        if !s.last_interval.is_zero() {
            s.next_free = start + s.last_interval;
        }
        if let Some(tpm) = self.cfg.tokens_per_minute {
            let per_sec = f64::from(tpm) / 60.0 * share;
            s.tokens_next_free = start.max(s.tokens_next_free)
                + Duration::from_secs_f64(f64::from(tokens) / per_sec);
        }
        s.count_admission(start);
        Reserve::At(start)
    }

    fn cool_down(
        &self,
        key: GateKey,
        s: &mut KeyRate,
        d: Option<Duration>,
        now: Instant,
        what: &str,
    ) {
        let Some(d) = d else { return };
        if d > self.cfg.max_cooldown {
            // One absurd header must not stop everyone: that request fails on its own (the
            // retry layer refuses to wait past its cap) and nobody else waits.
            tracing::debug!(
                delay_ms = d.as_millis() as u64,
                cap_ms = self.cfg.max_cooldown.as_millis() as u64,
                "429 gate: ignored a {what} delay over the cap (not trusted fleet-wide)"
            );
            return;
        }
        s.cooldown_until = s.cooldown_until.max(now + d);
        s.cooled = true;
        self.publish(key, FleetEvent::Cooldown(d));
    }

    fn observe_in(&self, key: GateKey, s: &mut KeyRate, obs: &Answer, now: Instant) -> Learned {
        let cfg = &self.cfg;
        let signal = obs.signal(cfg);
        self.learn_headers(key, s, obs, signal, now);
        match signal {
            Signal::None => {
                // Follow a growing limit slowly: 1% per success while nothing is rejected.
                if obs.class.is_success() {
                    if let Some(r) = s.aimd_rate.as_mut() {
                        *r *= 1.01;
                    }
                    // How many in flight the server still served at, lately.
                    let i = s.served_next;
                    s.served[i] = (obs.in_flight_at_send, Some(now));
                    s.served_next = (i + 1) % SERVED;
                }
                Learned::default()
            }
            Signal::Quota => {
                s.quota_until = now + cfg.quota_recheck;
                self.publish(key, FleetEvent::QuotaExhausted(cfg.quota_recheck));
                tracing::warn!(
                    recheck_s = cfg.quota_recheck.as_secs(),
                    "429 gate: the account's quota or spending limit is exhausted; calls on this key fail fast until the recheck"
                );
                Learned::default()
            }
            Signal::Gate => self.on_rate_limit(key, s, obs, now),
            Signal::Capacity => self.on_capacity(key, s, obs, now),
        }
    }

    /// Learns the limit from the rate-limit headers, when they make sense (a dedicated
    /// deployment has no rate limit: whatever rate headers it sends do not pace it).
    fn learn_headers(
        &self,
        key: GateKey,
        s: &mut KeyRate,
        obs: &Answer,
        signal: Signal,
        now: Instant,
    ) {
        let cfg = &self.cfg;
        if let Some(h) = obs
            .rate_limit
            .as_ref()
            .filter(|_| cfg.kind != TargetKind::Dedicated)
        {
            if !h.is_consistent() {
                tracing::debug!(?h, "429 gate: ignored contradictory x-ratelimit headers");
            } else if let Some(limit) = h.limit_requests.filter(|l| *l > 0) {
                if cfg.header_unit == HeaderUnit::Detect {
                    // Read per second until a rate-limit 429 arrives while this client sent
                    // less than that: then the limit cannot be per second.
                    // The fleet's rate, not this process's: with N processes sharing the
                    // key, this one sends about a 1/N share of what the server sees. A fleet
                    // that cannot tell leaves the reading as it is. Under half the reading,
                    // not just under it: the 60× slower reading must not follow from a share
                    // counted a little wrong (a heartbeat late, a member not yet seen), and a
                    // per-minute limit read per second is far over any real send rate.
                    let below = self
                        .fleet_share(key)
                        .is_some_and(|share| s.recent_rate(now) / share < limit as f64 * 0.5);
                    if s.per_second && signal == Signal::Gate && below {
                        tracing::debug!(
                            limit,
                            "429 gate: x-ratelimit-limit-requests now read per minute (a 429 came below the per-second reading)"
                        );
                        s.per_second = false;
                    } else if !s.per_second && s.last_throttle.is_none() {
                        // Dropped for a throttle that has since been forgotten (`recovery`
                        // without one): test the per-second reading again. Pacing at the
                        // per-minute reading could never show it wrong, and a token limit's 429
                        // must not leave the key at a sixtieth of its request limit for good.
                        tracing::debug!(
                            limit,
                            "429 gate: x-ratelimit-limit-requests read per second again"
                        );
                        s.per_second = true;
                    }
                }
                let per_sec = if s.per_second {
                    limit as f64
                } else {
                    limit as f64 / 60.0
                };
                s.header_rate = Some((per_sec * cfg.headroom).max(0.01));
                // Nothing left now: hold the next send for one interval.
                if h.remaining_requests == Some(0) {
                    let gap = Duration::from_secs_f64(1.0 / per_sec.max(0.01));
                    s.next_free = s.next_free.max(now + gap.min(cfg.max_cooldown));
                }
            }
            if h.malformed {
                tracing::debug!("429 gate: ignored malformed x-ratelimit headers");
            }
        }
    }

    /// A rate-limit 429: its delay cools the key down for the fleet; the pace comes down
    /// where the answer explains it.
    fn on_rate_limit(&self, key: GateKey, s: &mut KeyRate, obs: &Answer, now: Instant) -> Learned {
        let cfg = &self.cfg;
        s.last_throttle = Some(now);
        match obs.retry_after {
            Some(d) => self.cool_down(key, s, Some(d), now, "429"),
            None => {
                // No delay header: a reset header is a pacing hint after a 429, when
                // it says nothing is left (never a retry delay).
                if let Some(h) = obs
                    .rate_limit
                    .filter(|h| h.is_consistent() && h.remaining_requests == Some(0))
                {
                    if let Some(r) = h.reset_requests.filter(|r| *r <= cfg.max_cooldown) {
                        s.next_free = s.next_free.max(now + r);
                    }
                }
            }
        }
        // A 429 without rate-limit headers while the headers of other answers state a
        // limit this client paces inside says nothing about that rate (a token limit,
        // or one request's noise): it does not lower the pace. Nor does one that says
        // when to come back and states no limit: the cooldown is the whole answer, and
        // a pace learned from it would outlast it.
        let explained =
            obs.rate_limit.is_some() || (s.header_rate.is_none() && obs.retry_after.is_none());
        // One decrease per congestion event (a second), from what was actually admitted.
        let debounced = s
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if explained && !debounced {
            let current = s.rate(self.static_rate()).or(s.sampled);
            if let Some(c) = current {
                let base = s.sampled.map_or(c, |m| m.min(c));
                s.aimd_rate = Some((base * cfg.decrease).max(0.01));
                s.last_decrease = Some(now);
            }
        }
        Learned::default()
    }

    /// A capacity refusal: noise when the server's recent successes contradict it, fleet-wide
    /// evidence when enough requests in flight together were refused.
    fn on_capacity(&self, key: GateKey, s: &mut KeyRate, obs: &Answer, now: Instant) -> Learned {
        let cfg = &self.cfg;
        // A refusal at `n` in flight while the server lately served requests sent with
        // `n` or more says nothing about capacity: it is that request's alone. Several
        // of them (`fleet_signals`), not one: the client's count runs a moment ahead of
        // the server's as answers end, so one success just above a real limit happens.
        let contradicting = s
            .served
            .iter()
            .filter(|(n, t)| {
                *n >= obs.in_flight_at_send
                    && t.is_some_and(|t| now.saturating_duration_since(t) < SIGNAL_WINDOW)
            })
            .count();
        let contradicted = contradicting >= cfg.fleet_signals as usize;
        if contradicted {
            tracing::debug!(
                in_flight = obs.in_flight_at_send,
                "429 gate: a capacity refusal at an in-flight count the server just served; it concerns its request alone"
            );
            return Learned {
                fleet: false,
                noise: true,
            };
        }
        // Evidence adds up only across requests that were in flight together: one
        // request's own retries are sent one after another, so they never chain.
        let overlaps = s.chain_last.is_some_and(|last| {
            obs.sent_at <= last && now.saturating_duration_since(last) < SIGNAL_WINDOW
        });
        s.chain = if overlaps { s.chain + 1 } else { 1 };
        s.chain_last = Some(now);
        let fleet = s.chain >= cfg.fleet_signals;
        if fleet {
            s.last_throttle = Some(now);
            self.cool_down(key, s, obs.retry_after, now, "capacity");
        } else if obs.retry_after.is_some() {
            tracing::debug!(
                chain = s.chain,
                "429 gate: one request's capacity refusal; its delay applies to it alone"
            );
        }
        Learned {
            fleet,
            noise: false,
        }
    }
}
