//! [`GateLayer`]: the gates of every key, shared by every clone, and their snapshot.

use crate::Model;
use crate::gate::Gate;
use crate::gate::config::{GateConfig, GateConfigError};
use crate::gate::fleet::{Fleet, FleetInbox};
use crate::gate::key::{GateKey, KeyBy};
use crate::gate::state::{GateMetrics, LocalGate};
use crate::gate::store::{Answer, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tower::Layer;

/// What a key's gate looks like right now: for metrics and dashboards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSnapshot {
    /// The adaptive concurrency limit.
    pub concurrency_limit: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests waiting to be admitted.
    pub queue_len: usize,
    /// The pacing rate in requests per second, when one is known.
    pub rate_per_sec: Option<f64>,
    /// Time left in a fleet-wide cooldown.
    pub cooldown_remaining: Duration,
    /// Total time requests spent waiting in the gate.
    pub waited: Duration,
    /// Requests refused without being sent (queue full, or no slot before the deadline).
    pub refused: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Time before a key whose quota is exhausted lets a call through to recheck.
    pub quota_recheck_in: Duration,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: Arc<GateConfig>,
    pub(crate) key_by: KeyBy,
    /// The hash of the credential used when a request carries no `Authorization`.
    pub(crate) fallback: AtomicU64,
    pub(crate) store: Arc<Store>,
    pub(crate) gates: RwLock<nohash_hasher::IntMap<GateKey, Arc<LocalGate>>>,
    pub(crate) metrics: GateMetrics,
    pub(crate) epoch: Instant,
}

impl Shared {
    pub(crate) fn gate(&self, key: GateKey, now: Instant, model: Option<&Model>) -> Arc<LocalGate> {
        let stamp =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        if let Some(g) = self
            .gates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            g.last_used.store(stamp, Ordering::Relaxed);
            return g.clone();
        }
        let mut gates = self.gates.write().unwrap_or_else(|e| e.into_inner());
        if !gates.contains_key(&key) && gates.len() >= self.cfg.max_keys {
            self.evict(&mut gates);
        }
        let g = gates
            .entry(key)
            .or_insert_with(|| {
                // A per-(key, model) gate knows its model: its kind can come from the id.
                let model = model.filter(|_| matches!(self.key_by, KeyBy::ApiKeyAndModel));
                Arc::new(LocalGate::new(
                    key,
                    &self.cfg,
                    self.metrics.clone(),
                    now,
                    model,
                ))
            })
            .clone();
        g.last_used.store(stamp, Ordering::Relaxed);
        g
    }

    /// Evicts idle gates, least recently used first: an eighth of the map (at least one), so
    /// that the scan is paid once per many new keys. A gate in use is never evicted; when all
    /// are in use the map grows past `max_keys` until some are idle.
    fn evict(&self, gates: &mut nohash_hasher::IntMap<GateKey, Arc<LocalGate>>) {
        let mut idle: Vec<(u64, GateKey)> = gates
            .iter()
            .filter(|(_, g)| g.is_idle())
            .map(|(k, g)| (g.last_used.load(Ordering::Relaxed), *k))
            .collect();
        idle.sort_unstable_by_key(|(t, k)| (*t, k.raw()));
        let n = (gates.len() / 8).max(1).min(idle.len());
        for (_, k) in idle.into_iter().take(n) {
            if let Some(g) = gates.remove(&k) {
                g.retire();
                self.store.forget(k);
                self.metrics.evictions.increment(1);
            }
        }
    }

    /// Learns from one finished attempt: the shared rate state, then the local window.
    pub(crate) fn learn(&self, gate: &LocalGate, key: GateKey, obs: Answer) {
        let learned = self.store.learn(key, &obs, Instant::now());
        if learned.noise {
            // A refusal the server's recent successes contradict: its request's alone.
            return;
        }
        gate.learn(
            obs.signal(&self.cfg),
            learned.fleet,
            obs.in_flight_at_send,
            obs.sent_at,
            &self.cfg,
        );
    }
}

/// The 429 gate: see the [module docs](crate::gate). Clones share every gate.
#[derive(Debug)]
pub struct GateLayer {
    shared: Arc<Shared>,
}

impl Clone for GateLayer {
    fn clone(&self) -> Self {
        GateLayer {
            shared: self.shared.clone(),
        }
    }
}

