//! `x-ratelimit-*` headers, Fireworks' and OpenAI's.

use super::delay::parse_duration_str;
use http::HeaderMap;
use std::time::Duration;

/// A snapshot of the rate-limit headers on one response. Units are whatever the server uses
/// (Fireworks does not document per-second versus per-minute); the 429 layer works that out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `x-ratelimit-limit-requests`.
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens-prompt`.
    pub limit_tokens_prompt: Option<u64>,
    /// `x-ratelimit-remaining-tokens-prompt`.
    pub remaining_tokens_prompt: Option<u64>,
    /// `x-ratelimit-limit-tokens-generated`.
    pub limit_tokens_generated: Option<u64>,
    /// `x-ratelimit-remaining-tokens-generated`.
    pub remaining_tokens_generated: Option<u64>,
    /// `x-ratelimit-limit-tokens-cache-adjusted-prompt`.
    pub limit_tokens_cache_adjusted_prompt: Option<u64>,
    /// `x-ratelimit-limit-tokens` (OpenAI).
    pub limit_tokens: Option<u64>,
    /// `x-ratelimit-remaining-tokens` (OpenAI).
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-requests` (OpenAI duration string).
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens`.
    pub reset_tokens: Option<Duration>,
    /// `x-ratelimit-over-limit: yes` (the spike-arrest policy: served at lower priority).
    pub over_limit: bool,
    /// Some `x-ratelimit-*` header was present but unparseable (it was ignored).
    pub malformed: bool,
}

impl RateLimitHeaders {
    /// Reads every known `x-ratelimit-*` header. Unknown ones are ignored; garbage values are
    /// dropped and flagged in [`RateLimitHeaders::malformed`].
    pub fn from_headers(h: &HeaderMap) -> RateLimitHeaders {
        let mut malformed = false;
        let mut num = |name: &str| -> Option<u64> {
            let v = h.get(name)?;
            let parsed = v.to_str().ok().and_then(parse_count);
            malformed |= parsed.is_none();
            parsed
        };
        let mut r = RateLimitHeaders {
            limit_requests: num("x-ratelimit-limit-requests"),
            remaining_requests: num("x-ratelimit-remaining-requests"),
            limit_tokens_prompt: num("x-ratelimit-limit-tokens-prompt"),
            remaining_tokens_prompt: num("x-ratelimit-remaining-tokens-prompt"),
            limit_tokens_generated: num("x-ratelimit-limit-tokens-generated"),
            remaining_tokens_generated: num("x-ratelimit-remaining-tokens-generated"),
            limit_tokens_cache_adjusted_prompt: num(
                "x-ratelimit-limit-tokens-cache-adjusted-prompt",
            ),
            limit_tokens: num("x-ratelimit-limit-tokens"),
            remaining_tokens: num("x-ratelimit-remaining-tokens"),
            ..RateLimitHeaders::default()
        };
        let mut dur = |name: &str| -> Option<Duration> {
            let v = h.get(name)?;
            let parsed = v.to_str().ok().and_then(|s| parse_duration_str(s).ok());
            malformed |= parsed.is_none();
            parsed
        };
        r.reset_requests = dur("x-ratelimit-reset-requests");
        r.reset_tokens = dur("x-ratelimit-reset-tokens");
        r.malformed = malformed;
        r.over_limit = h
            .get("x-ratelimit-over-limit")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("yes"));
        r
    }

    /// Whether no rate-limit header was present.
    pub fn is_empty(&self) -> bool {
        *self == RateLimitHeaders::default()
    }

    /// Whether every remaining/limit pair is consistent (remaining ≤ limit, limit > 0).
    /// Contradictory values should be ignored by pacing logic.
    pub fn is_consistent(&self) -> bool {
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
