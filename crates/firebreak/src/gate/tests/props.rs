//! Every header the gate reads, with arbitrary values: no panic, no stall of other requests
//! beyond the documented bounds, and no fleet-wide reaction to one request's answer.

use crate::gate::GateConfig;
use crate::gate::GateKey;
use crate::gate::store::{Answer, Reserve, Signal, Store};
use crate::parse::ratelimit::RateLimitHeaders;
use crate::{Class, Classification};
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

const NAMES: [&str; 8] = [
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-tokens-prompt",
    "grpc-retry-pushback-ms",
];

/// Values that stress parsers: negative, NaN-like, enormous, fractional, dates, garbage.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
        Just("-0".to_owned()),
        Just("1e308".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("6m0s".to_owned()),
        Just("".to_owned()),
        "[ -~]{0,24}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(usize, String)>> {
    // Up to 10 headers, names repeated freely (contradictory and repeated values).
    prop::collection::vec((0..NAMES.len(), value()), 0..10)
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(200u16),
        Just(429),
        Just(503),
        Just(500),
        Just(502),
        Just(504)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_header_values_keep_the_gate_bounded(status in status(), hs in headers(), rl_body in any::<bool>()) {
        let mut map = HeaderMap::new();
        for (i, v) in &hs {
            if let Ok(v) = HeaderValue::from_str(v) {
                map.append(NAMES[*i], v);
            }
        }
        let cfg = GateConfig::default();
        let store = Store::new(cfg.clone());
        let key = GateKey::from_raw(7);
        let now = Instant::now();
        let c = Classification::from_response(
            StatusCode::from_u16(status).unwrap(),
            &map,
            None,
            SystemTime::now(),
        );
        let rl = RateLimitHeaders::from_headers(&map);
        let obs = Answer {
            class: c.class(),
            retry_after: c.retry_after(),
            rate_limit: (!rl.is_empty()).then_some(rl),
            rate_limit_body: rl_body,
            queue: None,
            kind: crate::TargetKind::Auto,
            in_flight_at_send: 1,
            sent_at: now,
        };
        let fleet = store.learn(key, &obs, now).fleet;
        // One answer is never fleet-wide capacity evidence (that takes three in flight together).
        prop_assert!(!fleet);
        // Anything but a rate-limit 429 leaves no cooldown.
        let cooldown = store.cooldown_until(key, now);
        if obs.signal(&GateConfig::default()) != Signal::Gate {
            prop_assert!(cooldown.is_none(), "{status} {hs:?}: {cooldown:?}");
        }
        // And the next request's slot is never further than the cap, whatever was sent.
        match store.reserve(key, now, 0, None) {
            Reserve::At(t) => prop_assert!(
                t - now <= cfg.max_cooldown,
                "{status} {hs:?}: next slot in {:?}", t - now
            ),
            other => prop_assert!(false, "{other:?}"),
        }
        // 5xx never ask for a wait through `x-ratelimit-reset-*`.
        if status >= 500 {
            let reset_only = map.keys().all(|k| k.as_str().starts_with("x-ratelimit"));
            if reset_only {
                prop_assert_eq!(c.retry_after(), None);
            }
        }
    }

    #[test]
    fn stated_limits_never_stall_a_fresh_key(limit in 1u64..100_000, remaining in 1u64..1000) {
        // A per-second reading of any stated limit never holds a send for more than a second.
        let cfg = GateConfig::default();
        let store = Store::new(cfg);
        let now = Instant::now();
        let mut map = HeaderMap::new();
        map.insert("x-ratelimit-limit-requests", limit.into());
        map.insert("x-ratelimit-remaining-requests", remaining.into());
        let obs = Answer {
            class: Class::Success,
            retry_after: None,
            rate_limit: Some(RateLimitHeaders::from_headers(&map)),
            rate_limit_body: false,
            queue: None,
            kind: crate::TargetKind::Auto,
            in_flight_at_send: 1,
            sent_at: now,
        };
        store.learn(GateKey::from_raw(1), &obs, now);
        for _ in 0..3 {
            match store.reserve(GateKey::from_raw(1), now, 0, None) {
                Reserve::At(t) => prop_assert!(t - now <= Duration::from_secs(3)),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}

/// A rate-limit 429 stating `limit` per unit, after `sent` admissions in the last moment.
fn per_second_after(sent: u32, limit: u64) -> bool {
    per_second_after_in(Store::new(GateConfig::default()), sent, limit)
}

/// A fleet that always answers the same share (`None`: it cannot tell).
#[derive(Debug)]
struct FixedShare(Option<f64>);

impl crate::gate::Fleet for FixedShare {
    fn attach(&self, _inbox: crate::gate::FleetInbox) {}
    fn share(&self, _key: GateKey) -> Option<f64> {
        self.0
    }
    fn publish(&self, _key: GateKey, _event: crate::gate::FleetEvent) {}
}

fn per_second_after_in_fleet(share: Option<f64>, sent: u32, limit: u64) -> bool {
    let fleet = std::sync::Arc::new(FixedShare(share));
    per_second_after_in(Store::with_fleet(GateConfig::default(), fleet), sent, limit)
}

fn per_second_after_in(store: Store, sent: u32, limit: u64) -> bool {
    let now = Instant::now();
    for _ in 0..sent {
        assert!(matches!(
            store.reserve(GateKey::from_raw(3), now, 0, None),
            Reserve::At(_)
        ));
    }
    let mut map = HeaderMap::new();
    map.insert("x-ratelimit-limit-requests", limit.into());
    let obs = Answer {
        class: Class::RateLimited,
        retry_after: None,
        rate_limit: Some(RateLimitHeaders::from_headers(&map)),
        rate_limit_body: true,
        queue: None,
        kind: crate::TargetKind::Auto,
        in_flight_at_send: 1,
        sent_at: now,
    };
    store.learn(GateKey::from_raw(3), &obs, now);
    store
        .snapshot(GateKey::from_raw(3), now)
        .expect("state")
        .per_second_headers
}

#[test]
fn a_429_drops_the_per_second_reading_only_when_the_client_sent_less() {
    // Sent 20 in the last second against a stated 5: the 429 is explained per second, and the
    // reading stays. Sent 1 against 5: per second cannot be right, so per minute.
    assert!(per_second_after(20, 5));
    assert!(!per_second_after(1, 5));
}

#[test]
fn in_a_fleet_the_per_second_reading_is_tested_against_the_fleets_rate() {
    // One of four processes sent 2 against a stated 5: the fleet sent about 8, so the 429 is
    // explained per second and the reading stays. Sent 1 of a half share: the fleet sent about
    // 2, so per minute. A fleet that cannot tell (its backend is down) concludes nothing.
    assert!(per_second_after_in_fleet(Some(0.25), 2, 5));
    assert!(!per_second_after_in_fleet(Some(0.5), 1, 5));
    assert!(per_second_after_in_fleet(None, 1, 5));
}
