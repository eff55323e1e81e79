//! `firebreak proxy` in front of firebreak-sim: JSON and SSE through the stack, error mapping,
//! health, body limit, and the key (injected only when the caller sends none; never printed).

use firebreak_sim::{Fault, SimConfig, Trigger};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const KEY: &str = "fw_proxy_SECRET";

mod common;
use common::{proxy, sim_on_runtime};

/// A raw HTTP/1.1 request (Connection: close), returning status, headers and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = auth
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The test key, and a 503 on every request's first attempt.
fn first_attempt_503() -> SimConfig {
    SimConfig::default()
        .api_key(KEY)
        .fault(Trigger::FirstAttempts { n: 1 }, Fault::status(503))
}

fn chat(user: &str, stream: bool) -> String {
    format!(r#"{{"model":"m","messages":[],"max_tokens":3,"stream":{stream},"user":"{user}"}}"#)
}

#[test]
fn proxies_json_and_sse_through_the_stack() {
    let (rt, sim) = sim_on_runtime(first_attempt_503());
    let p = proxy(&sim.base_url(), &["--api-key", KEY]);
    let (s, _, body) = http(&p.addr, "GET", "/healthz", None, "");
    assert_eq!((s, body.as_str()), (200, "ok"));
    // JSON: the 503 is retried behind the proxy; the key is injected.
    let (s, _, body) = http(
        &p.addr,
        "POST",
        "/inference/v1/chat/completions",
        None,
        &chat("p-1", false),
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("chat.completion"));
    assert_eq!(rt.block_on(async { sim.attempts_for("p-1") }).len(), 2);
    // SSE through the /v1 prefix: chunks and [DONE] arrive.
    let (s, head, body) = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        None,
        &chat("p-2", true),
    );
    assert_eq!(s, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(
        body.contains("chat.completion.chunk") && body.contains("data: [DONE]"),
        "{body}"
    );
    // A caller's own key is passed through (the simulator rejects this one).
    let (s, _, body) = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        Some("fw_callers_own"),
        &chat("p-3", false),
    );
    assert_eq!(s, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "UNAUTHORIZED");
    // Over the body limit: 413 in the OpenAI shape.
    drop(p);
    let p = proxy(&sim.base_url(), &["--api-key", KEY, "--max-body", "64"]);
    let (s, _, body) = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        None,
        &"x".repeat(200),
    );
    assert_eq!(s, 413);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64-byte limit")
    );
}

#[test]
fn a_server_delay_over_the_cap_comes_back_as_a_429_with_retry_after() {
    let (rt, sim) = sim_on_runtime(SimConfig::default().fault(
        Trigger::Always,
        Fault::status(429).delay(vec![firebreak_sim::DelayHeader::RetryAfterSecs {
            secs: 120.0,
        }]),
    ));
    let p = proxy(&sim.base_url(), &["--api-key", KEY]);
    let (s, head, body) = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        None,
        &chat("ra", false),
    );
    assert_eq!(s, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 120"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(
        rt.block_on(async { sim.log() }).len(),
        1,
        "a 120 s wait is not slept behind the caller's back"
    );
}

#[test]
fn upstream_failures_come_back_as_openai_errors() {
    let (_rt, sim) =
        sim_on_runtime(SimConfig::default().fault(Trigger::Always, Fault::Hang { for_ms: 5_000 }));
    let p = proxy(
        &sim.base_url(),
        &["--api-key", KEY, "--first-byte-timeout", "0.3"],
    );
    let (s, _, body) = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        None,
        &chat("h", false),
    );
    assert_eq!(s, 504, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "firebreak_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    assert!(!body.contains("SECRET"));
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["proxy", "--upstream", "ftp://nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

/// Parses the Prometheus text format: every sample line is `name{labels} value`. Returns the
/// samples keyed by name and sorted labels, and the `# TYPE` of each metric.
type Samples = std::collections::BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse_prometheus(text: &str) -> (Samples, std::collections::BTreeMap<String, String>) {
    let mut samples = Samples::new();
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), vec![]),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels: Vec<(String, String)> = body
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label=value");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                labels.sort();
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name:?}"
        );
        samples.insert((name, labels), value);
    }
    (samples, types)
}

