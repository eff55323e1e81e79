//! The one edit a router makes to a request body: the value of its top-level `model`.

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use std::ops::Range;

/// A JSON request body and where its top-level `model` string is, found once per call.
#[derive(Debug, Clone)]
pub(crate) struct ModelBody {
    bytes: Bytes,
    /// The byte range of the `model` value, quotes included.
    span: Range<usize>,
    /// The model named (unescaped).
    pub(crate) model: String,
}

impl ModelBody {
    /// Finds the top-level `model` of a JSON object body; `None` for a body that is not a
    /// JSON object or whose `model` is missing or not a string.
    pub(crate) fn parse(bytes: Bytes) -> Option<ModelBody> {
        #[derive(serde::Deserialize)]
        struct Top<'a> {
            #[serde(borrow)]
            model: Option<&'a RawValue>,
        }
        let (span, model) = {
            // Other fields are skipped, not collected: one pass, no map.
            let top: Top<'_> = serde_json::from_slice(&bytes).ok()?;
            let raw = top.model?.get();
            let model: String = serde_json::from_str(raw).ok()?;
            // The raw value borrows from `bytes`: its offset is where it starts.
            let start = (raw.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
            (start..start + raw.len(), model)
        };
        (span.end <= bytes.len()).then_some(ModelBody { bytes, span, model })
    }

    /// The body with its `model` replaced by `model`, every other byte as it was. The original
    /// when `model` is the one already there (no copy).
    pub(crate) fn with_model(&self, model: &str) -> Bytes {
        if model == self.model {
            return self.bytes.clone();
        }
        // A string serializes infallibly; the fallback is never taken.
        let value = serde_json::to_string(model).unwrap_or_else(|_| format!("{model:?}"));
        let mut out = BytesMut::with_capacity(self.bytes.len() - self.span.len() + value.len());
        out.extend_from_slice(&self.bytes[..self.span.start]);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(&self.bytes[self.span.end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::ModelBody;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn only_the_top_level_model_changes() {
        let body = br#"{"messages":[{"role":"user","content":"{\"model\":\"x\"}","model":"inner"}], "model" : "chat" ,"stream":true}"#;
        let b = ModelBody::parse(Bytes::from_static(body)).unwrap();
        assert_eq!(b.model, "chat");
        let out = b.with_model("accounts/fireworks/models/llama-v3p1-8b-instruct");
        let expected = String::from_utf8_lossy(body).replace(
            r#""model" : "chat""#,
            r#""model" : "accounts/fireworks/models/llama-v3p1-8b-instruct""#,
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);
        // The same model: the same bytes, not a copy.
        assert_eq!(b.with_model("chat").as_ptr(), body.as_ptr());
    }

    #[test]
    fn escaped_models_and_bodies_without_one() {
        let b = ModelBody::parse(Bytes::from_static(br#"{"model":"a\"b\u00e9"}"#)).unwrap();
        assert_eq!(b.model, "a\"bé");
        let out = b.with_model("q\"x");
        assert_eq!(&out[..], br#"{"model":"q\"x"}"#);
        for bad in [&b"[1]"[..], b"{\"model\":7}", b"{}", b"not json", b""] {
            assert!(ModelBody::parse(Bytes::copy_from_slice(bad)).is_none());
        }
    }

    proptest! {
        #[test]
        fn the_rewritten_body_is_the_same_json_but_for_model(
            model in "\\PC{0,40}", new in "\\PC{0,40}", n in 0i64..1000, text in "\\PC{0,40}",
        ) {
            let v = serde_json::json!({"a": n, "model": model, "messages": [{"content": text}]});
            let body = Bytes::from(serde_json::to_vec(&v).unwrap());
            let b = ModelBody::parse(body).unwrap();
            prop_assert_eq!(&b.model, &model);
            let out: serde_json::Value = serde_json::from_slice(&b.with_model(&new)).unwrap();
            let mut want = v.clone();
            want["model"] = serde_json::Value::String(new.clone());
            prop_assert_eq!(out, want);
        }
    }
}
