//! Response bodies: the error shapes seen in the wild, and the normal completions.

use crate::config::ErrorShape;
use bytes::Bytes;
use serde_json::json;

/// The gateway `code` for a status ([C] where FIREWORKS.md quotes one, [I] otherwise).
pub(crate) fn gateway_code(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHORIZED",
        402 => "PAYMENT_REQUIRED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        412 => "PRECONDITION_FAILED",
        413 => "PAYLOAD_TOO_LARGE",
        422 => "UNPROCESSABLE_ENTITY",
        429 => "RATE_LIMIT_EXCEEDED",
        500 => "INTERNAL",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        504 => "GATEWAY_TIMEOUT",
        _ => "UNKNOWN",
    }
}

/// A default human message for a status.
pub(crate) fn default_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid request: check the request parameters",
        401 => "The API key you provided is invalid.",
        402 => "Payment required: your account has no remaining credits.",
        403 => "Forbidden: you do not have access to this resource.",
        404 => "Model not found, inaccessible, and/or not deployed",
        405 => "Method not allowed",
        408 => "Request timed out",
        412 => "Account suspended",
        413 => "Request payload too large",
        422 => "Unprocessable entity",
        429 => "Request rate limit exceeded, please try again later",
        500 => "Internal server error",
        502 => "Bad gateway",
        503 => "Service overloaded, please try again later",
        504 => "Gateway timeout",
        _ => "Error",
    }
}

const JSON: &str = "application/json";

/// Builds an error body of `shape`. Returns the content type and the bytes.
pub(crate) fn error_body(
    shape: ErrorShape,
    status: u16,
    message: &str,
    request_id: &str,
) -> (&'static str, Bytes) {
    let code = gateway_code(status);
    let v = match shape {
        ErrorShape::Gateway => json!({
            "error": {"message": message, "param": if status == 404 { json!("model") } else { json!(null) },
                      "code": code, "type": "error"},
            "request_id": request_id,
        }),
        ErrorShape::OldInference => json!({
            "error": {"object": "error", "type": "invalid_request_error", "code": code.to_ascii_lowercase(), "message": message}
        }),
        ErrorShape::OldInferenceRawOutput => json!({
            "error": {"object": "error", "type": "invalid_request_error", "code": code.to_ascii_lowercase(), "message": message},
            "raw_output": null,
        }),
        ErrorShape::InsufficientQuota => json!({
            "error": {"message": message, "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}
        }),
        ErrorShape::StringError => json!({
            "error": reason_phrase(status), "message": message,
        }),
        ErrorShape::FastApi => json!({
            "detail": [{"loc": ["body", "messages"], "msg": message, "type": "value_error.missing"}]
        }),
        ErrorShape::GrpcGateway => grpc_gateway(status, message),
        ErrorShape::GrpcGatewayWrapped => json!({"error": grpc_gateway(status, message)}),
        ErrorShape::LegacyFault => json!({
            "fault": {"faultstring": message, "detail": {"errorcode": "oauth.v2.InvalidApiKey"}}
        }),
        ErrorShape::Html => {
            let page = format!(
                "<html>\r\n<head><title>{status} {r}</title></head>\r\n<body>\r\n<center><h1>{status} {r}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
                r = reason_phrase(status)
            );
            return ("text/html", Bytes::from(page));
        }
        ErrorShape::PlainText => {
            return (
                "text/plain",
                Bytes::from(format!("{status} {}: {message}", reason_phrase(status))),
            );
        }
        ErrorShape::Empty => return (JSON, Bytes::new()),
        ErrorShape::Huge { bytes } => {
            let prefix =
                format!(r#"{{"error":{{"code":"{code}","type":"error","message":"{message} "#);
            let suffix = r#""}}"#;
            let pad = bytes.saturating_sub(prefix.len() + suffix.len());
            let mut s = String::with_capacity(prefix.len() + pad + suffix.len());
            s.push_str(&prefix);
            s.extend(std::iter::repeat_n('x', pad));
            s.push_str(suffix);
            return (JSON, Bytes::from(s));
        }
    };
    (
        JSON,
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
    )
}

fn grpc_gateway(status: u16, message: &str) -> serde_json::Value {
    // google.rpc.Code for the HTTP status, as grpc-gateway maps them.
    let (code, reason) = match status {
        400 => (3, "INVALID_ARGUMENT"),
        401 => (16, "UNAUTHENTICATED"),
        403 => (7, "PERMISSION_DENIED"),
        404 => (5, "NOT_FOUND"),
        409 => (6, "ALREADY_EXISTS"),
        429 => (8, "QUOTA_EXCEEDED"),
        503 => (14, "UNAVAILABLE"),
        504 => (4, "DEADLINE_EXCEEDED"),
        _ => (13, "INTERNAL"),
    };
    json!({
        "code": code,
        "message": message,
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                     "domain": "fireworks.ai", "metadata": {}}],
    })
}

/// The standard reason phrase, or "Error".
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A deterministic UUID-shaped id from a hash.
pub(crate) fn uuid_from(h: u64, salt: u64) -> String {
    let a = h;
    let b = xxhash_rust::xxh3::xxh3_64_with_seed(&h.to_le_bytes(), salt);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        (b >> 52) as u16 & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// What a completion request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Text,
}

