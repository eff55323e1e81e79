//! Backoff strategies: pure functions of the retry number and a random draw.

use rand::Rng;
use std::time::Duration;

/// How the wait before a retry is drawn. `n` is the retry number (0 for the first retry);
/// `t = min(cap, base · 2ⁿ)` is the exponential ceiling. Every strategy's result is in `[0, cap]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// `U(0, t)`: the widest spread, the least herding (AWS "full jitter").
    Full,
    /// `t/2 + U(0, t/2)`: never less than half the ceiling.
    Equal,
    /// `min(cap, U(base, 3 · previous))`, starting from `base` (AWS "decorrelated jitter").
    Decorrelated,
    /// Fireworks' documented recipe, `base · 2ⁿ + U(0, 1 s)`, capped. Kept as a named strategy so
    /// comparisons against the docs' loop are honest.
    FireworksDocs,
    /// `t · (1 − f · U(0, 1))`: openai-python's multiplicative jitter with `f = 0.25`.
    Proportional(f64),
}

/// A backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The jitter strategy.
    pub jitter: Jitter,
    /// The first ceiling.
    pub base: Duration,
    /// The largest wait.
    pub cap: Duration,
}

impl Backoff {
    /// The wait before retry `n`, given the previous wait (for decorrelated jitter) and a source
    /// of randomness.
    pub fn delay<R: Rng + ?Sized>(
        &self,
        n: u32,
        previous: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let base = self.base.as_secs_f64();
        let cap = self.cap.as_secs_f64();
        // 2^n saturates long before it can overflow an f64 (n is bounded by max_attempts anyway).
        let t = (base * 2f64.powi(n.min(62) as i32)).min(cap);
        let u: f64 = rng.random();
        let secs = match self.jitter {
            Jitter::Full => u * t,
            Jitter::Equal => t / 2.0 + u * t / 2.0,
            Jitter::Decorrelated => {
                let prev = previous.map_or(base, |p| p.as_secs_f64()).max(base);
                let hi = (prev * 3.0).max(base);
                (base + u * (hi - base)).min(cap)
            }
            Jitter::FireworksDocs => (base * 2f64.powi(n.min(62) as i32) + u).min(cap),
            Jitter::Proportional(f) => t * (1.0 - f * u),
        };
        Duration::from_secs_f64(secs.clamp(0.0, cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn b(j: Jitter) -> Backoff {
        Backoff {
            jitter: j,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }

    /// The exponential ceilings for base 100 ms and cap 2 s, written out.
    const CEILINGS: [f64; 10] = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0];

    #[test]
    fn full_jitter_grows_exponentially_to_the_cap() {
        // #21 mutant 8: each retry's draws spread over [0, ceiling], the ceiling doubling per
        // retry until the cap: the largest of many draws comes near it, their mean near half.
        let mut rng = SmallRng::seed_from_u64(3);
        for (n, t) in CEILINGS.iter().enumerate() {
            let draws: Vec<f64> = (0..2000)
                .map(|_| {
                    b(Jitter::Full)
                        .delay(n as u32, None, &mut rng)
                        .as_secs_f64()
                })
                .collect();
            let max = draws.iter().copied().fold(0.0, f64::max);
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!(
                max > 0.95 * t && max <= *t,
                "retry {n}: max {max} for ceiling {t}"
            );
            assert!(
                (0.45 * t..=0.55 * t).contains(&mean),
                "retry {n}: mean {mean}"
            );
        }
    }

    #[test]
    fn decorrelated_spreads_to_three_times_the_previous_wait_and_docs_add_at_most_a_second() {
        let mut rng = SmallRng::seed_from_u64(4);
        // Decorrelated: U(base, 3 × previous); from 300 ms, draws reach near 900 ms.
        let d: Vec<f64> = (0..2000)
            .map(|_| {
                b(Jitter::Decorrelated)
                    .delay(3, Some(Duration::from_millis(300)), &mut rng)
                    .as_secs_f64()
            })
            .collect();
        let max = d.iter().copied().fold(0.0, f64::max);
        assert!(max > 0.85 && max <= 0.9, "max {max}");
        // The docs' recipe: base · 2ⁿ + U(0, 1 s), capped: written-out upper bounds.
        let upper = [1.1, 1.2, 1.4, 1.8, 2.0, 2.0];
        for (n, hi) in upper.iter().enumerate() {
            for _ in 0..200 {
                let x = b(Jitter::FireworksDocs)
                    .delay(n as u32, None, &mut rng)
                    .as_secs_f64();
                assert!(x <= hi + 1e-9, "retry {n}: {x} over {hi}");
            }
        }
    }

    #[test]
    fn bounds_per_strategy() {
        let mut rng = SmallRng::seed_from_u64(1);
        for n in 0..10 {
            let t = CEILINGS[n as usize];
            for _ in 0..200 {
                let full = b(Jitter::Full).delay(n, None, &mut rng).as_secs_f64();
                assert!((0.0..=t).contains(&full));
                let eq = b(Jitter::Equal).delay(n, None, &mut rng).as_secs_f64();
                assert!((t / 2.0 - 1e-9..=t).contains(&eq));
                let docs = b(Jitter::FireworksDocs)
                    .delay(n, None, &mut rng)
                    .as_secs_f64();
                assert!((t - 1e-9..=2.0).contains(&docs), "{n}: {docs}");
                let p = b(Jitter::Proportional(0.25))
                    .delay(n, None, &mut rng)
                    .as_secs_f64();
                assert!((0.75 * t - 1e-9..=t).contains(&p));
                let d = b(Jitter::Decorrelated)
                    .delay(n, Some(Duration::from_millis(300)), &mut rng)
                    .as_secs_f64();
                assert!((0.1 - 1e-9..=0.9).contains(&d));
            }
        }
    }
}
