//! One Fireworks account limit shared by many processes.
//!
//! Fireworks limits an account (per model), not a process. Eight replicas of a service, or a
//! batch spread over sixteen workers, each with its own 429 gate, each learn the limit alone,
//! each earn their own 429s, and together pace at N times the limit. [`RedisFleet`] links their
//! gates through Redis as a [`firebreak::gate::Fleet`] (what a fleet shares, and what stays
//! local, is in firebreak's architecture, "Where shared state lives"): `N` below is the number
//! of processes that used the same gate key (API key and model, hashed) lately.
//!
//! - **Nothing waits for Redis.** The request path reads memory; a background task does every
//!   round trip. When Redis is unreachable, slow (over [`RedisConfig::command_timeout`]) or
//!   restarted, each process falls back to its local gate, counts the fallback and logs one
//!   WARN, reconnects with backoff, and shares again once Redis answers (one INFO). No request
//!   fails, waits, is lost or is sent twice because of Redis.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use firebreak::{FireworksClient, Stack};
//! use firebreak_redis::RedisConfig;
//!
//! let stack = firebreak_redis::shared(Stack::interactive(), RedisConfig::new("redis://127.0.0.1:6379"))?;
//! let client = FireworksClient::from_env(stack)?;
//! # let _ = client; Ok(()) }
//! ```
//!
//! # Consistency
//!
//! Let `r` be the account rate the gate paces to (the stated limit × `headroom`), `H` the
//! [`heartbeat`](RedisConfig::heartbeat), `T` the [`member_ttl`](RedisConfig::member_ttl) and
//! `N` the processes using the key. Every process renews two memberships each `H`: the fleet's
//! (all its processes) and each key's it used in the last
//! [`active_for`](RedisConfig::active_for).
//!
//! - **Steady membership:** every process has read `N` within `H`, so together they pace at
//!   `N · r/N = r`: never over the limit.
//! - **A key's first `T`:** a process that starts using a key paces at `1 / F` of its rate, `F`
//!   being the fleet's processes (every one of them might be using it), until it has renewed
//!   the key's membership for `T`, by when every process using the key has registered. Then
//!   `1 / N` (`N ≤ F`). Counting never lets the fleet over `r`.
//! - **`k` processes join:** a newcomer registers in the fleet at start and paces at
//!   `r / (N + k)` at most; the others keep `r / N` for at most `H`. For that `H` the fleet
//!   paces at most at `r · (1 + k / (N + 1))`, then at `r` again. A process that leaves is
//!   counted for `T` (the others pace lower meanwhile, never higher).
//! - **Redis unreachable:** each process paces at `r` alone, so up to `N · r`: this is the
//!   fail-open, counted in `firebreak_redis_fallbacks_total`.
//!
//! A 429's cooldown reaches the other processes through Redis pub/sub, in one round trip
//! (milliseconds on a LAN; `BENCHMARKS.md` has the measured figure); a process that missed the
//! message (it was reconnecting) reads the cooldown's key at its next heartbeat, so within `H`.
//! A route target's circuit breaker that opens (`firebreak::route`) reaches the others the same
//! way and opens theirs for its cooldown; a process that missed the message finds out by its
//! own failures. Each process probes for itself.
//! What stays local: the concurrency window and a rate learned from 429s without headers,
//! which measure what this process sees.
//!
//! # Fail open, not closed
//!
//! Only fail-open is offered. Failing closed would turn a Redis outage into a Fireworks outage
//! for every process, while failing open costs at most `N` times the rate until Redis is back,
//! which the server's own 429s (each process's local gate still reacts to them) bound anyway.
//!
//! # Keys
//!
//! Every key starts with [`prefix`](RedisConfig::prefix) (several applications can share one
//! Redis), holds only the gate key (a 64-bit hash of the credential and the model, never the
//! key itself), and expires: `{prefix}:members:{key}` (a sorted set of process ids by last
//! heartbeat, expiring after `2 · member_ttl`), `{prefix}:cooldown:{key}` and
//! `{prefix}:quota:{key}`, `{prefix}:breaker:{key}` (expiring when the cooldown, the quota hold
//! or the open breaker ends). Events go over
//! the channel `{prefix}:events`. Commands per request: none; per active key and process, one
//! pipelined round trip per heartbeat; per fleet-wide event, one script call.

mod sync;

use firebreak::Stack;
use firebreak::gate::{Fleet, FleetEvent, FleetInbox, GateKey};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// The metric names this crate records.
pub mod names {
    /// Gauge: 1 while sharing through Redis, 0 while on the local gate alone.
    pub const UP: &str = "firebreak_redis_up";
    /// Counter: transitions from sharing to the local gate alone.
    pub const FALLBACKS: &str = "firebreak_redis_fallbacks_total";
    /// Counter: round trips to Redis (a pipeline counts once).
    pub const ROUND_TRIPS: &str = "firebreak_redis_round_trips_total";
    /// Counter: events not published because Redis was unreachable or the queue was full.
    pub const EVENTS_DROPPED: &str = "firebreak_redis_events_dropped_total";
}

