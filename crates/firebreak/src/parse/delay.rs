//! Server-requested delays: `retry-after-ms`, `Retry-After` (seconds or HTTP-date),
//! `grpc-retry-pushback-ms`, and the `x-ratelimit-reset-*` duration strings (parsed, never a delay).
//!
//! Every parser is total: any input gives a usable delay or a reason why not. Garbage,
//! negative, NaN, infinite, out-of-range dates and absurd values (over
//! [`MAX_PLAUSIBLE_DELAY`]) never become a sleep.

use http::HeaderMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Longer than this is treated as garbage, not as a request to wait (a day).
///
/// This is not the retry layer's cap (60 s by default): a plausible 5-minute `Retry-After` is
/// reported as usable here, and the retry layer then refuses to sleep that long and returns a
/// typed error carrying it.
pub(crate) const MAX_PLAUSIBLE_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Which header a delay came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum DelaySource {
    /// `retry-after-ms` (float milliseconds; OpenAI convention).
    RetryAfterMs,
    /// `Retry-After` in (possibly fractional) seconds.
    RetryAfterSeconds,
    /// `Retry-After` as an HTTP-date.
    RetryAfterDate,
    /// `grpc-retry-pushback-ms`.
    GrpcPushback,
}

impl DelaySource {
    /// The header name (for `RateLimitReset`, the family).
    #[cfg(test)]
    pub(crate) fn header(self) -> &'static str {
        match self {
            DelaySource::RetryAfterMs => "retry-after-ms",
            DelaySource::RetryAfterSeconds | DelaySource::RetryAfterDate => "retry-after",
            DelaySource::GrpcPushback => "grpc-retry-pushback-ms",
        }
    }
}

/// Why a delay header is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum DelayError {
    /// Empty, or not valid visible ASCII.
    Empty,
    /// Not a number, not an HTTP-date, not a duration string.
    Malformed,
    /// A negative value. (For `grpc-retry-pushback-ms` gRPC defines this as "do not retry".)
    Negative,
    /// NaN or infinite.
    NotFinite,
    /// Longer than [`MAX_PLAUSIBLE_DELAY`], or a date too far ahead.
    Absurd,
}

impl fmt::Display for DelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DelayError::Empty => "empty value",
            DelayError::Malformed => "not a number, HTTP-date or duration",
            DelayError::Negative => "negative value",
            DelayError::NotFinite => "NaN or infinite",
            DelayError::Absurd => "implausibly long (over a day)",
        })
    }
}

/// A usable server-requested delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ServerDelay {
    /// How long the server asked the client to wait (zero for a date in the past).
    pub(crate) delay: Duration,
    /// Where it came from.
    pub(crate) source: DelaySource,
}

/// What the headers said about waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum DelayVerdict {
    /// No delay header at all.
    #[default]
    Absent,
    /// A usable delay.
    Usable(ServerDelay),
    /// Delay headers were present but none was usable; the first problem found.
    Unusable {
        /// The header.
        source: DelaySource,
        /// What was wrong.
        error: DelayError,
    },
}

impl DelayVerdict {
    /// The usable delay, if any.
    pub(crate) fn delay(&self) -> Option<Duration> {
        match self {
            DelayVerdict::Usable(d) => Some(d.delay),
            _ => None,
        }
    }
}

/// Reads the server-requested delay from `headers`, in OpenAI's order of precedence:
/// `retry-after-ms`, then `Retry-After`, then `grpc-retry-pushback-ms`. `now` resolves
/// HTTP-dates.
///
/// `x-ratelimit-reset-*` is deliberately not a delay: it says when a rate-limit window
/// refills, not when this request may be retried (a 503 carrying `x-ratelimit-reset-tokens: 6m0s`
/// is not asking for a six-minute wait). openai-python reads only the first two headers too.
/// The 429 gate may use it as a pacing hint after a 429 (`RateLimitHeaders`).
pub(crate) fn server_delay(headers: &HeaderMap, now: SystemTime) -> DelayVerdict {
    let mut first_err: Option<(DelaySource, DelayError)> = None;
    let mut note = |src, e| {
        first_err.get_or_insert((src, e));
    };
    if let Some(v) = headers.get("retry-after-ms") {
        match v
            .to_str()
            .map_err(|_| DelayError::Empty)
            .and_then(parse_millis)
        {
            Ok(d) => return usable(d, DelaySource::RetryAfterMs),
            Err(e) => note(DelaySource::RetryAfterMs, e),
        }
    }
    // Several `Retry-After` headers: the first usable one wins.
    for v in headers.get_all(http::header::RETRY_AFTER) {
        match v.to_str() {
            Ok(s) => match parse_retry_after(s, now) {
                Ok(d) => return DelayVerdict::Usable(d),
                Err((src, e)) => note(src, e),
            },
            Err(_) => note(DelaySource::RetryAfterSeconds, DelayError::Empty),
        }
    }
    if let Some(v) = headers.get("grpc-retry-pushback-ms") {
        match v
            .to_str()
            .map_err(|_| DelayError::Empty)
            .and_then(parse_millis)
        {
            Ok(d) => return usable(d, DelaySource::GrpcPushback),
            Err(e) => note(DelaySource::GrpcPushback, e),
        }
    }
    match first_err {
        Some((source, error)) => DelayVerdict::Unusable { source, error },
        None => DelayVerdict::Absent,
    }
}

