//! Who may use the proxy, and for what: the checks every request passes before anything is
//! read or sent. Pure functions of the request head.
//!
//! In order:
//! 1. An HTTP/1.1 request has exactly one `Host`, and not both `Content-Length` and
//!    `Transfer-Encoding` (400 otherwise).
//! 2. Browsers are refused (403): a request with `Origin` or `Sec-Fetch-Site` came from a web
//!    page, and a `Host` that is not an IP literal, `localhost` or an `--allowed-host` name is
//!    the DNS-rebinding shape.
//! 3. Only the OpenAI-compatible API is forwarded: `GET` and `POST` under `/v1/` and
//!    `/inference/v1/` (405 for another method, 404 for another path). Dot-segments and
//!    encoded separators, raw or percent-encoded, are refused (400).
//! 4. With caller tokens configured, the caller presents one (`Authorization: Bearer` or
//!    `x-api-key`), or gets a 401.

use http::{HeaderMap, Method, StatusCode, Version};
use subtle::ConstantTimeEq;

/// A refused request: the status and an OpenAI-shaped error's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// A caller token, compared in constant time. Its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Token(Box<[u8]>);

impl Token {
    pub(crate) fn new(s: &str) -> Token {
        Token(s.as_bytes().into())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The admission settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    /// Caller tokens; empty means callers are not authenticated.
    pub(crate) tokens: Vec<Token>,
    /// Host names accepted besides IP literals and `localhost` (lower case); `*` accepts any.
    pub(crate) allowed_hosts: Vec<String>,
}

/// Where an admitted request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// The API: the path below the prefix (starting with `/`), and whether the caller
    /// authenticated with a token (its credential is then replaced by the configured key).
    Forward { rest: String, authenticated: bool },
}

/// Checks a request head against the policy (the module docs' order).
pub(crate) fn admit(
    method: &Method,
    path: &str,
    version: Version,
    headers: &HeaderMap,
    policy: &Policy,
) -> Result<Route, Refusal> {
    check_head(version, headers, policy)?;
    let route = route_of(method, path)?;
    match route {
        Route::Forward { rest, .. } if !policy.tokens.is_empty() => {
            if !presents_token(headers, &policy.tokens) {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "this proxy needs one of its caller tokens, as `Authorization: Bearer <token>` or `x-api-key`",
                ));
            }
            Ok(Route::Forward {
                rest,
                authenticated: true,
            })
        }
        r => Ok(r),
    }
}

/// The head's framing and origin: one Host, not both Content-Length and Transfer-Encoding,
/// not from a web page, a Host served here.
fn check_head(version: Version, headers: &HeaderMap, policy: &Policy) -> Result<(), Refusal> {
    let hosts = headers.get_all(http::header::HOST).iter().count();
    if version == Version::HTTP_11 && hosts != 1 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an HTTP/1.1 request must carry exactly one Host header",
        ));
    }
    if headers.contains_key(http::header::CONTENT_LENGTH)
        && headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        // RFC 9112 §6.1: a request smuggling shape; refused rather than guessed at.
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a request with both Content-Length and Transfer-Encoding is refused",
        ));
    }
    if headers.contains_key(http::header::ORIGIN) || headers.contains_key("sec-fetch-site") {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "requests from web pages are not accepted",
        ));
    }
    if let Some(h) = headers.get(http::header::HOST) {
        let ok = h
            .to_str()
            .ok()
            .is_some_and(|h| host_allowed(h, &policy.allowed_hosts));
        if !ok {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this Host is not served here (see --allowed-host)",
            ));
        }
    }
    Ok(())
}

/// Where a path goes, and whether its method is served there.
fn route_of(method: &Method, path: &str) -> Result<Route, Refusal> {
    if has_dot_segment(path) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "paths with dot-segments or encoded separators are refused",
        ));
    }
    let rest = path
        .strip_prefix("/inference/v1/")
        .or_else(|| path.strip_prefix("/v1/"));
    let local = match path {
        "/healthz" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        _ => None,
    };
    let route = match (local, rest) {
        (Some(r), _) => r,
        (None, Some(rest)) if !rest.is_empty() => Route::Forward {
            rest: format!("/{rest}"),
            authenticated: false,
        },
        _ => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route: the API is served under /v1/ and /inference/v1/",
            ));
        }
    };
    let allowed = match route {
        Route::Forward { .. } => [Method::GET, Method::POST].contains(method),
        _ => method == Method::GET,
    };
    if !allowed {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not forwarded: only GET and POST are"),
        ));
    }
    Ok(route)
}

/// Whether the caller presented one of the tokens.
fn presents_token(headers: &HeaderMap, tokens: &[Token]) -> bool {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let key = headers.get("x-api-key").map(|v| v.as_bytes());
    [bearer, key].into_iter().flatten().any(|given| {
        // Every token is compared, so the time taken does not say which one matched.
        tokens
            .iter()
            .fold(0u8, |m, t| m | t.0.ct_eq(given).unwrap_u8())
            == 1
    })
}

/// IP literals and `localhost` cannot be a rebinding attacker's name; other names must be
/// allowed by name. The port is not checked.
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a == "*" || *a == name)
}

