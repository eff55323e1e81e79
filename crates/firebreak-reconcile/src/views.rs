//! The two views of the same deployments: what Fireworks' exporter counted
//! ([`ServerView`]) and what firebreak counted ([`ClientView`]), per deployment.

use crate::exposition::Exposition;
use firebreak::{Class, Model, TimeoutPhase};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The exporter's request counter.
pub const SERVER_REQUESTS: &str = "request_counter_total:sum_by_deployment";
/// The exporter's error counter (label `http_code`).
pub const SERVER_ERRORS: &str = "requests_error_total:sum_by_deployment";

/// How both sides name an error status: the code itself, except the statuses firebreak's
/// classes group (`5xx` for a 5xx other than 501 and 503, `4xx` for an unlisted 4xx), so
/// that the two sides can be compared key by key.
pub fn status_key(class: Class) -> Option<&'static str> {
    use firebreak::ClientErrorKind as K;
    Some(match class {
        Class::RateLimited => "429",
        Class::Overloaded => "503",
        Class::NotImplemented => "501",
        Class::ServerError => "5xx",
        Class::RequestTimeout => "408",
        Class::QuotaExhausted => "402",
        Class::ClientError(k) => match k {
            K::BadRequest => "400",
            K::Unauthorized => "401",
            K::PaymentRequired => "402",
            K::Forbidden => "403",
            K::NotFound => "404",
            K::PreconditionFailed => "412",
            K::PayloadTooLarge => "413",
            K::Unprocessable => "422",
            _ => "4xx",
        },
        _ => return None,
    })
}

/// Whether an attempt of this class was sent but got no answer the client saw: the server may
/// have counted it (it answered after the client gave up) or not (the connection broke first).
/// Reconciliation allows for these and no more.
pub fn sent_unanswered(class: Class) -> bool {
    matches!(
        class,
        Class::ResetBeforeResponse
            | Class::Protocol
            | Class::Other
            | Class::Timeout(
                TimeoutPhase::Write
                    | TimeoutPhase::Headers
                    | TimeoutPhase::Attempt
                    | TimeoutPhase::Deadline
            )
    )
}

/// What the server counted for one deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Requests it counted (`request_counter_total`).
    pub requests: u64,
    /// Errors it counted, by [`status_key`] of the code.
    pub errors: BTreeMap<String, u64>,
}

/// What firebreak counted for one deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCounts {
    /// Calls (logical requests) firebreak made.
    pub calls: u64,
    /// Attempts, every one.
    pub attempts: u64,
    /// Attempts that reached the server.
    pub reached_server: u64,
    /// Attempts the server answered (a response head reached firebreak).
    pub answered: u64,
    /// Attempts sent but not answered, by class (resets, header timeouts…).
    pub sent_unanswered: BTreeMap<String, u64>,
    /// Answered errors, by [`status_key`].
    pub errors: BTreeMap<String, u64>,
    /// Attempts that never reached the server, by kind (`dns`, `refused`, `connect_timeout`…).
    pub client_side: BTreeMap<String, u64>,
}

impl ClientCounts {
    /// Counts `n` attempts of `class`.
    pub fn add_attempts(&mut self, class: Class, n: u64) {
        if n == 0 {
            return;
        }
        self.attempts += n;
        if let Some(kind) = class.client_side_kind() {
            *self.client_side.entry(kind.to_owned()).or_default() += n;
            return;
        }
        self.reached_server += n;
        if sent_unanswered(class) {
            *self
                .sent_unanswered
                .entry(class.label().to_owned())
                .or_default() += n;
            return;
        }
        self.answered += n;
        if let Some(k) = status_key(class) {
            *self.errors.entry(k.to_owned()).or_default() += n;
        }
    }

    /// Attempts sent but not answered, all classes.
    pub fn unanswered(&self) -> u64 {
        self.sent_unanswered.values().sum()
    }

    /// Attempts that never reached the server, all kinds.
    pub fn client_side_total(&self) -> u64 {
        self.client_side.values().sum()
    }

    fn minus(&self, earlier: &ClientCounts) -> ClientCounts {
        ClientCounts {
            calls: delta(self.calls, earlier.calls),
            attempts: delta(self.attempts, earlier.attempts),
            reached_server: delta(self.reached_server, earlier.reached_server),
            answered: delta(self.answered, earlier.answered),
            sent_unanswered: delta_map(&self.sent_unanswered, &earlier.sent_unanswered),
            errors: delta_map(&self.errors, &earlier.errors),
            client_side: delta_map(&self.client_side, &earlier.client_side),
        }
    }

    fn plus(&mut self, o: &ClientCounts) {
        self.calls += o.calls;
        self.attempts += o.attempts;
        self.reached_server += o.reached_server;
        self.answered += o.answered;
        add_map(&mut self.sent_unanswered, &o.sent_unanswered);
        add_map(&mut self.errors, &o.errors);
        add_map(&mut self.client_side, &o.client_side);
    }
}

