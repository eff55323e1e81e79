//! `--redis-url` end to end: two `firebreak load` OS processes against one simulator's token
//! bucket, linked through a redis-server of the test's own, pace as one client.

use firebreak_sim::{RateLimitConfig, RateUnit, Sim, SimConfig};
use firebreak_testkit::RedisServer;
use std::process::{Command, Stdio};

mod common;
use common::runtime;

const KEY: &str = "fw_load_SECRET";

fn load(base: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    c.args(["load", "--base-url", base, "--model", "m", "--json"])
        .args(extra)
        .env("FIREWORKS_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn two_load_processes_share_one_limit_through_redis() {
    let rt = runtime();
    let rl = RateLimitConfig::new(10.0, 10.0).header_unit(RateUnit::PerSecond);
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).rate_limit(rl)))
        .unwrap();
    let redis = RedisServer::start();
    let url = redis.url();
    // Two processes at once; the 429s the simulator sent them.
    let pair = |extra: &[&str]| {
        let from = rt.block_on(async { sim.log_len() });
        let mut args = vec!["--requests", "24", "--concurrency", "4"];
        args.extend_from_slice(extra);
        let children: Vec<_> = (0..2)
            .map(|_| load(&sim.base_url(), &args).spawn().unwrap())
            .collect();
        let mut slowest = 0f64;
        for c in children {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(v["succeeded"], 24, "{v}");
            slowest = slowest.max(v["elapsed_s"].as_f64().unwrap());
        }
        let log = rt.block_on(async { sim.log_since(from) });
        (log.iter().filter(|r| r.status == 429).count(), slowest)
    };
    let (shared, shared_s) = pair(&["--redis-url", url.as_str()]);
    // 48 calls at 10 a second: the first round (8) fits the burst; paced together after, in
    // about 4 s.
    assert!(shared <= 2, "{shared} 429s with Redis");
    assert!(shared_s < 7.0, "{shared_s} s with Redis");
    // A URL that is not Redis's: one clear error, no password shown.
    let out = load(
        &sim.base_url(),
        &["--requests", "1", "--redis-url", "http://:hunter2pw@x"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--redis-url") && !err.contains("hunter2pw"),
        "{err}"
    );
}

#[test]
fn the_proxy_shares_its_gate_through_redis() {
    let rt = runtime();
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY)))
        .unwrap();
    let redis = RedisServer::start();
    let p = common::proxy(
        &sim.base_url(),
        &[
            "--api-key",
            KEY,
            "--redis-url",
            &redis.url(),
            "--redis-prefix",
            "app1",
        ],
    );
    let (s, _, body) = common::request(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &common::chat("u-1", false, 2),
    );
    assert_eq!(s, 200, "{body}");
    // Bounded: the fleet connects in the background (at most 5 s of 50 ms polls).
    let t = std::time::Instant::now();
    let metrics = loop {
        let (_, _, m) = common::request(&p.addr, "GET", "/metrics", &[], "");
        if m.contains("firebreak_redis_up 1") || t.elapsed() > std::time::Duration::from_secs(5) {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(metrics.contains("firebreak_redis_up 1"), "{metrics}");
    // Its keys are under the prefix it was given.
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(keys.lines().any(|k| k.starts_with("app1:")), "{keys}");
    assert!(keys.lines().all(|k| k.starts_with("app1:")), "{keys}");
    assert!(
        !p.log().contains(&redis.url()[8..]),
        "the Redis URL is never logged"
    );
}