/// A `.` or `..` segment, raw or percent-encoded, or an encoded `/` or `\`.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return true;
    }
    lower
        .split('/')
        .map(|seg| seg.replace("%2e", "."))
        .any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn admit_post(path: &str, h: &HeaderMap, p: &Policy) -> Result<Route, Refusal> {
        admit(&Method::POST, path, Version::HTTP_11, h, p)
    }

    #[test]
    fn the_api_routes_are_forwarded_and_nothing_else() {
        let h = head(&[("host", "127.0.0.1:8787")]);
        let p = Policy::default();
        assert_eq!(
            admit_post("/v1/chat/completions", &h, &p),
            Ok(Route::Forward {
                rest: "/chat/completions".into(),
                authenticated: false
            })
        );
        assert!(admit_post("/inference/v1/completions", &h, &p).is_ok());
        assert_eq!(admit_post("/echo", &h, &p).unwrap_err().status, 404);
        assert_eq!(admit_post("/v1/", &h, &p).unwrap_err().status, 404);
        for m in ["DELETE", "PUT", "TRACE", "CONNECT", "PATCH", "FOO"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            let e = admit(&m, "/v1/models", Version::HTTP_11, &h, &p).unwrap_err();
            assert_eq!(e.status, 405, "{m}");
        }
        assert_eq!(
            admit(&Method::GET, "/healthz", Version::HTTP_11, &h, &p),
            Ok(Route::Health)
        );
    }

    #[test]
    fn browsers_and_foreign_hosts_are_refused() {
        let p = Policy::default();
        for pairs in [
            vec![("host", "evil.example:8787")],
            vec![
                ("host", "127.0.0.1:8787"),
                ("origin", "http://evil.example"),
            ],
            vec![("host", "localhost:8787"), ("sec-fetch-site", "cross-site")],
        ] {
            let e = admit_post("/v1/chat/completions", &head(&pairs), &p).unwrap_err();
            assert_eq!(e.status, 403, "{pairs:?}");
        }
        for ok in [
            "localhost",
            "LOCALHOST:1",
            "[::1]:8787",
            "10.0.0.5:80",
            "localhost.",
        ] {
            assert!(host_allowed(ok, &[]), "{ok}");
        }
        let named = vec!["proxy.internal".to_owned()];
        assert!(host_allowed("proxy.internal:8787", &named));
        assert!(!host_allowed("other.internal:8787", &named));
        assert!(host_allowed("anything", &["*".to_owned()]));
    }

    #[test]
    fn exactly_one_host_on_http_1_1() {
        let p = Policy::default();
        let none = HeaderMap::new();
        assert_eq!(admit_post("/v1/models", &none, &p).unwrap_err().status, 400);
        let two = head(&[("host", "127.0.0.1"), ("host", "127.0.0.1")]);
        assert_eq!(admit_post("/v1/models", &two, &p).unwrap_err().status, 400);
        // HTTP/1.0 has no Host requirement.
        assert!(admit(&Method::GET, "/v1/models", Version::HTTP_10, &none, &p).is_ok());
    }

    #[test]
    fn tokens_are_required_when_configured() {
        let p = Policy {
            tokens: vec![Token::new("t-one"), Token::new("t-two")],
            ..Policy::default()
        };
        let host = ("host", "127.0.0.1");
        let e = admit_post("/v1/models", &head(&[host]), &p).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNAUTHORIZED, "invalid_api_key")
        );
        let wrong = head(&[host, ("authorization", "Bearer t-three")]);
        assert_eq!(
            admit_post("/v1/models", &wrong, &p).unwrap_err().status,
            401
        );
        for h in [
            head(&[host, ("authorization", "Bearer t-two")]),
            head(&[host, ("x-api-key", "t-one")]),
        ] {
            assert_eq!(
                admit_post("/v1/models", &h, &p),
                Ok(Route::Forward {
                    rest: "/models".into(),
                    authenticated: true
                })
            );
        }
        assert_eq!(format!("{:?}", p.tokens[0]), "Token(<redacted>)");
    }

    #[test]
    fn dot_segments_are_found_however_they_are_spelled() {
        for bad in [
            "/v1/../../echo",
            "/v1/%2e%2e/echo",
            "/v1/%2E%2e/x",
            "/v1/.%2e/x",
            "/v1/./x",
            "/v1/a/..",
            "/v1/a%2fb",
            "/v1/a%5Cb",
            "/v1/a\\b",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in ["/v1/chat/completions", "/v1/a.b/c..d", "/v1/...", "/v1//x"] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }

    proptest! {
        #[test]
        fn a_path_with_a_dot_segment_is_never_forwarded(
            pre in proptest::collection::vec("[a-z]{1,5}", 0..4),
            post in proptest::collection::vec("[a-z]{1,5}", 0..4),
            dot in prop_oneof![Just("."), Just(".."), Just("%2e"), Just("%2E%2e"), Just(".%2e")],
        ) {
            let mut segs = vec!["v1".to_owned()];
            segs.extend(pre);
            segs.push(dot.to_owned());
            segs.extend(post);
            let path = format!("/{}", segs.join("/"));
            let h = head(&[("host", "127.0.0.1")]);
            let e = admit_post(&path, &h, &Policy::default()).unwrap_err();
            prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }

        #[test]
        fn admission_never_panics(path in "/[ -~]{0,40}", host in "[ -~]{0,20}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = host.parse() {
                h.insert("host", v);
            }
            let _ = admit_post(&path, &h, &Policy::default());
        }
    }
}
