//! `firebreak chat` against firebreak-sim: the streamed answer on stdout; a wrong key is a one-line
//! error and a non-zero exit, with the key never shown.

use firebreak_sim::{Fault, Sim, SimConfig, Trigger};
use std::process::Command;

mod common;

const KEY: &str = "fw_chat_SECRET";

#[test]
fn streams_the_answer_and_reports_errors_in_one_line() {
    let rt = common::runtime();
    let sim = rt
        // Anonymous requests (chat sends no `user`) count every attempt as a first one in the
        // simulator, so the fault is a seeded coin: deterministic here, attempts being sequential.
        .block_on(Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .seed(3)
                .fault(Trigger::Probability { p: 0.5 }, Fault::status(502)),
        ))
        .unwrap();
    let run = |key: &str| chat_with(&sim, key, &["--max-tokens", "5"]);
    let out = run(KEY);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tok0 tok1 tok2 tok3 tok4 \n"
    );
    let statuses: Vec<u16> = rt
        .block_on(async { sim.log() })
        .iter()
        .map(|r| r.status)
        .collect();
    assert!(
        statuses.ends_with(&[200]) && statuses.len() >= 2,
        "a 502 was retried first: {statuses:?}"
    );
    let out = run("fw_wrong_SECRET");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("firebreak: 401 Unauthorized"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("after 1 attempt(s)"),
        "says how many attempts: {err}"
    );
    assert!(!err.contains("SECRET"));
}

fn run_chat(sim: &Sim, extra: &[&str]) -> std::process::Output {
    chat_with(sim, KEY, &[&["--max-tokens", "6"], extra].concat())
}

/// `firebreak chat "Say hello"` against `sim` with `key`, and `args`.
fn chat_with(sim: &Sim, key: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["chat", "Say hello", "--base-url", &sim.base_url()])
        .args(args)
        .env("FIREWORKS_API_KEY", key)
        .output()
        .unwrap()
}

#[test]
fn a_mid_stream_error_gets_its_own_line_and_a_400_no_retry_advice() {
    let rt = common::runtime();
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).fault(
            Trigger::Always,
            Fault::SseError {
                after_chunks: 3,
                message: Some("the model crashed".into()),
            },
        )))
        .unwrap();
    let out = run_chat(&sim, &[]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with('\n') && !stdout.trim().is_empty(),
        "tokens, then a newline: {stdout:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("firebreak: the stream broke off"), "{err}");
    assert!(err.contains("the model crashed"), "{err}");
    // A 400 that carries a Retry-After: the advice to retry is not given.
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).fault(
            Trigger::Always,
            Fault::status(400).delay(vec![firebreak_sim::DelayHeader::RetryAfterSecs {
                secs: 5.0,
            }]),
        )))
        .unwrap();
    let out = run_chat(&sim, &["--preset", "batch-submit"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("firebreak: 400"), "{err}");
    assert!(!err.contains("retry after"), "{err}");
}
