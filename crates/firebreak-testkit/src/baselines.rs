//! The retry policies firebreak is compared with, written once for the benches and the tests:
//! the Fireworks docs' loop (from `firebreak_sim::peers`, which the demo uses too),
//! openai-python's policy, and no retry at all.

use crate::{PlainClient, chat_body, post};
use http_body_util::BodyExt;
use rand::Rng;
use std::time::Duration;

pub use firebreak_sim::peers::{Attempt, DOCS_ATTEMPTS, docs_loop, docs_retries, docs_wait};

/// One chat completion through a plain client, its body read whole.
pub async fn plain_attempt(plain: &PlainClient, base: &str, id: &str, stream: bool) -> Attempt {
    match plain
        .request(post(base, "/chat/completions", chat_body(id, stream)))
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            match r.into_body().collect().await {
                Ok(_) => Attempt::Status(s),
                Err(_) => Attempt::Failed { client_side: false },
            }
        }
        Err(e) => Attempt::Failed {
            client_side: e.is_connect(),
        },
    }
}

/// openai-python's `_retry_request` logic around one chat completion: retry 408, 409, 429,
/// ≥500, connection errors and timeouts; honour `x-should-retry`; wait `retry-after-ms`, then
/// `Retry-After` (seconds or an HTTP-date) when in (0, 60] s, else
/// `min(0.5·2ⁿ, 8) · (1 − 0.25·U)`; each attempt bounded by `timeout` when given. True on
/// success.
pub async fn openai_attempts(
    plain: &PlainClient,
    base: &str,
    id: &str,
    max_retries: u32,
    timeout: Option<Duration>,
) -> bool {
    for n in 0..=max_retries {
        let call = plain.request(post(base, "/chat/completions", chat_body(id, false)));
        let resp = match timeout {
            Some(t) => tokio::time::timeout(t, call).await.ok(),
            None => Some(call.await),
        };
        let mut server_delay = None;
        // A connection error or a timeout is retried like a retryable status, with no delay.
        if let Some(Ok(r)) = resp {
            let s = r.status().as_u16();
            if s == 200 {
                return r.into_body().collect().await.is_ok();
            }
            let h = r.headers();
            let should = h.get("x-should-retry").and_then(|v| v.to_str().ok());
            let retry = match should {
                Some("true") => true,
                Some("false") => false,
                _ => matches!(s, 408 | 409 | 429) || s >= 500,
            };
            if !retry {
                return false;
            }
            let ms = h
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .map(|m| m / 1000.0);
            let secs = ms.or_else(|| {
                let v = h.get("retry-after").and_then(|v| v.to_str().ok())?;
                v.trim().parse::<f64>().ok().or_else(|| {
                    let at = httpdate::parse_http_date(v).ok()?;
                    Some(
                        at.duration_since(std::time::SystemTime::now())
                            .map_or(0.0, |d| d.as_secs_f64()),
                    )
                })
            });
            server_delay = secs.filter(|s| *s > 0.0 && *s <= 60.0);
        }
        if n == max_retries {
            break;
        }
        let wait = server_delay.unwrap_or_else(|| {
            (0.5 * 2f64.powi(n as i32)).min(8.0) * (1.0 - 0.25 * rand::rng().random::<f64>())
        });
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    false
}
