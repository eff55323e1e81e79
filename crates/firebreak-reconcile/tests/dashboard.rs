//! The Grafana dashboard in `grafana/dashboard.json` stays true to the code: its queries name
//! only series that firebreak or the exporter serve, its "sent, not answered" classes are the
//! ones `sent_unanswered` names, and its panels do not overlap.

use firebreak::{Class, names};
use firebreak_reconcile::{SERVER_ERRORS, SERVER_REQUESTS, sent_unanswered};
use std::collections::BTreeSet;

fn dashboard() -> serde_json::Value {
    let text = include_str!("../grafana/dashboard.json");
    serde_json::from_str(text).expect("the dashboard is JSON")
}

fn exprs(d: &serde_json::Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// The names of the series a PromQL expression selects: a word directly followed by `{` or
/// `[`, outside any braces or brackets.
fn series_names(e: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut depth = 0usize;
    for c in e.chars() {
        match c {
            '{' | '[' => {
                if depth == 0 && !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                depth += 1;
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            c if depth == 0 && (c.is_ascii_alphanumeric() || c == '_' || c == ':') => word.push(c),
            _ => word.clear(),
        }
        if depth > 0 {
            word.clear();
        }
    }
    out
}

#[test]
fn queries_name_only_series_that_exist() {
    let d = dashboard();
    let known: BTreeSet<String> = [
        names::ATTEMPTS.to_owned(),
        format!("{}_bucket", names::OVERALL_MS),
        SERVER_REQUESTS.to_owned(),
        SERVER_ERRORS.to_owned(),
        "latency_overall_ms_bucket:sum_by_deployment".to_owned(),
    ]
    .into();
    let all = exprs(&d);
    assert!(all.len() >= 8);
    for e in &all {
        let used = series_names(e);
        assert!(!used.is_empty(), "{e}");
        for n in used {
            assert!(known.contains(&n), "{n} in {e}");
        }
    }
    // Both sides appear.
    assert!(all.iter().any(|e| e.contains(names::ATTEMPTS)));
    assert!(all.iter().any(|e| e.contains(SERVER_REQUESTS)));
}

#[test]
fn its_unanswered_classes_are_the_libraries() {
    let want: BTreeSet<&str> = Class::ALL
        .iter()
        .filter(|c| sent_unanswered(**c))
        .map(|c| c.label())
        .collect();
    let d = dashboard();
    let mut seen = 0;
    for e in exprs(&d) {
        for part in e
            .split("class=~\"")
            .skip(1)
            .chain(e.split("class!~\"").skip(1))
        {
            let set: BTreeSet<&str> = part.split('"').next().unwrap().split('|').collect();
            assert_eq!(set, want, "{e}");
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "the rule is used in the answered and difference panels"
    );
}

#[test]
fn panels_do_not_overlap() {
    let d = dashboard();
    let cells: Vec<(u64, u64, u64, u64)> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap();
            (n("x"), n("y"), n("w"), n("h"))
        })
        .collect();
    for (i, a) in cells.iter().enumerate() {
        assert!(a.0 + a.2 <= 24, "panel {i} is wider than the grid");
        for b in &cells[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "{a:?} overlaps {b:?}");
        }
    }
}
