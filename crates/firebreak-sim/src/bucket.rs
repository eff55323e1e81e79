//! The shared token bucket behind the simulated rate limit.

use crate::config::RateLimitConfig;
use std::time::Duration;
use tokio::time::Instant;

/// What the bucket said about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Admit {
    /// Admitted; `remaining` whole tokens are left.
    Yes { remaining: f64 },
    /// Rejected; a token frees up after `wait`.
    No { wait: Duration },
}

#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    busy_since: Instant,
    cfg: RateLimitConfig,
}

impl Bucket {
    pub(crate) fn new(cfg: RateLimitConfig, now: Instant) -> Self {
        Bucket {
            rate: cfg.rate_per_sec,
            burst: cfg.burst,
            tokens: cfg.burst,
            last: now,
            busy_since: now,
            cfg,
        }
    }

    /// The current rate in requests per second (it may have grown).
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    pub(crate) fn try_take(&mut self, now: Instant) -> Admit {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        // An idle gap (the bucket full for a second) ends "sustained use".
        if self.tokens >= self.burst && dt > 1.0 {
            self.busy_since = now;
        }
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if let Some(g) = &self.cfg.growth {
            let busy = now.saturating_duration_since(self.busy_since);
            if busy >= Duration::from_millis(g.after_ms) && self.rate < g.max_rate_per_sec {
                let new_rate = (self.rate * g.factor).min(g.max_rate_per_sec);
                self.burst *= new_rate / self.rate;
                self.rate = new_rate;
                self.busy_since = now;
            }
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Yes {
                remaining: self.tokens.floor(),
            }
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Admit::No {
                wait: Duration::from_secs_f64(wait),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Growth;

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(RateLimitConfig::new(50.0, 10.0), t0);
        for _ in 0..10 {
            assert!(matches!(b.try_take(t0), Admit::Yes { .. }));
        }
        match b.try_take(t0) {
            Admit::No { wait } => assert!((wait.as_secs_f64() - 0.02).abs() < 1e-9, "{wait:?}"),
            a => panic!("expected a rejection, got {a:?}"),
        }
        // 100 ms later, 5 tokens are back.
        let t1 = t0 + Duration::from_millis(100);
        let admitted = (0..10)
            .filter(|_| matches!(b.try_take(t1), Admit::Yes { .. }))
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn grows_under_sustained_use() {
        let t0 = Instant::now();
        let mut cfg = RateLimitConfig::new(10.0, 1.0);
        cfg.growth = Some(Growth {
            after_ms: 1000,
            factor: 2.0,
            max_rate_per_sec: 20.0,
        });
        let mut b = Bucket::new(cfg, t0);
        for i in 0..30u64 {
            b.try_take(t0 + Duration::from_millis(100 * i));
        }
        assert_eq!(b.rate(), 20.0);
    }
}
