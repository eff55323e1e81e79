//! The 429 gate over real loopback sockets against firebreak-sim's token bucket (with and
//! without a delay header) and capacity limit, through retry → gate → attempt timeouts →
//! classify → hyper client. Assertions are on outcomes and on the simulator's log (how many
//! 429s, how many attempts, how fast requests arrived), never on wall-clock speed.

use bytes::Bytes;
use firebreak::client::{ClientConfig, build};
use firebreak::gate::{GateConfig, GateLayer, KeyBy};
use firebreak::retry::{ReplayBody, RetryConfig, RetryLayer};
use firebreak::timeout::{AttemptTimeoutLayer, TimedRequestBody, TimeoutConfig, Workload};
use firebreak::{Error, classify::ClassifyLayer};
use firebreak_sim::{
    CapacityConfig, CapacityReject, Latency, RateLimitConfig, RateLimitDelay, Sim, SimConfig,
};
use firebreak_testkit::*;
use futures_util::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

fn stack() -> (
    GateLayer,
    impl Service<
        Request<Full<Bytes>>,
        Response = http::Response<
            impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug> + Send,
        >,
        Error = Error,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
) {
    let client =
        build::<TimedRequestBody<ReplayBody<Full<Bytes>>>>(&ClientConfig::default()).unwrap();
    let gate = GateLayer::new(GateConfig::default(), KeyBy::Client).unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryConfig::default().max_attempts(8)).unwrap())
        .layer(gate.clone())
        .layer(AttemptTimeoutLayer::new(&TimeoutConfig::preset(Workload::Interactive)).unwrap())
        .layer(ClassifyLayer::new())
        .service(client);
    (gate, svc)
}

/// Sends `n` chat completions through the stack, `concurrency` at a time; returns how many
/// succeeded.
async fn drive(sim: &Sim, n: usize, concurrency: usize) -> usize {
    let (_gate, svc) = stack();
    let base = sim.base_url();
    let results: Vec<bool> = futures_util::stream::iter(0..n)
        .map(|i| {
            let svc = svc.clone();
            let req = post(
                &base,
                "/chat/completions",
                chat_body(&format!("req-{i:04}"), false),
            );
            async move {
                match svc.oneshot(req).await {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().filter(|ok| *ok).count()
}

/// The most requests the simulator admitted (status 200) in any window of `w` ms.
fn peak_admitted(sim: &Sim, w: f64) -> usize {
    let t: Vec<f64> = sim
        .log()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.t_ms)
        .collect();
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while t[i] - t[j] > w {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

#[tokio::test]
async fn token_bucket_with_retry_after() {
    bounded(60, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .rate_limit(RateLimitConfig::new(20.0, 4.0).delay(RateLimitDelay::RetryAfterSecs)),
        )
        .await
        .unwrap();
        let ok = drive(&sim, 60, 16).await;
        assert_eq!(ok, 60, "every request succeeded");
        let log = sim.log();
        let r429 = log.iter().filter(|r| r.status == 429).count();
        if std::env::var_os("FIREBREAK_TEST_DEBUG").is_some() {
            for r in &log {
                eprintln!("{:8.1} {} {:?}", r.t_ms, r.status, r.request_id);
            }
        }
        // No evidence before the first answers: the first window (16) goes at once and the
        // bucket (burst 4) refuses the rest of it; after that the gate paces.
        assert!(
            r429 <= 15,
            "{r429} 429s for 60 requests (the first window's 12, and ≤ 3 more)"
        );
        // Paced: never more than the bucket allows in any second (20/s + burst 4).
        assert!(
            peak_admitted(&sim, 1000.0) <= 24 + 1,
            "peak {}",
            peak_admitted(&sim, 1000.0)
        );
    })
    .await
}

#[tokio::test]
async fn token_bucket_without_any_delay_header() {
    bounded(60, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .rate_limit(RateLimitConfig::new(20.0, 4.0).delay(RateLimitDelay::None)),
        )
        .await
        .unwrap();
        let ok = drive(&sim, 60, 16).await;
        assert_eq!(ok, 60);
        let r429 = sim.log().iter().filter(|r| r.status == 429).count();
        assert!(
            r429 <= 18,
            "{r429} 429s for 60 requests (the first window's 12, and ≤ 6 more)"
        );
        assert!(sim.log().iter().all(|r| r.status == 200 || r.status == 429));
    })
    .await
}

#[tokio::test]
async fn capacity_limited_503_and_429() {
    bounded(60, async {
        for reject in [
            CapacityReject::Overloaded503,
            CapacityReject::CapacityExceeded429,
        ] {
            let sim = Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .latency(Latency {
                        ttfb_ms: 40,
                        ..Latency::default()
                    })
                    .capacity(CapacityConfig {
                        max_in_flight: 4,
                        reject_with: reject,
                    }),
            )
            .await
            .unwrap();
            let ok = drive(&sim, 60, 16).await;
            assert_eq!(ok, 60, "{reject:?}");
            let attempts = sim.log().len();
            // The first window (16) meets a capacity of 4 before any evidence: its 12 refusals
            // are the price of not taxing healthy traffic; the window then settles under 4.
            let refused = attempts - 60;
            assert!(
                refused <= 12 + 8,
                "{reject:?}: {refused} refusals (the first window's 12, and ≤ 8 more)"
            );
        }
    })
    .await
}