/// The text of token `i`.
pub(crate) fn token_text(i: u32) -> String {
    format!("tok{i} ")
}

/// A whole non-streaming completion.
pub(crate) fn completion(
    kind: Kind,
    id: &str,
    model: &str,
    created: u64,
    prompt_tokens: u32,
    completion_tokens: u32,
) -> Bytes {
    let mut text = String::with_capacity(completion_tokens as usize * 6);
    for i in 0..completion_tokens {
        text.push_str(&token_text(i));
    }
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let v = match kind {
        Kind::Chat => json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
            "usage": usage,
        }),
        Kind::Text => json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": null}],
            "usage": usage,
        }),
    };
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// One SSE event: chunk `i` of `n` (0 is the role delta, `n + 1` the final chunk with usage).
pub(crate) fn stream_chunk(
    kind: Kind,
    id: &str,
    model: &str,
    created: u64,
    i: u32,
    n: u32,
    prompt_tokens: u32,
) -> Bytes {
    let v = match kind {
        Kind::Chat => {
            let (delta, finish, usage) = if i == 0 {
                (
                    json!({"role": "assistant", "content": null}),
                    json!(null),
                    json!(null),
                )
            } else if i <= n {
                (
                    json!({"content": token_text(i - 1)}),
                    json!(null),
                    json!(null),
                )
            } else {
                (
                    json!({}),
                    json!("length"),
                    json!({"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}),
                )
            };
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage})
        }
        Kind::Text => {
            let (text, finish, usage) = if i == 0 {
                (String::new(), json!(null), json!(null))
            } else if i <= n {
                (token_text(i - 1), json!(null), json!(null))
            } else {
                (
                    String::new(),
                    json!("length"),
                    json!({"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}),
                )
            };
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": finish}], "usage": usage})
        }
    };
    sse(&serde_json::to_vec(&v).unwrap_or_default())
}

/// The error event sent inside a stream.
pub(crate) fn stream_error(message: &str, request_id: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": "error", "code": "INTERNAL", "param": null},
                   "request_id": request_id});
    sse(&serde_json::to_vec(&v).unwrap_or_default())
}

/// `data: [DONE]`.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

fn sse(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// An embeddings answer with `n` inputs.
pub(crate) fn embeddings(model: &str, n: usize, prompt_tokens: u32) -> Bytes {
    let data: Vec<_> = (0..n.max(1))
        .map(|i| {
            let e: Vec<f32> = (0..8).map(|k| ((i * 8 + k) as f32 * 0.125).sin()).collect();
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    let v = json!({"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}});
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The `GET /models` list.
pub(crate) fn models(models: &[String]) -> Bytes {
    let default = ["accounts/fireworks/models/llama-v3p1-8b-instruct".to_owned()];
    let list = if models.is_empty() {
        &default[..]
    } else {
        models
    };
    let data: Vec<_> = list
        .iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "fireworks", "created": 1_700_000_000}))
        .collect();
    Bytes::from(serde_json::to_vec(&json!({"object": "list", "data": data})).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_shape_is_valid_json_with_the_message() {
        for shape in [
            ErrorShape::Gateway,
            ErrorShape::OldInference,
            ErrorShape::OldInferenceRawOutput,
            ErrorShape::StringError,
            ErrorShape::FastApi,
            ErrorShape::GrpcGateway,
            ErrorShape::GrpcGatewayWrapped,
            ErrorShape::LegacyFault,
            ErrorShape::Huge { bytes: 4096 },
        ] {
            let (ct, b) = error_body(shape, 429, "slow down", "rid-1");
            assert_eq!(ct, JSON);
            let v: serde_json::Value = serde_json::from_slice(&b).expect("valid json");
            assert!(v.to_string().contains("slow down"), "{shape:?}: {v}");
        }
    }

    #[test]
    fn huge_body_has_the_requested_size() {
        let (_, b) = error_body(ErrorShape::Huge { bytes: 3 << 20 }, 500, "m", "r");
        assert_eq!(b.len(), 3 << 20);
    }

    #[test]
    fn stream_chunks_carry_usage_only_at_the_end() {
        let first = stream_chunk(Kind::Chat, "id", "m", 0, 0, 3, 5);
        let mid = stream_chunk(Kind::Chat, "id", "m", 0, 2, 3, 5);
        let last = stream_chunk(Kind::Chat, "id", "m", 0, 4, 3, 5);
        let parse = |b: &Bytes| -> serde_json::Value {
            let s = std::str::from_utf8(b).unwrap();
            serde_json::from_str(s.strip_prefix("data: ").unwrap().trim_end()).unwrap()
        };
        assert_eq!(parse(&first)["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(parse(&mid)["choices"][0]["delta"]["content"], "tok1 ");
        assert!(parse(&mid)["usage"].is_null());
        assert_eq!(parse(&last)["usage"]["completion_tokens"], 3);
        assert_eq!(parse(&last)["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_from(0xdead_beef_1234_5678, 7);
        let parts: Vec<_> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
    }
}
