//! Issue #17: a primary deployment that goes fully down and comes back, with a serverless
//! fallback, three ways in one run: firebreak's router (breaker after 5 failures in a row,
//! cooldown 2 s, one probe), a client-side "try the primary, then the fallback" with the
//! firebreak stack on each (what users write around an SDK, and a gateway's fallback without
//! cooldowns), and the primary alone. Eight callers in a closed loop: 2 s healthy, 6 s down
//! (every request answered 503, or its connection reset), 4 s back. Prints a table: calls
//! answered, requests sent to the dead target, time to detect (from the outage's start to the
//! last attempt after which the dead target gets at most a probe per cooldown), time to
//! recover (from its return to its first answered attempt), p99 latency of calls started while
//! it was down.
//!
//! `cargo bench --bench outage`. Without `--bench` (as `cargo test --all-targets` runs it) a
//! short smoke run checks the harness.

use bytes::Bytes;
use firebreak::client::ApiKey;
use firebreak::route::{AnsweredBy, BreakerConfig, RouteConfig, Router};
use firebreak::{FireworksClient, Stack};
use firebreak_sim::{DeploymentConfig, Fault, Latency, Sim, SimConfig};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "fw_bench_outage_key";
const PRIMARY: &str =
    "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acme/deployments/d1";
const FALLBACK: &str = "accounts/fireworks/models/llama-v3p1-8b-instruct";
const CALLERS: usize = 8;

#[derive(Clone, Copy)]
struct Plan {
    healthy: Duration,
    down: Duration,
    back: Duration,
    cooldown: Duration,
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Router,
    TryThenFallback,
    PrimaryOnly,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Router => "firebreak route (breaker 5 in a row, 2 s cooldown)",
            Way::TryThenFallback => "try primary (stack), then fallback (stack)",
            Way::PrimaryOnly => "primary only (stack)",
        }
    }
}

/// What one way of calling does for one call: its status (0 for an error).
#[derive(Clone)]
enum Caller {
    Router(Router),
    Clients(Box<(FireworksClient, Option<FireworksClient>)>),
}

impl Caller {
    async fn call(&self, user: String) -> u16 {
        let body = |model: &str| {
            Bytes::from(
                serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "Say hello"}],
                    "max_tokens": 4,
                    "user": user,
                })
                .to_string(),
            )
        };
        async fn drain(
            r: Result<http::Response<firebreak::FireworksBody>, firebreak::Error>,
        ) -> u16 {
            match r {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    let _ = resp.extensions().get::<AnsweredBy>();
                    if resp.into_body().collect().await.is_ok() {
                        s
                    } else {
                        0
                    }
                }
                Err(_) => 0,
            }
        }
        match self {
            Caller::Router(r) => drain(r.post("/chat/completions", body("chat")).await).await,
            Caller::Clients(c) => {
                let (primary, fallback) = &**c;
                let s = drain(primary.post("/chat/completions", body(PRIMARY)).await).await;
                match fallback {
                    Some(f) if s != 200 => {
                        drain(f.post("/chat/completions", body(FALLBACK)).await).await
                    }
                    _ => s,
                }
            }
        }
    }
}

struct Row {
    calls: usize,
    ok: usize,
    to_dead: usize,
    detect: Option<Duration>,
    recover: Option<Duration>,
    p99_down_ms: f64,
}

fn stack() -> Stack {
    let mut s = Stack::interactive();
    s.observe = false;
    s
}

