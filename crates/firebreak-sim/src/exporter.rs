//! Fireworks' per-deployment metrics exporter, as this simulator served it: the series
//! `GET /v1/accounts/{account}/metrics` returns, computed from the attempt log, so that a
//! client's own counts can be reconciled against "the server's" offline.
//!
//! Only dedicated deployments are exported (as on Fireworks): requests whose `model` names one,
//! `{base model}#accounts/{account}/deployments/{id}`. Each series carries `base_model`,
//! `deployment`, `deployment_account` and `deployment_id`; errors add `http_code`. Counts are
//! totals since the simulator started (Prometheus counters), of attempts that got a response
//! head; an attempt the server never answered (a reset or a hang cut by the client) is not
//! counted, as Fireworks' infrastructure would not count it either.

use crate::log::AttemptRecord;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Scrapes allowed per account per minute.
pub(crate) const SCRAPES_PER_MINUTE: usize = 6;

/// The latency histogram's upper bounds, in milliseconds.
const BUCKETS_MS: [f64; 8] = [10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 30000.0];

/// The account of `GET /v1/accounts/{account}/metrics`; `None` for any other path, `Err(405)`
/// for another method.
pub(crate) fn parse(method: &http::Method, path: &str) -> Option<Result<String, u16>> {
    let account = path
        .strip_prefix("/v1/accounts/")?
        .strip_suffix("/metrics")?;
    if account.is_empty() || account.contains('/') {
        return None;
    }
    Some(if method == http::Method::GET {
        Ok(account.to_owned())
    } else {
        Err(405)
    })
}

/// The labels of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Deployment {
    base_model: String,
    account: String,
    id: String,
}

/// The deployment a model id names, if it names one.
fn deployment(model: &str) -> Option<Deployment> {
    let (base, dep) = model.split_once('#')?;
    let rest = dep.strip_prefix("accounts/")?;
    let (account, id) = rest.split_once("/deployments/")?;
    (!account.is_empty() && !id.is_empty() && !id.contains('/')).then(|| Deployment {
        base_model: base.to_owned(),
        account: account.to_owned(),
        id: id.to_owned(),
    })
}

#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    errors: BTreeMap<u16, u64>,
    latency: [u64; BUCKETS_MS.len()],
    latency_sum_ms: f64,
}

/// Escapes a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exporter's text for `account`.
pub(crate) fn render(records: &[AttemptRecord], account: &str) -> String {
    let mut per: BTreeMap<Deployment, Counts> = BTreeMap::new();
    for r in records.iter().filter(|r| r.status != 0) {
        let Some(d) = r.model.as_deref().and_then(deployment) else {
            continue;
        };
        if d.account != account {
            continue;
        }
        let c = per.entry(d).or_default();
        c.requests += 1;
        if r.status >= 400 {
            *c.errors.entry(r.status).or_default() += 1;
        }
        let ms = (r.end_ms - r.t_ms).max(0.0);
        c.latency_sum_ms += ms;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                c.latency[i] += 1;
            }
        }
    }
    let labels = |d: &Deployment| {
        format!(
            "base_model=\"{}\",deployment=\"accounts/{}/deployments/{}\",deployment_account=\"{}\",deployment_id=\"{}\"",
            esc(&d.base_model),
            esc(&d.account),
            esc(&d.id),
            esc(&d.account),
            esc(&d.id)
        )
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# TYPE request_counter_total:sum_by_deployment counter"
    );
    for (d, c) in &per {
        let _ = writeln!(
            out,
            "request_counter_total:sum_by_deployment{{{}}} {}",
            labels(d),
            c.requests
        );
    }
    let _ = writeln!(out, "# TYPE requests_error_total:sum_by_deployment counter");
    for (d, c) in &per {
        for (code, n) in &c.errors {
            let _ = writeln!(
                out,
                "requests_error_total:sum_by_deployment{{{},http_code=\"{code}\"}} {n}",
                labels(d)
            );
        }
    }
    // Pre-aggregated buckets are recording-rule series, not a histogram family (their names do
    // not share the family's prefix), so they go out untyped: a strict parser accepts them.
    for (d, c) in &per {
        let l = labels(d);
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "latency_overall_ms_bucket:sum_by_deployment{{{l},le=\"{le}\"}} {}",
                c.latency[i]
            );
        }
        let _ = writeln!(
            out,
            "latency_overall_ms_bucket:sum_by_deployment{{{l},le=\"+Inf\"}} {}",
            c.requests
        );
        let _ = writeln!(
            out,
            "latency_overall_ms_sum:sum_by_deployment{{{l}}} {}",
            c.latency_sum_ms
        );
        let _ = writeln!(
            out,
            "latency_overall_ms_count:sum_by_deployment{{{l}}} {}",
            c.requests
        );
    }
    out
}

