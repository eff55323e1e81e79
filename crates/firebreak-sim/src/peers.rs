//! The Fireworks docs' retry loop, the baseline the demo and the benches compare firebreak
//! with (the testkit's `baselines` adds the other peers' policies).

use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// What one attempt of a baseline ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// An answer with this status, its body read whole.
    Status(u16),
    /// No usable answer: a transport error, or a body that broke off. `client_side` when the
    /// request never reached the server (a connect failure).
    Failed {
        /// Whether the request never reached the server.
        client_side: bool,
    },
}

/// The statuses the Fireworks docs retry: 429, 500, 502, 503, 504.
pub fn docs_retries(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// Attempts the docs' loop makes in all.
pub const DOCS_ATTEMPTS: u32 = 5;

/// The docs' wait after attempt `n` (0-based): `2ⁿ + U(0, 1)` seconds.
pub fn docs_wait(n: u32) -> Duration {
    Duration::from_secs_f64(2f64.powi(n as i32) + rand::rng().random::<f64>())
}

/// The Fireworks docs' retry loop around `attempt`: up to [`DOCS_ATTEMPTS`], retrying transport
/// failures and [`docs_retries`] statuses after [`docs_wait`]. Returns the last attempt's end.
pub async fn docs_loop<F, Fut>(mut attempt: F) -> Attempt
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut last = Attempt::Failed { client_side: false };
    for n in 0..DOCS_ATTEMPTS {
        last = attempt().await;
        match last {
            Attempt::Status(s) if s == 200 || !docs_retries(s) => return last,
            _ => {}
        }
        if n + 1 < DOCS_ATTEMPTS {
            tokio::time::sleep(docs_wait(n)).await;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn the_docs_loop_retries_what_the_docs_say_and_waits_as_they_say() {
        let n = Cell::new(0);
        let t = tokio::time::Instant::now();
        let end = docs_loop(|| {
            n.set(n.get() + 1);
            let s = if n.get() < 3 { 503 } else { 200 };
            async move { Attempt::Status(s) }
        })
        .await;
        assert_eq!((end, n.get()), (Attempt::Status(200), 3));
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        let n = Cell::new(0);
        let end = docs_loop(|| {
            n.set(n.get() + 1);
            async { Attempt::Status(400) }
        })
        .await;
        assert_eq!(
            (end, n.get()),
            (Attempt::Status(400), 1),
            "a 400 is not retried"
        );
        let n = Cell::new(0);
        let end = docs_loop(|| {
            n.set(n.get() + 1);
            async { Attempt::Failed { client_side: true } }
        })
        .await;
        assert_eq!(
            (end, n.get()),
            (Attempt::Failed { client_side: true }, DOCS_ATTEMPTS)
        );
    }
}
