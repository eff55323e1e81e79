//! The spans the observation layers open, captured with a tracing subscriber. Alone in its test
//! binary: the subscriber is the global default, so no other test's thread can race it.

use firebreak::gate::GateConfig;
use firebreak_testkit::Recorded;
use http_body_util::BodyExt;
use std::time::Duration;
use tower::ServiceExt;

mod common;
use common::*;

#[test]
fn spans_nest_attempts_under_the_request_with_their_fields() {
    let buf = firebreak_testkit::Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::set_global_default(sub).unwrap();
    {
        rt.block_on(async {
            let rec = Recorded::new();
            let gate = GateConfig::default()
                .initial_concurrency(1)
                .min_concurrency(1)
                .max_concurrency(1);
            let svc = stack(
                &rec,
                Script::new(&[503], Duration::from_millis(10)),
                gate,
                true,
            );
            // Two calls through a gate of one: one waits for the other's slot. Each reads its
            // body (the slot is held until the body ends).
            let call = |svc: Svc| async move {
                let resp = svc.oneshot(req()).await.unwrap();
                resp.into_body().collect().await.unwrap();
            };
            let other = tokio::spawn(call(svc.clone()));
            call(svc).await;
            other.await.unwrap();
            // A 429 asking for 500 ms, longer than any backoff drawn: a server-requested wait.
            let limited = stack(
                &rec,
                Script::new(&[429], Duration::from_millis(10)),
                GateConfig::default(),
                true,
            );
            call(limited).await;
        })
    }
    let out = buf.text();
    let lines: Vec<&str> = out.lines().collect();
    // The second attempt's span is a child of the request span and says why it waited.
    let retry_line = lines
        .iter()
        .find(|l| l.contains("firebreak.call{") && l.contains("firebreak.attempt{attempt=2"))
        .unwrap_or_else(|| panic!("no nested second attempt in:\n{out}"));
    assert!(
        retry_line.contains("delay_reason=\"backoff\""),
        "{retry_line}"
    );
    assert!(
        retry_line.contains("retry_after_class=\"overloaded\""),
        "{retry_line}"
    );
    assert!(out.contains("request_id=\"req-1\""), "{out}");
    assert!(out.contains("gate_wait_reason=\"concurrency\""), "{out}");
    assert!(out.contains("outcome=\"success\""), "{out}");
    assert!(out.contains("finished processing request"), "{out}");
    assert!(out.contains("attempt failed"), "{out}");
    let server_wait = lines
        .iter()
        .find(|l| {
            l.contains("firebreak.attempt{attempt=2") && l.contains("delay_reason=\"server\"")
        })
        .unwrap_or_else(|| panic!("no server-requested wait in:\n{out}"));
    assert!(server_wait.contains("delay_ms=500"), "{server_wait}");
    assert!(
        server_wait.contains("retry_after_class=\"rate_limited\""),
        "{server_wait}"
    );
    // The request span, closed, carries its timings.
    let closed = lines
        .iter()
        .find(|l| {
            l.contains("firebreak.call{")
                && !l.contains("firebreak.attempt{")
                && l.contains(" close ")
        })
        .unwrap_or_else(|| panic!("no closed request span in:\n{out}"));
    assert!(
        closed.contains("ttfb_ms=") && closed.contains("total_ms="),
        "{closed}"
    );
}
