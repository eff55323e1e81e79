//! Issue #9, measurement 3: heap allocations per call on the success path, counted with a
//! counting global allocator, for the bare service, tower's Retry+Timeout, each firebreak layer
//! alone and the whole stack (observation on, no recorder). Prints a table. The counting
//! allocator is `stats_alloc`'s (the workspace forbids `unsafe`).
//!
//! `cargo bench --bench allocations`
//!
//! Also the workload for instruction-count profiles (modes `full`, `quiet`, `tower`, `bare`):
//! `valgrind --tool=callgrind target/release/deps/allocations-* full 20000`

#![allow(missing_docs)]

use bytes::Bytes;
use firebreak::Stack;
use firebreak::classify::ClassifyLayer;
use firebreak::gate::{GateConfig, GateLayer, KeyBy};
use firebreak::retry::{RetryConfig, RetryLayer};
use firebreak::timeout::{AttemptTimeoutLayer, DeadlineLayer, TimeoutConfig, Workload};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

use firebreak_testkit::{CountPolicy, Ok200, inmem_request as request};

/// One call, body read; the request is built before counting starts.
fn call<S, RB>(svc: &mut S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    futures_util::future::poll_fn(|cx| svc.poll_ready(cx))
        .now_or_never()
        .expect("ready")
        .expect("ok");
    let resp = svc.call(req).now_or_never().expect("ready").expect("ok");
    std::hint::black_box(
        resp.into_body()
            .collect()
            .now_or_never()
            .expect("ready")
            .expect("ok"),
    );
}

/// Allocations and bytes per call, over `n` calls after a warm-up.
fn measure<S, RB>(svc: &mut S, n: u64) -> (f64, f64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    for _ in 0..100 {
        call(svc, request());
    }
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let req = request();
        let region = Region::new(GLOBAL);
        call(svc, req);
        let c = region.change();
        a += (c.allocations + c.reallocations) as u64;
        b += (c.bytes_allocated + c.bytes_reallocated.max(0) as usize) as u64;
    }
    (a as f64 / n as f64, b as f64 / n as f64)
}

/// `n` calls through `svc`, for a profiler.
fn profile<S, RB>(svc: &mut S, n: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    for _ in 0..n {
        call(svc, request());
    }
}

/// tower's own Retry+Timeout pair, the in-process yardstick.
fn tower_pair(body: Bytes) -> tower::retry::Retry<CountPolicy, tower::timeout::Timeout<Ok200>> {
    ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(CountPolicy(4)))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(60)))
        .service(Ok200(body))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let body = Bytes::from_static(br#"{"id":"x","object":"chat.completion","choices":[]}"#);
    let t = TimeoutConfig::preset(Workload::Interactive);
    let full = || {
        ServiceBuilder::new()
            .layer(Stack::interactive().layer().unwrap())
            .service(Ok200(body.clone()))
    };
    let quiet = || {
        ServiceBuilder::new()
            .layer(Stack::interactive().observe(false).layer().unwrap())
            .service(Ok200(body.clone()))
    };
    // Profiling modes: `full N`, `quiet N` (observation off), `tower N` (tower's Retry+Timeout
    // pair) and `bare N` make N calls through that service and print nothing else. Run each
    // twice (N and 2N) under callgrind: the difference over N is the instructions per call,
    // without the set-up.
    if let (Some(which), Some(n)) = (args.first().map(String::as_str), args.get(1)) {
        if let Ok(n) = n.parse::<u64>() {
            let n = n.min(10_000_000);
            match which {
                "full" => profile(&mut full(), n),
                "quiet" => profile(&mut quiet(), n),
                "tower" => profile(&mut tower_pair(body.clone()), n),
                "bare" => profile(&mut Ok200(body.clone()), n),
                other => panic!("unknown profiling mode {other:?}: full, quiet, tower or bare"),
            }
            return;
        }
    }
    if args.first().map(String::as_str) == Some("sizes") {
        let mut svc = full();
        let fut = svc.call(request());
        println!("full stack future: {} bytes", std::mem::size_of_val(&fut));
        println!(
            "request: {} bytes",
            std::mem::size_of::<Request<Full<Bytes>>>()
        );
        return;
    }
    if args.first().map(String::as_str) == Some("net") {
        net(&rt);
        return;
    }
    let n = 10_000;
    let mut rows: Vec<(&str, (f64, f64))> = Vec::with_capacity(10);
    rows.push(("bare", measure(&mut Ok200(body.clone()), n)));
    rows.push((
        "tower retry+timeout",
        measure(&mut tower_pair(body.clone()), n),
    ));
    rows.push((
        "firebreak classify",
        measure(&mut ClassifyLayer::new().layer(Ok200(body.clone())), n),
    ));
    rows.push((
        "firebreak attempt timeouts",
        measure(
            &mut AttemptTimeoutLayer::new(&t)
                .unwrap()
                .layer(Ok200(body.clone())),
            n,
        ),
    ));
    rows.push((
        "firebreak 429 gate",
        measure(
            &mut GateLayer::new(GateConfig::default(), KeyBy::Client)
                .unwrap()
                .layer(Ok200(body.clone())),
            n,
        ),
    ));
    rows.push((
        "firebreak retry",
        measure(
            &mut RetryLayer::new(RetryConfig::default())
                .unwrap()
                .layer(Ok200(body.clone())),
            n,
        ),
    ));
    rows.push((
        "firebreak deadline",
        measure(
            &mut DeadlineLayer::new(Duration::from_secs(120))
                .unwrap()
                .layer(Ok200(body.clone())),
            n,
        ),
    ));
    let obs = firebreak::observe::Observer::new();
    rows.push((
        "firebreak observe (both layers)",
        measure(
            &mut ServiceBuilder::new()
                .layer(firebreak::observe::ObserveLayer::new(obs.clone()))
                .layer(firebreak::observe::AttemptObserveLayer::new(obs))
                .service(Ok200(body.clone())),
            n,
        ),
    ));
    rows.push(("firebreak full stack", measure(&mut full(), n)));
    rows.push((
        "firebreak full stack, observe off",
        measure(&mut quiet(), n),
    ));
    // Every wrapper allocates at least what the service under it does.
    let bare = rows[0].1.0;
    for (name, (a, _)) in &rows {
        assert!(
            *a >= bare,
            "{name}: {a} allocations, below the bare service's {bare}"
        );
    }
    println!("| service | allocations / call | bytes / call |");
    println!("|---|---:|---:|");
    for (name, (a, b)) in rows {
        println!("| {name} | {a:.2} | {b:.0} |");
    }
}

