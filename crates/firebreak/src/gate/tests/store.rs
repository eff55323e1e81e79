//! The shared state's rules, one by one, on `Store` directly (no clock but the
//! instants passed in): each test pins a boundary the gate's behaviour depends on.

use crate::Class;
use crate::gate::GateKey;
use crate::gate::store::{Answer, Reserve, Store};
use crate::gate::{GateConfig, HeaderUnit};
use crate::parse::ratelimit::RateLimitHeaders;
use http::HeaderMap;
use std::time::Duration;
use tokio::time::Instant;

const K: GateKey = GateKey::from_raw(9);

fn headers(pairs: &[(&'static str, &str)]) -> Option<RateLimitHeaders> {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    let r = RateLimitHeaders::from_headers(&h);
    (!r.is_empty()).then_some(r)
}

fn obs(
    class: Class,
    retry_after: Option<Duration>,
    rl: Option<RateLimitHeaders>,
    at: Instant,
) -> Answer {
    Answer {
        class,
        retry_after,
        rate_limit: rl,
        rate_limit_body: true,
        queue: None,
        kind: crate::TargetKind::Auto,
        in_flight_at_send: 1,
        sent_at: at,
    }
}

fn slot(store: &Store, now: Instant) -> Duration {
    match store.reserve(K, now, 0, None) {
        Reserve::At(t) => t - now,
        other => panic!("expected a slot, got {other:?}"),
    }
}

#[test]
fn a_limit_of_zero_is_ignored_not_a_stall() {
    let store = Store::new(GateConfig::default());
    let now = Instant::now();
    let rl = headers(&[("x-ratelimit-limit-requests", "0")]);
    store.learn(K, &obs(Class::Success, None, rl, now), now);
    assert_eq!(store.snapshot(K, now).unwrap().rate_per_sec, None);
    assert_eq!(slot(&store, now), Duration::ZERO);
    assert_eq!(slot(&store, now), Duration::ZERO);
}

#[test]
fn a_delay_of_exactly_the_cap_is_trusted() {
    let store = Store::new(GateConfig::default());
    let now = Instant::now();
    let d = Duration::from_secs(60);
    store.learn(K, &obs(Class::RateLimited, Some(d), None, now), now);
    assert_eq!(store.cooldown_until(K, now), Some(now + d));
    assert_eq!(slot(&store, now), d);
}

#[test]
fn the_per_second_reading_stays_when_the_client_sent_as_much_and_returns_after_recovery() {
    let cfg = GateConfig::default();
    let store = Store::new(cfg.clone());
    let now = Instant::now();
    // Sent exactly the stated 5 in the last second: a 429 is explained per second.
    for _ in 0..5 {
        slot(&store, now);
    }
    let rl = headers(&[("x-ratelimit-limit-requests", "5")]);
    store.learn(K, &obs(Class::RateLimited, None, rl, now), now);
    assert!(store.snapshot(K, now).unwrap().per_second_headers);

    // Another key: sent 1, refused: per minute; back to per second `recovery` later.
    let other = GateKey::from_raw(10);
    let _ = store.reserve(other, now, 0, None);
    store.learn(other, &obs(Class::RateLimited, None, rl, now), now);
    assert!(!store.snapshot(other, now).unwrap().per_second_headers);
    let soon = now + cfg.recovery / 2;
    store.learn(other, &obs(Class::Success, None, rl, soon), soon);
    assert!(
        !store.snapshot(other, soon).unwrap().per_second_headers,
        "within recovery"
    );
    let later = now + cfg.recovery + Duration::from_secs(1);
    store.learn(other, &obs(Class::Success, None, rl, later), later);
    let snap = store.snapshot(other, later).unwrap();
    assert!(snap.per_second_headers, "tried again after recovery");
    assert!((snap.rate_per_sec.unwrap() - 4.9).abs() < 1e-9, "{snap:?}");
}

#[test]
fn the_quota_recheck_lets_a_call_through_exactly_when_it_is_due() {
    let cfg = GateConfig::default();
    let store = Store::new(cfg.clone());
    let now = Instant::now();
    store.learn(K, &obs(Class::QuotaExhausted, None, None, now), now);
    assert_eq!(
        store.reserve(K, now, 0, None),
        Reserve::QuotaExhausted {
            recheck_in: cfg.quota_recheck
        }
    );
    assert_eq!(store.quota_recheck_in(K, now), Some(cfg.quota_recheck));
    let due = now + cfg.quota_recheck;
    assert_eq!(store.quota_recheck_in(K, due), None);
    assert_eq!(store.reserve(K, due, 0, None), Reserve::At(due));
}

#[test]
fn after_a_429_with_no_delay_a_spent_window_waits_for_its_reset() {
    let store = Store::new(GateConfig::default());
    let now = Instant::now();
    let spent = headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "5s"),
    ]);
    store.learn(K, &obs(Class::RateLimited, None, spent, now), now);
    assert_eq!(slot(&store, now), Duration::from_secs(5));

    // Something left, or a reset past the cap: no hold.
    for pairs in [
        [
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "5s"),
        ],
        [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2m"),
        ],
    ] {
        let store = Store::new(GateConfig::default());
        store.learn(K, &obs(Class::RateLimited, None, headers(&pairs), now), now);
        assert!(slot(&store, now) < Duration::from_secs(1), "{pairs:?}");
    }
}

