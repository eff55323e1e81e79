//! Issue #9, measurement 4: memory under load. 10,000 requests with 256 KiB bodies at
//! concurrency 256 through the whole stack (`FireworksClient`, interactive preset), against
//! firebreak-sim answering 30% of attempts with a 503, so that bodies are replayed.
//!
//! The client runs in a child process (this binary re-run with `client`), so that its peak RSS
//! (`VmHWM`) is the client's alone: the simulator, which holds every body it reads, stays in the
//! parent. Each request has its own freshly allocated body, so in-flight bodies really occupy
//! concurrency × 256 KiB; a replay reuses the same `Bytes`, never a copy.
//!
//! `cargo bench --bench memory` prints the table. Without `--bench` (as under `cargo test`), a
//! small smoke run (200 requests at concurrency 16) checks that the machinery works.

use bytes::Bytes;
use firebreak::{FireworksClient, Stack, client::ApiKey};
use firebreak_sim::{Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::KEY;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::process::Command;

const BODY: usize = 256 * 1024;

/// `VmHWM` (peak resident set) or `VmRSS` of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmHWM line")
}

/// A chat body of exactly `BODY` bytes for request `i`.
fn body(i: u64) -> Bytes {
    let head = format!(
        r#"{{"model":"m","user":"mem-{i:06}","max_tokens":4,"messages":[{{"role":"user","content":""#
    );
    let tail = r#""}]}"#;
    let mut v = Vec::with_capacity(BODY);
    v.extend_from_slice(head.as_bytes());
    v.resize(BODY - tail.len(), b'x');
    v.extend_from_slice(tail.as_bytes());
    Bytes::from(v)
}

/// The child: runs the load, prints `requests ok baseline_kib peak_kib`.
fn client(base: &str, requests: u64, concurrency: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fb = FireworksClient::new(base, ApiKey::new(KEY).expect("key"), Stack::interactive())
            .expect("client");
        let baseline = status_kib("VmRSS:");
        let ok = futures_util::stream::iter(0..requests)
            .map(|i| {
                let fb = fb.clone();
                async move {
                    match fb.post("/chat/completions", body(i)).await {
                        Ok(resp) => {
                            let good = resp.status().is_success();
                            resp.into_body().collect().await.is_ok() && good
                        }
                        Err(_) => false,
                    }
                }
            })
            .buffer_unordered(concurrency)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        println!("{requests} {ok} {baseline} {}", status_kib("VmHWM:"));
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let n = args[2].parse().expect("requests");
        let c = args[3].parse().expect("concurrency");
        client(&args[1], n, c);
        return;
    }
    let bench = args.iter().any(|a| a == "--bench");
    let (requests, concurrency) = if bench {
        (10_000u64, 256usize)
    } else {
        (200, 16)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = rt
        .block_on(Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .seed(9)
                .fault(Trigger::Probability { p: 0.3 }, Fault::status(503)),
        ))
        .expect("sim");
    let out = Command::new(std::env::current_exe().expect("this binary"))
        .args([
            "client",
            &sim.base_url(),
            &requests.to_string(),
            &concurrency.to_string(),
        ])
        .output()
        .expect("the client runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    let (n, ok, baseline, peak) = (v[0], v[1], v[2], v[3]);
    let log = rt.block_on(async { sim.log() });
    let replays = log.len() as u64 - n;
    let target_kib = (1.2 * (concurrency * BODY) as f64 / 1024.0) as u64 + 40 * 1024;
    if !bench {
        assert_eq!(n, requests);
        assert!(ok * 10 >= n * 9, "{ok} of {n} succeeded");
        assert!(replays > 0, "the faults caused retries");
        println!("memory smoke: {ok}/{n} ok, {replays} replays, peak RSS {peak} KiB");
        return;
    }
    println!(
        "| requests | concurrency | body | succeeded | attempts (replays) | RSS before load | peak RSS | target | peak / target |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {concurrency} | 256 KiB | {ok} | {} ({replays}) | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} |",
        log.len(),
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        target_kib as f64 / 1024.0,
        peak as f64 / target_kib as f64
    );
}
