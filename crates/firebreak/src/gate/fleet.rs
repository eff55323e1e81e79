//! [`Fleet`]: the seam through which processes that share one account limit share the gate's
//! fleet-wide state. An implementation (`firebreak-redis`) keeps the shared part elsewhere and
//! syncs it in the background: nothing here waits on it.

use crate::gate::key::GateKey;
use std::fmt;
use std::sync::Weak;
use std::time::Duration;
use tokio::time::Instant;

/// Fleet-wide evidence one process saw, for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetEvent {
    /// A cooldown of this length started now (a rate-limit 429's delay, or capacity evidence).
    Cooldown(Duration),
    /// The key's quota was found exhausted; calls fail fast for this long.
    QuotaExhausted(Duration),
    /// A route target's circuit breaker opened for this long (the key names the target; the
    /// route module's breakers apply it, the gate ignores it).
    BreakerOpen(Duration),
}

/// What a [`FleetInbox`] delivers into: the gate's store, or the route module's breakers.
pub(crate) trait FleetSink: Send + Sync + fmt::Debug {
    /// Applies another process's event.
    fn apply_remote(&self, key: GateKey, event: FleetEvent, now: Instant);
}

/// The other processes using the same limits (what is shared and why:
/// [the architecture](crate#where-shared-state-lives)). The gate calls it from the request
/// path, so every method must return at once (read memory, queue work); the sharing itself
/// happens in the background, and an implementation that lost its backend answers `None`
/// from [`Fleet::share`]: the gate then works exactly as without it.
pub trait Fleet: Send + Sync + fmt::Debug + 'static {
    /// Called once, when the gate is built: where to deliver the other processes' events.
    fn attach(&self, inbox: FleetInbox);
    /// This process's share of an account-wide rate on `key`, in `(0, 1]`: `1 / N` with `N`
    /// processes using the key; `None` while the fleet cannot tell (its backend is down): the
    /// gate then paces as if alone, and draws no conclusion from its own send rate (other
    /// processes may be sending too). Called on every paced reservation.
    fn share(&self, key: GateKey) -> Option<f64>;
    /// This process saw fleet-wide evidence on `key`: tell the others.
    fn publish(&self, key: GateKey, event: FleetEvent);
}

/// Where a [`Fleet`] delivers the other processes' events: into this process's gate state,
/// without publishing them again.
#[derive(Debug, Clone)]
pub struct FleetInbox {
    pub(crate) sink: Weak<dyn FleetSink>,
}

impl FleetInbox {
    /// Applies an event another process published, as if this process had seen it: a
    /// cooldown holds this process's sends on `key` (capped by `max_cooldown`, like a local
    /// one), an exhausted quota fails its calls fast. Does nothing once the gate is gone.
    pub fn apply(&self, key: GateKey, event: FleetEvent) {
        if let Some(sink) = self.sink.upgrade() {
            sink.apply_remote(key, event, Instant::now());
        }
    }

    /// Whether the gate (or breakers) it delivers to still exists.
    pub fn is_live(&self) -> bool {
        self.sink.strong_count() > 0
    }
}