fn run(way: Way, fault: &Fault, plan: Plan) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let t_sim = Instant::now();
        let sim = Arc::new(
            Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .latency(Latency {
                        ttfb_ms: 10,
                        ..Latency::default()
                    })
                    .deployment(DeploymentConfig::new(PRIMARY)),
            )
            .await
            .expect("sim"),
        );
        let base = sim.base_url();
        let key = || ApiKey::new(KEY).expect("key");
        let caller = match way {
            Way::Router => {
                let cfg = RouteConfig::new()
                    .fallbacks("chat", &base, &[PRIMARY, FALLBACK])
                    .with_breaker(
                        BreakerConfig::default()
                            .consecutive_failures(5)
                            .cooldown(plan.cooldown)
                            .probes(1),
                    );
                Caller::Router(
                    Router::new(cfg, stack(), Some(key()), &Default::default()).expect("router"),
                )
            }
            Way::TryThenFallback => Caller::Clients(Box::new((
                FireworksClient::new(&base, key(), stack()).expect("client"),
                Some(FireworksClient::new(&base, key(), stack()).expect("client")),
            ))),
            Way::PrimaryOnly => Caller::Clients(Box::new((
                FireworksClient::new(&base, key(), stack()).expect("client"),
                None,
            ))),
        };
        let t0 = Instant::now();
        let end = plan.healthy + plan.down + plan.back;
        let workers: Vec<_> = (0..CALLERS)
            .map(|w| {
                let caller = caller.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    // Bounded by time and count.
                    for i in 0..1_000_000 {
                        let started = t0.elapsed();
                        if started >= end {
                            break;
                        }
                        let s = caller.call(format!("w{w}-{i}")).await;
                        out.push((started, t0.elapsed(), s));
                    }
                    out
                })
            })
            .collect();
        tokio::time::sleep(plan.healthy).await;
        sim.take_down(PRIMARY, fault.clone());
        let down_at = t0.elapsed();
        tokio::time::sleep(plan.down).await;
        sim.bring_up(PRIMARY);
        let up_at = t0.elapsed();
        let mut calls = Vec::new();
        for w in workers {
            calls.extend(w.await.expect("worker"));
        }
        // The simulator's clock started just before `t_sim`: its ms, on ours.
        let offset = t0.duration_since(t_sim).as_secs_f64() * 1000.0;
        let at = |d: Duration| d.as_secs_f64() * 1000.0 + offset;
        let log = sim.log();
        let primary: Vec<_> = log
            .iter()
            .filter(|r| r.model.as_deref() == Some(PRIMARY))
            .collect();
        let dead: Vec<f64> = primary
            .iter()
            .filter(|r| r.t_ms >= at(down_at) && r.t_ms < at(up_at))
            .map(|r| r.t_ms)
            .collect();
        // Detected: the first moment after which the dead target gets no more than a probe
        // per cooldown until the outage ends; one that keeps sending until a cooldown before
        // the end was never detected.
        let cooldown_ms = plan.cooldown.as_secs_f64() * 1000.0;
        let n = dead.len();
        let detect = (0..n)
            .find(|&i| (n - i - 1) as f64 <= (at(up_at) - dead[i]) / cooldown_ms + 1.0)
            .map(|i| dead[i])
            .filter(|t| at(up_at) - t > cooldown_ms)
            .map(|t| Duration::from_secs_f64((t - at(down_at)).max(0.0) / 1000.0));
        let recover = primary
            .iter()
            .filter(|r| r.t_ms >= at(up_at) && r.status == 200)
            .map(|r| r.t_ms)
            .reduce(f64::min)
            .map(|t| Duration::from_secs_f64((t - at(up_at)).max(0.0) / 1000.0));
        let mut down_lat: Vec<f64> = calls
            .iter()
            .filter(|(s, _, _)| *s >= down_at && *s < up_at)
            .map(|(s, e, _)| (*e - *s).as_secs_f64() * 1000.0)
            .collect();
        down_lat.sort_by(f64::total_cmp);
        let p99 = down_lat
            .get(((down_lat.len() as f64 - 1.0) * 0.99).round() as usize)
            .copied()
            .unwrap_or(0.0);
        Row {
            calls: calls.len(),
            ok: calls.iter().filter(|c| c.2 == 200).count(),
            to_dead: dead.len(),
            detect,
            recover,
            p99_down_ms: p99,
        }
    })
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let status_503 = Fault::status(503);
    if !bench {
        let plan = Plan {
            healthy: Duration::from_millis(300),
            down: Duration::from_millis(1200),
            back: Duration::from_millis(800),
            cooldown: Duration::from_millis(300),
        };
        let r = run(Way::Router, &status_503, plan);
        assert!(
            r.ok * 100 >= r.calls * 99,
            "{} of {} calls ok",
            r.ok,
            r.calls
        );
        assert!(
            r.detect.is_some() && r.recover.is_some(),
            "detected and recovered"
        );
        println!(
            "outage smoke: ok ({}/{} calls, {} to the dead target)",
            r.ok, r.calls, r.to_dead
        );
        return;
    }
    let plan = Plan {
        healthy: Duration::from_secs(2),
        down: Duration::from_secs(6),
        back: Duration::from_secs(4),
        cooldown: Duration::from_secs(2),
    };
    println!(
        "| primary down | way | calls | answered 200 | requests to the dead target | time to detect | time to recover | p99 latency while down |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (fault_name, fault) in [("503s", status_503), ("resets", Fault::ResetBeforeResponse)] {
        for way in [Way::Router, Way::TryThenFallback, Way::PrimaryOnly] {
            let r = run(way, &fault, plan);
            let secs = |d: Option<Duration>, none: &str| {
                d.map_or(none.to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
            };
            println!(
                "| {fault_name} | {} | {} | {:.2}% | {} | {} | {} | {:.0} ms |",
                way.name(),
                r.calls,
                r.ok as f64 * 100.0 / r.calls.max(1) as f64,
                r.to_dead,
                secs(r.detect, "never (kept sending)"),
                secs(r.recover, "–"),
                r.p99_down_ms,
            );
        }
    }
}
