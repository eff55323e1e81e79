//! Timeout overhead on a ready service: firebreak's attempt layer and deadline layer beside the
//! bare service and `tower::timeout::Timeout`, in one criterion run. Each iteration makes a call
//! and reads the (one-frame) body, inside a tokio runtime context (timers need one) but without
//! scheduling: every future is ready on its first poll.
//!
//! `cargo bench --bench timeout && scripts/criterion-medians timeout`

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use firebreak::timeout::{
    AttemptTimeoutLayer, DeadlineLayer, TimedRequestBody, TimeoutConfig, Workload,
};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Answers at once with a small body; accepts any request body type.
#[derive(Clone)]
struct Ok200(Bytes);

impl<B> Service<Request<B>> for Ok200 {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Full::new(self.0.clone()))))
    }
}

fn run<S, RB>(svc: &mut S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    let req = Request::post("http://api.fireworks.ai/inference/v1/chat/completions")
        .body(Full::new(Bytes::from_static(br#"{"messages":[]}"#)))
        .unwrap();
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
    let cfg = TimeoutConfig::preset(Workload::Interactive);
    let body = Bytes::from_static(br#"{"id":"x","object":"chat.completion","choices":[]}"#);
    let mut bare = Ok200(body.clone());
    let mut tower_timeout =
        tower::timeout::TimeoutLayer::new(Duration::from_secs(60)).layer(Ok200(body.clone()));
    let mut attempt = AttemptTimeoutLayer::new(&cfg)
        .unwrap()
        .layer(Ok200(body.clone()));
    let mut deadline = DeadlineLayer::new(Duration::from_secs(120))
        .unwrap()
        .layer(Ok200(body.clone()));
    let mut both = DeadlineLayer::new(Duration::from_secs(120)).unwrap().layer(
        AttemptTimeoutLayer::new(&cfg)
            .unwrap()
            .layer(Ok200(body.clone())),
    );
    let _: Option<TimedRequestBody<Full<Bytes>>> = None;
    let mut g = c.benchmark_group("timeout");
    g.bench_function("bare", |b| b.iter(|| run(&mut bare)));
    g.bench_function("tower_timeout", |b| b.iter(|| run(&mut tower_timeout)));
    g.bench_function("firebreak_attempt", |b| b.iter(|| run(&mut attempt)));
    g.bench_function("firebreak_deadline", |b| b.iter(|| run(&mut deadline)));
    g.bench_function("firebreak_deadline+attempt", |b| b.iter(|| run(&mut both)));
    g.finish();
}

criterion_group!(timeout, benches);
criterion_main!(timeout);
