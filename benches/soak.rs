//! Issue #14's soak: 10,000 mixed JSON and SSE requests at concurrency 256 through the release
//! `firebreak proxy`, in front of firebreak-sim with 5% of attempts faulted. Prints success,
//! latency p50/p99, and the proxy's resident memory and open descriptors (sampled every 250 ms:
//! before, peak, after).
//!
//! `cargo bench --bench soak` builds the release binary if it is missing and prints the table.
//! Without `--bench` (as under `cargo test`), a 300-request smoke run at concurrency 32 checks
//! the machinery, against whichever `firebreak` binary sits next to this one.

use bytes::Bytes;
use firebreak_sim::{DelayHeader, Fault, Latency, Sim, SimConfig, Trigger};
use firebreak_testkit::fds_and_rss;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "fw_soak_key";

/// The two fault mixes, 5% of attempts each.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mix {
    /// Faults that say nothing about the fleet: 2% 502, 1% 500, 1% reset before the response,
    /// 1% stream cut mid-way.
    Transient,
    /// Faults that are fleet-wide evidence for the 429 gate: 2% 503, 1% 429 (both with a 200 ms
    /// `retry-after-ms`), 1% reset before the response, 1% stream cut mid-way.
    Signals,
}

fn sim_config(mix: Mix) -> SimConfig {
    let status = |s: u16| Fault::status(s).delay(vec![DelayHeader::RetryAfterMs { ms: 200.0 }]);
    let (a, b) = match mix {
        Mix::Transient => (502, 500),
        Mix::Signals => (503, 429),
    };
    SimConfig::default()
        .api_key(KEY)
        .seed(14)
        .latency(Latency {
            ttfb_ms: 20,
            token_delay_ms: 10,
            completion_tokens: 16,
        })
        .fault(Trigger::Probability { p: 0.02 }, status(a))
        .fault(Trigger::Probability { p: 0.0102 }, status(b))
        .fault(
            Trigger::Probability { p: 0.0103 },
            Fault::ResetBeforeResponse,
        )
        .fault(
            Trigger::Probability { p: 0.0104 },
            Fault::ResetMidStream { after_chunks: 4 },
        )
}

/// The `firebreak` binary. Under `cargo bench`, the release build, brought up to date first (a
/// stale one would measure old code); otherwise the one next to this bench's directory, if any.
fn binary(bench: bool) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.to_path_buf();
    if !bench {
        let bin = dir.join("firebreak");
        return bin.exists().then_some(bin);
    }
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "firebreak-cli"])
        .status()
        .ok()?
        .success();
    let release = dir.parent()?.join("release/firebreak");
    (ok && release.exists()).then_some(release)
}

/// How one request ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ok,
    /// A stream that ended with the proxy's SSE `error` event.
    CutWithErrorEvent,
    /// An OpenAI-shaped error answer.
    HttpError,
    /// Anything else: a transport error, a timeout, a malformed or truncated answer.
    Other,
}

struct ProxyProc(Child);

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (requests, concurrency) = if bench { (10_000, 256) } else { (300, 32) };
    let Some(bin) = binary(bench) else {
        println!("soak: no firebreak binary next to this one; run `cargo bench --bench soak`");
        return;
    };
    println!(
        "soak: {requests} requests (half SSE) at concurrency {concurrency} through `firebreak proxy`, 5% of attempts faulted"
    );
    println!(
        "| fault mix | success | failures | upstream attempts / request | p50 / p99 | wall | gate waits (mean) | proxy RSS before / peak / after | proxy fds before / peak / after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for mix in [Mix::Transient, Mix::Signals] {
        run(&bin, mix, requests, concurrency);
    }
}

/// Sum and count of a Prometheus histogram in `text`.
fn histogram(text: &str, name: &str) -> (f64, f64) {
    let get = |suffix: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (get("_sum"), get("_count"))
}

