//! Property tests for the backoff strategies: every draw is in `[0, cap]`, and the expected
//! wait does not decrease from one retry to the next.

use firebreak::retry::{Backoff, Jitter};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::time::Duration;

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        Just(Jitter::FireworksDocs),
        (0.0f64..=1.0).prop_map(Jitter::Proportional),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_draw_is_within_zero_and_cap(
        j in jitter(),
        base_ms in 1u64..5_000,
        extra_ms in 0u64..60_000,
        n in 0u32..100,
        prev_ms in proptest::option::of(0u64..120_000),
        seed in any::<u64>(),
    ) {
        let b = Backoff { jitter: j, base: Duration::from_millis(base_ms), cap: Duration::from_millis(base_ms + extra_ms) };
        let mut rng = SmallRng::seed_from_u64(seed);
        let d = b.delay(n, prev_ms.map(Duration::from_millis), &mut rng);
        prop_assert!(d <= b.cap, "{d:?} > {:?}", b.cap);
    }

    #[test]
    fn expected_wait_is_monotone(j in jitter(), base_ms in 1u64..1_000, extra_ms in 0u64..20_000, seed in any::<u64>()) {
        let b = Backoff { jitter: j, base: Duration::from_millis(base_ms), cap: Duration::from_millis(base_ms + extra_ms) };
        let mut rng = SmallRng::seed_from_u64(seed);
        let samples = 400;
        let mut prev_mean = 0.0f64;
        for n in 0..8 {
            // Decorrelated jitter depends on the previous wait: feed it its own chain.
            let mut prev = None;
            let mut sum = 0.0;
            for _ in 0..samples {
                let d = b.delay(n, prev, &mut rng);
                if matches!(j, Jitter::Decorrelated) { prev = Some(d); }
                sum += d.as_secs_f64();
            }
            let mean = sum / samples as f64;
            // Sampling noise: allow 15% of the ceiling's spread; a decorrelated chain's samples
            // are correlated, so its mean over 400 of them wanders more (40%).
            let slack = if matches!(j, Jitter::Decorrelated) { 0.4 } else { 0.15 } * b.cap.as_secs_f64();
            prop_assert!(mean + slack >= prev_mean, "n={n}: {mean} < {prev_mean}");
            // Every strategy, decorrelated included (whose chain is stationary: its mean stays
            // level, never falls).
            prev_mean = mean;
        }
    }
}
