//! Error bodies in every shape seen from Fireworks (see `shared/FIREWORKS.md`).

use serde_json::{Map, Value};
use std::fmt;

/// Longest message kept, in characters; longer ones are cut with `…`.
pub(crate) const MAX_MESSAGE_CHARS: usize = 1024;

/// Which shape an error body had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BodyShape {
    /// `{"error":{"message","param","code","type"},"request_id"}` (the current gateway; also OpenAI).
    Gateway,
    /// `{"error":{"object":"error","type","code","message"}}` (the older inference server).
    OldInference,
    /// `{"error":"Too Many Requests","message":"…"}`.
    StringError,
    /// FastAPI validation `{"detail":[{"loc","msg","type"}]}` (or `{"detail":"…"}`).
    FastApi,
    /// gRPC-gateway `{"code":7,"message","details":[…]}`, bare or wrapped in `{"error":…}`.
    GrpcGateway,
    /// `{"fault":{"faultstring","detail":{"errorcode"}}}`.
    LegacyFault,
    /// Some other JSON.
    OtherJson,
    /// An HTML page (a proxy or CDN error page).
    Html,
    /// Plain text, or JSON cut short by the size bound.
    Text,
    /// No body.
    #[default]
    Empty,
}

/// What an error body said. Every field is optional: callers prefer `code`, then `kind`, then
/// the HTTP status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    /// `error.code` (a string such as `RATE_LIMIT_EXCEEDED`, or a gRPC reason).
    pub code: Option<String>,
    /// `error.type` (e.g. `invalid_request_error`).
    pub kind: Option<String>,
    /// A human message, at most 1024 characters.
    pub message: Option<String>,
    /// `error.param` (e.g. `model`).
    pub param: Option<String>,
    /// The body's `request_id`.
    pub request_id: Option<String>,
    /// The body's shape.
    pub shape: BodyShape,
    /// The body was longer than the bound and only a prefix was read.
    pub truncated: bool,
}

impl ApiError {
    /// `code`, else `kind`.
    pub(crate) fn best_code(&self) -> Option<&str> {
        self.code.as_deref().or(self.kind.as_deref())
    }

    /// Whether the body names a rate limit (`RATE_LIMIT_EXCEEDED`, `rate_limit_error`, "rate
    /// limit exceeded"): then a 429 is an account or model limit. A message that speaks of
    /// capacity or overload ("Deployment capacity exceeded", "server overloaded") makes it a
    /// capacity refusal whatever the code says (Fireworks has sent both under one code).
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    pub(crate) fn says_rate_limit(&self) -> bool {
        let norm = |s: &str| s.to_ascii_lowercase().replace([' ', '-'], "_");
        if self
            .message
            .as_deref()
            .map(norm)
            .is_some_and(|m| m.contains("capacity") || m.contains("overload"))
        {
            return false;
        }
        [
            self.code.as_deref(),
            self.kind.as_deref(),
            self.message.as_deref(),
        ]
        .into_iter()
        .flatten()
        .any(|s| norm(s).contains("rate_limit"))
    }
}

/// Whether an error answer says the account's quota, spending limit or billing is exhausted,
/// as opposed to a rate limit that refills by itself. Pure and total.
///
/// - 402 Payment Required always is.
/// - A 429, 403, 400 or 412 is when its `code` or `type` names one (`insufficient_quota`,
///   `billing_hard_limit_reached`, …) or its message speaks of an exceeded current quota, a
///   spending limit, billing, credits or a suspended account. A 412 that only says a LoRA
///   failed to load is not, nor is a gRPC `RESOURCE_EXHAUSTED` / `QUOTA_EXCEEDED` (Google-style
///   APIs use it for rate limits).
pub fn quota_exhausted(status: u16, api: Option<&ApiError>) -> bool {
    if status == 402 {
        return true;
    }
    if !matches!(status, 400 | 403 | 412 | 429) {
        return false;
    }
    let Some(api) = api else { return false };
    // Not `QUOTA_EXCEEDED` / `RESOURCE_EXHAUSTED`: Google-style APIs use those for rate limits.
    const CODES: [&str; 5] = [
        "insufficient_quota",
        "billing",
        "spend",
        "credit",
        "payment",
    ];
    let code_says = [api.code.as_deref(), api.kind.as_deref()]
        .into_iter()
        .flatten()
        .any(|c| {
            let c = c.to_ascii_lowercase();
            CODES.iter().any(|k| c.contains(k))
        });
    const MESSAGES: [&str; 7] = [
        "insufficient_quota",
        "exceeded your current quota",
        "spending limit",
        "spend limit",
        "billing",
        "out of credits",
        "suspended",
    ];
    let message_says = api.message.as_deref().is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        MESSAGES.iter().any(|k| m.contains(k))
    });
    code_says || message_says
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, self.best_code()) {
            (Some(m), Some(c)) => write!(f, "{m} ({c})"),
            (Some(m), None) => f.write_str(m),
            (None, Some(c)) => f.write_str(c),
            (None, None) => f.write_str("no error details"),
        }
    }
}

