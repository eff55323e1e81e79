//! The API key never shows: not in any tracing output (everything, at TRACE, captured from a run
//! with faults against firebreak-sim), not in the `Debug` or `Display` of any error that run
//! produced, nor of the client and its settings. Alone in its binary: the capturing subscriber
//! is the process's global default.

use firebreak::retry::Jitter;
use firebreak::timeout::{TimeoutConfig, Workload};
use firebreak::{Class, Error, FireworksClient, Stack, client::ApiKey, retry::RetryConfig};
use firebreak_sim::{DelayHeader, Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::*;
use http_body_util::BodyExt;
use std::time::Duration;

const SECRET: &str = "fw_SECRETkey_do_not_print_8c1f";
const WRONG: &str = "fw_WRONGkey_do_not_print_77aa";

/// Every way an error can be printed: Display, Debug, pretty Debug, and its source chain.
fn renderings(e: &Error) -> String {
    let mut out = format!("{e}\n{e:?}\n{e:#?}\n");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(&format!("{s}\n{s:?}\n"));
        src = s.source();
    }
    out
}

fn status(s: u16) -> Fault {
    Fault::status(s).delay(vec![DelayHeader::RetryAfterMs { ms: 20.0 }])
}

#[test]
fn the_key_never_appears_in_traces_errors_or_debug_output() {
    let buf = firebreak_testkit::Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(sub).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let printed = rt.block_on(bounded(60, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(SECRET)
                .seed(5)
                .fault(Trigger::Probability { p: 0.15 }, status(503))
                .fault(Trigger::Probability { p: 0.15 }, status(429))
                .fault(Trigger::Probability { p: 0.1 }, Fault::ResetBeforeResponse)
                .fault(Trigger::Probability { p: 0.1 }, Fault::Hang { for_ms: 400 })
                .fault(
                    Trigger::Probability { p: 0.1 },
                    Fault::ResetMidStream { after_chunks: 1 },
                )
                .fault(Trigger::Probability { p: 0.1 }, status(404)),
        )
        .await
        .unwrap();
        let timeouts =
            TimeoutConfig::preset(Workload::Interactive).headers(Some(Duration::from_millis(150)));
        // Two attempts only, so that failures reach the caller as errors.
        let retry = RetryConfig::default()
            .max_attempts(2)
            .backoff(firebreak::retry::Backoff {
                jitter: Jitter::Full,
                base: Duration::from_millis(5),
                cap: Duration::from_millis(20),
            });
        let stack = Stack::interactive().timeouts(timeouts).retry(retry);
        let mut printed = String::new();
        let mut classes = std::collections::HashSet::new();

        let client =
            FireworksClient::new(&sim.base_url(), ApiKey::new(SECRET).unwrap(), stack.clone())
                .unwrap();
        let wrong =
            FireworksClient::new(&sim.base_url(), ApiKey::new(WRONG).unwrap(), stack.clone())
                .unwrap();
        let refused = FireworksClient::new(
            &format!("http://{}", refused_addr()),
            ApiKey::new(SECRET).unwrap(),
            stack.clone(),
        )
        .unwrap();
        for (i, c) in [&client, &wrong, &refused]
            .into_iter()
            .cycle()
            .take(90)
            .enumerate()
        {
            let stream = i % 2 == 0;
            match c
                .post("/chat/completions", chat_body(&format!("s{i}"), stream))
                .await
            {
                Err(e) => {
                    classes.insert(e.class());
                    printed.push_str(&renderings(&e));
                }
                Ok(resp) => {
                    let s = resp.status();
                    printed.push_str(&format!("{resp:?}\n"));
                    match resp.into_body().collect().await {
                        Ok(b) => {
                            if !s.is_success() {
                                classes.insert(Class::from_status(s));
                                printed.push_str(&String::from_utf8_lossy(&b.to_bytes()));
                            }
                        }
                        Err(e) => {
                            classes.insert(e.class());
                            printed.push_str(&renderings(&e));
                        }
                    }
                }
            }
        }
        // The client, its layer, its settings, and a rejected key.
        printed.push_str(&format!(
            "{client:?}\n{:?}\n{stack:?}\n{:?}\n",
            client.layer(),
            ApiKey::new(SECRET).unwrap()
        ));
        let bad = ApiKey::new(format!("{SECRET}\n")).unwrap_err();
        printed.push_str(&format!("{bad}\n{bad:?}\n"));
        // The run must have produced the failures it is meant to check.
        for c in [
            Class::ClientError(firebreak::ClientErrorKind::Unauthorized),
            Class::Connect(firebreak::ConnectKind::Refused),
            Class::Timeout(firebreak::TimeoutPhase::Headers),
            Class::ResetMidBody,
        ] {
            assert!(classes.contains(&c), "no {c:?} in {classes:?}");
        }
        assert!(classes.len() >= 6, "{classes:?}");
        printed
    }));

    let traces = buf.text();
    assert!(
        traces.contains("firebreak.call") && traces.contains("firebreak.attempt"),
        "the subscriber captured nothing of the stack"
    );
    assert!(
        traces.contains("response failed"),
        "no failure events captured"
    );
    for (what, text) in [("tracing output", &traces), ("errors and Debug", &printed)] {
        for secret in [SECRET, WRONG, "SECRETkey", "WRONGkey"] {
            assert!(
                !text.contains(secret),
                "{what} contains the key: …{}…",
                &text[text.find(secret).unwrap().saturating_sub(200)..]
                    [..(200 + secret.len()).min(text.len())]
            );
        }
    }
}
