//! Issue #9, measurement 5: how the stack's in-process overhead grows with the number of
//! distinct 429-gate keys (1, 100, 10,000) and with concurrency (1 to 1,024 tasks on the 2-core
//! machine's 2 worker threads), beside tower's Retry+Timeout in the same run.
//!
//! The service under the stack answers 200 at once (no network), so any growth is the stack's:
//! map lookups per key, and locks or contended atomics shared by all calls.
//!
//! `cargo bench --bench scaling` prints two tables (medians of 5 runs). Without `--bench` (as
//! under `cargo test`), a small smoke run checks that every call succeeds.

use bytes::Bytes;
use firebreak::Error;
use firebreak::gate::GateKey;
use firebreak::{Stack, gate::GateConfig, gate::KeyBy};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};

use firebreak_testkit::{CountPolicy, Ok200, inmem_request as request};

async fn call<S, RB>(svc: &mut S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    let resp = svc
        .ready()
        .await
        .expect("ready")
        .call(request())
        .await
        .expect("ok");
    std::hint::black_box(resp.into_body().collect().await.expect("body"));
}

/// The full stack whose gate spreads requests over `keys` keys, round robin.
fn stack(
    keys: u64,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = Error>>,
    Error = Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let next = Arc::new(AtomicU64::new(0));
    let key_by = KeyBy::Custom(Arc::new(move |_| {
        GateKey::from_raw(next.fetch_add(1, Ordering::Relaxed) % keys)
    }));
    let gate = GateConfig::default()
        // Calls finish at once, so at most a few are ever in flight: no waiting in these runs.
        .initial_concurrency(64);
    ServiceBuilder::new()
        .layer(
            Stack::interactive()
                .key_by(key_by)
                .gate(gate)
                .layer()
                .unwrap(),
        )
        .service(Ok200(Bytes::from_static(b"{}")))
}

fn tower_pair() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error: std::fmt::Debug>>,
    Error = tower::BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(CountPolicy(4)))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(60)))
        .service(Ok200(Bytes::from_static(b"{}")))
}

/// Nanoseconds per call (wall clock) for `total` calls spread over `tasks` tasks.
async fn ns_per_call<S, RB>(svc: S, tasks: usize, total: u64) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    RB: Body<Data = Bytes> + Send,
    RB::Error: std::fmt::Debug,
    RB::Data: Send,
{
    let per = total / tasks as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    call(&mut svc).await;
                    // Let other tasks in now and then, as real calls (which wait on I/O) do.
                    if i % 16 == 15 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    start.elapsed().as_nanos() as f64 / (per * tasks as u64) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if !bench {
            // Every call is checked inside (`call` fails on an error or a non-200 body).
            for keys in [1, 100] {
                let ns = ns_per_call(stack(keys), 4, 2_000).await;
                assert!(ns.is_finite() && ns > 0.0, "{ns}");
            }
            let ns = ns_per_call(tower_pair(), 4, 2_000).await;
            assert!(ns.is_finite() && ns > 0.0, "{ns}");
            println!("scaling smoke: ok");
            return;
        }
        let total = 200_000;
        println!("| gate keys | firebreak full stack, ns / call (1 task) | vs 1 key |");
        println!("|---:|---:|---:|");
        let mut base = 0.0;
        for keys in [1u64, 100, 10_000] {
            let svc = stack(keys);
            // Warm-up: every key's gate exists before timing.
            ns_per_call(svc.clone(), 1, keys.max(10_000) * 2).await;
            let mut runs = Vec::new();
            for _ in 0..5 {
                runs.push(ns_per_call(svc.clone(), 1, total).await);
            }
            let m = median(runs);
            if keys == 1 {
                base = m;
            }
            println!("| {keys} | {m:.0} | {:.2}× |", m / base);
        }
        println!();
        println!("| tasks (2 worker threads) | tower Retry+Timeout, ns / call | firebreak full stack, ns / call | firebreak / tower |");
        println!("|---:|---:|---:|---:|");
        for tasks in [1usize, 4, 16, 64, 256, 1024] {
            let (mut t, mut f) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                t.push(ns_per_call(tower_pair(), tasks, total).await);
                f.push(ns_per_call(stack(1), tasks, total).await);
            }
            let (t, f) = (median(t), median(f));
            println!("| {tasks} | {t:.0} | {f:.0} | {:.2} |", f / t);
        }
    });
}
