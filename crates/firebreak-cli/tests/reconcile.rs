//! `firebreak reconcile` end to end (issue #19's acceptance): `firebreak proxy` in front of
//! firebreak-sim, with faults on both sides of the wire behind one upstream URL (refused
//! connects, then connect timeouts, then the simulator's 503s and 429s), and the report
//! matching the simulator's own log for the server side and the proxy's own metrics for the
//! client side, with a verdict naming the client-side kinds.

use firebreak_sim::{SimConfig, Trigger};
use firebreak_testkit::status_fault;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{proxy, request, runtime};

const KEY: &str = "fw_reconcile_SECRET";
const MODEL: &str =
    "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acct/deployments/dep1";
const DEP: &str = "accounts/acct/deployments/dep1";

/// The first attempt of every third call is a 503, of the next one a 429.
fn sim_config() -> SimConfig {
    let every_third = |offset| Trigger::FirstAttemptsOfEvery {
        n: 1,
        every: 3,
        offset,
    };
    SimConfig::default()
        .api_key(KEY)
        .fault(every_third(0), status_fault(503, vec![]))
        .fault(every_third(1), status_fault(429, vec![]))
}

/// `n` chat calls for the deployment through the proxy, one after another (one client: no
/// burst of concurrent 429s for the gate to treat as fleet-wide evidence); their statuses.
fn calls(addr: &str, tag: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let body =
                format!(r#"{{"model":"{MODEL}","messages":[],"max_tokens":2,"user":"{tag}-{i}"}}"#);
            request(addr, "POST", "/v1/chat/completions", &[], &body).0
        })
        .collect()
}

/// The proxy's own attempt counters for the deployment, by class, read line by line (not
/// with the parser under test).
fn proxy_attempts(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("firebreak_attempts_total{") else {
            continue;
        };
        if !rest.contains(&format!("deployment=\"{DEP}\"")) {
            continue;
        }
        let class = rest
            .split("class=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry(class.to_owned()).or_default() += v as u64;
    }
    out
}