#[test]
fn a_released_slot_and_its_tokens_go_to_the_next_caller() {
    let cfg = GateConfig {
        header_unit: HeaderUnit::PerMinute,
        headroom: 1.0,
        tokens_per_minute: Some(600), // 10 tokens a second
        ..GateConfig::default()
    };
    let store = Store::new(cfg);
    let now = Instant::now();
    // No request rate known: only the token cap spaces the sends, 10 tokens each a second apart.
    let a = match store.reserve(K, now, 10, None) {
        Reserve::At(t) => t,
        other => panic!("{other:?}"),
    };
    let b = match store.reserve(K, now, 10, None) {
        Reserve::At(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!((a - now, b - now), (Duration::ZERO, Duration::from_secs(1)));
    store.release(K, b, 10, now);
    // The next caller gets b's second, not the one after.
    match store.reserve(K, now, 10, None) {
        Reserve::At(t) => assert_eq!(t - now, Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    // A release with nothing reserved ahead changes nothing.
    let idle = Store::new(GateConfig::default());
    idle.release(K, now, 10, now);
    assert_eq!(slot(&idle, now), Duration::ZERO);
}

#[test]
fn a_rate_limit_429_paces_at_what_was_admitted() {
    // A rate-limit 429 lowers the pace to what was admitted (× 0.8).
    let store = Store::new(GateConfig::default());
    let t0 = Instant::now();
    // 40 admissions over 2 s: 20 a second, measured when the window closes.
    for i in 0..=40u32 {
        let at = t0 + Duration::from_millis(50 * u64::from(i));
        assert_eq!(slot(&store, at), Duration::ZERO);
    }
    let at = t0 + Duration::from_millis(2050);
    store.learn(K, &obs(Class::RateLimited, None, None, at), at);
    let rate = store.snapshot(K, at).unwrap().rate_per_sec.unwrap();
    assert!((rate - 16.0).abs() < 0.5, "20/s × 0.8, got {rate}");
}

#[test]
fn a_slot_exactly_at_the_latest_instant_is_granted() {
    let store = Store::new(GateConfig::default());
    let now = Instant::now();
    assert_eq!(store.reserve(K, now, 0, Some(now)), Reserve::At(now));
}

#[test]
fn the_release_ramp_ends_exactly_a_second_after_the_cooldown() {
    let store = Store::new(GateConfig::default());
    let now = Instant::now();
    store.learn(
        K,
        &obs(Class::RateLimited, Some(Duration::from_secs(1)), None, now),
        now,
    );
    let end = now + Duration::from_secs(2);
    assert_eq!(store.reserve(K, end, 0, None), Reserve::At(end));
    assert_eq!(
        store.reserve(K, end, 0, None),
        Reserve::At(end),
        "no spacing any more"
    );
}

#[test]
fn nothing_remaining_holds_one_interval_of_the_stated_rate() {
    let cfg = GateConfig {
        header_unit: HeaderUnit::PerMinute,
        ..GateConfig::default()
    };
    let store = Store::new(cfg);
    let now = Instant::now();
    let rl = headers(&[
        ("x-ratelimit-limit-requests", "120"),
        ("x-ratelimit-remaining-requests", "0"),
    ]);
    store.learn(K, &obs(Class::Success, None, rl, now), now);
    assert_eq!(
        slot(&store, now),
        Duration::from_millis(500),
        "120 a minute: 0.5 s"
    );
}

#[test]
fn admissions_over_more_than_a_second_are_measured_per_second() {
    // Six sends over 1.5 s is 4 a second: under half a stated 10, so a 429 then drops the
    // per-second reading.
    let store = Store::new(GateConfig::default());
    let t0 = Instant::now();
    for i in 0..6u64 {
        let at = t0 + Duration::from_millis(300 * i);
        assert_eq!(slot(&store, at), Duration::ZERO);
    }
    let at = t0 + Duration::from_millis(1500);
    let rl = headers(&[("x-ratelimit-limit-requests", "10")]);
    store.learn(K, &obs(Class::RateLimited, None, rl, at), at);
    assert!(!store.snapshot(K, at).unwrap().per_second_headers);
}

#[test]
fn a_429_at_more_than_half_the_per_second_reading_keeps_it() {
    // Seven a second under a stated 10: a fleet whose share is counted a little wrong sends
    // about this much. Not far enough under to call the reading per minute (60× slower).
    let store = Store::new(GateConfig::default());
    let t0 = Instant::now();
    for i in 0..14u64 {
        let at = t0 + Duration::from_millis(1000 * i / 7);
        assert_eq!(slot(&store, at), Duration::ZERO);
    }
    let at = t0 + Duration::from_secs(2);
    let rl = headers(&[("x-ratelimit-limit-requests", "10")]);
    store.learn(K, &obs(Class::RateLimited, None, rl, at), at);
    assert!(store.snapshot(K, at).unwrap().per_second_headers);
}

#[test]
fn a_cooldown_does_not_drag_the_measured_rate_down() {
    // Two sends, a 1 s cooldown inside the 2 s measuring window, then 20 a second for 2 s: a
    // later 429 lowers the pace from 20 a second (× 0.8), not from a window that averaged the
    // cooldown in (10 a second).
    let store = Store::new(GateConfig::default());
    let t0 = Instant::now();
    slot(&store, t0);
    slot(&store, t0);
    let t1 = t0 + Duration::from_millis(100);
    store.learn(
        K,
        &obs(Class::RateLimited, Some(Duration::from_secs(1)), None, t1),
        t1,
    );
    let resume = t1 + Duration::from_secs(1);
    for i in 0..=40u64 {
        let at = resume + Duration::from_millis(50 * i);
        assert_eq!(slot(&store, at), Duration::ZERO, "send {i}");
    }
    let at = resume + Duration::from_millis(2050);
    store.learn(K, &obs(Class::RateLimited, None, None, at), at);
    let rate = store.snapshot(K, at).unwrap().rate_per_sec.unwrap();
    assert!(rate > 15.0, "paced from 20/s × 0.8, got {rate}");
}

#[test]
fn a_429_that_says_when_to_come_back_and_states_no_limit_teaches_no_pace() {
    let store = Store::new(GateConfig::default());
    let t0 = Instant::now();
    for i in 0..=40u64 {
        slot(&store, t0 + Duration::from_millis(50 * i));
    }
    let at = t0 + Duration::from_millis(2050);
    store.learn(
        K,
        &obs(Class::RateLimited, Some(Duration::from_secs(1)), None, at),
        at,
    );
    assert_eq!(store.snapshot(K, at).unwrap().rate_per_sec, None);
}

#[test]
fn a_stated_pace_is_lowered_once_a_second_and_only_by_explained_429s() {
    let cfg = GateConfig {
        header_unit: HeaderUnit::PerMinute,
        headroom: 1.0,
        ..GateConfig::default()
    };
    let store = Store::new(cfg);
    let t0 = Instant::now();
    let rl = headers(&[("x-ratelimit-limit-requests", "600")]); // 10/s
    store.learn(K, &obs(Class::Success, None, rl, t0), t0);
    let rate = |at| store.snapshot(K, at).unwrap().rate_per_sec.unwrap();
    // A 429 without rate headers inside a stated limit: not explained, no decrease.
    store.learn(K, &obs(Class::RateLimited, None, None, t0), t0);
    assert!((rate(t0) - 10.0).abs() < 1e-9);
    // Explained ones: one decrease, then none for a second, then another.
    let at = |ms| t0 + Duration::from_millis(ms);
    store.learn(K, &obs(Class::RateLimited, None, rl, at(10)), at(10));
    assert!((rate(at(10)) - 8.0).abs() < 1e-9, "{}", rate(at(10)));
    store.learn(K, &obs(Class::RateLimited, None, rl, at(1009)), at(1009));
    assert!((rate(at(1009)) - 8.0).abs() < 1e-9, "debounced");
    store.learn(K, &obs(Class::RateLimited, None, rl, at(1010)), at(1010));
    assert!((rate(at(1010)) - 6.4).abs() < 1e-9, "{}", rate(at(1010)));
}
