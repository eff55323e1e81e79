//! Which headers cross the proxy, in each direction.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) never cross, either way: `Connection` and every
//!   header it names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//!   `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`. Nor do `Host`
//!   and `Content-Length`, which hyper sets for the new hop.
//! - **`X-Forwarded-For` policy: strip, add nothing.** `Forwarded`, `X-Forwarded-*` and
//!   `X-Real-IP` from the caller are dropped, and the proxy adds none. The upstream bills the
//!   configured key, not the caller's address, so it has no use for it; a caller must not be
//!   able to forge one; and a sidecar should not leak the network it sits in.
//! - The proxy's own request headers (`x-firebreak-*`) and a caller's `x-request-id` stay here;
//!   the proxy sends its own request id.

use http::{HeaderMap, HeaderName};

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const NOT_FORWARDED: [&str; 8] = [
    "host",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// Names listed in the `Connection` header(s), lower case.
fn connection_named(h: &HeaderMap) -> Vec<String> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn hop(name: &HeaderName, named: &[String]) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || named.iter().any(|c| c == n)
}

/// The caller's headers that go upstream. With `drop_credentials` (the caller authenticated
/// with a proxy token), its `Authorization` and `x-api-key` stay here too.
pub(crate) fn upstream_request(h: &HeaderMap, drop_credentials: bool) -> HeaderMap {
    let named = connection_named(h);
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        let n = k.as_str();
        let credential = n == "authorization" || n == "x-api-key";
        if hop(k, &named)
            || NOT_FORWARDED.contains(&n)
            || n.starts_with("x-firebreak-")
            || (drop_credentials && credential)
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    // A caller that sends its Fireworks key as `x-api-key` is keyed and billed like one that
    // sends `Authorization`: the upstream wants the latter.
    if !drop_credentials && !out.contains_key(http::header::AUTHORIZATION) {
        if let Some(k) = out.remove("x-api-key") {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(k.as_bytes());
            if let Ok(v) = http::HeaderValue::from_bytes(&v) {
                out.insert(http::header::AUTHORIZATION, v);
            }
        }
    }
    out
}

/// The upstream's response headers that go back to the caller.
pub(crate) fn caller_response(h: &HeaderMap) -> HeaderMap {
    let named = connection_named(h);
    let mut out = HeaderMap::with_capacity(h.len() + 2);
    for (k, v) in h {
        if hop(k, &named) || k == http::header::CONTENT_LENGTH {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_never_cross() {
        let h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-firebreak-timeout", "3"),
            ("host", "127.0.0.1"),
            ("content-type", "application/json"),
            ("authorization", "Bearer fw_x"),
        ]);
        let up = upstream_request(&h, false);
        let names: Vec<_> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "authorization"]);
        let down = caller_response(&h);
        assert!(!down.contains_key("x-secret-hop"));
        assert!(!down.contains_key("proxy-authenticate"));
        assert!(down.contains_key("content-type"));
    }

    #[test]
    fn credentials_stay_when_the_caller_used_a_proxy_token() {
        let h = map(&[("authorization", "Bearer t"), ("x-api-key", "t")]);
        assert!(upstream_request(&h, true).is_empty());
    }

    #[test]
    fn an_x_api_key_goes_upstream_as_authorization() {
        let h = map(&[("x-api-key", "fw_caller")]);
        let up = upstream_request(&h, false);
        assert_eq!(up["authorization"], "Bearer fw_caller");
        assert!(!up.contains_key("x-api-key"));
    }
}