/// How to reach Redis and how often to sync.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`). Never printed.
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// The longest a Redis command may take before Redis counts as down (250 ms).
    pub command_timeout: Duration,
    /// How often each process renews its membership and reads the others' (250 ms).
    pub heartbeat: Duration,
    /// A process that has not renewed its membership for this long no longer counts (1 s).
    pub member_ttl: Duration,
    /// A key a process has not used for this long is no longer renewed (5 s).
    pub active_for: Duration,
    /// The longest wait between reconnection attempts (5 s; they start at 100 ms and double).
    pub reconnect_max: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("member_ttl", &self.member_ttl)
            .field("active_for", &self.active_for)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

/// The URL without its credentials.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_owned(),
        },
        None => "<not a redis:// URL>".to_owned(),
    }
}

impl RedisConfig {
    /// The defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "firebreak".into(),
            command_timeout: Duration::from_millis(250),
            heartbeat: Duration::from_millis(250),
            member_ttl: Duration::from_secs(1),
            active_for: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`RedisFleetError`] naming the first bad one.
    pub fn validate(&self) -> Result<(), RedisFleetError> {
        redis::Client::open(self.url.as_str())
            .map_err(|e| RedisFleetError::Url(redact(&self.url), e.to_string()))?;
        let bad = |m: &str| Err(RedisFleetError::Config(m.to_owned()));
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return bad("prefix must be non-empty, without spaces");
        }
        if self.command_timeout.is_zero() || self.command_timeout > Duration::from_secs(10) {
            return bad("command_timeout must be in (0, 10 s]");
        }
        if self.heartbeat < Duration::from_millis(10) || self.heartbeat > Duration::from_secs(60) {
            return bad("heartbeat must be in [10 ms, 60 s]");
        }
        if self.member_ttl <= self.heartbeat {
            return bad("member_ttl must be longer than heartbeat");
        }
        if self.active_for < self.heartbeat {
            return bad("active_for must be at least heartbeat");
        }
        if self.reconnect_max < Duration::from_millis(100) {
            return bad("reconnect_max must be at least 100 ms");
        }
        Ok(())
    }
}

/// Why a fleet could not be started. Redis being down is not one of them: the fleet starts
/// on the local gate and connects when it can.
#[derive(Debug, thiserror::Error)]
pub enum RedisFleetError {
    /// The URL does not parse (shown without its credentials).
    #[error("invalid Redis URL {0}: {1}")]
    Url(String, String),
    /// A setting is out of range.
    #[error("invalid Redis fleet setting: {0}")]
    Config(String),
    /// Not called from inside a tokio runtime (the sync task needs one).
    #[error("RedisFleet::start must be called inside a tokio runtime")]
    NoRuntime,
}

/// One key's share of the fleet, as the sync task last read it.
#[derive(Debug)]
struct KeyShare {
    /// `f64` bits of the share.
    share: AtomicU64,
    /// Milliseconds since the fleet started, at the last use.
    last_used: AtomicU64,
    /// Milliseconds since the fleet started, when this process first used the key.
    since: u64,
}

#[derive(Debug)]
struct Inner {
    cfg: RedisConfig,
    /// This process's id in the fleet (random).
    id: String,
    /// Keyed by the gate key, already a hash.
    keys: RwLock<nohash_hasher::IntMap<u64, Arc<KeyShare>>>,
    /// Milliseconds since the fleet started, as the sync task last stamped it (a coarse clock:
    /// the request path reads it instead of the system clock).
    coarse_now: AtomicU64,
    new_key: Notify,
    events: mpsc::Sender<(GateKey, FleetEvent)>,
    inboxes: Mutex<Vec<FleetInbox>>,
    connected: AtomicBool,
    /// `f64` bits of `1 / N`, N the live processes of the fleet, whatever keys they use.
    fleet_share: AtomicU64,
    started: std::time::Instant,
    metrics: sync::Metrics,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stamps the coarse clock the request path reads.
    fn tick(&self) -> u64 {
        let now = self.now_ms();
        self.coarse_now.store(now, Ordering::Relaxed);
        now
    }

    fn deliver(&self, key: GateKey, event: FleetEvent) {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(|e| e.into_inner());
        for i in inboxes.iter() {
            i.apply(key, event);
        }
        inboxes.retain(|i| i.is_live());
    }
}

/// The link between this process's gates and the other processes' through Redis. Cheap to
/// clone; the sync task stops when the last clone and every gate using it are dropped.
#[derive(Debug, Clone)]
pub struct RedisFleet {
    inner: Arc<Inner>,
}

