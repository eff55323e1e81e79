//! `firebreak load --json` against firebreak-sim on loopback: the schema, and numbers that agree
//! with the simulator's own attempt log. Also: the key never shows, and bad input is a clear error.

use firebreak_sim::{DelayHeader, Fault, RateLimitConfig, RateLimitDelay, Sim, SimConfig, Trigger};
use std::process::Command;

mod common;

const KEY: &str = "fw_load_SECRET_key";

fn firebreak() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    c.env_remove("FIREWORKS_API_KEY");
    c
}

#[test]
fn load_json_matches_the_simulator_log() {
    let rt = common::runtime();
    let sim = rt
        .block_on(Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .seed(3)
                .rate_limit(RateLimitConfig::new(40.0, 5.0).delay(RateLimitDelay::RetryAfterSecs))
                .fault(
                    Trigger::Probability { p: 0.2 },
                    Fault::status(503).delay(vec![DelayHeader::RetryAfterMs { ms: 50.0 }]),
                )
                .fault(Trigger::Probability { p: 0.05 }, Fault::status(400)),
        ))
        .unwrap();
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            &sim.base_url(),
            "--api-key",
            KEY,
            "--model",
            "m",
            "--requests",
            "40",
            "--concurrency",
            "8",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("SECRET") && !stderr.contains("SECRET"),
        "the key leaked"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for k in [
        "model",
        "requests",
        "attempts_by_class",
        "succeeded",
        "failed",
        "attempts",
        "attempts_reached_server",
        "rate_limited_responses",
        "client_side_failures",
        "client_side_by_kind",
        "server_acknowledged_failures_by_class",
        "elapsed_s",
        "latency_ms",
        "failures_by_class",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    let lat = |k: &str| v["latency_ms"][k].as_f64().unwrap();
    assert!(
        0.0 < lat("p50") && lat("p50") <= lat("p99") && lat("p99") <= lat("max"),
        "{}",
        v["latency_ms"]
    );
    assert!(
        lat("max") <= v["elapsed_s"].as_f64().unwrap() * 1000.0 + 1.0,
        "no call outlasts the run"
    );
    assert_eq!(v["requests"], 40);
    assert_eq!(
        v["succeeded"].as_u64().unwrap() + v["failed"].as_u64().unwrap(),
        40
    );
    let log = rt.block_on(async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        sim.log()
    });
    assert_eq!(
        v["attempts"].as_u64().unwrap(),
        log.len() as u64,
        "attempts agree with the server's log"
    );
    assert_eq!(v["attempts_reached_server"], v["attempts"]);
    // Failed attempts the server acknowledged, by class, as the simulator logged them.
    let mut failed: std::collections::BTreeMap<String, u64> = Default::default();
    for r in log.iter().filter(|r| r.status != 200) {
        // The labels of the statuses this simulator sends, written out.
        let label = match r.status {
            400 => "client_error_bad_request",
            429 => "rate_limited",
            503 => "overloaded",
            other => panic!("unexpected status {other}"),
        };
        *failed.entry(label.to_owned()).or_default() += 1;
    }
    let seen: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(v["server_acknowledged_failures_by_class"].clone()).unwrap();
    assert_eq!(seen, failed);
    // Every attempt by class: the failures above plus the successes the log shows.
    let mut by_class = failed.clone();
    by_class.insert(
        "success".into(),
        log.iter().filter(|r| r.status == 200).count() as u64,
    );
    let all: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(v["attempts_by_class"].clone()).unwrap();
    assert_eq!(all, by_class);
    assert_eq!(
        v["rate_limited_responses"].as_u64().unwrap(),
        log.iter().filter(|r| r.status == 429).count() as u64
    );
    // Every logical request ended with the status of its last logged attempt.
    let mut last: std::collections::HashMap<String, u16> = Default::default();
    for r in &log {
        last.insert(r.request_id.clone().unwrap(), r.status);
    }
    assert_eq!(last.len(), 40, "every request reached the server");
    let ok = last.values().filter(|s| **s == 200).count() as u64;
    assert_eq!(v["succeeded"].as_u64().unwrap(), ok);
    let bad_requests = last.values().filter(|s| **s == 400).count() as u64;
    assert_eq!(
        v["failures_by_class"]["client_error_bad_request"]
            .as_u64()
            .unwrap_or(0),
        bad_requests
    );
    assert_eq!(v["client_side_failures"], 0);
}