/// Allocations per request over loopback against firebreak-sim in this process, one request at a
/// time: a bare hyper client against the `FireworksClient`. The simulator's own allocations are in
/// both figures; the difference is the stack's.
fn net(rt: &tokio::runtime::Runtime) {
    use firebreak_testkit::{KEY, chat_body, plain_client, post};
    rt.block_on(async {
        let sim = firebreak_sim::Sim::start(firebreak_sim::SimConfig::default().api_key(KEY))
            .await
            .expect("sim");
        let base = sim.base_url();
        let bare = plain_client();
        let fb = firebreak::FireworksClient::new(
            &base,
            firebreak::client::ApiKey::new(KEY).expect("key"),
            Stack::interactive(),
        )
        .expect("client");
        let body = chat_body("a", false);
        let n = 2_000u64;
        // Each layer over the same (shared) bare hyper client, to attribute the difference.
        let hyper = firebreak::client::SharedClient::new(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<firebreak::InnerBody<Full<Bytes>>>(),
        );
        let layered = |s: Stack| {
            ServiceBuilder::new()
                .layer(s.layer().unwrap())
                .service(hyper.clone())
        };
        count(
            &base,
            &body,
            n,
            "stack, observe on",
            layered(Stack::interactive()),
        )
        .await;
        count(
            &base,
            &body,
            n,
            "stack, observe off",
            layered(Stack::interactive().observe(false)),
        )
        .await;
        fn hyper_for<B>()
        -> firebreak::client::SharedClient<hyper_util::client::legacy::connect::HttpConnector, B>
        where
            B: Body + Send + Unpin + 'static,
            B::Data: Send,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            firebreak::client::SharedClient::new(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<B>(),
            )
        }
        let t = TimeoutConfig::preset(Workload::Interactive);
        count(
            &base,
            &body,
            n,
            "classify",
            ClassifyLayer::new().layer(hyper_for()),
        )
        .await;
        count(
            &base,
            &body,
            n,
            "attempt timeouts + classify",
            AttemptTimeoutLayer::new(&t)
                .unwrap()
                .layer(ClassifyLayer::new().layer(hyper_for())),
        )
        .await;
        count(
            &base,
            &body,
            n,
            "429 gate + classify",
            GateLayer::new(GateConfig::default(), KeyBy::Client)
                .unwrap()
                .layer(ClassifyLayer::new().layer(hyper_for())),
        )
        .await;
        count(
            &base,
            &body,
            n,
            "retry + classify",
            RetryLayer::new(RetryConfig::default())
                .unwrap()
                .layer(ClassifyLayer::new().layer(hyper_for())),
        )
        .await;
        count(
            &base,
            &body,
            n,
            "deadline + classify",
            DeadlineLayer::new(Duration::from_secs(120))
                .unwrap()
                .layer(ClassifyLayer::new().layer(hyper_for())),
        )
        .await;
        for round in 0..2 {
            let (mut a_bare, mut a_fb) = (0u64, 0u64);
            for _ in 0..n {
                let req = post(&base, "/chat/completions", body.clone());
                let r = Region::new(GLOBAL);
                let resp = bare.request(req).await.expect("bare");
                resp.into_body().collect().await.expect("body");
                a_bare += r.change().allocations as u64;
                let r = Region::new(GLOBAL);
                let resp = fb
                    .post("/chat/completions", body.clone())
                    .await
                    .expect("fb");
                resp.into_body().collect().await.expect("body");
                a_fb += r.change().allocations as u64;
            }
            if round == 1 {
                println!(
                    "loopback, per request (simulator included): bare hyper {:.1}, firebreak {:.1}",
                    a_bare as f64 / n as f64,
                    a_fb as f64 / n as f64
                );
            }
        }
    });
}

/// Allocations per request through `svc` over loopback, after a warm-up.
async fn count<S, RB>(base: &str, body: &Bytes, n: u64, name: &str, mut svc: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    let mut total = 0u64;
    for i in 0..n + 200 {
        let req = firebreak_testkit::post(base, "/chat/completions", body.clone());
        let r = Region::new(GLOBAL);
        let resp = tower::ServiceExt::ready(&mut svc)
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("call");
        resp.into_body().collect().await.expect("body");
        if i >= 200 {
            total += r.change().allocations as u64;
        }
    }
    println!(
        "loopback, per request: {name} over bare hyper {:.1}",
        total as f64 / n as f64
    );
}
