//! [`Report`]: the two views side by side, per deployment and per window, and the verdict.

use crate::views::{ClientCounts, ClientView, ServerCounts, ServerView};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Whether what firebreak says reached the server matches what the server counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// The server counted exactly the attempts firebreak saw answered.
    Exact,
    /// The server counted more than firebreak saw answered, but no more than the attempts sent
    /// and not answered (the server may have answered after firebreak gave up).
    WithinUnanswered,
    /// The counts differ beyond that: flagged. Positive when the server counted more.
    Differs(i64),
}

impl Agreement {
    fn of(client: &ClientCounts, server: &ServerCounts) -> Agreement {
        let diff = server.requests as i64 - client.answered as i64;
        if diff == 0 {
            Agreement::Exact
        } else if diff > 0 && diff as u64 <= client.unanswered() {
            Agreement::WithinUnanswered
        } else {
            Agreement::Differs(diff)
        }
    }

    /// `exact`, `within_unanswered` or `differs`.
    pub fn label(self) -> &'static str {
        match self {
            Agreement::Exact => "exact",
            Agreement::WithinUnanswered => "within_unanswered",
            Agreement::Differs(_) => "differs",
        }
    }
}

/// One deployment over one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The deployment (`accounts/{a}/deployments/{id}`).
    pub deployment: String,
    /// Which window: `None` for the totals.
    pub window: Option<usize>,
    /// firebreak's counts.
    pub client: ClientCounts,
    /// The exporter's counts.
    pub server: ServerCounts,
    /// Whether they agree.
    pub agreement: Agreement,
}

/// A reconciliation: a row per deployment and window, totals per deployment, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Seconds each window lasted (`0` for a single reading of totals).
    pub window_s: u64,
    /// Rows per window, in order.
    pub rows: Vec<Row>,
    /// One row per deployment over the whole time.
    pub totals: Vec<Row>,
    /// One or two lines: where the failures happened, and whether the counts agree.
    pub verdict: Vec<String>,
}

/// A reading of both sides at one moment.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// firebreak's side.
    pub client: ClientView,
    /// The exporter's side.
    pub server: ServerView,
}

impl Report {
    /// The report for consecutive readings: with one reading, its totals; with more, a row per
    /// window between consecutive readings. `only` keeps one deployment (its full name
    /// `accounts/{a}/deployments/{id}`, or just the id).
    pub fn from_readings(readings: &[Reading], window_s: u64, only: Option<&str>) -> Report {
        let keep = |d: &str| only.is_none_or(|o| d == o || d.rsplit('/').next() == Some(o));
        let windows: Vec<Reading> = match readings {
            [] => vec![],
            [one] => vec![one.clone()],
            many => many
                .windows(2)
                .map(|w| Reading {
                    client: w[1].client.minus(&w[0].client),
                    server: w[1].server.minus(&w[0].server),
                })
                .collect(),
        };
        let mut total = Reading::default();
        for w in &windows {
            total.client.add(&w.client);
            total.server.add(&w.server);
        }
        // Every deployment seen in any window gets a row in every window, zeros included.
        let mut names: Vec<&String> = total
            .client
            .deployments
            .keys()
            .chain(total.server.deployments.keys())
            .filter(|d| keep(d))
            .collect();
        names.sort();
        names.dedup();
        let mut rows = Vec::new();
        if windows.len() > 1 {
            for (i, w) in windows.iter().enumerate() {
                rows.extend(side_by_side(w, Some(i), &names));
            }
        }
        let totals = side_by_side(&total, None, &names);
        let verdict = verdict(&totals);
        Report {
            window_s,
            rows,
            totals,
            verdict,
        }
    }

    /// Whether every deployment's totals agree (exactly or within the unanswered attempts).
    pub fn agrees(&self) -> bool {
        self.totals
            .iter()
            .all(|r| !matches!(r.agreement, Agreement::Differs(_)))
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let row = |r: &Row| {
            serde_json::json!({
                "deployment": r.deployment,
                "window": r.window,
                "client": {
                    "calls": r.client.calls,
                    "attempts": r.client.attempts,
                    "reached_server": r.client.reached_server,
                    "answered": r.client.answered,
                    "sent_unanswered": r.client.sent_unanswered,
                    "errors_by_status": r.client.errors,
                    "client_side_by_kind": r.client.client_side,
                },
                "server": {
                    "requests": r.server.requests,
                    "errors_by_status": r.server.errors,
                },
                "agreement": r.agreement.label(),
                "server_minus_client": r.server.requests as i64 - r.client.answered as i64,
            })
        };
        serde_json::json!({
            "window_s": self.window_s,
            "rows": self.rows.iter().map(row).collect::<Vec<_>>(),
            "totals": self.totals.iter().map(row).collect::<Vec<_>>(),
            "agrees": self.agrees(),
            "verdict": self.verdict,
        })
    }