impl RedisFleet {
    /// Starts the fleet: a background task on the current tokio runtime connects to Redis and
    /// keeps syncing. Returns at once; until Redis answers, the gates work alone.
    ///
    /// # Errors
    /// [`RedisFleetError`] for bad settings or outside a runtime.
    pub fn start(cfg: RedisConfig) -> Result<RedisFleet, RedisFleetError> {
        cfg.validate()?;
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| RedisFleetError::NoRuntime)?;
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| RedisFleetError::Url(redact(&cfg.url), e.to_string()))?;
        let (tx, rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            id: format!("{:016x}", rand::random::<u64>()),
            cfg,
            keys: RwLock::new(nohash_hasher::IntMap::default()),
            coarse_now: AtomicU64::new(0),
            new_key: Notify::new(),
            events: tx,
            inboxes: Mutex::new(Vec::new()),
            connected: AtomicBool::new(false),
            fleet_share: AtomicU64::new(1.0f64.to_bits()),
            started: std::time::Instant::now(),
            metrics: sync::Metrics::register(),
        });
        handle.spawn(sync::run(Arc::downgrade(&inner), client, rx));
        Ok(RedisFleet { inner })
    }

    /// Whether the fleet is sharing through Redis right now (else each gate works alone).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// The share of `key`'s account rate this process paces at now (`None` while
    /// disconnected: it then paces as if alone).
    pub fn current_share(&self, key: GateKey) -> Option<f64> {
        self.share(key)
    }

    /// Waits until the fleet shares through Redis, at most `limit`; whether it does.
    pub async fn connected_within(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        // Bounded by `limit`: checks every 10 ms.
        while tokio::time::Instant::now() < until {
            if self.is_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.is_connected()
    }
}

impl Fleet for RedisFleet {
    fn attach(&self, inbox: FleetInbox) {
        self.inner
            .inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(inbox);
    }

    fn share(&self, key: GateKey) -> Option<f64> {
        let inner = &self.inner;
        let now = inner.coarse_now.load(Ordering::Relaxed);
        // The common case: a key already known, under the read lock, no allocation, no clock.
        if let Some(k) = inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key.raw())
        {
            k.last_used.store(now, Ordering::Relaxed);
            return inner
                .connected
                .load(Ordering::Acquire)
                .then(|| f64::from_bits(k.share.load(Ordering::Relaxed)));
        }
        let share = {
            let mut keys = inner.keys.write().unwrap_or_else(|e| e.into_inner());
            // Until the key's own members are known, assume every process of the fleet uses
            // it: never over the limit while counting.
            let k = keys.entry(key.raw()).or_insert_with(|| {
                Arc::new(KeyShare {
                    share: AtomicU64::new(inner.fleet_share.load(Ordering::Relaxed)),
                    last_used: AtomicU64::new(now),
                    since: inner.now_ms(),
                })
            });
            f64::from_bits(k.share.load(Ordering::Relaxed))
        };
        // Register the new key at once rather than at the next heartbeat.
        inner.new_key.notify_one();
        inner.connected.load(Ordering::Acquire).then_some(share)
    }

    fn publish(&self, key: GateKey, event: FleetEvent) {
        if self.inner.events.try_send((key, event)).is_err() {
            self.inner.metrics.dropped.increment(1);
        }
    }
}

/// `stack` with its gate linked to the other processes through Redis ([`RedisFleet::start`]).
///
/// # Errors
/// [`RedisFleetError`] for bad settings or outside a tokio runtime.
pub fn shared(mut stack: Stack, cfg: RedisConfig) -> Result<Stack, RedisFleetError> {
    stack.fleet = Some(Arc::new(RedisFleet::start(cfg)?));
    Ok(stack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_the_password_never_shown() {
        let ok = RedisConfig::new("redis://user:hunter2@127.0.0.1:6379/0");
        assert!(ok.validate().is_ok());
        let shown = format!("{ok:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("127.0.0.1:6379"),
            "{shown}"
        );
        let e = RedisConfig::new("http://user:hunter2@x")
            .validate()
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for (cfg, what) in [
            (
                RedisConfig {
                    prefix: String::new(),
                    ..ok.clone()
                },
                "prefix",
            ),
            (
                RedisConfig {
                    command_timeout: Duration::ZERO,
                    ..ok.clone()
                },
                "command_timeout",
            ),
            (
                RedisConfig {
                    member_ttl: ok.heartbeat,
                    ..ok.clone()
                },
                "member_ttl",
            ),
            (
                RedisConfig {
                    heartbeat: Duration::from_millis(1),
                    ..ok.clone()
                },
                "heartbeat",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let e = RedisFleet::start(RedisConfig::new("redis://127.0.0.1:1")).unwrap_err();
        assert!(matches!(e, RedisFleetError::NoRuntime));
    }

    #[tokio::test]
    async fn a_fleet_without_redis_is_the_local_gate() {
        // Nothing listens here: the fleet starts anyway and answers as if alone.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = RedisFleet::start(RedisConfig::new(format!("redis://127.0.0.1:{port}"))).unwrap();
        assert_eq!(f.share(GateKey::from_raw(7)), None);
        f.publish(
            GateKey::from_raw(7),
            FleetEvent::Cooldown(Duration::from_secs(1)),
        );
        assert!(!f.connected_within(Duration::from_millis(300)).await);
        assert_eq!(f.share(GateKey::from_raw(7)), None);
    }
}