/// Parses an error body. `truncated` says the body was cut at the read bound. Total: any bytes
/// give an [`ApiError`]; invalid UTF-8 is replaced.
pub fn parse_error_body(body: &[u8], truncated: bool) -> ApiError {
    let mut e = parse_inner(body);
    e.truncated = truncated;
    e
}

fn parse_inner(body: &[u8]) -> ApiError {
    let trimmed = trim_ascii(body);
    if trimmed.is_empty() {
        return ApiError::default();
    }
    if trimmed[0] == b'{' {
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(trimmed) {
            return from_json(&o);
        }
        // JSON cut short by the bound, or broken: salvage the fields we can find.
        let text = String::from_utf8_lossy(trimmed);
        let found = ApiError {
            code: scan_string_field(&text, "code"),
            kind: scan_string_field(&text, "type"),
            message: scan_string_field(&text, "message").map(|m| bound(&m)),
            request_id: scan_string_field(&text, "request_id"),
            shape: BodyShape::Text,
            ..ApiError::default()
        };
        if found.code.is_some() || found.message.is_some() {
            return found;
        }
    }
    let text = String::from_utf8_lossy(trimmed);
    if trimmed[0] == b'<' {
        let message = html_title(&text)
            .map(str::to_owned)
            .unwrap_or_else(|| strip_tags(&text));
        return ApiError {
            message: Some(bound(message.trim())),
            shape: BodyShape::Html,
            ..ApiError::default()
        };
    }
    ApiError {
        message: Some(bound(text.trim())),
        shape: BodyShape::Text,
        ..ApiError::default()
    }
}

fn from_json(o: &Map<String, Value>) -> ApiError {
    let request_id = str_field(o, "request_id");
    let mut e = match o.get("error") {
        Some(Value::Object(inner)) if is_grpc_gateway(inner) => grpc_gateway(inner),
        Some(Value::Object(inner)) => ApiError {
            code: scalar_field(inner, "code"),
            kind: str_field(inner, "type"),
            message: str_field(inner, "message").map(|m| bound(&m)),
            param: scalar_field(inner, "param"),
            request_id: str_field(inner, "request_id"),
            shape: if inner.get("object").and_then(Value::as_str) == Some("error") {
                BodyShape::OldInference
            } else {
                BodyShape::Gateway
            },
            ..ApiError::default()
        },
        Some(Value::String(s)) => ApiError {
            kind: Some(bound(s)),
            message: str_field(o, "message")
                .or_else(|| Some(s.clone()))
                .map(|m| bound(&m)),
            shape: BodyShape::StringError,
            ..ApiError::default()
        },
        _ => {
            if let Some(d) = o.get("detail") {
                fastapi(d)
            } else if let Some(Value::Object(fault)) = o.get("fault") {
                ApiError {
                    code: fault
                        .get("detail")
                        .and_then(Value::as_object)
                        .and_then(|d| str_field(d, "errorcode")),
                    message: str_field(fault, "faultstring").map(|m| bound(&m)),
                    shape: BodyShape::LegacyFault,
                    ..ApiError::default()
                }
            } else if is_grpc_gateway(o) {
                grpc_gateway(o)
            } else {
                ApiError {
                    code: scalar_field(o, "code"),
                    kind: str_field(o, "type"),
                    message: str_field(o, "message").map(|m| bound(&m)),
                    shape: BodyShape::OtherJson,
                    ..ApiError::default()
                }
            }
        }
    };
    if e.request_id.is_none() {
        e.request_id = request_id;
    }
    e
}

fn is_grpc_gateway(o: &Map<String, Value>) -> bool {
    o.get("code").is_some_and(Value::is_i64)
        && (o.contains_key("details") || o.contains_key("message"))
}