impl GateLayer {
    /// A gate with `cfg`, keyed by `key_by`, keeping its state in this process.
    ///
    /// # Errors
    /// [`GateConfigError`] when `cfg` does not validate.
    pub fn new(cfg: GateConfig, key_by: KeyBy) -> Result<Self, GateConfigError> {
        cfg.validate()?;
        let store = Store::new(cfg.clone());
        Ok(Self::with_store(cfg, key_by, store))
    }

    /// A gate that shares its fleet-wide state with other processes through `fleet` (see
    /// [`Fleet`]): each process paces at its share of a stated or configured account rate, and
    /// a cooldown or an exhausted quota one of them sees holds the others too.
    ///
    /// # Errors
    /// [`GateConfigError`] when `cfg` does not validate.
    pub fn with_fleet(
        cfg: GateConfig,
        key_by: KeyBy,
        fleet: Arc<dyn Fleet>,
    ) -> Result<Self, GateConfigError> {
        cfg.validate()?;
        let store = Store::with_fleet(cfg.clone(), fleet.clone());
        let layer = Self::with_store(cfg, key_by, store);
        let sink: Arc<dyn crate::gate::fleet::FleetSink> = layer.shared.store.clone();
        fleet.attach(FleetInbox {
            sink: Arc::downgrade(&sink),
        });
        Ok(layer)
    }

    /// The credential [`KeyBy::ApiKeyAndModel`] uses for requests that carry no
    /// `Authorization` header (an auth layer below the gate adds it): the header value that
    /// layer sends. Only its hash is kept.
    pub fn fallback_credential(self, header_value: &[u8]) -> Self {
        self.shared
            .fallback
            .store(xxhash_rust::xxh3::xxh3_64(header_value), Ordering::Relaxed);
        self
    }

    /// A gate whose shared rate and cooldown state lives in `store`. `cfg` is assumed valid.
    fn with_store(cfg: GateConfig, key_by: KeyBy, store: Store) -> Self {
        GateLayer {
            shared: Arc::new(Shared {
                cfg: Arc::new(cfg),
                key_by,
                fallback: AtomicU64::new(0),
                store: Arc::new(store),
                gates: RwLock::new(nohash_hasher::IntMap::default()),
                metrics: GateMetrics::register(),
                epoch: Instant::now(),
            }),
        }
    }

    /// The settings.
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn config(&self) -> &GateConfig {
        &self.shared.cfg
    }

    /// How requests are grouped into gates.
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn key_by(&self) -> &KeyBy {
        &self.shared.key_by
    }

    /// Whether a fleet-wide cooldown or a quota hold is on for any key now: a router moves a
    /// call on to another target rather than waiting it out.
    #[cfg_attr(not(feature = "route"), allow(dead_code))]
    pub(crate) fn holding(&self) -> bool {
        let now = Instant::now();
        let gates = self.shared.gates.read().unwrap_or_else(|e| e.into_inner());
        gates.keys().any(|k| {
            self.shared
                .store
                .cooldown_until(*k, now)
                .is_some_and(|t| t > now)
                || self.shared.store.quota_recheck_in(*k, now).is_some()
        })
    }

    /// The state of every gate, by key.
    pub fn snapshot(&self) -> Vec<(GateKey, GateSnapshot)> {
        let now = Instant::now();
        let gates: Vec<_> = self
            .shared
            .gates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        gates
            .into_iter()
            .map(|g| {
                let r = self.shared.store.snapshot(g.key, now);
                (
                    g.key,
                    GateSnapshot {
                        concurrency_limit: g.limit(),
                        in_flight: g.in_flight.load(Ordering::Acquire),
                        queue_len: g.waiting.load(Ordering::Acquire),
                        rate_per_sec: r.and_then(|r| r.rate_per_sec),
                        cooldown_remaining: r.map_or(Duration::ZERO, |r| r.cooldown_remaining),
                        waited: Duration::from_nanos(g.waited_ns.load(Ordering::Relaxed)),
                        refused: g.refused.load(Ordering::Relaxed),
                        admitted: g.admitted.load(Ordering::Relaxed),
                        quota_recheck_in: r.map_or(Duration::ZERO, |r| r.quota_recheck_in),
                    },
                )
            })
            .collect()
    }
}

impl<Svc> Layer<Svc> for GateLayer {
    type Service = Gate<Svc>;
    fn layer(&self, inner: Svc) -> Gate<Svc> {
        Gate::new(inner, self.shared.clone())
    }
}