#[test]
fn missing_key_and_bad_urls_are_clear_errors() {
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FIREWORKS_API_KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            "ftp://x",
            "--api-key",
            KEY,
            "--model",
            "m",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--base-url") && !err.contains("SECRET"),
        "{err}"
    );
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            "http://127.0.0.1:9",
            "--api-key",
            KEY,
            "--model",
            "m",
            "--idle-timeout",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-timeout"));
}

#[test]
fn refused_connections_are_counted_client_side() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            &format!("http://127.0.0.1:{port}/v1"),
            "--api-key",
            KEY,
            "--model",
            "m",
            "--requests",
            "3",
            "--max-attempts",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    // Every call failed: the summary is still printed, and the exit status says so.
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("all 3 calls failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["failed"], 3);
    assert_eq!(
        v["client_side_failures"], 6,
        "two refused attempts per request, none seen by a server"
    );
    assert_eq!(v["failures_by_class"]["connect_refused"], 3);
    assert_eq!(v["client_side_by_kind"]["refused"], 6);
    assert_eq!(v["attempts_reached_server"], 0);
}

#[test]
fn the_summary_separates_client_side_from_server_acknowledged_failures() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            &format!("http://127.0.0.1:{port}/v1"),
            "--api-key",
            KEY,
            "--model",
            "m",
            "--requests",
            "2",
            "--max-attempts",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "every call failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "failed attempts the server acknowledged (on the provider's dashboard): none"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "failed attempts that never reached the server (client-side only): refused 4"
        ),
        "{stdout}"
    );
}

#[test]
fn mid_stream_failures_are_in_the_breakdown_and_help_shows_the_presets() {
    let rt = common::runtime();
    // Every stream fails after its first events: half with an error event, half stalled.
    let sim = rt
        .block_on(Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(
                    Trigger::FirstAttemptsOfEvery {
                        n: 100,
                        every: 2,
                        offset: 0,
                    },
                    Fault::SseError {
                        after_chunks: 2,
                        message: None,
                    },
                )
                .fault(
                    Trigger::FirstAttemptsOfEvery {
                        n: 100,
                        every: 2,
                        offset: 1,
                    },
                    Fault::StallAfter {
                        after_chunks: 2,
                        for_ms: 10_000,
                    },
                ),
        ))
        .unwrap();
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            &sim.base_url(),
            "--model",
            "m",
            "--requests",
            "4",
            "--stream",
            "--idle-timeout",
            "0.5",
            "--max-tokens",
            "8",
            "--json",
        ])
        .env("FIREWORKS_API_KEY", KEY)
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["failures_by_class"]["stream_error"], 2, "{v}");
    assert_eq!(v["failures_by_class"]["timeout_body_idle"], 2, "{v}");
    let server = &v["server_acknowledged_failures_by_class"];
    assert_eq!(server["stream_error"], 2, "{v}");
    assert_eq!(server["timeout_body_idle"], 2, "{v}");
    let help = firebreak().args(["load", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("long-context") && help.contains("30 min"),
        "{help}"
    );
}

#[test]
fn load_with_a_fallback_routes_around_a_dead_primary() {
    const PRIMARY: &str = "accounts/acme/deployedModels/mine";
    const FALLBACK: &str = "accounts/fireworks/models/llama-v3p1-8b-instruct";
    let rt = common::runtime();
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).deployment(
            firebreak_sim::DeploymentConfig::new(PRIMARY).fault(
                Trigger::Always,
                firebreak_testkit::status_fault(502, vec![]),
            ),
        )))
        .unwrap();
    let out = firebreak()
        .args([
            "load",
            "--base-url",
            &sim.base_url(),
            "--model",
            PRIMARY,
            "--fallback",
            FALLBACK,
        ])
        .args(["--requests", "40", "--concurrency", "4", "--json"])
        .env("FIREWORKS_API_KEY", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["succeeded"], 40, "{v}");
    assert_eq!(v["answered_by"][FALLBACK], 40, "{v}");
    // The primary's breaker opened after five failures (and those already in flight).
    let primary = rt
        .block_on(async { sim.log() })
        .iter()
        .filter(|r| r.model.as_deref() == Some(PRIMARY))
        .count();
    assert!(
        (5..=5 + 3).contains(&primary),
        "{primary} attempts on the dead primary"
    );
}