fn grpc_gateway(o: &Map<String, Value>) -> ApiError {
    let code_num = o.get("code").and_then(Value::as_i64).unwrap_or(2);
    let reason = o
        .get("details")
        .and_then(Value::as_array)
        .and_then(|ds| {
            ds.iter()
                .find_map(|d| d.get("reason").and_then(Value::as_str))
        })
        .map(bound);
    ApiError {
        code: reason.or_else(|| Some(grpc_code_name(code_num).to_owned())),
        kind: Some(grpc_code_name(code_num).to_owned()),
        message: str_field(o, "message").map(|m| bound(&m)),
        shape: BodyShape::GrpcGateway,
        ..ApiError::default()
    }
}

fn fastapi(d: &Value) -> ApiError {
    match d {
        Value::Array(items) => {
            let mut msg = String::new();
            for it in items.iter().take(3) {
                if !msg.is_empty() {
                    msg.push_str("; ");
                }
                if let Some(loc) = it.get("loc").and_then(Value::as_array) {
                    let path: Vec<String> = loc
                        .iter()
                        .take(8)
                        .map(|p| match p {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    msg.push_str(&path.join("."));
                    msg.push_str(": ");
                }
                msg.push_str(it.get("msg").and_then(Value::as_str).unwrap_or("invalid"));
            }
            if items.len() > 3 {
                msg.push_str(&format!(" (+{} more)", items.len() - 3));
            }
            ApiError {
                kind: items
                    .first()
                    .and_then(|i| i.get("type"))
                    .and_then(Value::as_str)
                    .map(bound),
                message: Some(bound(&msg)),
                shape: BodyShape::FastApi,
                ..ApiError::default()
            }
        }
        Value::String(s) => ApiError {
            message: Some(bound(s)),
            shape: BodyShape::FastApi,
            ..ApiError::default()
        },
        other => ApiError {
            message: Some(bound(&other.to_string())),
            shape: BodyShape::FastApi,
            ..ApiError::default()
        },
    }
}

/// The canonical name of a gRPC status code.
pub(crate) fn grpc_code_name(code: i64) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn str_field(o: &Map<String, Value>, k: &str) -> Option<String> {
    o.get(k).and_then(Value::as_str).map(bound)
}

/// A string or a number, as a string (codes are sometimes numeric).
fn scalar_field(o: &Map<String, Value>, k: &str) -> Option<String> {
    match o.get(k)? {
        Value::String(s) => Some(bound(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn bound(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => s.to_owned(),
        Some((i, _)) => {
            let mut out = s[..i].to_owned();
            out.push('…');
            out
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Finds `"field":"value"` in text that is not (complete) JSON. Unescapes only `\"` and `\\`.
fn scan_string_field(text: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let at = text.find(&key)? + key.len();
    let rest = text[at..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    // Bounded by the message cap.
    for _ in 0..MAX_MESSAGE_CHARS {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    out.push('…');
    Some(out)
}

fn html_title(text: &str) -> Option<&str> {
    let lower_start = find_ci(text, "<title>")? + "<title>".len();
    let len = find_ci(&text[lower_start..], "</title>")?;
    let t = text[lower_start..lower_start + len].trim();
    (!t.is_empty()).then_some(t)
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS * 4));
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
        if out.len() > MAX_MESSAGE_CHARS * 4 {
            break;
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ApiError {
        parse_error_body(s.as_bytes(), false)
    }

    #[test]
    fn current_gateway() {
        let e = p(
            r#"{"error":{"message":"The API key you provided is invalid.","param":null,"code":"UNAUTHORIZED","type":"error"},"request_id":"req-9"}"#,
        );
        assert_eq!(e.shape, BodyShape::Gateway);
        assert_eq!(e.code.as_deref(), Some("UNAUTHORIZED"));
        assert_eq!(e.kind.as_deref(), Some("error"));
        assert_eq!(e.param, None);
        assert_eq!(e.request_id.as_deref(), Some("req-9"));
        assert_eq!(
            e.message.as_deref(),
            Some("The API key you provided is invalid.")
        );
        let e = p(
            r#"{"error":{"message":"Model not found","param":"model","code":"NOT_FOUND","type":"error"}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn older_inference_server() {
        let e = p(
            r#"{"error":{"object":"error","type":"invalid_request_error","code":"rate_limit","message":"server overloaded, please try again later"},"raw_output":null}"#,
        );
        assert_eq!(e.shape, BodyShape::OldInference);
        assert_eq!(e.code.as_deref(), Some("rate_limit"));
        assert_eq!(e.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.best_code(), Some("rate_limit"));
    }

    #[test]
    fn error_as_string() {
        let e =
            p(r#"{"error":"Too Many Requests","message":"You have exceeded your usage limits"}"#);
        assert_eq!(e.shape, BodyShape::StringError);
        assert_eq!(e.kind.as_deref(), Some("Too Many Requests"));
        assert_eq!(
            e.message.as_deref(),
            Some("You have exceeded your usage limits")
        );
        assert_eq!(p(r#"{"error":"boom"}"#).message.as_deref(), Some("boom"));
    }

    #[test]
    fn fastapi_detail() {
        let e = p(
            r#"{"detail":[{"loc":["body","messages",0],"msg":"field required","type":"value_error.missing"}]}"#,
        );
        assert_eq!(e.shape, BodyShape::FastApi);
        assert_eq!(
            e.message.as_deref(),
            Some("body.messages.0: field required")
        );
        assert_eq!(e.kind.as_deref(), Some("value_error.missing"));
        assert_eq!(
            p(r#"{"detail":"Not authenticated"}"#).message.as_deref(),
            Some("Not authenticated")
        );
    }

    #[test]
    fn grpc_gateway_bare_and_wrapped() {
        let body = r#"{"code":8,"message":"quota exceeded","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"QUOTA_EXCEEDED"}]}"#;
        for s in [body.to_owned(), format!(r#"{{"error":{body}}}"#)] {
            let e = p(&s);
            assert_eq!(e.shape, BodyShape::GrpcGateway, "{s}");
            assert_eq!(e.code.as_deref(), Some("QUOTA_EXCEEDED"));
            assert_eq!(e.kind.as_deref(), Some("RESOURCE_EXHAUSTED"));
            assert_eq!(e.message.as_deref(), Some("quota exceeded"));
        }
        assert_eq!(
            p(r#"{"code":7,"message":"denied"}"#).code.as_deref(),
            Some("PERMISSION_DENIED")
        );
    }

    #[test]
    fn legacy_fault() {
        let e = p(
            r#"{"fault":{"faultstring":"Invalid ApiKey","detail":{"errorcode":"oauth.v2.InvalidApiKey"}}}"#,
        );
        assert_eq!(e.shape, BodyShape::LegacyFault);
        assert_eq!(e.code.as_deref(), Some("oauth.v2.InvalidApiKey"));
        assert_eq!(e.message.as_deref(), Some("Invalid ApiKey"));
    }

    #[test]
    fn html_text_empty_and_invalid_utf8() {
        let e =
            p("<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>");
        assert_eq!(
            (e.shape, e.message.as_deref()),
            (BodyShape::Html, Some("502 Bad Gateway"))
        );
        let e = p("<html><body><h1>upstream   timed out</h1></body></html>");
        assert_eq!(e.message.as_deref(), Some("upstream timed out"));
        let e = p("  upstream connect error or disconnect/reset before headers\n");
        assert_eq!(e.shape, BodyShape::Text);
        assert_eq!(
            e.message.as_deref(),
            Some("upstream connect error or disconnect/reset before headers")
        );
        assert_eq!(p("").shape, BodyShape::Empty);
        assert_eq!(p(" \n ").shape, BodyShape::Empty);
        let e = parse_error_body(b"bad \xff\xfe bytes", false);
        assert_eq!(e.message.as_deref(), Some("bad \u{fffd}\u{fffd} bytes"));
    }

    #[test]
    fn truncated_json_is_salvaged() {
        let mut s = String::from(r#"{"error":{"code":"INTERNAL","type":"error","message":"long "#);
        s.push_str(&"x".repeat(5000));
        let e = parse_error_body(&s.as_bytes()[..4096], true);
        assert!(e.truncated);
        assert_eq!(e.code.as_deref(), Some("INTERNAL"));
        assert!(e.message.unwrap().chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn messages_are_bounded() {
        let long = "y".repeat(10_000);
        let e = p(&format!(r#"{{"error":{{"message":"{long}","code":"X"}}}}"#));
        assert_eq!(e.message.unwrap().chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
