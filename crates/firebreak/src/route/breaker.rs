//! A circuit breaker per target: the state machine ([`Breaker`]), pure over the time it is
//! given, and what a router keeps per target around it ([`TargetState`]: the breaker, its
//! metrics, the capacity advice).

use crate::Class;
use crate::gate::{FleetEvent, GateKey};
use crate::route::config::BreakerConfig;
use std::time::Duration;
use tokio::time::Instant;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures in a row are counted.
    Closed,
    /// Calls skip the target until the cooldown ends.
    Open,
    /// The cooldown ended: up to `probes` calls at once go through; a success closes it, a
    /// failure opens it again.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `firebreak_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// The `to` label of a transition.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may use the target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: go.
    Yes,
    /// Half-open: go, as one of the bounded probes (give the slot back with
    /// [`Breaker::end_probe`]).
    Probe,
    /// Open, or half-open with every probe slot taken.
    No,
}

/// Whether an attempt's class says the target is broken. Answers that show the target working
/// (a success, any 4xx, a 429: the gate's business) and failures that are not the target's
/// (the caller's deadline, a wait for a local connection, the gate's own refusal) are not.
pub(crate) fn is_failure(class: Class) -> bool {
    class.is_retryable_by_default()
        && !matches!(
            class,
            Class::RateLimited
                | Class::GateRefused
                | Class::Timeout(crate::TimeoutPhase::Deadline | crate::TimeoutPhase::Ready)
        )
}

/// The state machine. Transitions are returned so that the caller can count and log them.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    state: BreakerState,
    failures: u32,
    /// When it last opened (for "every target is open: try the least recently opened").
    pub(crate) opened_at: Option<Instant>,
    until: Instant,
    probes: u32,
}

impl Breaker {
    pub(crate) fn new(now: Instant) -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            opened_at: None,
            until: now,
            probes: 0,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether [`Breaker::admit`] would let a call through now (changes nothing).
    pub(crate) fn would_admit(&self, cfg: &BreakerConfig, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => now >= self.until && cfg.probes > 0,
            BreakerState::HalfOpen => self.probes < cfg.probes,
        }
    }

    /// Asks to send one call; may move Open → HalfOpen (returned).
    pub(crate) fn admit(
        &mut self,
        cfg: &BreakerConfig,
        now: Instant,
    ) -> (Admit, Option<BreakerState>) {
        let mut moved = None;
        if self.state == BreakerState::Open && now >= self.until {
            self.state = BreakerState::HalfOpen;
            self.probes = 0;
            moved = Some(BreakerState::HalfOpen);
        }
        let admit = match self.state {
            BreakerState::Closed => Admit::Yes,
            BreakerState::HalfOpen if self.probes < cfg.probes => {
                self.probes += 1;
                Admit::Probe
            }
            _ => Admit::No,
        };
        (admit, moved)
    }

    /// Every target of a chain is open: this one (the least recently opened) is tried anyway,
    /// as a probe. Returns the new state when it changed.
    pub(crate) fn force_probe(&mut self) -> Option<BreakerState> {
        self.probes += 1;
        (self.state != BreakerState::HalfOpen).then(|| {
            self.state = BreakerState::HalfOpen;
            BreakerState::HalfOpen
        })
    }

    /// Gives a probe slot back (the probe ended, whatever its outcome, or was dropped).
    pub(crate) fn end_probe(&mut self) {
        self.probes = self.probes.saturating_sub(1);
    }

    /// Records one attempt's class; returns the new state when it changed.
    pub(crate) fn record(
        &mut self,
        cfg: &BreakerConfig,
        class: Class,
        now: Instant,
    ) -> Option<BreakerState> {
        let failed = is_failure(class);
        match (self.state, failed) {
            (BreakerState::Closed, true) => {
                self.failures += 1;
                (self.failures >= cfg.consecutive_failures).then(|| self.open(cfg.cooldown, now))
            }
            (BreakerState::Closed, false) => {
                self.failures = 0;
                None
            }
            (BreakerState::HalfOpen, true) => Some(self.open(cfg.cooldown, now)),
            (BreakerState::HalfOpen, false) => {
                self.state = BreakerState::Closed;
                self.failures = 0;
                Some(BreakerState::Closed)
            }
            // Open: a straggler sent before it opened; only probes decide.
            (BreakerState::Open, _) => None,
        }
    }

    /// Another process saw the target fail: open for `d` (no effect when already open).
    pub(crate) fn open_remote(&mut self, d: Duration, now: Instant) -> Option<BreakerState> {
        (self.state == BreakerState::Closed).then(|| self.open(d, now))
    }

    fn open(&mut self, d: Duration, now: Instant) -> BreakerState {
        self.state = BreakerState::Open;
        self.failures = 0;
        self.opened_at = Some(now);
        self.until = now + d;
        self.probes = 0;
        BreakerState::Open
    }
}

