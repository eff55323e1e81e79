//! Driving a [`Router`] with many calls, for the route tests and the outage bench.

use bytes::Bytes;
use firebreak::route::{AnsweredBy, Router};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

/// How one routed call ended.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The status, 0 for an error.
    pub status: u16,
    /// The target that answered.
    pub target: Option<String>,
    /// When the call ended, from the start of the run.
    pub done: Duration,
}

/// `n` chat calls for `alias` at `concurrency`, with ids `{prefix}-{i}`, bodies drained.
pub async fn drive_router(
    router: &Router,
    alias: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Vec<Routed> {
    let t0 = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let body = serde_json::json!({
                "model": alias,
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": 4,
                "user": format!("{prefix}-{i:05}"),
            });
            let r = router.clone();
            async move {
                let out = r
                    .post("/chat/completions", Bytes::from(body.to_string()))
                    .await;
                let (status, target) = match out {
                    Ok(resp) => {
                        let target = resp
                            .extensions()
                            .get::<AnsweredBy>()
                            .map(|a| a.target.to_string());
                        let status = resp.status().as_u16();
                        let ok = resp.into_body().collect().await.is_ok();
                        (if ok { status } else { 0 }, target)
                    }
                    Err(_) => (0, None),
                };
                Routed {
                    status,
                    target,
                    done: t0.elapsed(),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}
