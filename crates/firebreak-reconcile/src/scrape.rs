//! [`Scraper`]: Fireworks' metrics exporter, read through the firebreak stack within its limit.

use crate::exposition::{Exposition, ParseError};
use bytes::Bytes;
use firebreak::client::ApiKey;
use firebreak::timeout::Workload;
use firebreak::{Error, FireworksClient, RetryInfo, Stack, StackConfigError};
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::ServiceExt;

/// Where the exporter lives: the control-plane host (not the `/inference/v1` base).
pub const FIREWORKS_API_URL: &str = "https://api.fireworks.ai";

/// Requests the exporter allows per account per minute; beyond them it answers 429.
pub const SCRAPES_PER_MINUTE: usize = 6;

/// The largest page read; a larger one is an error rather than unbounded memory.
pub const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;

/// Why a scrape (or a read of firebreak's own `/metrics`) failed. The key never appears in it.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The account name cannot be part of the exporter's path.
    #[error(
        "invalid account {0:?}: an account id is letters, digits, '-' and '_' (e.g. `my-team`)"
    )]
    InvalidAccount(String),
    /// The base URL or a stack setting is invalid.
    #[error(transparent)]
    Setup(#[from] StackConfigError),
    /// The request failed (after the stack's retries).
    #[error("{url}: {source}")]
    Request {
        /// What was read.
        url: String,
        /// firebreak's error: class, attempts, whether it reached the server.
        #[source]
        source: Error,
    },
    /// The server answered with a status other than 200.
    #[error(
        "{url}: answered {status}{}",
        if *.status == 401 || *.status == 403 { " (check the API key and the account)" } else { "" }
    )]
    Status {
        /// What was read.
        url: String,
        /// The status.
        status: u16,
    },
    /// The page was larger than [`MAX_PAGE_BYTES`], or its body failed part way.
    #[error("{url}: the page could not be read in full: {why}")]
    Body {
        /// What was read.
        url: String,
        /// Why.
        why: String,
    },
    /// The page is not the Prometheus text format.
    #[error("{url}: {source}")]
    Parse {
        /// What was read.
        url: String,
        /// The parser's complaint.
        #[source]
        source: ParseError,
    },
}

/// The stack a scraper uses: the interactive timeouts with a 60 s deadline per scrape, at most
/// two attempts (every attempt counts against the exporter's limit), no model labels.
pub fn scrape_stack() -> Stack {
    let mut s = Stack::preset(Workload::Interactive);
    s.timeouts = s.timeouts.deadline(Some(Duration::from_secs(60)));
    s.retry.max_attempts = 2;
    s.model_labels = 0;
    s
}

/// Reads Fireworks' per-deployment metrics exporter for one account, through the firebreak
/// stack (timeouts, retries that honour `Retry-After`, the 429 gate), and never sends more
/// than [`SCRAPES_PER_MINUTE`] requests in any sliding minute: a scrape that would exceed it
/// waits for the oldest to leave the minute, and a retry inside the stack counts too.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use firebreak::client::ApiKey;
/// use firebreak_reconcile::{Scraper, ServerView, FIREWORKS_API_URL};
///
/// let scraper = Scraper::new(FIREWORKS_API_URL, "my-account", ApiKey::from_env()?)?;
/// let page = scraper.scrape().await?;
/// let server = ServerView::from_exporter(&page, "my-account");
/// for (deployment, counts) in &server.deployments {
///     println!("{deployment}: {} requests", counts.requests);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Scraper {
    client: FireworksClient,
    url: String,
    limit: (usize, Duration),
    sent: Mutex<VecDeque<Instant>>,
}

impl Scraper {
    /// A scraper for `account` at `base_url` (normally [`FIREWORKS_API_URL`]), with
    /// [`scrape_stack`].
    ///
    /// # Errors
    /// [`ScrapeError::InvalidAccount`] or [`ScrapeError::Setup`].
    pub fn new(base_url: &str, account: &str, key: ApiKey) -> Result<Scraper, ScrapeError> {
        Scraper::with_stack(base_url, account, key, scrape_stack())
    }

