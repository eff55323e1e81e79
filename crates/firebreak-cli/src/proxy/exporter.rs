//! `--scrape-account`: Fireworks' per-deployment metrics exporter, scraped in the background and
//! served under the proxy's own `/metrics`, so that one scrape gets both views.

use firebreak_reconcile::{Exposition, Scraper};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Whether the last scrape worked (1) or not (0); the page served is the last good one.
pub(crate) const EXPORTER_UP: &str = "firebreak_exporter_up";

/// The exporter's last good page.
#[derive(Debug, Default)]
pub(crate) struct ExporterPage {
    page: RwLock<String>,
}

impl ExporterPage {
    /// The page, as the exporter sent it (it parsed as the Prometheus text format).
    pub(crate) fn text(&self) -> String {
        self.page.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts scraping every `every` (the scraper itself never exceeds the exporter's limit).
/// A failure is logged once when scraping starts failing and once when it recovers.
pub(crate) fn start(scraper: Scraper, every: Duration) -> Arc<ExporterPage> {
    let out = Arc::new(ExporterPage::default());
    let page = out.clone();
    let up = metrics::gauge!(EXPORTER_UP);
    tokio::spawn(async move {
        let mut was_ok: Option<bool> = None;
        loop {
            let result = match scraper.scrape_text().await {
                Ok(text) => Exposition::parse(&text)
                    .map(|_| text)
                    .map_err(|e| format!("{}: {e}", scraper.url())),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(text) => {
                    *page.page.write().unwrap_or_else(|e| e.into_inner()) = text;
                    up.set(1.0);
                    if was_ok != Some(true) {
                        tracing::info!(
                            "scraping Fireworks' metrics exporter: its series are served under /metrics"
                        );
                    }
                    was_ok = Some(true);
                }
                Err(e) => {
                    up.set(0.0);
                    if was_ok != Some(false) {
                        tracing::warn!(error = %e, "cannot scrape Fireworks' metrics exporter; /metrics keeps its last good page and firebreak_exporter_up is 0");
                    }
                    was_ok = Some(false);
                }
            }
            tokio::time::sleep(every).await;
        }
    });
    out
}
