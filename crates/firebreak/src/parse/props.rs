//! Property tests: the parsers are total (no input panics) and bounded (no input makes them
//! keep or return more than their caps).

use super::body::{MAX_MESSAGE_CHARS, parse_error_body};
use super::delay::DelayVerdict;
use super::delay::{
    MAX_PLAUSIBLE_DELAY, parse_duration_str, parse_millis, parse_seconds, server_delay,
};
use super::ratelimit::RateLimitHeaders;
use super::sse::SseScanner;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

fn bounded_message(e: &crate::ApiError) -> bool {
    e.message
        .as_ref()
        .is_none_or(|m| m.chars().count() <= MAX_MESSAGE_CHARS + 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn error_body_parsing_is_total_and_bounded(body in proptest::collection::vec(any::<u8>(), 0..4096), truncated in any::<bool>()) {
        let e = parse_error_body(&body, truncated);
        prop_assert!(bounded_message(&e));
        prop_assert_eq!(e.truncated, truncated);
    }

    #[test]
    fn json_like_bodies_are_total_and_bounded(
        code in "[A-Z_]{0,40}",
        msg in "\\PC{0,3000}",
        shape in 0usize..6,
        cut in 0usize..200,
    ) {
        let m = serde_json::to_string(&msg).unwrap();
        let body = match shape {
            0 => format!(r#"{{"error":{{"message":{m},"code":"{code}","type":"error"}}}}"#),
            1 => format!(r#"{{"error":{m},"message":{m}}}"#),
            2 => format!(r#"{{"detail":[{{"loc":["body"],"msg":{m},"type":"t"}}]}}"#),
            3 => format!(r#"{{"code":8,"message":{m},"details":[{{"reason":"{code}"}}]}}"#),
            4 => format!(r#"{{"fault":{{"faultstring":{m}}}}}"#),
            _ => format!("<html><title>{msg}</title></html>"),
        };
        let b = body.as_bytes();
        let b = &b[..b.len().saturating_sub(cut)];
        let e = parse_error_body(b, cut > 0);
        prop_assert!(bounded_message(&e));
        if cut == 0 && shape < 5 && !msg.trim().is_empty() {
            // Complete JSON keeps the message (bounded).
            prop_assert!(e.message.is_some());
        }
    }

    #[test]
    fn delay_parsers_never_panic_or_exceed_the_cap(s in "\\PC{0,40}") {
        for d in [parse_seconds(&s), parse_millis(&s), parse_duration_str(&s)].into_iter().flatten() {
            prop_assert!(d <= MAX_PLAUSIBLE_DELAY);
        }
    }

    #[test]
    fn numeric_delays_round_trip(ms in 0u64..86_400_000) {
        let d = parse_millis(&ms.to_string()).unwrap();
        prop_assert_eq!(d, Duration::from_millis(ms));
        let s = parse_seconds(&format!("{}", ms as f64 / 1000.0)).unwrap();
        prop_assert!((s.as_secs_f64() - ms as f64 / 1000.0).abs() < 1e-6);
    }

    #[test]
    fn header_sets_never_panic_or_exceed_the_cap(
        values in proptest::collection::vec(("[ -~]{0,30}", 0usize..6), 0..6),
        now_secs in 0u64..4_000_000_000,
    ) {
        let names = ["retry-after-ms", "retry-after", "grpc-retry-pushback-ms", "x-ratelimit-reset-requests", "x-ratelimit-remaining-requests", "x-ratelimit-limit-requests"];
        let mut h = HeaderMap::new();
        for (v, n) in &values {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(names[*n], v);
            }
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        if let DelayVerdict::Usable(d) = server_delay(&h, now) {
            prop_assert!(d.delay <= MAX_PLAUSIBLE_DELAY);
        }
        // Reset headers alone never ask for a wait.
        if h.keys().all(|k| k.as_str().starts_with("x-ratelimit")) {
            prop_assert_eq!(server_delay(&h, now), DelayVerdict::Absent);
        }
        // Consistency, from an independent reading: one plain integer limit and one plain
        // integer remaining count agree when the limit is positive and not below what remains.
        let one = |name: &str| {
            let all: Vec<_> = h.get_all(name).iter().collect();
            (all.len() == 1).then(|| all[0].to_str().ok()?.parse::<u64>().ok()).flatten()
        };
        let only_requests = h.keys().all(|k| {
            matches!(k.as_str(), "x-ratelimit-limit-requests" | "x-ratelimit-remaining-requests")
        });
        if let (Some(l), Some(r), true) = (
            one("x-ratelimit-limit-requests"),
            one("x-ratelimit-remaining-requests"),
            only_requests,
        ) {
            prop_assert_eq!(
                RateLimitHeaders::from_headers(&h).is_consistent(),
                l > 0 && r <= l,
                "limit {} remaining {}", l, r
            );
        }
    }

    #[test]
    fn sse_detection_does_not_depend_on_chunking(
        events in proptest::collection::vec((any::<bool>(), "[a-z ]{0,20}"), 1..12),
        cuts in proptest::collection::vec(1usize..50, 1..40),
    ) {
        let mut stream = String::new();
        let mut errors = 0;
        for (is_err, text) in &events {
            if *is_err {
                errors += 1;
                stream.push_str(&format!("data: {{\"error\":{{\"message\":\"{text}\"}}}}\r\n\r\n"));
            } else {
                stream.push_str(&format!(": ping\n\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"));
            }
        }
        stream.push_str("data: [DONE]\n\n");
        let bytes = stream.as_bytes();
        let mut s = SseScanner::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let n = cuts[i % cuts.len()].min(bytes.len() - at);
            let _ = s.feed(&bytes[at..at + n]);
            at += n;
            i += 1;
        }
        prop_assert_eq!(s.errors(), errors);
        prop_assert_eq!(s.events(), events.len() as u64 + 1);
        let mut whole = SseScanner::new();
        let _ = whole.feed(bytes);
        prop_assert_eq!(whole.errors(), errors);
    }

    #[test]
    fn sse_scanner_is_total_on_garbage(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..20)) {
        let mut s = SseScanner::new();
        for c in &chunks {
            let _ = s.feed(c);
            prop_assert!(s.errors() <= s.events());
        }
        // Whatever came before, the scanner recovers: a blank line ends it, and the next error
        // event is found.
        let before = s.errors();
        let found = s.feed(b"\n\ndata: {\"error\":{\"message\":\"after garbage\"}}\n\n");
        let message = found.and_then(|e| e.message);
        prop_assert_eq!(message.as_deref(), Some("after garbage"));
        prop_assert_eq!(s.errors(), before + 1);
    }
}