#[test]
fn metrics_are_served_in_the_prometheus_text_format() {
    let (rt, sim) = sim_on_runtime(first_attempt_503());
    let p = proxy(&sim.base_url(), &["--api-key", KEY]);
    for i in 0..3 {
        let (s, _, body) = http(
            &p.addr,
            "POST",
            "/v1/chat/completions",
            None,
            &chat(&format!("m-{i}"), i == 2),
        );
        assert_eq!(s, 200, "{body}");
    }
    let (s, head, text) = http(&p.addr, "GET", "/metrics", None, "");
    assert_eq!(s, 200);
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    assert!(!text.contains("SECRET"));
    let (samples, types) = parse_prometheus(&text);
    // The sum of the series `name` whose labels include `labels` (calls are also labelled by
    // model, here `m`, and deployment, here none).
    let get = |name: &str, labels: &[(&str, &str)]| {
        let matching: Vec<f64> = samples
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .collect();
        assert!(!matching.is_empty(), "no {name}{labels:?} in:\n{text}");
        matching.iter().sum::<f64>()
    };
    let log = rt.block_on(async { sim.log() });
    let overloaded = log.iter().filter(|r| r.status == 503).count() as f64;
    assert_eq!(overloaded, 3.0);
    assert_eq!(
        get(
            "firebreak_requests_total",
            &[("outcome", "success"), ("class", "success")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "firebreak_requests_total",
            &[("model", "m"), ("outcome", "success")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "firebreak_attempts_total",
            &[("class", "overloaded"), ("reached_server", "true")]
        ),
        overloaded
    );
    assert_eq!(
        get(
            "firebreak_attempts_total",
            &[("class", "success"), ("reached_server", "true")]
        ),
        3.0
    );
    assert_eq!(
        get("firebreak_retries_total", &[("reason", "overloaded")]),
        3.0
    );
    assert_eq!(
        get("firebreak_client_failures_total", &[("kind", "refused")]),
        0.0
    );
    assert_eq!(
        get(
            "firebreak_latency_overall_ms_count",
            &[("outcome", "success")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "firebreak_latency_overall_ms_bucket",
            &[("outcome", "success"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(get("firebreak_gate_queue_length", &[]), 0.0);
    assert_eq!(types["firebreak_requests_total"], "counter");
    assert_eq!(types["firebreak_latency_overall_ms"], "histogram");
    assert_eq!(types["firebreak_gate_concurrency_limit"], "gauge");
}

#[test]
fn one_callers_429_never_holds_another_caller() {
    // #13 point 7: the proxy keys its gate per (caller's key, model). Caller A's request is
    // answered 429 with a 5 s delay (a rate limit, by its body): A's key cools down; caller B,
    // with another key, on the same model, is answered at once meanwhile.
    let (rt, sim) = sim_on_runtime(SimConfig::default().fault(
        Trigger::FirstAttemptsOfEvery {
            n: 1,
            every: 2,
            offset: 0,
        },
        Fault::status(429).delay(vec![firebreak_sim::DelayHeader::RetryAfterSecs {
            secs: 5.0,
        }]),
    ));
    let p = proxy(&sim.base_url(), &[]);
    let addr = p.addr.clone();
    let a = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let (s, _, body) = http(
            &addr,
            "POST",
            "/v1/chat/completions",
            Some("fw_tenant_a"),
            &chat("req-000000", false),
        );
        (s, body, t.elapsed())
    });
    // Let A's 429 arrive and its key cool down.
    std::thread::sleep(Duration::from_millis(500));
    for i in [1, 3, 5] {
        let t = std::time::Instant::now();
        let (s, _, body) = http(
            &p.addr,
            "POST",
            "/v1/chat/completions",
            Some("fw_tenant_b"),
            &chat(&format!("req-{i:06}"), false),
        );
        assert_eq!(s, 200, "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "caller B was held {:?} by caller A's cooldown",
            t.elapsed()
        );
    }
    let (s, body, took) = a.join().unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(
        took >= Duration::from_secs(5),
        "A honoured its delay: {took:?}"
    );
    drop(rt);
}

#[test]
fn ten_thousand_model_names_leave_at_most_the_cap_plus_one_model_series() {
    let (_rt, sim) = sim_on_runtime(SimConfig::default().api_key(KEY));
    // The proxy's default cap (`--model-labels`).
    let cap = 64;
    let p = proxy(&sim.base_url(), &["--api-key", KEY]);
    const CALLS: usize = 10_000;
    const THREADS: usize = 4;
    let statuses: Vec<Vec<u16>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let addr = p.addr.clone();
                s.spawn(move || {
                    (0..CALLS / THREADS)
                        .map(|i| {
                            let body = format!(
                                r#"{{"model":"hostile-{t}-{i}","messages":[],"max_tokens":1}}"#
                            );
                            http(&addr, "POST", "/v1/chat/completions", None, &body).0
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered = statuses.iter().flatten().filter(|&&s| s != 0).count();
    assert_eq!(answered, CALLS, "every call was answered");
    let (s, _, text) = http(&p.addr, "GET", "/metrics", None, "");
    assert_eq!(s, 200);
    let (samples, _) = parse_prometheus(&text);
    for metric in ["firebreak_requests_total", "firebreak_attempts_total"] {
        let mut models = std::collections::BTreeSet::new();
        let mut series_with_model = 0;
        let mut calls = 0.0;
        for ((name, labels), v) in &samples {
            if name != metric {
                continue;
            }
            calls += v;
            if let Some((_, m)) = labels.iter().find(|(k, _)| k == "model") {
                models.insert(m.clone());
                series_with_model += 1;
            }
        }
        assert_eq!(models.len(), cap + 1, "{metric}: {models:?}");
        assert!(models.contains("other"), "{metric}");
        // One class each here (the same answer for every call), so one series per model.
        assert_eq!(series_with_model, cap + 1, "{metric}");
        // Nothing lost: every call (one attempt each) is counted once.
        assert_eq!(calls, CALLS as f64, "{metric}");
    }
    let other = samples
        .iter()
        .filter(|((n, l), _)| {
            n == "firebreak_requests_total" && l.iter().any(|(k, v)| k == "model" && v == "other")
        })
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(other, (CALLS - cap) as f64);
}

#[test]
fn a_bad_route_config_is_refused_naming_the_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("firebreak-badroute-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("routes.toml");
    std::fs::write(
        &file,
        "[targets.a]\nmodel = \"m\"\nkey_env = \"FB_NOT_SET_ANYWHERE\"\n\n[aliases]\nchat = [\"a\"]\n",
    )
    .unwrap();
    let path = file.to_str().unwrap().to_owned();
    let err = common::refused(common::proxy_cmd(
        "http://127.0.0.1:9/v1",
        &["--config", &path],
        &[],
    ));
    assert!(
        err.contains(&format!(
            "{path}:3: targets.a.key_env: the environment variable FB_NOT_SET_ANYWHERE is not set"
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = common::refused(common::proxy_cmd(
        "http://127.0.0.1:9/v1",
        &["--config", "/nonexistent/routes.toml"],
        &[],
    ));
    assert!(
        err.contains("/nonexistent/routes.toml: cannot read it"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dedicated_deployment_that_keeps_refusing_is_named_in_the_answer_and_once_in_the_log() {
    const DEPLOYMENT: &str =
        "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acme/deployments/d9";
    let (_rt, sim) = sim_on_runtime(SimConfig::default().api_key(KEY).deployment(
        firebreak_sim::DeploymentConfig::new(DEPLOYMENT).fault(
            Trigger::Always,
            Fault::status(429).message(Some("Deployment capacity exceeded".into())),
        ),
    ));
    let p = proxy(&sim.base_url(), &["--api-key", KEY]);
    let body = format!(r#"{{"model":"{DEPLOYMENT}","messages":[],"max_tokens":3}}"#);
    // Each call's attempts (4) are all refused: from the third refusal on, it keeps refusing.
    for _ in 0..2 {
        let (s, head, _) = http(&p.addr, "POST", "/v1/chat/completions", None, &body);
        assert_eq!(s, 429);
        let a = common::header(&head, "firebreak-advice").expect("the advice");
        assert!(a.contains("firectl deployment update d9"), "{a}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        p.log().matches("keeps refusing for capacity").count(),
        1,
        "{}",
        p.log()
    );
}
