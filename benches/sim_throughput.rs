//! firebreak-sim's non-streaming throughput against a bare hyper client on loopback.
//!
//! `cargo bench --bench sim_throughput` prints a table: for each concurrency and protocol, the
//! median of 5 runs of 3 s each. Without `--bench` (as under `cargo test`) it does a short smoke
//! run and checks that every request succeeded.

use firebreak_sim::{Sim, SimConfig};
use firebreak_testkit::{KEY, PlainClient, chat_body, h2c_client, plain_client, post};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

async fn run(
    client: PlainClient,
    base: Arc<str>,
    concurrency: usize,
    dur: Duration,
    max: u64,
) -> (u64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (client, base, done) = (client.clone(), base.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let body = chat_body(&format!("w{w}"), false);
            // Bounded by time and by count.
            while start.elapsed() < dur && done.load(Ordering::Relaxed) < max {
                let resp = client
                    .request(post(&base, "/chat/completions", body.clone()))
                    .await
                    .expect("request");
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    (done.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = Sim::start(SimConfig::default().api_key(KEY)).await.expect("sim");
        let base: Arc<str> = sim.base_url().into();
        if !bench {
            let (n, _) = run(plain_client(), base.clone(), 4, Duration::from_secs(5), 200).await;
            assert!(n >= 200, "smoke run finished {n} requests");
            assert_eq!(sim.log().iter().filter(|r| r.status == 200).count() as u64, n);
            println!("sim_throughput smoke: {n} requests ok");
            return;
        }
        println!("firebreak-sim throughput, non-streaming chat completions, client and server in one process, 2 tokio workers");
        println!("median of 5 runs x 3 s; machine: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        println!("| protocol | concurrency | req/s (median) | min | max |");
        println!("|---|---:|---:|---:|---:|");
        for (proto, mk) in [("HTTP/1.1", plain_client as fn() -> PlainClient), ("h2c", h2c_client)] {
            for c in [1usize, 16, 64] {
                let mut rates = Vec::new();
                for _ in 0..5 {
                    sim.clear_log();
                    let (n, secs) = run(mk(), base.clone(), c, Duration::from_secs(3), u64::MAX).await;
                    rates.push(n as f64 / secs);
                }
                rates.sort_by(f64::total_cmp);
                println!("| {proto} | {c} | {:.0} | {:.0} | {:.0} |", rates[2], rates[0], rates[4]);
            }
        }
    });
}