/// A TCP forwarder on `at` to `to`, on the test's runtime.
async fn forward(at: std::net::SocketAddr, to: std::net::SocketAddr) {
    let l = tokio::net::TcpListener::bind(at).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

fn reconcile(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .arg("reconcile")
        .args(args)
        .env("FIREWORKS_API_KEY", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
    let v = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout:?} {stderr:?}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

#[test]
fn reconcile_matches_the_simulator_and_the_proxy_and_names_the_client_side_kinds() {
    let rt = runtime();
    let sim = rt
        .block_on(firebreak_sim::Sim::start(sim_config()))
        .unwrap();
    // One upstream URL for the whole run; what answers there changes between phases.
    let upstream = firebreak_testkit::refused_addr();
    let p = proxy(
        &format!("http://{upstream}/inference/v1"),
        &[
            "--api-key",
            KEY,
            "--connect-timeout",
            "0.2",
            "--deadline",
            "10",
        ],
    );

    // Phase 1: nothing listens: refused connects.
    let refused = calls(&p.addr, "refused", 2);
    assert!(refused.iter().all(|s| *s >= 500), "{refused:?}");
    // Phase 2: a full backlog: connect timeouts.
    let hole = firebreak_testkit::blackhole_on(upstream);
    let timed_out = calls(&p.addr, "timeout", 2);
    assert!(timed_out.iter().all(|s| *s >= 500), "{timed_out:?}");
    drop(hole);
    // Phase 3: the simulator, with its 503s and 429s.
    rt.block_on(forward(upstream, sim.addr()));
    let served = calls(&p.addr, "served", 9);
    // The calls before have spent the retry budget, so the first faults may reach the caller
    // unretried; every call got the simulator's answer either way.
    assert!(
        served.iter().all(|s| [200, 429, 503].contains(s)) && served.contains(&200),
        "{served:?}"
    );

    // What each side counted, from its own records.
    let log = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sim.log()
    });
    let mine: Vec<_> = log
        .iter()
        .filter(|r| r.model.as_deref() == Some(MODEL) && r.status != 0)
        .collect();
    let by_status = |s: u16| mine.iter().filter(|r| r.status == s).count() as u64;
    assert!(
        by_status(503) > 0 && by_status(429) > 0,
        "both faults fired"
    );
    let (_, _, metrics) = request(&p.addr, "GET", "/metrics", &[], "");
    let attempts = proxy_attempts(&metrics);
    let refused_attempts = attempts["connect_refused"];
    let timeout_attempts = attempts["timeout_connect"];
    assert!(
        refused_attempts >= 2 && timeout_attempts >= 2,
        "{attempts:?}"
    );

    let metrics_url = format!("http://{}/metrics", p.addr);
    let base = sim.base_url().replace("/inference/v1", "");
    let (code, v, _) = reconcile(&[
        "--account",
        "acct",
        "--client-metrics",
        &metrics_url,
        "--base-url",
        &base,
        "--window",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "the counts agree: {v}");
    let t = &v["totals"][0];
    assert_eq!(t["deployment"], DEP);
    // The server side is exactly the simulator's log.
    assert_eq!(t["server"]["requests"], mine.len() as u64);
    assert_eq!(t["server"]["errors_by_status"]["503"], by_status(503));
    assert_eq!(t["server"]["errors_by_status"]["429"], by_status(429));
    // The client side is exactly the proxy's own counters.
    assert_eq!(t["client"]["calls"], 13);
    assert_eq!(t["client"]["attempts"], attempts.values().sum::<u64>());
    assert_eq!(
        t["client"]["client_side_by_kind"]["refused"],
        refused_attempts
    );
    assert_eq!(
        t["client"]["client_side_by_kind"]["connect_timeout"],
        timeout_attempts
    );
    assert_eq!(t["client"]["answered"], mine.len() as u64);
    assert_eq!(t["client"]["errors_by_status"]["503"], by_status(503));
    assert_eq!(t["client"]["errors_by_status"]["429"], by_status(429));
    assert_eq!(t["agreement"], "exact");
    let verdict = v["verdict"][0].as_str().unwrap();
    let never = refused_attempts + timeout_attempts;
    assert!(
        verdict.starts_with(&format!("{never} failures never reached Fireworks (")),
        "{verdict}"
    );
    assert!(
        verdict.contains(&format!("{refused_attempts} refused connects"))
            && verdict.contains(&format!("{timeout_attempts} connect timeouts"))
            && verdict.contains("not a deployment problem"),
        "{verdict}"
    );

    // The same from saved pages: --from the exporter's page, --client-metrics a file.
    let dir = std::env::temp_dir().join(format!("firebreak-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = rt.block_on(async {
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::get(format!("{base}/v1/accounts/acct/metrics"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    let server_file = dir.join("exporter.prom");
    let client_file = dir.join("proxy.prom");
    std::fs::write(&server_file, &page).unwrap();
    std::fs::write(&client_file, &metrics).unwrap();
    let (code, from_files, _) = reconcile(&[
        "--account",
        "acct",
        "--from",
        server_file.to_str().unwrap(),
        "--client-metrics",
        client_file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(from_files["totals"], v["totals"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn counts_that_differ_are_flagged_with_exit_status_2() {
    let dir = std::env::temp_dir().join(format!("firebreak-reconcile-flag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = dir.join("s.prom");
    let client = dir.join("c.prom");
    std::fs::write(
        &server,
        format!("request_counter_total:sum_by_deployment{{deployment=\"{DEP}\",deployment_account=\"acct\"}} 12\n"),
    )
    .unwrap();
    std::fs::write(
        &client,
        format!("firebreak_attempts_total{{class=\"success\",reached_server=\"true\",model=\"{MODEL}\",deployment=\"{DEP}\"}} 10\n"),
    )
    .unwrap();
    let (code, v, _) = reconcile(&[
        "--account",
        "acct",
        "--from",
        server.to_str().unwrap(),
        "--client-metrics",
        client.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 2);
    assert_eq!(v["agrees"], false);
    assert_eq!(v["totals"][0]["server_minus_client"], 2);
    assert!(
        v["verdict"][1].as_str().unwrap().starts_with("FLAGGED"),
        "{v}"
    );
    // --deployment keeps one deployment, by id or by full name; another has nothing to flag.
    let only = |d: &str| {
        reconcile(&[
            "--account",
            "acct",
            "--from",
            server.to_str().unwrap(),
            "--client-metrics",
            client.to_str().unwrap(),
            "--deployment",
            d,
            "--json",
        ])
    };
    for d in ["dep1", DEP] {
        let (code, v, _) = only(d);
        assert_eq!(
            (code, v["totals"][0]["deployment"].as_str()),
            (2, Some(DEP))
        );
    }
    let (code, v, _) = only("dep2");
    assert_eq!(code, 0);
    assert_eq!(v["totals"].as_array().unwrap().len(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_one_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .arg("reconcile")
            .args(args)
            .env("FIREWORKS_API_KEY", KEY)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!e.contains(KEY));
        e
    };
    assert!(run(&["--account", "acct"]).contains("no client side"));
    let e = run(&[
        "--account",
        "acct",
        "--from",
        "/nonexistent.prom",
        "--client-metrics",
        "/nonexistent2",
    ]);
    assert!(e.contains("cannot read /nonexistent"), "{e}");
    let e = run(&[
        "--account",
        "acct",
        "--from",
        "/x.prom",
        "--client-metrics",
        "/y",
        "--window",
        "5m",
    ]);
    assert!(e.contains("--window 0"), "{e}");
    let e = run(&[
        "--account",
        "a/b",
        "--client-metrics",
        "http://127.0.0.1:9/metrics",
    ]);
    assert!(e.contains("invalid account"), "{e}");
}

#[test]
fn the_proxy_serves_the_exporters_series_beside_its_own() {
    let rt = runtime();
    let sim = rt
        .block_on(firebreak_sim::Sim::start(sim_config()))
        .unwrap();
    let base = sim.base_url().replace("/inference/v1", "");
    let p = proxy(
        &sim.base_url(),
        &[
            "--api-key",
            KEY,
            "--scrape-account",
            "acct",
            "--scrape-base-url",
            &base,
            "--scrape-every",
            "1",
        ],
    );
    let statuses = calls(&p.addr, "scraped", 3);
    let t0 = std::time::Instant::now();
    // Bounded: the page is rescraped every second (the scraper keeps to 6 a minute).
    let text = loop {
        let (s, _, text) = request(&p.addr, "GET", "/metrics", &[], "");
        assert_eq!(s, 200);
        let counted = text
            .lines()
            .find(|l| l.starts_with("request_counter_total:sum_by_deployment{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        let sent = sim
            .log()
            .iter()
            .filter(|r| r.model.as_deref() == Some(MODEL) && r.status != 0)
            .count() as u64;
        if counted == Some(sent) {
            break text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{statuses:?} {text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Both views on one page: firebreak's own series, the exporter's, and whether it is up.
    assert!(text.contains("firebreak_attempts_total{"), "{text}");
    assert!(text.contains(&format!("deployment=\"{DEP}\"")), "{text}");
    assert!(text.contains("firebreak_exporter_up 1"), "{text}");
    assert!(!text.contains(KEY));
    let scrapes = sim
        .log()
        .iter()
        .filter(|r| r.path.ends_with("/metrics"))
        .count();
    assert!(
        scrapes <= 6 + t0.elapsed().as_secs() as usize / 10,
        "{scrapes}"
    );
}

#[test]
fn scraping_needs_a_key() {
    let out = common::proxy_cmd(
        "http://127.0.0.1:9/inference/v1",
        &["--scrape-account", "acct"],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--scrape-account needs the Fireworks key"),
        "{e}"
    );
}

#[test]
fn a_load_json_summary_reconciles_with_the_exporter() {
    let rt = runtime();
    let sim = rt
        .block_on(firebreak_sim::Sim::start(sim_config()))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args([
            "load",
            "--base-url",
            &sim.base_url(),
            "--model",
            MODEL,
            "--requests",
            "12",
            "--concurrency",
            "1",
            "--json",
        ])
        .env("FIREWORKS_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::env::temp_dir().join(format!("firebreak-load-{}.json", std::process::id()));
    std::fs::write(&file, &out.stdout).unwrap();
    let base = sim.base_url().replace("/inference/v1", "");
    let (code, v, _) = reconcile(&[
        "--account",
        "acct",
        "--client-json",
        file.to_str().unwrap(),
        "--base-url",
        &base,
        "--json",
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{v}");
    let served = sim
        .log()
        .iter()
        .filter(|r| r.model.as_deref() == Some(MODEL) && r.status != 0)
        .count() as u64;
    let t = &v["totals"][0];
    assert_eq!(t["client"]["calls"], 12);
    assert_eq!(t["client"]["answered"], served);
    assert_eq!(t["server"]["requests"], served);
    assert!(v["verdict"][0].as_str().unwrap().contains("503"), "{v}");
}

#[test]
fn a_live_window_gives_a_row_per_reading_and_totals_that_agree() {
    let rt = runtime();
    let sim = rt
        .block_on(firebreak_sim::Sim::start(sim_config()))
        .unwrap();
    let p = proxy(&sim.base_url(), &["--api-key", KEY]);
    let base = sim.base_url().replace("/inference/v1", "");
    let metrics_url = format!("http://{}/metrics", p.addr);
    let (result, sent) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            reconcile(&[
                "--account",
                "acct",
                "--client-metrics",
                &metrics_url,
                "--base-url",
                &base,
                "--window",
                "4s",
                "--every",
                "1s",
                "--json",
            ])
        });
        // Traffic well inside the watch: after the first reading, before the last.
        std::thread::sleep(Duration::from_millis(1200));
        let t = std::time::Instant::now();
        let mut sent = 0;
        while t.elapsed() < Duration::from_millis(1400) && sent < 100 {
            calls(&p.addr, &format!("live{sent}"), 1);
            sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (watcher.join().unwrap(), sent)
    });
    let (code, v, _) = result;
    assert_eq!(code, 0, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "four windows of one second: {v}");
    let served = sim
        .log()
        .iter()
        .filter(|r| r.model.as_deref() == Some(MODEL) && r.status != 0)
        .count() as u64;
    let t = &v["totals"][0];
    assert_eq!(t["client"]["calls"], sent);
    assert_eq!(t["client"]["answered"], served);
    assert_eq!(t["server"]["requests"], served);
    let per_window: u64 = rows
        .iter()
        .map(|r| r["server"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_window, served);
    assert!(
        rows.iter()
            .filter(|r| r["client"]["calls"].as_u64().unwrap() > 0)
            .count()
            >= 2,
        "the traffic spans windows: {v}"
    );
}
