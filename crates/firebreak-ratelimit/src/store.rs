//! The rate and cooldown state shared by everyone using a key, behind [`RateStore`], so that a
//! distributed store can replace the in-process one without changing the layer.

use crate::config::{GateConfig, HeaderUnit};
use firebreak_classify::{Class, RateLimitHeaders};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

const MEASURE_WINDOW: Duration = Duration::from_secs(2);

/// Which gate a request belongs to: a hash, so that no API key is ever kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GateKey(pub u64);

// Already a hash: maps keyed by it skip hashing it again.
impl nohash_hasher::IsEnabled for GateKey {}

/// What one answer told the gate.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// The answer's class.
    pub class: Class,
    /// A usable server-requested delay.
    pub retry_after: Option<Duration>,
    /// The `x-ratelimit-*` headers, if any.
    pub rate_limit: Option<RateLimitHeaders>,
    /// Requests this process had in flight on the key when this one was sent (itself included).
    pub in_flight_at_send: u32,
}

/// A send slot, or why none can be had in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Send at this instant (now, or later when pacing or cooling down).
    At(Instant),
    /// The first free slot is after the caller's deadline; it would have to wait this long.
    Refused {
        /// How long until a slot.
        wait: Duration,
    },
}

/// What a gate knows right now, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSnapshot {
    /// The pacing rate in requests per second, when one is known.
    pub rate_per_sec: Option<f64>,
    /// Time left in a fleet-wide cooldown.
    pub cooldown_remaining: Duration,
    /// Whether header limits are read per second (else per minute).
    pub per_second_headers: bool,
}

/// The shared part of the gate: pacing and cooldown, per key. Implementations must be cheap
/// and must not block: they are called on every attempt.
pub trait RateStore: Send + Sync + 'static {
    /// Reserves the next send slot for `key` at or after `now`, counting `tokens` against any
    /// token cap. Returns [`Reserve::Refused`] (reserving nothing) when the slot would be after
    /// `latest`.
    fn reserve(&self, key: GateKey, now: Instant, tokens: u32, latest: Option<Instant>) -> Reserve;
    /// When the current fleet-wide cooldown ends, if one is on.
    fn cooldown_until(&self, key: GateKey, now: Instant) -> Option<Instant>;
    /// Learns from one answer.
    fn observe(&self, key: GateKey, obs: &Observation, now: Instant);
    /// The state, for metrics.
    fn snapshot(&self, key: GateKey, now: Instant) -> Option<RateSnapshot>;
}

#[derive(Debug)]
struct KeyRate {
    header_rate: Option<f64>,
    header_limit: Option<u64>,
    per_second: bool,
    aimd_rate: Option<f64>,
    next_free: Instant,
    tokens_next_free: Instant,
    cooldown_until: Instant,
    last_decrease: Option<Instant>,
    last_429: Option<Instant>,
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
            header_limit: None,
            per_second,
            aimd_rate: None,
            next_free: now,
            tokens_next_free: now,
            cooldown_until: now,
            last_decrease: None,
            last_429: None,
            win_start: now,
            win_count: 0,
            sampled: None,
        }
    }

    fn rate(&self, static_rate: Option<f64>) -> Option<f64> {
        [self.header_rate, self.aimd_rate, static_rate]
            .into_iter()
            .flatten()
            .reduce(f64::min)
    }

    /// Requests per second admitted over the last full window.
    fn measured(&self) -> Option<f64> {
        self.sampled
    }

    fn count_admission(&mut self, at: Instant) {
        self.win_count += 1;
        let elapsed = at.saturating_duration_since(self.win_start);
        if elapsed >= MEASURE_WINDOW {
            self.sampled = Some(f64::from(self.win_count) / elapsed.as_secs_f64());
            self.win_start = at;
            self.win_count = 0;
        }
    }
}

/// The in-process [`RateStore`]: one small mutex per key behind a read-mostly map, so keys do
/// not contend with each other.
#[derive(Debug)]
pub struct InProcessStore {
    cfg: GateConfig,
    keys: RwLock<nohash_hasher::IntMap<GateKey, Mutex<KeyRate>>>,
}

impl InProcessStore {
    /// A store for `cfg`.
    pub fn new(cfg: GateConfig) -> Self {
        InProcessStore {
            cfg,
            keys: RwLock::new(nohash_hasher::IntMap::default()),
        }
    }

