//! `firebreak chat "prompt"`: one call, streamed to the terminal.

use crate::args::{TimeoutArgs, api_key, base_url};
use bytes::Bytes;
use clap::Args;
use firebreak::{FireworksClient, Stack, client::FIREWORKS_BASE_URL};
use http_body_util::BodyExt;
use std::io::Write;

/// Flags of `firebreak chat`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChatArgs {
    /// What to ask.
    prompt: String,
    /// Model to call.
    #[arg(
        long,
        default_value = "accounts/fireworks/models/llama-v3p1-8b-instruct"
    )]
    model: String,
    /// Base URL of an OpenAI-compatible API.
    #[arg(long, default_value = FIREWORKS_BASE_URL)]
    base_url: String,
    /// API key (default: the FIREWORKS_API_KEY environment variable, which is safer: the
    /// process list shows flags). Never printed.
    #[arg(long)]
    api_key: Option<String>,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    /// `max_tokens` of the request.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_tokens: u32,
}

/// Longest SSE line kept while reading (longer ones are skipped, not buffered whole).
const MAX_LINE: usize = 1 << 20;

pub(crate) async fn run(args: ChatArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = api_key(args.api_key.as_deref())?.ok_or(
        "no API key: set FIREWORKS_API_KEY (or pass --api-key, which the process list shows)",
    )?;
    let base = base_url("--base-url", &args.base_url)?;
    let stack = (Stack::preset(args.timeouts.preset.workload())).timeouts(args.timeouts.resolve()?);
    let client = FireworksClient::new(&base, key, stack)?;
    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "stream": true,
    });
    let resp = match client
        .post("/chat/completions", Bytes::from(body.to_string()))
        .await
    {
        Ok(r) => r,
        Err(e) => return Err(with_attempts(&e, e.attempts()).into()),
    };
    if !resp.status().is_success() {
        let attempts = firebreak::RetryInfo::of(&resp).attempts();
        let c = resp
            .extensions()
            .get::<firebreak::Classification>()
            .cloned();
        let e = match c {
            Some(c) => firebreak::Error::from_classification(&c),
            None => firebreak::Error::new(firebreak::Class::from_status(resp.status())),
        };
        return Err(with_attempts(&e, Some(attempts)).into());
    }
    let mut body = resp.into_body();
    let mut line: Vec<u8> = Vec::new();
    let mut out = std::io::stdout().lock();
    // Bounded by the stream's length; each frame is split into lines as it arrives.
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // The tokens so far stay on their line; the error gets its own.
                writeln!(out)?;
                out.flush()?;
                return Err(format!("the stream broke off: {e}").into());
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for &b in data.iter() {
            if b != b'\n' {
                if line.len() < MAX_LINE {
                    line.push(b);
                }
                continue;
            }
            if let Some(payload) = line.strip_prefix(b"data: ") {
                if payload != b"[DONE]" {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                            out.write_all(t.as_bytes())?;
                            out.flush()?;
                        }
                    }
                }
            }
            line.clear();
        }
    }
    writeln!(out)?;
    Ok(())
}

/// The error, saying how many attempts were made (once).
fn with_attempts(e: &firebreak::Error, attempts: Option<u32>) -> String {
    let text = e.to_string();
    match attempts {
        Some(n) if !text.contains("attempt(s)") => format!("{text} (after {n} attempt(s))"),
        _ => text,
    }
}