fn run(bin: &PathBuf, mix: Mix, requests: usize, concurrency: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sim = rt.block_on(Sim::start(sim_config(mix))).expect("sim");
    let mut child = Command::new(bin)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &sim.base_url(),
            "--deadline",
            "30",
        ])
        .env("FIREWORKS_API_KEY", KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("SOAK_DEBUG") {
            Some(_) => Stdio::inherit(),
            None => Stdio::null(),
        })
        .spawn()
        .expect("the proxy starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split([' ', ';']).next())
        .unwrap_or_else(|| panic!("no address in the startup line {line:?}"))
        .to_owned();
    let proxy = ProxyProc(child);
    let pid = proxy.0.id();
    let before = fds_and_rss(pid);
    // Sample the proxy's descriptors and memory while the run goes on.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut peak = (0usize, 0u64);
            // Bounded by the run: stops when `running` is cleared.
            while running.load(Ordering::Relaxed) {
                let (f, r) = fds_and_rss(pid);
                peak = (peak.0.max(f), peak.1.max(r));
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        })
    };
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(conn);
    let url = format!("http://{addr}/v1/chat/completions");
    let t0 = Instant::now();
    let results: Vec<(End, Duration)> = rt.block_on(
        futures_util::stream::iter(0..requests)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let stream = i % 2 == 1;
                    let body = format!(
                        r#"{{"model":"m","messages":[],"max_tokens":16,"stream":{stream},"user":"soak-{i}"}}"#
                    );
                    let req = http::Request::post(url)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("request");
                    let t = Instant::now();
                    let end = match tokio::time::timeout(Duration::from_secs(60), async {
                        let debug = std::env::var_os("SOAK_DEBUG").is_some();
                        let resp = match client.request(req).await {
                            Ok(r) => r,
                            Err(e) => {
                                if debug {
                                    eprintln!("soak-{i} stream={stream} request: {e:?}");
                                }
                                return End::Other;
                            }
                        };
                        let status = resp.status();
                        let body = match resp.into_body().collect().await {
                            Ok(b) => b,
                            Err(e) => {
                                if debug {
                                    eprintln!("soak-{i} stream={stream} {status} body: {e:?}");
                                }
                                return End::Other;
                            }
                        };
                        let body = body.to_bytes();
                        let text = String::from_utf8_lossy(&body);
                        let end = match status.as_u16() {
                            200 if stream && text.contains("event: error") => End::CutWithErrorEvent,
                            200 if stream && text.contains("data: [DONE]") => End::Ok,
                            200 if !stream && text.contains("chat.completion") => End::Ok,
                            s if s >= 400 && text.contains("\"error\"") => End::HttpError,
                            _ => End::Other,
                        };
                        if end != End::Ok && debug {
                            eprintln!("soak-{i} stream={stream} {status}: {text:?}");
                        }
                        end
                    })
                    .await
                    {
                        Ok(end) => end,
                        Err(_) => End::Other,
                    };
                    let ok = end;
                    (ok, t.elapsed())
                }
            })
            .buffer_unordered(concurrency)
            .collect(),
    );
    let elapsed = t0.elapsed();
    let metrics = rt.block_on(async {
        let req = http::Request::get(format!("http://{addr}/metrics"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client.request(req).await.ok()?;
        let b = resp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&b).into_owned())
    });
    let (gate_sum, gate_count) = histogram(&metrics.unwrap_or_default(), "firebreak_gate_wait_ms");
    drop(client);
    std::thread::sleep(Duration::from_secs(2));
    running.store(false, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let after = fds_and_rss(pid);
    let mut lat: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    let count = |e: End| results.iter().filter(|r| r.0 == e).count();
    let ok = count(End::Ok);
    let failures = format!(
        "{} stream cut, SSE error event; {} OpenAI-shaped HTTP error; {} other",
        count(End::CutWithErrorEvent),
        count(End::HttpError),
        count(End::Other)
    );
    let attempts = sim.log_len() as u64 + sim.log_dropped();
    println!(
        "| {mix:?} | {ok} / {requests} ({:.2}%) | {failures} | {:.3} | {:.0} ms / {:.0} ms | {:.1} s | {gate_count:.0} ({:.0} ms) | {:.1} / {:.1} / {:.1} MiB | {} / {} / {} |",
        ok as f64 * 100.0 / requests as f64,
        attempts as f64 / requests as f64,
        pct(0.5),
        pct(0.99),
        elapsed.as_secs_f64(),
        if gate_count > 0.0 {
            gate_sum / gate_count
        } else {
            0.0
        },
        before.1 as f64 / 1024.0,
        peak.1 as f64 / 1024.0,
        after.1 as f64 / 1024.0,
        before.0,
        peak.0,
        after.0
    );
    assert!(ok > 0, "nothing succeeded");
    drop(proxy);
}
