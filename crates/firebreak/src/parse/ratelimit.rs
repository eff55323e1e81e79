//! `x-ratelimit-*` headers, Fireworks' and OpenAI's.

use super::delay::parse_duration_str;
use http::HeaderMap;
use std::time::Duration;

/// A snapshot of the rate-limit headers on one response. Units are whatever the server uses
/// (Fireworks does not document per-second versus per-minute); the 429 layer works that out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateLimitHeaders {
    /// `x-ratelimit-limit-requests`.
    pub(crate) limit_requests: Option<u64>,
    /// `x-ratelimit-remaining-requests`.
    pub(crate) remaining_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens-prompt`.
    pub(crate) limit_tokens_prompt: Option<u64>,
    /// `x-ratelimit-remaining-tokens-prompt`.
    pub(crate) remaining_tokens_prompt: Option<u64>,
    /// `x-ratelimit-limit-tokens-generated`.
    pub(crate) limit_tokens_generated: Option<u64>,
    /// `x-ratelimit-remaining-tokens-generated`.
    pub(crate) remaining_tokens_generated: Option<u64>,
    /// `x-ratelimit-limit-tokens-cache-adjusted-prompt`.
    pub(crate) limit_tokens_cache_adjusted_prompt: Option<u64>,
    /// `x-ratelimit-limit-tokens` (OpenAI).
    pub(crate) limit_tokens: Option<u64>,
    /// `x-ratelimit-remaining-tokens` (OpenAI).
    pub(crate) remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-requests` (OpenAI duration string).
    pub(crate) reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens`.
    pub(crate) reset_tokens: Option<Duration>,
    /// `x-ratelimit-over-limit: yes` (the spike-arrest policy: served at lower priority).
    pub(crate) over_limit: bool,
    /// Some `x-ratelimit-*` header was present but unparseable (it was ignored).
    pub(crate) malformed: bool,
}

/// Where one header's value goes.
enum Slot<'a> {
    Count(&'a mut Option<u64>),
    Duration(&'a mut Option<Duration>),
    Flag(&'a mut bool),
}

impl RateLimitHeaders {
    /// Reads every known `x-ratelimit-*` header. Unknown ones are ignored; garbage values are
    /// dropped and flagged in [`RateLimitHeaders::malformed`].
    pub(crate) fn from_headers(h: &HeaderMap) -> RateLimitHeaders {
        // One pass over the map, matching on the name's suffix, instead of a dozen lookups by
        // string (each of which parses the name): this runs on every answer, successes included,
        // and most answers carry none of these headers.
        let mut r = RateLimitHeaders::default();
        let mut malformed = false;
        let mut seen = 0u16; // bit i: header i already read (the first value wins, as `get` does)
        for (name, v) in h {
            let Some(rest) = name.as_str().strip_prefix("x-ratelimit-") else {
                continue;
            };
            let (bit, slot): (u16, Slot<'_>) = match rest {
                "limit-requests" => (0, Slot::Count(&mut r.limit_requests)),
                "remaining-requests" => (1, Slot::Count(&mut r.remaining_requests)),
                "limit-tokens-prompt" => (2, Slot::Count(&mut r.limit_tokens_prompt)),
                "remaining-tokens-prompt" => (3, Slot::Count(&mut r.remaining_tokens_prompt)),
                "limit-tokens-generated" => (4, Slot::Count(&mut r.limit_tokens_generated)),
                "remaining-tokens-generated" => (5, Slot::Count(&mut r.remaining_tokens_generated)),
                "limit-tokens-cache-adjusted-prompt" => {
                    (6, Slot::Count(&mut r.limit_tokens_cache_adjusted_prompt))
                }
                "limit-tokens" => (7, Slot::Count(&mut r.limit_tokens)),
                "remaining-tokens" => (8, Slot::Count(&mut r.remaining_tokens)),
                "reset-requests" => (9, Slot::Duration(&mut r.reset_requests)),
                "reset-tokens" => (10, Slot::Duration(&mut r.reset_tokens)),
                "over-limit" => (11, Slot::Flag(&mut r.over_limit)),
                _ => continue,
            };
            if seen & (1 << bit) != 0 {
                continue;
            }
            seen |= 1 << bit;
            let text = v.to_str().ok();
            match slot {
                Slot::Count(c) => {
                    *c = text.and_then(parse_count);
                    malformed |= c.is_none();
                }
                Slot::Duration(d) => {
                    *d = text.and_then(|s| parse_duration_str(s).ok());
                    malformed |= d.is_none();
                }
                Slot::Flag(f) => *f = text.is_some_and(|v| v.trim().eq_ignore_ascii_case("yes")),
            }
        }
        r.malformed = malformed;
        r
    }

    /// Whether no rate-limit header was present.
    pub(crate) fn is_empty(&self) -> bool {
        *self == RateLimitHeaders::default()
    }

    /// Whether every remaining/limit pair is consistent (remaining ≤ limit, limit > 0).
    /// Contradictory values should be ignored by pacing logic.
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    pub(crate) fn is_consistent(&self) -> bool {
        let pair = |l: Option<u64>, r: Option<u64>| match (l, r) {
            (Some(l), Some(r)) => l > 0 && r <= l,
            (Some(l), None) => l > 0,
            _ => true,
        };
        pair(self.limit_requests, self.remaining_requests)
            && pair(self.limit_tokens_prompt, self.remaining_tokens_prompt)
            && pair(self.limit_tokens_generated, self.remaining_tokens_generated)
            && pair(self.limit_tokens, self.remaining_tokens)
    }
}

/// A non-negative count. Accepts integers and finite non-negative decimals (floored); rejects
/// negative, NaN, infinite and non-numeric values.
fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    if !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let x: f64 = s.parse().ok()?;
    (x.is_finite() && x >= 0.0 && x < u64::MAX as f64).then_some(x as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_first_value_of_a_repeated_header_wins_and_others_are_ignored() {
        let mut h = HeaderMap::new();
        h.append("x-ratelimit-limit-requests", HeaderValue::from_static("60"));
        h.append(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("junk"),
        );
        h.append(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("junk"),
        );
        h.append(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("5"),
        );
        h.insert("x-ratelimit-over-limit", HeaderValue::from_static(" YES "));
        h.insert("x-ratelimit-something-new", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let r = RateLimitHeaders::from_headers(&h);
        assert_eq!(r.limit_requests, Some(60));
        assert_eq!(r.remaining_requests, None, "the first value was garbage");
        assert!(r.malformed);
        assert!(r.over_limit);
        assert!(RateLimitHeaders::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn parses_fireworks_and_openai_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit-requests", "6000"),
            ("x-ratelimit-remaining-requests", "5999"),
            ("x-ratelimit-limit-tokens-prompt", "3600000"),
            ("x-ratelimit-remaining-tokens-prompt", "3599000.0"),
            ("x-ratelimit-limit-tokens-generated", "36000"),
            ("x-ratelimit-remaining-tokens-generated", "35000"),
            ("x-ratelimit-limit-tokens-cache-adjusted-prompt", "900000"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-over-limit", "yes"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let r = RateLimitHeaders::from_headers(&h);
        assert_eq!(r.limit_requests, Some(6000));
        assert_eq!(r.remaining_requests, Some(5999));
        assert_eq!(r.remaining_tokens_prompt, Some(3_599_000));
        assert_eq!(r.limit_tokens_cache_adjusted_prompt, Some(900_000));
        assert_eq!(r.reset_requests, Some(Duration::from_secs(360)));
        assert!(r.over_limit && !r.malformed && r.is_consistent() && !r.is_empty());
    }

    #[test]
    fn garbage_is_dropped_and_flagged() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-requests", HeaderValue::from_static("-5"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("NaN"),
        );
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("soon"));
        let r = RateLimitHeaders::from_headers(&h);
        assert_eq!(
            (r.limit_requests, r.remaining_requests, r.reset_tokens),
            (None, None, None)
        );
        assert!(r.malformed);
    }

    #[test]
    fn every_header_lands_in_its_own_field() {
        let names = [
            ("x-ratelimit-limit-requests", "1"),
            ("x-ratelimit-remaining-requests", "2"),
            ("x-ratelimit-limit-tokens-prompt", "3"),
            ("x-ratelimit-remaining-tokens-prompt", "4"),
            ("x-ratelimit-limit-tokens-generated", "5"),
            ("x-ratelimit-remaining-tokens-generated", "6"),
            ("x-ratelimit-limit-tokens-cache-adjusted-prompt", "7"),
            ("x-ratelimit-limit-tokens", "8"),
            ("x-ratelimit-remaining-tokens", "9"),
            ("x-ratelimit-reset-requests", "10s"),
            ("x-ratelimit-reset-tokens", "11s"),
            ("x-ratelimit-over-limit", "yes"),
        ];
        let mut h = HeaderMap::new();
        for (k, v) in names {
            h.insert(k, HeaderValue::from_static(v));
        }
        let r = RateLimitHeaders::from_headers(&h);
        let counts = [
            r.limit_requests,
            r.remaining_requests,
            r.limit_tokens_prompt,
            r.remaining_tokens_prompt,
            r.limit_tokens_generated,
            r.remaining_tokens_generated,
            r.limit_tokens_cache_adjusted_prompt,
            r.limit_tokens,
            r.remaining_tokens,
        ];
        assert_eq!(counts, [1, 2, 3, 4, 5, 6, 7, 8, 9].map(Some));
        assert_eq!(r.reset_requests, Some(Duration::from_secs(10)));
        assert_eq!(r.reset_tokens, Some(Duration::from_secs(11)));
        assert!(r.over_limit && !r.malformed);
    }

    #[test]
    fn one_bad_value_flags_the_set_whatever_follows() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("many"),
        );
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("3"),
        );
        let r = RateLimitHeaders::from_headers(&h);
        assert!(r.malformed);
        assert_eq!((r.limit_requests, r.remaining_requests), (None, Some(3)));
    }

    #[test]
    fn a_bad_duration_alone_flags_the_set() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("soon"),
        );
        let r = RateLimitHeaders::from_headers(&h);
        assert!(r.malformed && r.reset_requests.is_none());
    }

    #[test]
    fn consistency_at_the_edges() {
        let rl = |limit: Option<u64>, remaining: Option<u64>| RateLimitHeaders {
            limit_requests: limit,
            remaining_requests: remaining,
            ..RateLimitHeaders::default()
        };
        // (limit, remaining, consistent), written out.
        let table = [
            (Some(0), Some(0), false),
            (Some(0), None, false),
            (Some(5), None, true),
            (Some(1), Some(1), true),
            (Some(5), Some(6), false),
            (None, Some(6), true),
        ];
        for (l, r, ok) in table {
            assert_eq!(rl(l, r).is_consistent(), ok, "{l:?} {r:?}");
        }
    }

    #[test]
    fn counts_are_floored_and_bounded() {
        assert_eq!(parse_count("1.9"), Some(1));
        assert_eq!(parse_count(" 7 "), Some(7));
        assert_eq!(
            parse_count("18446744073709551616.0"),
            None,
            "2^64 does not fit"
        );
        assert_eq!(parse_count("99999999999999999999999999.5"), None);
        assert_eq!(parse_count("-1"), None);
    }

    #[test]
    fn contradictions_are_detected() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-requests", HeaderValue::from_static("10"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("50"),
        );
        assert!(!RateLimitHeaders::from_headers(&h).is_consistent());
        h.insert("x-ratelimit-limit-requests", HeaderValue::from_static("0"));
        assert!(!RateLimitHeaders::from_headers(&h).is_consistent());
        assert!(RateLimitHeaders::from_headers(&HeaderMap::new()).is_empty());
    }
}