    /// Runs `f` on `k`'s state, under the read lock of the map and the key's own mutex (keys
    /// do not contend with each other; the map is written only when a key is first seen).
    fn with_key<R>(&self, k: GateKey, now: Instant, f: impl FnOnce(&mut KeyRate) -> R) -> R {
        {
            let map = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = map.get(&k) {
                return f(&mut m.lock().unwrap_or_else(|e| e.into_inner()));
            }
        }
        let per_second = self.cfg.header_unit == HeaderUnit::PerSecond;
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

impl RateStore for InProcessStore {
    fn reserve(&self, key: GateKey, now: Instant, tokens: u32, latest: Option<Instant>) -> Reserve {
        self.with_key(key, now, |s| self.reserve_in(s, now, tokens, latest))
    }

    fn cooldown_until(&self, key: GateKey, now: Instant) -> Option<Instant> {
        self.with_key(key, now, |s| {
            (s.cooldown_until > now).then_some(s.cooldown_until)
        })
    }

    fn observe(&self, key: GateKey, obs: &Observation, now: Instant) {
        self.with_key(key, now, |s| self.observe_in(s, obs, now));
    }

    fn snapshot(&self, key: GateKey, now: Instant) -> Option<RateSnapshot> {
        let map = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let s = map.get(&key)?.lock().unwrap_or_else(|e| e.into_inner());
        Some(RateSnapshot {
            rate_per_sec: s.rate(self.static_rate()),
            cooldown_remaining: s.cooldown_until.saturating_duration_since(now),
            per_second_headers: s.per_second,
        })
    }
}

impl InProcessStore {
    fn reserve_in(
        &self,
        s: &mut KeyRate,
        now: Instant,
        tokens: u32,
        latest: Option<Instant>,
    ) -> Reserve {
        let start = now
            .max(s.next_free)
            .max(s.cooldown_until)
            .max(s.tokens_next_free);
        if let Some(l) = latest {
            if start > l {
                return Reserve::Refused { wait: start - now };
            }
        }
        if let Some(r) = s.rate(self.static_rate()) {
            s.next_free = start + Duration::from_secs_f64(1.0 / r);
        }
        if let Some(tpm) = self.cfg.tokens_per_minute {
            let per_sec = f64::from(tpm) / 60.0;
            s.tokens_next_free = start.max(s.tokens_next_free)
                + Duration::from_secs_f64(f64::from(tokens) / per_sec);
        }
        s.count_admission(start);
        Reserve::At(start)
    }

    fn observe_in(&self, s: &mut KeyRate, obs: &Observation, now: Instant) {
        let cfg = &self.cfg;
        // Learn the limit from the headers, when they make sense.
        if let Some(h) = &obs.rate_limit {
            if !h.is_consistent() {
                tracing::debug!(?h, "ignoring contradictory x-ratelimit headers");
            } else if let Some(limit) = h.limit_requests {
                if cfg.header_unit == HeaderUnit::Detect && !s.per_second {
                    // More than the per-minute reading allows, for a while, with no 429: per second.
                    let per_min = limit as f64 / 60.0;
                    let quiet = s
                        .last_429
                        .is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(10));
                    if quiet
                        && s.measured().is_some_and(|m| m > per_min * 1.5)
                        && obs.class.is_success()
                    {
                        tracing::debug!(limit, "x-ratelimit-limit-requests reads as per second");
                        s.per_second = true;
                    }
                }
                let per_sec = if s.per_second {
                    limit as f64
                } else {
                    limit as f64 / 60.0
                };
                s.header_rate = Some((per_sec * cfg.headroom).max(0.01));
                s.header_limit = Some(limit);
                // Nothing left now: hold the next send for one interval.
                if h.remaining_requests == Some(0) {
                    let gap = Duration::from_secs_f64(1.0 / per_sec.max(0.01));
                    s.next_free = s.next_free.max(now + gap);
                }
            }
            if h.malformed {
                tracing::debug!("ignoring malformed x-ratelimit headers");
            }
        }
        match obs.class {
            Class::Success => {
                // Follow a growing limit slowly: 1% per success while nothing is rejected.
                if let Some(r) = s.aimd_rate.as_mut() {
                    *r *= 1.01;
                }
            }
            Class::RateLimited => {
                s.last_429 = Some(now);
                if let Some(d) = obs.retry_after {
                    let until = now + d.min(cfg.max_cooldown);
                    s.cooldown_until = s.cooldown_until.max(until);
                }
                // A 429 without rate-limit headers while the headers of other answers state a
                // request limit we are pacing inside is not that limit refusing us (a token or
                // capacity limit, or noise): it does not lower the request rate. The layer
                // treats it as a capacity signal instead.
                let explained = obs.rate_limit.is_some() || s.header_rate.is_none();
                // One decrease per congestion event (a second), from what was actually admitted.
                let debounced = s
                    .last_decrease
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
                if explained && !debounced {
                    let current = s.rate(self.static_rate()).or(s.measured());
                    if let Some(c) = current {
                        let base = s.measured().map_or(c, |m| m.min(c));
                        s.aimd_rate = Some((base * cfg.decrease).max(0.01));
                        s.last_decrease = Some(now);
                    }
                }
            }
            Class::Overloaded => {
                if let Some(d) = obs.retry_after {
                    let until = now + d.min(cfg.max_cooldown);
                    s.cooldown_until = s.cooldown_until.max(until);
                }
            }
            _ => {}
        }
    }
}