#[test]
fn ignored_headers_are_named_in_a_trace_event() {
    // #13 "bad input": a delay over the cap and contradictory rate headers are ignored by the
    // gate, which says so at DEBUG, and nobody else waits.
    let ((), text) = logged(
        tracing::Level::DEBUG,
        bounded(30, async {
            let sim = Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .fault(
                        firebreak_sim::Trigger::FirstAttemptsOfEvery {
                            n: 1,
                            every: 2,
                            offset: 0,
                        },
                        status_fault(
                            429,
                            vec![firebreak_sim::DelayHeader::RetryAfterSecs { secs: 3600.0 }],
                        ),
                    )
                    .fault(
                        firebreak_sim::Trigger::FirstAttemptsOfEvery {
                            n: 1,
                            every: 2,
                            offset: 1,
                        },
                        status_fault(
                            503,
                            vec![
                                firebreak_sim::DelayHeader::Raw {
                                    name: "x-ratelimit-limit-requests".into(),
                                    value: "10".into(),
                                },
                                firebreak_sim::DelayHeader::Raw {
                                    name: "x-ratelimit-remaining-requests".into(),
                                    value: "50".into(),
                                },
                            ],
                        ),
                    ),
            )
            .await
            .unwrap();
            let (gate, svc) = stack();
            let base = sim.base_url();
            let t0 = std::time::Instant::now();
            for i in 0..2 {
                let r = svc
                    .clone()
                    .oneshot(post(
                        &base,
                        "/chat/completions",
                        chat_body(&format!("req-{i}"), false),
                    ))
                    .await;
                match i {
                    // Over the 60 s cap: that request fails at once with its typed error.
                    0 => assert!(
                        r.is_err_and(|e| e.retry_after() == Some(Duration::from_secs(3600)))
                    ),
                    // The 503 is retried and succeeds.
                    _ => assert_eq!(r.unwrap().status(), 200),
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "nobody waited for the bad delay"
            );
            assert_eq!(gate.snapshot()[0].1.cooldown_remaining, Duration::ZERO);
        }),
    );
    assert!(text.contains("ignored a 429 delay over the cap"), "{text}");
    assert!(
        text.contains("ignored contradictory x-ratelimit headers"),
        "{text}"
    );
}

#[tokio::test]
async fn hostile_keys_are_bounded_and_evictions_are_counted() {
    // #13 point 7: a caller that sends a new key on every request cannot grow the gate's map
    // past `max_keys`; each eviction is counted, and the limit gauge follows the live keys.
    bounded(60, async {
        let sim = Sim::start(SimConfig::default()).await.unwrap();
        let rec = Recorded::new();
        let gate = rec.build(|| {
            GateLayer::new(GateConfig::default().max_keys(8), KeyBy::ApiKeyAndModel).unwrap()
        });
        let client = build::<TimedRequestBody<Full<Bytes>>>(&ClientConfig::default()).unwrap();
        let svc = ServiceBuilder::new()
            .layer(gate.clone())
            .layer(AttemptTimeoutLayer::new(&TimeoutConfig::preset(Workload::Interactive)).unwrap())
            .layer(ClassifyLayer::new())
            .service(client);
        for i in 0..40 {
            let mut req = post(
                &sim.base_url(),
                "/chat/completions",
                chat_body(&format!("k{i}"), false),
            );
            req.headers_mut().insert(
                "authorization",
                format!("Bearer fw_hostile_{i}").parse().unwrap(),
            );
            let resp = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        let snap = gate.snapshot();
        assert_eq!(snap.len(), 8, "the map stays at max_keys");
        assert_eq!(
            rec.counter(firebreak::names::GATE_EVICTIONS, &[]),
            32,
            "one eviction per key past the eighth"
        );
        let live: u32 = snap.iter().map(|(_, s)| s.concurrency_limit).sum();
        assert_eq!(
            rec.gauge(firebreak::names::GATE_LIMIT, &[]),
            f64::from(live),
            "evicted keys' limits leave the gauge"
        );
    })
    .await
}