    /// As [`Scraper::new`], with a stack of your own.
    ///
    /// # Errors
    /// [`ScrapeError::InvalidAccount`] or [`ScrapeError::Setup`].
    pub fn with_stack(
        base_url: &str,
        account: &str,
        key: ApiKey,
        stack: Stack,
    ) -> Result<Scraper, ScrapeError> {
        if !valid_account(account) {
            return Err(ScrapeError::InvalidAccount(account.to_owned()));
        }
        let client = FireworksClient::new(base_url, key, stack)?;
        let url = format!("{}/v1/accounts/{account}/metrics", client.base_url());
        Ok(Scraper {
            client,
            url,
            limit: (SCRAPES_PER_MINUTE, Duration::from_secs(60)),
            sent: Mutex::new(VecDeque::new()),
        })
    }

    /// Sends at most `requests` in any sliding `per` instead of [`SCRAPES_PER_MINUTE`] a minute
    /// (for an exporter with another limit). `requests` is at least 1.
    pub fn with_limit(mut self, requests: usize, per: Duration) -> Scraper {
        self.limit = (requests.max(1), per);
        self
    }

    /// The exporter's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One scrape, as text.
    ///
    /// # Errors
    /// [`ScrapeError`]: the request failed, the answer was not 200, or the page was too large.
    pub async fn scrape_text(&self) -> Result<String, ScrapeError> {
        let mut sent = self.sent.lock().await;
        let (max, per) = self.limit;
        loop {
            let now = Instant::now();
            while sent.front().is_some_and(|t| now.duration_since(*t) >= per) {
                sent.pop_front();
            }
            match sent.front() {
                Some(oldest) if sent.len() >= max => {
                    tokio::time::sleep_until(*oldest + per).await;
                }
                _ => break,
            }
        }
        let result = fetch(&self.client, &self.url).await;
        // Every attempt the stack made counts against the limit.
        let attempts = match &result {
            Ok((_, n)) => *n,
            Err(ScrapeError::Request { source, .. }) => source.attempts().unwrap_or(1),
            Err(_) => 1,
        };
        let now = Instant::now();
        sent.extend(std::iter::repeat_n(now, attempts.max(1) as usize));
        result.map(|(text, _)| text)
    }

    /// One scrape, parsed.
    ///
    /// # Errors
    /// As [`Scraper::scrape_text`], and [`ScrapeError::Parse`].
    pub async fn scrape(&self) -> Result<Exposition, ScrapeError> {
        let text = self.scrape_text().await?;
        Exposition::parse(&text).map_err(|source| ScrapeError::Parse {
            url: self.url.clone(),
            source,
        })
    }
}

/// An account id as Fireworks writes them.
fn valid_account(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 128
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A GET of `url` through `client`'s stack: the page and the attempts it took.
///
/// # Errors
/// [`ScrapeError`] other than `Parse` and `InvalidAccount`.
pub async fn fetch(client: &FireworksClient, url: &str) -> Result<(String, u32), ScrapeError> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| ScrapeError::Body {
            url: url.to_owned(),
            why: e.to_string(),
        })?;
    let resp = client
        .service()
        .oneshot(req)
        .await
        .map_err(|source| ScrapeError::Request {
            url: url.to_owned(),
            source,
        })?;
    let attempts = RetryInfo::of(&resp).attempts();
    let status = resp.status();
    if status != http::StatusCode::OK {
        return Err(ScrapeError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let body = Limited::new(resp.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| ScrapeError::Body {
            url: url.to_owned(),
            why: e.to_string(),
        })?
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::Body {
        url: url.to_owned(),
        why: "not UTF-8".to_owned(),
    })?;
    Ok((text, attempts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_checked_before_any_request() {
        let key = ApiKey::new("fw_test_key").unwrap();
        for bad in ["", "a/b", "../x", "a b", "a?x=1"] {
            let e = Scraper::new("http://127.0.0.1:9", bad, key.clone()).unwrap_err();
            assert!(matches!(e, ScrapeError::InvalidAccount(_)), "{bad}: {e}");
            assert!(!e.to_string().contains("fw_test_key"));
        }
        let s = Scraper::new("http://127.0.0.1:9/", "my-team_2", key).unwrap();
        assert_eq!(s.url(), "http://127.0.0.1:9/v1/accounts/my-team_2/metrics");
    }
}
