//! What the stack's own metrics say about a run: the breakdown `load` and `demo` print of
//! failures the provider's dashboard can see against the ones only this client saw.

use std::collections::BTreeMap;

/// What the stack's metrics said about the run, read once at the end from a recorder local to
/// this command.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) attempts: u64,
    pub(crate) reached_server: u64,
    pub(crate) rate_limited: u64,
    pub(crate) attempts_by_class: BTreeMap<String, u64>,
    pub(crate) client_side: BTreeMap<String, u64>,
    pub(crate) server_failures: BTreeMap<String, u64>,
}

impl Seen {
    pub(crate) fn read(snapshotter: &metrics_util::debugging::Snapshotter) -> Seen {
        use firebreak::names;
        use metrics_util::debugging::DebugValue;
        let mut seen = Seen::default();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let DebugValue::Counter(n) = value else {
                continue;
            };
            let key = key.key();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            match key.name() {
                names::ATTEMPTS => {
                    seen.attempts += n;
                    if let Some(c) = label("class").filter(|_| n > 0) {
                        *seen.attempts_by_class.entry(c).or_default() += n;
                    }
                    if label("reached_server").as_deref() == Some("true") {
                        seen.reached_server += n;
                        match label("class") {
                            Some(c) if c != "success" && n > 0 => {
                                *seen.server_failures.entry(c).or_default() += n;
                            }
                            _ => {}
                        }
                    }
                }
                names::HTTP_429 => seen.rate_limited += n,
                names::CLIENT_FAILURES if n > 0 => {
                    if let Some(k) = label("kind") {
                        *seen.client_side.entry(k).or_default() += n;
                    }
                }
                _ => {}
            }
        }
        seen
    }
}

/// The short breakdown printed at the end: what the provider's dashboard can see, and what only
/// this client saw.
pub(crate) fn breakdown(seen: &Seen) -> String {
    let list = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "failed attempts the server acknowledged (on the provider's dashboard): {}\n\
         failed attempts that never reached the server (client-side only): {}",
        list(&seen.server_failures),
        list(&seen.client_side)
    )
}
