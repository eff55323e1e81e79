//! [`TokenEstimate`]: what a request will cost the gate's token caps.

/// The tokens a request will use (prompt + completion), set by the caller in the extensions for
/// token caps. Without it the gate estimates `body bytes / 4 + default_completion_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate(pub u32);

impl TokenEstimate {
    /// Estimates a JSON request: its bytes / 4 for the prompt (about four bytes a token), plus
    /// its `max_tokens` (or `default_completion`) for the answer. An estimate, not a count; a body
    /// that is not JSON counts its bytes / 4 plus the default.
    pub fn from_json_body(body: &[u8], default_completion: u32) -> TokenEstimate {
        #[derive(serde::Deserialize)]
        struct MaxTokens {
            max_tokens: Option<u32>,
        }
        let completion = serde_json::from_slice::<MaxTokens>(body)
            .ok()
            .and_then(|m| m.max_tokens)
            .unwrap_or(default_completion);
        Self::of_size(body.len() as u64, completion)
    }

    /// The one estimate rule: a body of `bytes` (about four bytes a token) plus `completion`.
    pub(crate) fn of_size(bytes: u64, completion: u32) -> TokenEstimate {
        let prompt = u32::try_from(bytes / 4).unwrap_or(u32::MAX);
        TokenEstimate(prompt.saturating_add(completion))
    }
}