    /// The report as a table for a terminal, verdict last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<44} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8}  {:<24} {:<24} never reached the server",
            "deployment",
            "window",
            "calls",
            "attempts",
            "reached",
            "answered",
            "server",
            "errors (firebreak)",
            "errors (server)",
        );
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_owned()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        for r in self.rows.iter().chain(&self.totals) {
            // A window by the second it starts at, from the first reading.
            let window = r.window.map_or("total".to_owned(), |w| {
                format!("+{}s", w as u64 * self.window_s)
            });
            let flag = match r.agreement {
                Agreement::Differs(d) => format!("  <- differs by {d:+}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<44} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8}  {:<24} {:<24} {}{flag}",
                r.deployment,
                window,
                r.client.calls,
                r.client.attempts,
                r.client.reached_server,
                r.client.answered,
                r.server.requests,
                list(&r.client.errors),
                list(&r.server.errors),
                list(&r.client.client_side),
            );
        }
        for line in &self.verdict {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

fn side_by_side(w: &Reading, window: Option<usize>, names: &[&String]) -> Vec<Row> {
    names
        .iter()
        .map(|d| {
            let client = w.client.deployments.get(*d).cloned().unwrap_or_default();
            let server = w.server.deployments.get(*d).cloned().unwrap_or_default();
            Row {
                deployment: d.to_string(),
                window,
                agreement: Agreement::of(&client, &server),
                client,
                server,
            }
        })
        .collect()
}

/// How a kind of client-side failure reads in a sentence.
fn kind_words(kind: &str, n: u64) -> String {
    let (one, many) = match kind {
        "dns" => ("DNS failure", "DNS failures"),
        "refused" => ("refused connect", "refused connects"),
        "tls" => ("TLS failure", "TLS failures"),
        "connect_other" => ("other connect failure", "other connect failures"),
        "connect_timeout" => ("connect timeout", "connect timeouts"),
        "ready_timeout" => (
            "wait for a pooled connection timed out",
            "waits for a pooled connection timed out",
        ),
        "gate_refused" => (
            "held back by firebreak's 429 gate",
            "held back by firebreak's 429 gate",
        ),
        other => (other, other),
    };
    format!("{n} {}", if n == 1 { one } else { many })
}

fn verdict(totals: &[Row]) -> Vec<String> {
    let mut client_side: BTreeMap<&str, u64> = BTreeMap::new();
    let mut server_errors: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut answered, mut counted, mut unanswered) = (0u64, 0u64, 0u64);
    for r in totals {
        for (k, v) in &r.client.client_side {
            *client_side.entry(k).or_default() += v;
        }
        for (k, v) in &r.server.errors {
            *server_errors.entry(k).or_default() += v;
        }
        answered += r.client.answered;
        counted += r.server.requests;
        unanswered += r.client.unanswered();
    }
    fn by_count<'a>(m: &BTreeMap<&'a str, u64>) -> Vec<(&'a str, u64)> {
        let mut v: Vec<(&str, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
    let mut first = Vec::new();
    let never: u64 = client_side.values().sum();
    if never > 0 {
        let kinds = by_count(&client_side)
            .iter()
            .map(|(k, n)| kind_words(k, *n))
            .collect::<Vec<_>>()
            .join(", ");
        first.push(format!(
            "{never} {} never reached Fireworks ({kinds}): a client-side or network-path problem, not a deployment problem",
            if never == 1 { "failure" } else { "failures" }
        ));
    }
    let server_total: u64 = server_errors.values().sum();
    if server_total > 0 {
        let codes = by_count(&server_errors)
            .iter()
            .map(|(k, n)| format!("{n} × {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        first.push(format!(
            "{server_total} {} answered by the deployment ({codes}): on Fireworks' side, and on its dashboard",
            if server_total == 1 { "error was" } else { "errors were" }
        ));
    }
    if first.is_empty() {
        first.push("no failures on either side".to_owned());
    }
    let agreement = if totals.is_empty() {
        "no deployment traffic to compare (only dedicated deployments are exported)".to_owned()
    } else if answered == counted {
        format!(
            "the counts agree: firebreak saw {answered} attempts answered, Fireworks counted {counted}"
        )
    } else if counted > answered && counted - answered <= unanswered {
        format!(
            "the counts agree within the {unanswered} attempts sent but not answered: firebreak saw {answered} answered, Fireworks counted {counted}"
        )
    } else {
        format!(
            "FLAGGED: firebreak saw {answered} attempts answered but Fireworks counted {counted} ({:+}); other clients of the deployment, or windows not aligned to the minute",
            counted as i64 - answered as i64
        )
    };
    vec![first.join("; "), agreement]
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebreak::{Class, ConnectKind, TimeoutPhase};

    const D1: &str = "accounts/acme/deployments/d1";

    fn reading(success: u64, overloaded: u64, refused: u64, timeouts: u64) -> Reading {
        let mut r = Reading::default();
        let c = r.client.deployments.entry(D1.into()).or_default();
        c.calls = success;
        c.add_attempts(Class::Success, success);
        c.add_attempts(Class::Overloaded, overloaded);
        c.add_attempts(Class::Connect(ConnectKind::Refused), refused);
        c.add_attempts(Class::Timeout(TimeoutPhase::Connect), timeouts);
        let s = r.server.deployments.entry(D1.into()).or_default();
        s.requests = success + overloaded;
        if overloaded > 0 {
            s.errors.insert("503".into(), overloaded);
        }
        r
    }

    #[test]
    fn the_verdict_names_the_client_side_kinds_and_the_servers_errors() {
        let r = Report::from_readings(&[reading(100, 9, 6, 31)], 0, None);
        assert_eq!(r.totals.len(), 1);
        assert_eq!(r.totals[0].agreement, Agreement::Exact);
        assert!(r.agrees());
        assert_eq!(
            r.verdict[0],
            "37 failures never reached Fireworks (31 connect timeouts, 6 refused connects): a client-side or network-path problem, not a deployment problem; 9 errors were answered by the deployment (9 × 503): on Fireworks' side, and on its dashboard"
        );
        assert_eq!(
            r.verdict[1],
            "the counts agree: firebreak saw 109 attempts answered, Fireworks counted 109"
        );
    }

    #[test]
    fn a_difference_beyond_the_unanswered_attempts_is_flagged() {
        let mut read = reading(10, 0, 0, 0);
        read.server.deployments.get_mut(D1).unwrap().requests = 13;
        read.client
            .deployments
            .get_mut(D1)
            .unwrap()
            .add_attempts(Class::ResetBeforeResponse, 2);
        let r = Report::from_readings(&[read.clone()], 0, None);
        assert_eq!(r.totals[0].agreement, Agreement::Differs(3));
        assert!(!r.agrees());
        assert!(r.verdict[1].starts_with("FLAGGED"), "{}", r.verdict[1]);
        read.server.deployments.get_mut(D1).unwrap().requests = 12;
        let r = Report::from_readings(&[read], 0, None);
        assert_eq!(r.totals[0].agreement, Agreement::WithinUnanswered);
        assert!(
            r.verdict[1].contains("within the 2 attempts"),
            "{}",
            r.verdict[1]
        );
    }

    #[test]
    fn readings_become_windows_and_their_totals() {
        let readings = [
            reading(10, 1, 0, 0),
            reading(15, 2, 1, 0),
            reading(30, 2, 4, 0),
        ];
        let r = Report::from_readings(&readings, 60, Some("d1"));
        assert_eq!(r.rows.len(), 2);
        // A window without traffic still has its row, of zeros.
        let quiet = [Reading::default(), readings[0].clone(), readings[0].clone()];
        let q = Report::from_readings(&quiet, 60, None);
        assert_eq!(q.rows.len(), 2);
        assert_eq!(q.rows[1].client, ClientCounts::default());
        assert_eq!(q.rows[1].window, Some(1));
        assert_eq!(r.rows[0].client.answered, 6);
        assert_eq!(r.rows[0].server.requests, 6);
        assert_eq!(r.rows[1].client.answered, 15);
        assert_eq!(r.rows[1].client.client_side["refused"], 3);
        assert_eq!(r.totals[0].client.answered, 21);
        assert_eq!(r.totals[0].server.requests, 21);
        let j = r.to_json();
        assert_eq!(j["rows"].as_array().unwrap().len(), 2);
        assert_eq!(
            j["totals"][0]["client"]["client_side_by_kind"]["refused"],
            4
        );
        assert_eq!(j["agrees"], true);
        let other = Report::from_readings(&readings, 60, Some("d2"));
        assert!(other.totals.is_empty());
        assert!(other.verdict[1].contains("no deployment traffic"));
    }
}