/// The fleet key a target's breaker is shared under: a hash of what the target is (base URL
/// and model), so that processes naming it differently still share it.
pub(crate) fn fleet_key(base_url: &str, model: &str) -> GateKey {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"firebreak-breaker\0");
    h.update(base_url.as_bytes());
    h.update(b"\0");
    h.update(model.as_bytes());
    GateKey::from_raw(h.digest())
}

/// The event a locally opened breaker publishes.
pub(crate) fn opened_event(cfg: &BreakerConfig) -> FleetEvent {
    FleetEvent::BreakerOpen(cfg.cooldown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectKind;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            cooldown: Duration::from_secs(10),
            probes: 2,
        }
    }

    #[test]
    fn what_counts_as_a_failure() {
        for c in [
            Class::ServerError,
            Class::Overloaded,
            Class::ResetBeforeResponse,
            Class::Connect(ConnectKind::Refused),
            Class::Timeout(crate::TimeoutPhase::Headers),
        ] {
            assert!(is_failure(c), "{c:?}");
        }
        for c in [
            Class::Success,
            Class::RateLimited,
            Class::GateRefused,
            Class::ClientError(crate::ClientErrorKind::BadRequest),
            Class::Timeout(crate::TimeoutPhase::Deadline),
            Class::QuotaExhausted,
        ] {
            assert!(!is_failure(c), "{c:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_probes_then_closes() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        // A success in between resets the count.
        assert_eq!(b.record(&cfg, Class::ServerError, t0), None);
        assert_eq!(b.record(&cfg, Class::ServerError, t0), None);
        assert_eq!(b.record(&cfg, Class::Success, t0), None);
        assert_eq!(b.record(&cfg, Class::ServerError, t0), None);
        assert_eq!(b.record(&cfg, Class::ServerError, t0), None);
        assert_eq!(
            b.record(&cfg, Class::ServerError, t0),
            Some(BreakerState::Open)
        );
        assert_eq!(b.admit(&cfg, t0).0, Admit::No);
        // Stragglers do not move it.
        assert_eq!(b.record(&cfg, Class::Success, t0), None);
        assert_eq!(b.state(), BreakerState::Open);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(&cfg, t1 - Duration::from_millis(1)).0, Admit::No);
        assert_eq!(
            b.admit(&cfg, t1),
            (Admit::Probe, Some(BreakerState::HalfOpen))
        );
        assert_eq!(b.admit(&cfg, t1), (Admit::Probe, None));
        // Bounded: a third call while two probes are out is refused.
        assert_eq!(b.admit(&cfg, t1).0, Admit::No);
        b.end_probe();
        assert_eq!(b.admit(&cfg, t1).0, Admit::Probe);
        assert_eq!(
            b.record(&cfg, Class::Success, t1),
            Some(BreakerState::Closed)
        );
        assert_eq!(b.admit(&cfg, t1).0, Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_for_a_full_cooldown() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        for _ in 0..3 {
            b.record(&cfg, Class::ResetBeforeResponse, t0);
        }
        let t1 = t0 + cfg.cooldown;
        assert_eq!(b.admit(&cfg, t1).0, Admit::Probe);
        assert_eq!(
            b.record(&cfg, Class::Overloaded, t1),
            Some(BreakerState::Open)
        );
        assert_eq!(b.opened_at, Some(t1));
        assert_eq!(
            b.admit(&cfg, t1 + cfg.cooldown - Duration::from_millis(1))
                .0,
            Admit::No
        );
        assert_eq!(b.admit(&cfg, t1 + cfg.cooldown).0, Admit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_open_applies_only_to_a_closed_breaker() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        assert_eq!(
            b.open_remote(Duration::from_secs(3), t0),
            Some(BreakerState::Open)
        );
        assert_eq!(b.open_remote(Duration::from_secs(30), t0), None);
        assert_eq!(b.admit(&cfg, t0 + Duration::from_secs(3)).0, Admit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn would_admit_says_what_admit_then_does() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        for (i, class) in [Class::ServerError; 3].into_iter().enumerate() {
            assert!(b.would_admit(&cfg, t0), "closed, failure {i}");
            b.record(&cfg, class, t0);
        }
        for at in [t0, t0 + cfg.cooldown, t0 + cfg.cooldown, t0 + cfg.cooldown] {
            let would = b.would_admit(&cfg, at);
            assert_eq!(would, b.admit(&cfg, at).0 != Admit::No, "at {:?}", at - t0);
        }
    }

    #[test]
    fn the_fleet_key_names_what_the_target_is() {
        assert_eq!(fleet_key("http://a", "m"), fleet_key("http://a", "m"));
        assert_ne!(fleet_key("http://a", "m"), fleet_key("http://b", "m"));
        assert_ne!(fleet_key("http://a", "m1"), fleet_key("http://a", "m"));
    }
}