impl ServerCounts {
    fn minus(&self, earlier: &ServerCounts) -> ServerCounts {
        ServerCounts {
            requests: delta(self.requests, earlier.requests),
            errors: delta_map(&self.errors, &earlier.errors),
        }
    }

    fn plus(&mut self, o: &ServerCounts) {
        self.requests += o.requests;
        add_map(&mut self.errors, &o.errors);
    }
}

/// A counter's growth between two readings; a counter that went down was reset (its process
/// restarted), so everything it holds now is new.
fn delta(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

fn delta_map(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| (k.clone(), delta(*v, before.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn add_map(to: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *to.entry(k.clone()).or_default() += v;
    }
}

/// Each deployment's counts since an earlier reading (a deployment new since then: all of it).
fn minus_each<C: Default>(
    now: &BTreeMap<String, C>,
    before: &BTreeMap<String, C>,
    minus: impl Fn(&C, &C) -> C,
) -> BTreeMap<String, C> {
    let none = C::default();
    now.iter()
        .map(|(d, c)| (d.clone(), minus(c, before.get(d).unwrap_or(&none))))
        .collect()
}

/// Adds each deployment's counts of `from` into `to`.
fn add_each<C: Default>(
    to: &mut BTreeMap<String, C>,
    from: &BTreeMap<String, C>,
    plus: impl Fn(&mut C, &C),
) {
    for (d, c) in from {
        plus(to.entry(d.clone()).or_default(), c);
    }
}

fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// What Fireworks' exporter counted, per deployment (`accounts/{a}/deployments/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerView {
    /// Counts by deployment.
    pub deployments: BTreeMap<String, ServerCounts>,
}

impl ServerView {
    /// The exporter's page for `account` (series of other accounts are left out).
    pub fn from_exporter(page: &Exposition, account: &str) -> ServerView {
        let mut v = ServerView::default();
        let mine = |s: &crate::exposition::Sample| {
            s.label("deployment_account").is_none_or(|a| a == account)
        };
        for s in page.named(SERVER_REQUESTS).filter(|s| mine(s)) {
            if let Some(d) = s.label("deployment") {
                v.deployments.entry(d.to_owned()).or_default().requests += count(s.value);
            }
        }
        for s in page.named(SERVER_ERRORS).filter(|s| mine(s)) {
            let (Some(d), Some(code)) = (s.label("deployment"), s.label("http_code")) else {
                continue;
            };
            let key = code
                .parse::<u16>()
                .ok()
                .and_then(|c| http::StatusCode::from_u16(c).ok())
                .and_then(|c| status_key(Class::from_status(c)))
                .unwrap_or(code);
            *v.deployments
                .entry(d.to_owned())
                .or_default()
                .errors
                .entry(key.to_owned())
                .or_default() += count(s.value);
        }
        v
    }

    /// What was counted since `earlier` (a reading of the same exporter).
    pub fn minus(&self, earlier: &ServerView) -> ServerView {
        ServerView {
            deployments: minus_each(&self.deployments, &earlier.deployments, ServerCounts::minus),
        }
    }

    /// Adds another window's counts.
    pub fn add(&mut self, o: &ServerView) {
        add_each(&mut self.deployments, &o.deployments, ServerCounts::plus);
    }
}

/// What firebreak counted, per deployment: from `firebreak_requests_total` and
/// `firebreak_attempts_total` with their `deployment` label (see `firebreak::observe`), or
/// from a `firebreak load --json` summary. Calls whose model names no deployment are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientView {
    /// Counts by deployment.
    pub deployments: BTreeMap<String, ClientCounts>,
}

/// A `firebreak load --json` summary that lacks what reconciliation needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a `firebreak load --json` summary: {0}")]
pub struct LoadJsonError(String);

impl ClientView {
    /// firebreak's own metrics page (a proxy's `/metrics`).
    pub fn from_metrics(page: &Exposition) -> ClientView {
        let mut v = ClientView::default();
        for s in page.named(firebreak::names::CALLS) {
            if let Some(d) = s.label("deployment").filter(|d| !d.is_empty()) {
                v.deployments.entry(d.to_owned()).or_default().calls += count(s.value);
            }
        }
        for s in page.named(firebreak::names::ATTEMPTS) {
            let Some(d) = s.label("deployment").filter(|d| !d.is_empty()) else {
                continue;
            };
            let class = s
                .label("class")
                .and_then(Class::from_label)
                .unwrap_or(Class::Other);
            v.deployments
                .entry(d.to_owned())
                .or_default()
                .add_attempts(class, count(s.value));
        }
        v
    }

    /// A `firebreak load --json` summary (its `model`, `requests` and `attempts_by_class`).
    ///
    /// # Errors
    /// [`LoadJsonError`] when a field is missing or of the wrong type.
    pub fn from_load_json(summary: &serde_json::Value) -> Result<ClientView, LoadJsonError> {
        let missing = |f: &str| LoadJsonError(format!("no `{f}`"));
        let model = summary
            .get("model")
            .and_then(|m| m.as_str())
            .ok_or_else(|| missing("model"))?;
        let calls = summary
            .get("requests")
            .and_then(|r| r.as_u64())
            .ok_or_else(|| missing("requests"))?;
        let by_class = summary
            .get("attempts_by_class")
            .and_then(|m| m.as_object())
            .ok_or_else(|| missing("attempts_by_class"))?;
        let mut v = ClientView::default();
        let Some(d) = Model(Arc::from(model)).deployment().map(str::to_owned) else {
            return Ok(v);
        };
        let c = v.deployments.entry(d).or_default();
        c.calls = calls;
        for (label, n) in by_class {
            let n = n.as_u64().ok_or_else(|| {
                LoadJsonError(format!("`attempts_by_class.{label}` is not a count"))
            })?;
            c.add_attempts(Class::from_label(label).unwrap_or(Class::Other), n);
        }
        Ok(v)
    }

    /// Adds another source's counts (several proxies in front of the same deployments).
    pub fn add(&mut self, o: &ClientView) {
        add_each(&mut self.deployments, &o.deployments, ClientCounts::plus);
    }

    /// What was counted since `earlier` (a reading of the same sources).
    pub fn minus(&self, earlier: &ClientView) -> ClientView {
        ClientView {
            deployments: minus_each(&self.deployments, &earlier.deployments, ClientCounts::minus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebreak::ConnectKind;

    #[test]
    fn every_status_class_has_the_key_of_its_status() {
        for code in 400..600u16 {
            let class = Class::from_status(http::StatusCode::from_u16(code).unwrap());
            let key = status_key(class).unwrap();
            let exact = key == code.to_string();
            let grouped = (key == "5xx" && code >= 500) || (key == "4xx" && code < 500);
            assert!(exact || grouped, "{code} -> {key}");
        }
        assert_eq!(status_key(Class::Success), None);
        assert_eq!(status_key(Class::Connect(ConnectKind::Refused)), None);
    }

    #[test]
    fn attempts_split_into_client_side_unanswered_and_answered() {
        let mut c = ClientCounts::default();
        c.add_attempts(Class::Success, 10);
        c.add_attempts(Class::Overloaded, 3);
        c.add_attempts(Class::Connect(ConnectKind::Refused), 2);
        c.add_attempts(Class::Timeout(TimeoutPhase::Connect), 4);
        c.add_attempts(Class::ResetBeforeResponse, 1);
        c.add_attempts(Class::GateRefused, 0);
        assert_eq!(c.attempts, 20);
        assert_eq!(c.reached_server, 14);
        assert_eq!(c.answered, 13);
        assert_eq!(c.unanswered(), 1);
        assert_eq!(c.client_side_total(), 6);
        assert_eq!(c.errors, [("503".to_owned(), 3)].into());
        assert_eq!(
            c.client_side,
            [("connect_timeout".to_owned(), 4), ("refused".to_owned(), 2)].into()
        );
    }

    #[test]
    fn a_later_reading_minus_an_earlier_one_is_the_window_and_a_reset_starts_over() {
        let mut a = ClientView::default();
        a.deployments
            .entry("d".into())
            .or_default()
            .add_attempts(Class::Success, 5);
        let mut b = a.clone();
        b.deployments
            .get_mut("d")
            .unwrap()
            .add_attempts(Class::Success, 3);
        assert_eq!(b.minus(&a).deployments["d"].answered, 3);
        // A restarted process: its counters went down, so all it has is new.
        let mut restarted = ClientView::default();
        restarted
            .deployments
            .entry("d".into())
            .or_default()
            .add_attempts(Class::Success, 2);
        assert_eq!(restarted.minus(&b).deployments["d"].answered, 2);
    }

    #[test]
    fn load_json_gives_the_deployment_of_its_model() {
        let j = serde_json::json!({
            "model": "llama#accounts/acme/deployments/d1",
            "requests": 4,
            "attempts_by_class": {"success": 4, "overloaded": 1, "connect_refused": 2},
        });
        let v = ClientView::from_load_json(&j).unwrap();
        let c = &v.deployments["accounts/acme/deployments/d1"];
        assert_eq!((c.calls, c.attempts, c.answered), (4, 7, 5));
        assert_eq!(c.client_side["refused"], 2);
        assert!(ClientView::from_load_json(&serde_json::json!({"model": "m"})).is_err());
        let serverless = serde_json::json!({"model": "accounts/fireworks/models/x", "requests": 1, "attempts_by_class": {}});
        assert!(
            ClientView::from_load_json(&serverless)
                .unwrap()
                .deployments
                .is_empty()
        );
    }
}
