//! Issue #16: four processes (threads with a runtime and a firebreak stack each, so four
//! gates), 100 calls each at 8 in flight, against one simulator token bucket of 20 requests a
//! second whose answers carry `Retry-After` and `x-ratelimit-*` (per second), with and without
//! a shared Redis, in one run. Prints a table: 429s, makespan against the ideal (400 / 20 s),
//! and Redis round trips per call.
//!
//! `cargo bench --bench fleet` (`-- shared` for the rows with Redis only; needs `redis-server`; scripts/test installs it). Without
//! `--bench` (as `cargo test --all-targets` runs it) a small smoke run checks the harness.

use firebreak::Stack;
use firebreak_redis::{RedisConfig, RedisFleet};
use firebreak_sim::{RateLimitConfig, RateUnit, Sim, SimConfig};
use firebreak_testkit::{FleetPlan, RedisServer, run_fleet};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "fw_bench_fleet_key";

struct Row {
    limited: usize,
    succeeded: usize,
    makespan: f64,
    round_trips: Option<u64>,
    commands: Option<u64>,
}

/// Commands the server executed so far (its `INFO commandstats`), scripts' inner calls
/// included, the `INFO` calls themselves excluded.
fn commands_executed(r: &RedisServer) -> u64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", r.port)).expect("redis");
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    c.write_all(b"INFO commandstats\r\n").expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    // Bounded: until the bulk reply is complete or 2 s of silence.
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n\r\n") || out.len() > 1 << 20 {
            break;
        }
    }
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn one(burst: f64, redis: Option<&RedisServer>, plan: FleetPlan) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rl = RateLimitConfig::new(20.0, burst).header_unit(RateUnit::PerSecond);
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).rate_limit(rl)))
        .expect("sim");
    let recorder = Arc::new(DebuggingRecorder::new());
    let snap = recorder.snapshotter();
    let run = run_fleet(
        &sim.base_url(),
        KEY,
        plan,
        |_| match redis {
            None => Stack::interactive(),
            Some(r) => Stack::interactive().fleet(Some(Arc::new(metrics::with_local_recorder(
                &*recorder,
                || RedisFleet::start(RedisConfig::new(r.url())).expect("fleet"),
            )))),
        },
        |_| {},
    );
    let limited = rt
        .block_on(async { sim.log() })
        .iter()
        .filter(|r| r.status == 429)
        .count();
    let round_trips = redis.map(|_| {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == firebreak_redis::names::ROUND_TRIPS)
            .map(|(.., v)| match v {
                DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum()
    });
    Row {
        limited,
        succeeded: run.succeeded,
        makespan: run.makespan.as_secs_f64(),
        round_trips,
        commands: redis.map(commands_executed),
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        let redis = RedisServer::start();
        let plan = FleetPlan {
            processes: 2,
            requests: 10,
            concurrency: 2,
            limit: Duration::from_secs(60),
        };
        let r = one(20.0, Some(&redis), plan);
        assert_eq!(r.succeeded, 20, "every call completed");
        assert!(r.round_trips.unwrap_or(0) > 0, "the fleet talked to Redis");
        println!("fleet smoke: ok ({} 429s, {:.1} s)", r.limited, r.makespan);
        return;
    }
    let plan = FleetPlan {
        processes: 4,
        requests: 100,
        concurrency: 8,
        limit: Duration::from_secs(300),
    };
    let calls = plan.processes * plan.requests;
    println!(
        "| bucket 20/s, burst | Redis | calls ok | 429s (% of calls) | makespan s | ÷ ideal (20 s) | Redis round trips / call | Redis commands / call |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    // `-- shared` runs only the rows with Redis.
    let only_shared = std::env::args().any(|a| a == "shared");
    for burst in [20.0, 40.0] {
        for shared in [false, true] {
            if only_shared && !shared {
                continue;
            }
            let redis = shared.then(RedisServer::start);
            let r = one(burst, redis.as_ref(), plan);
            println!(
                "| {burst:.0} | {} | {} | {} ({:.1}%) | {:.1} | {:.2} | {} | {} |",
                if shared {
                    "shared"
                } else {
                    "none (4 gates alone)"
                },
                r.succeeded,
                r.limited,
                r.limited as f64 * 100.0 / calls as f64,
                r.makespan,
                r.makespan / 20.0,
                r.round_trips.map_or("–".to_owned(), |n| format!(
                    "{:.2}",
                    n as f64 / calls as f64
                )),
                r.commands.map_or("–".to_owned(), |n| format!(
                    "{:.2}",
                    n as f64 / calls as f64
                )),
            );
        }
    }
}