/// The exporter's limit: 6 scrapes per minute per account, over a sliding minute.
#[derive(Debug, Default)]
pub(crate) struct ScrapeLimit {
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl ScrapeLimit {
    /// Admits a scrape, or says how long until one would be admitted.
    pub(crate) fn admit(&self, account: &str, now: Instant) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let q = seen.entry(account.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            q.pop_front();
        }
        if q.len() >= SCRAPES_PER_MINUTE {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(
                Duration::from_secs(60).saturating_sub(now.saturating_duration_since(oldest))
            );
        }
        q.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(model: &str, status: u16, ms: f64) -> AttemptRecord {
        let mut r: AttemptRecord = serde_json::from_value(serde_json::json!({
            "seq": 0, "t_ms": 0.0, "end_ms": ms, "request_id": null, "attempt": 1,
            "method": "POST", "path": "/inference/v1/chat/completions", "version": "HTTP/1.1",
            "status": status, "fault": null, "body_hash": 0, "body_len": 0, "stream": false,
            "bytes_sent": 0, "completed": true
        }))
        .unwrap();
        r.model = Some(model.to_owned());
        r
    }

    #[test]
    fn counts_what_was_served_to_the_accounts_deployments_only() {
        let dep = "accounts/fireworks/models/llama#accounts/acct/deployments/d1";
        let records = vec![
            rec(dep, 200, 5.0),
            rec(dep, 503, 1.0),
            rec(dep, 503, 2.0),
            rec(dep, 0, 1.0), // never answered: not counted
            rec("accounts/fireworks/models/llama", 200, 5.0), // serverless: not exported
            rec("m#accounts/other/deployments/d9", 200, 5.0), // another account
        ];
        let text = render(&records, "acct");
        let labels = "base_model=\"accounts/fireworks/models/llama\",deployment=\"accounts/acct/deployments/d1\",deployment_account=\"acct\",deployment_id=\"d1\"";
        assert!(
            text.contains(&format!(
                "request_counter_total:sum_by_deployment{{{labels}}} 3\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "requests_error_total:sum_by_deployment{{{labels},http_code=\"503\"}} 2\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "latency_overall_ms_bucket:sum_by_deployment{{{labels},le=\"10\"}} 3\n"
            )),
            "{text}"
        );
        assert!(
            !text.contains("d9") && !text.contains("deployment_id=\"\""),
            "{text}"
        );
    }

    #[test]
    fn six_scrapes_a_minute_then_a_wait() {
        let l = ScrapeLimit::default();
        let t0 = Instant::now();
        for i in 0..6 {
            assert!(l.admit("a", t0 + Duration::from_secs(i)).is_ok());
        }
        assert_eq!(
            l.admit("a", t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert!(
            l.admit("b", t0 + Duration::from_secs(10)).is_ok(),
            "per account"
        );
        assert!(l.admit("a", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn model_ids_name_a_deployment_or_not() {
        assert!(deployment("m#accounts/a/deployments/d").is_some());
        for m in [
            "accounts/fireworks/models/x",
            "m#accounts//deployments/d",
            "m#accounts/a/deployments/",
            "m#a/deployments/d",
        ] {
            assert!(deployment(m).is_none(), "{m}");
        }
    }
}
