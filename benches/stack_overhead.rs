//! Issues #8 and #9: the whole firebreak stack around an in-memory service that answers 200 at
//! once, beside the bare service, tower's `Retry` (count policy) + `Timeout`, and each firebreak
//! layer alone, in one criterion run; and the stack with observation off, on with no recorder or
//! subscriber (the default for a library user who installs neither), on with a Prometheus
//! recorder, and on with both a recorder and a tracing subscriber at DEBUG (writing to a sink). Each iteration makes one call and reads the
//! one-frame body; every future is ready on its first poll (inside a runtime context, for timers).
//!
//! Also the router (issue #17) with a one-target chain.
//!
//! `cargo bench --bench stack_overhead && scripts/criterion-medians stack_overhead`

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use firebreak::Stack;
use firebreak::classify::ClassifyLayer;
use firebreak::gate::{GateConfig, GateLayer, KeyBy};
use firebreak::retry::{RetryConfig, RetryLayer};
use firebreak::timeout::{AttemptTimeoutLayer, DeadlineLayer, TimeoutConfig, Workload};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder};

/// Answers at once with a small body; accepts any request body; fails with firebreak's error
/// type so that every layer can sit on it directly.
use firebreak_testkit::{CountPolicy, Ok200};

fn run<S, RB>(svc: &mut S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    // The model names the route alias for the router's rows; the other layers never read it.
    let req = Request::post("http://api.fireworks.ai/inference/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[]}"#,
        )))
        .unwrap();
    futures_util::future::poll_fn(|cx| svc.poll_ready(cx))
        .now_or_never()
        .expect("ready")
        .expect("ok");
    let resp = svc.call(req).now_or_never().expect("ready").expect("ok");
    black_box(
        resp.into_body()
            .collect()
            .now_or_never()
            .expect("ready")
            .expect("ok"),
    );
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let body = Bytes::from_static(br#"{"id":"x","object":"chat.completion","choices":[]}"#);
    let t = TimeoutConfig::preset(Workload::Interactive);
    let mut bare = Ok200(body.clone());
    let mut tower_pair = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(CountPolicy(4)))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(60)))
        .service(Ok200(body.clone()));
    let mut classify = ClassifyLayer::new().layer(Ok200(body.clone()));
    let mut attempt = AttemptTimeoutLayer::new(&t)
        .unwrap()
        .layer(Ok200(body.clone()));
    let mut gate = GateLayer::new(GateConfig::default(), KeyBy::Client)
        .unwrap()
        .layer(Ok200(body.clone()));
    let mut retry = RetryLayer::new(RetryConfig::default())
        .unwrap()
        .layer(Ok200(body.clone()));
    let mut deadline = DeadlineLayer::new(Duration::from_secs(120))
        .unwrap()
        .layer(Ok200(body.clone()));
    let observer = firebreak::observe::Observer::new();
    let mut observe = ServiceBuilder::new()
        .layer(firebreak::observe::ObserveLayer::new(observer.clone()))
        .layer(firebreak::observe::AttemptObserveLayer::new(observer))
        .service(Ok200(body.clone()));
    let stack = |s: Stack| {
        ServiceBuilder::new()
            .layer(s.layer().unwrap())
            .service(Ok200(body.clone()))
    };
    let mut full = stack(Stack::interactive());
    let mut full_off = stack(Stack::interactive().observe(false));
    // A Prometheus recorder, current while the stack is built (so its handles record there).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut full_recorded =
        metrics::with_local_recorder(&prometheus, || stack(Stack::interactive()));
    // Issue #16: the gate and the whole stack linked to a live Redis fleet (a redis-server of
    // the bench's own), beside the same without one: what sharing costs a call.
    let redis = firebreak_testkit::RedisServer::start();
    let fleet = firebreak_redis::RedisFleet::start(firebreak_redis::RedisConfig::new(redis.url()))
        .expect("a fleet");
    rt.block_on(fleet.connected_within(Duration::from_secs(5)));
    assert!(
        fleet.is_connected(),
        "the fleet reached the bench's redis-server"
    );
    let fleet: std::sync::Arc<dyn firebreak::gate::Fleet> = std::sync::Arc::new(fleet);
    let mut gate_fleet = GateLayer::with_fleet(GateConfig::default(), KeyBy::Client, fleet.clone())
        .unwrap()
        .layer(Ok200(body.clone()));
    let mut full_fleet = stack(Stack::interactive().fleet(Some(fleet)));
    // Issue #17: the router with a one-target chain over the same in-memory service: what
    // routing a call costs on top of the stack (body parse, `model` rewrite, boxed target
    // stack, breaker and tap).
    let mut route = firebreak::route::Router::with_client(
        firebreak::route::RouteConfig::new().fallbacks(
            "m",
            "http://api.fireworks.ai/inference/v1",
            &["accounts/fireworks/models/llama-v3p1-8b-instruct"],
        ),
        Stack::interactive(),
        None,
        Ok200(body.clone()),
    )
    .unwrap();
    let mut g = c.benchmark_group("stack_overhead");
    g.bench_function("bare", |b| b.iter(|| run(&mut bare)));
    g.bench_function("tower_retry+timeout", |b| b.iter(|| run(&mut tower_pair)));
    g.bench_function("firebreak_classify", |b| b.iter(|| run(&mut classify)));
    g.bench_function("firebreak_attempt_timeouts", |b| {
        b.iter(|| run(&mut attempt))
    });
    g.bench_function("firebreak_gate", |b| b.iter(|| run(&mut gate)));
    g.bench_function("firebreak_gate_redis_fleet", |b| {
        b.iter(|| run(&mut gate_fleet))
    });
    g.bench_function("firebreak_retry", |b| b.iter(|| run(&mut retry)));
    g.bench_function("firebreak_deadline", |b| b.iter(|| run(&mut deadline)));
    g.bench_function("firebreak_observe", |b| b.iter(|| run(&mut observe)));
    g.bench_function("firebreak_full_stack", |b| b.iter(|| run(&mut full)));
    g.bench_function("firebreak_route_one_target", |b| b.iter(|| run(&mut route)));
    g.bench_function("firebreak_full_stack_redis_fleet", |b| {
        b.iter(|| run(&mut full_fleet))
    });
    g.bench_function("firebreak_full_stack_observe_off", |b| {
        b.iter(|| run(&mut full_off))
    });
    g.bench_function("firebreak_full_stack_recorder", |b| {
        b.iter(|| run(&mut full_recorded))
    });
    // Last: once a subscriber has been seen, callsite interest is no longer "never".
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(std::io::sink)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    g.bench_function("firebreak_full_stack_recorder_subscriber", |b| {
        b.iter(|| run(&mut full_recorded))
    });
    drop(guard);
    g.finish();
    // Keep the recorder alive as long as its handles are used.
    drop(prometheus);
}

criterion_group!(stack_overhead, benches);
criterion_main!(stack_overhead);