fn usable(delay: Duration, source: DelaySource) -> DelayVerdict {
    DelayVerdict::Usable(ServerDelay { delay, source })
}

/// Parses a non-negative decimal number of seconds (`"2"`, `"0.25"`, `"1e1"`).
///
/// # Errors
/// See [`DelayError`].
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, DelayError> {
    parse_scaled(s, 1.0)
}

/// Parses a non-negative decimal number of milliseconds (`"1500"`, `"20.5"`).
///
/// # Errors
/// See [`DelayError`].
pub(crate) fn parse_millis(s: &str) -> Result<Duration, DelayError> {
    parse_scaled(s, 1e-3)
}

fn parse_scaled(s: &str, to_secs: f64) -> Result<Duration, DelayError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DelayError::Empty);
    }
    // Only plain decimal notation: reject "inf", "NaN", "0x10" before Rust's lenient parser.
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Err(
            if s.eq_ignore_ascii_case("nan") || s.to_ascii_lowercase().contains("inf") {
                DelayError::NotFinite
            } else {
                DelayError::Malformed
            },
        );
    }
    let x: f64 = s.parse().map_err(|_| DelayError::Malformed)?;
    let secs = x * to_secs;
    if !secs.is_finite() {
        return Err(DelayError::NotFinite);
    }
    if secs < 0.0 {
        return Err(DelayError::Negative);
    }
    if secs > MAX_PLAUSIBLE_DELAY.as_secs_f64() {
        return Err(DelayError::Absurd);
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a `Retry-After` value: seconds, or an HTTP-date relative to `now` (a past date means
/// "now": zero).
///
/// # Errors
/// The source it was read as, and why it is unusable.
pub(crate) fn parse_retry_after(
    s: &str,
    now: SystemTime,
) -> Result<ServerDelay, (DelaySource, DelayError)> {
    match parse_seconds(s) {
        Ok(delay) => {
            return Ok(ServerDelay {
                delay,
                source: DelaySource::RetryAfterSeconds,
            });
        }
        Err(DelayError::Malformed) => {}
        Err(e) => return Err((DelaySource::RetryAfterSeconds, e)),
    }
    let date = httpdate::parse_http_date(s.trim())
        .map_err(|_| (DelaySource::RetryAfterSeconds, DelayError::Malformed))?;
    let delay = date.duration_since(now).unwrap_or(Duration::ZERO);
    if delay > MAX_PLAUSIBLE_DELAY {
        return Err((DelaySource::RetryAfterDate, DelayError::Absurd));
    }
    Ok(ServerDelay {
        delay,
        source: DelaySource::RetryAfterDate,
    })
}

/// Parses a Go-style duration string as OpenAI's `x-ratelimit-reset-*` headers use: `1s`,
/// `6m0s`, `12ms`, `1h2m3.5s`, `250us`, `0.5s`. A bare number is taken as seconds.
///
/// # Errors
/// See [`DelayError`].
pub(crate) fn parse_duration_str(s: &str) -> Result<Duration, DelayError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DelayError::Empty);
    }
    if s.starts_with('-') {
        return Err(DelayError::Negative);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_seconds(s);
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total = 0.0f64;
    // Each turn consumes at least one byte, so this ends within b.len() turns.
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        if i == start {
            return Err(DelayError::Malformed);
        }
        let num: f64 = s[start..i].parse().map_err(|_| DelayError::Malformed)?;
        let ustart = i;
        while i < b.len() && !(b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let scale = match &s[ustart..i] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(DelayError::Malformed),
        };
        total += num * scale;
        if !total.is_finite() {
            return Err(DelayError::NotFinite);
        }
    }
    if total > MAX_PLAUSIBLE_DELAY.as_secs_f64() {
        return Err(DelayError::Absurd);
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_bounds_themselves_are_usable() {
        // Zero and exactly a day are delays; a hair less than zero or more than a day are not.
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_millis("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("86400"), Ok(MAX_PLAUSIBLE_DELAY));
        assert_eq!(parse_seconds("86400.001"), Err(DelayError::Absurd));
        assert_eq!(parse_seconds("-0.001"), Err(DelayError::Negative));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_a_day = httpdate::fmt_http_date(now + MAX_PLAUSIBLE_DELAY);
        assert_eq!(
            parse_retry_after(&in_a_day, now).map(|d| d.delay),
            Ok(MAX_PLAUSIBLE_DELAY)
        );
        let later = httpdate::fmt_http_date(now + MAX_PLAUSIBLE_DELAY + Duration::from_secs(1));
        assert_eq!(
            parse_retry_after(&later, now),
            Err((DelaySource::RetryAfterDate, DelayError::Absurd))
        );
    }

    #[test]
    fn every_source_names_its_header() {
        let table = [
            (DelaySource::RetryAfterMs, "retry-after-ms"),
            (DelaySource::RetryAfterSeconds, "retry-after"),
            (DelaySource::RetryAfterDate, "retry-after"),
            (DelaySource::GrpcPushback, "grpc-retry-pushback-ms"),
        ];
        for (src, name) in table {
            assert_eq!(src.header(), name, "{src:?}");
        }
    }

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn table() {
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(30));
        let cases: Vec<(Vec<(&'static str, &str)>, DelayVerdict)> = vec![
            (vec![], DelayVerdict::Absent),
            (
                vec![("retry-after", "2")],
                usable(Duration::from_secs(2), DelaySource::RetryAfterSeconds),
            ),
            (
                vec![("retry-after", " 0.25 ")],
                usable(Duration::from_millis(250), DelaySource::RetryAfterSeconds),
            ),
            (
                vec![("retry-after-ms", "1500.5")],
                usable(Duration::from_micros(1_500_500), DelaySource::RetryAfterMs),
            ),
            (
                vec![("retry-after-ms", "20"), ("retry-after", "9")],
                usable(Duration::from_millis(20), DelaySource::RetryAfterMs),
            ),
            (
                vec![("retry-after-ms", "junk"), ("retry-after", "9")],
                usable(Duration::from_secs(9), DelaySource::RetryAfterSeconds),
            ),
            (
                vec![("retry-after", &date)],
                usable(Duration::from_secs(30), DelaySource::RetryAfterDate),
            ),
            (
                vec![("retry-after", &past)],
                usable(Duration::ZERO, DelaySource::RetryAfterDate),
            ),
            (
                vec![("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterDate,
                    error: DelayError::Absurd,
                },
            ),
            (
                vec![("retry-after", "-5")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterSeconds,
                    error: DelayError::Negative,
                },
            ),
            (
                vec![("retry-after", "NaN")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterSeconds,
                    error: DelayError::NotFinite,
                },
            ),
            (
                vec![("retry-after", "inf")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterSeconds,
                    error: DelayError::NotFinite,
                },
            ),
            (
                vec![("retry-after", "1e400")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterSeconds,
                    error: DelayError::NotFinite,
                },
            ),
            (
                vec![("retry-after", "99999999999999999999")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterSeconds,
                    error: DelayError::Absurd,
                },
            ),
            (
                vec![("retry-after", "soon, maybe")],
                DelayVerdict::Unusable {
                    source: DelaySource::RetryAfterSeconds,
                    error: DelayError::Malformed,
                },
            ),
            (
                vec![("retry-after", ""), ("retry-after", "3")],
                usable(Duration::from_secs(3), DelaySource::RetryAfterSeconds),
            ),
            (
                vec![("grpc-retry-pushback-ms", "250")],
                usable(Duration::from_millis(250), DelaySource::GrpcPushback),
            ),
            (
                vec![("grpc-retry-pushback-ms", "-1")],
                DelayVerdict::Unusable {
                    source: DelaySource::GrpcPushback,
                    error: DelayError::Negative,
                },
            ),
            // Reset headers say when a window refills: never a retry delay.
            (
                vec![("x-ratelimit-reset-requests", "6m0s")],
                DelayVerdict::Absent,
            ),
            (
                vec![
                    ("x-ratelimit-reset-tokens", "6m0s"),
                    ("x-ratelimit-reset-requests", "20s"),
                ],
                DelayVerdict::Absent,
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(server_delay(&hm(&headers), now()), want, "{headers:?}");
        }
    }

    #[test]
    fn duration_strings() {
        for (s, ms) in [
            ("1s", 1000.0),
            ("12ms", 12.0),
            ("250us", 0.25),
            ("0.5s", 500.0),
            ("2m", 120_000.0),
            ("3", 3000.0),
            ("1h", 3_600_000.0),
            ("2000000ns", 2.0),
            ("3µs", 0.003),
            ("1m30s", 90_000.0),
            ("24h", 86_400_000.0),
        ] {
            let d = parse_duration_str(s).unwrap();
            assert!((d.as_secs_f64() * 1000.0 - ms).abs() < 1e-6, "{s}: {d:?}");
        }
        for s in ["", "s", "1x", "1s2", "--1s", "1..2s", "-1s"] {
            assert!(parse_duration_str(s).is_err(), "{s}");
        }
        assert_eq!(parse_duration_str("999999h"), Err(DelayError::Absurd));
    }
}
