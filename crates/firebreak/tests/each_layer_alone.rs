//! Each layer composed alone with plain tower around a hyper client, against the simulator on
//! loopback: no other firebreak layer below or above it. Layers that decide from an attempt's
//! class need its error as a `firebreak::Error`; tower's own `map_err(Error::transport)`
//! adapts the hyper client's error, so no firebreak layer is needed for that either.

use bytes::Bytes;
use firebreak::classify::ClassifyLayer;
use firebreak::client::{ApiKey, AuthLayer};
use firebreak::gate::{GateConfig, GateLayer, KeyBy};
use firebreak::observe::{AttemptObserveLayer, ObserveLayer, Observer};
use firebreak::retry::{ReplayBody, RetryConfig, RetryLayer};
use firebreak::timeout::{AttemptTimeoutLayer, DeadlineLayer, TimedRequestBody, TimeoutConfig};
use firebreak::{Class, Classification, Error, TimeoutPhase, names};
use firebreak_sim::{Fault, Trigger};
use firebreak_testkit::{KEY, Recorded, bounded, chat_body, sim_with, status_fault};
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt};

fn client<B>() -> Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn chat(base: &str, id: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(chat_body(id, false)))
        .unwrap()
}

#[tokio::test]
async fn classify_alone_attaches_the_class_and_turns_transport_errors_into_error() {
    bounded(30, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 1 }, status_fault(503, vec![])).await;
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new())
            .service(client::<Full<Bytes>>());
        let resp = svc
            .clone()
            .oneshot(chat(&sim.base_url(), "c1"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let c = resp
            .extensions()
            .get::<Classification>()
            .expect("classified");
        assert_eq!(c.class(), Class::Overloaded);
        let refused = format!("http://{}", firebreak_testkit::refused_addr());
        let e = svc.oneshot(chat(&refused, "c2")).await.unwrap_err();
        assert!(e.is_connect(), "{e}");
    })
    .await
}

#[tokio::test]
async fn classify_alone_with_errors_for_status_turns_a_non_success_into_err() {
    bounded(30, async {
        let sim = sim_with(Trigger::Always, status_fault(404, vec![])).await;
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new().errors_for_status(true))
            .service(client::<Full<Bytes>>());
        let e = svc.oneshot(chat(&sim.base_url(), "s1")).await.unwrap_err();
        assert_eq!(e.status(), Some(http::StatusCode::NOT_FOUND));
        assert!(!e.is_retryable());
    })
    .await
}

#[tokio::test]
async fn attempt_timeouts_alone_end_a_slow_attempt_by_phase() {
    bounded(30, async {
        let sim = sim_with(Trigger::Always, Fault::SlowTtfb { delay_ms: 5_000 }).await;
        let cfg = TimeoutConfig::none().headers(Some(Duration::from_millis(200)));
        let svc = ServiceBuilder::new()
            .layer(AttemptTimeoutLayer::new(&cfg).unwrap())
            .service(client::<TimedRequestBody<Full<Bytes>>>());
        let e = svc.oneshot(chat(&sim.base_url(), "t1")).await.unwrap_err();
        assert_eq!(e.class(), Class::Timeout(TimeoutPhase::Headers));
    })
    .await
}

#[tokio::test]
async fn the_deadline_alone_ends_the_call() {
    bounded(30, async {
        let sim = sim_with(Trigger::Always, Fault::SlowTtfb { delay_ms: 5_000 }).await;
        let svc = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_millis(300)).unwrap())
            .service(client::<Full<Bytes>>());
        let e = svc.oneshot(chat(&sim.base_url(), "d1")).await.unwrap_err();
        assert_eq!(e.class(), Class::Timeout(TimeoutPhase::Deadline));
    })
    .await
}

#[tokio::test]
async fn retry_alone_retries_a_502_by_its_status() {
    bounded(30, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 1 }, status_fault(502, vec![])).await;
        let cfg = RetryConfig::default().backoff(firebreak::retry::Backoff {
            jitter: firebreak::retry::Jitter::Full,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(20),
        });
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(cfg).unwrap())
            .map_err(Error::transport)
            .service(client::<ReplayBody<Full<Bytes>>>());
        let resp = svc.oneshot(chat(&sim.base_url(), "r1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(sim.attempts_for("r1").len(), 2);
    })
    .await
}

#[tokio::test]
async fn the_gate_alone_admits_and_counts() {
    bounded(30, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 0 }, status_fault(500, vec![])).await;
        let gate = GateLayer::new(GateConfig::default(), KeyBy::Client).unwrap();
        let svc = ServiceBuilder::new()
            .layer(gate.clone())
            .map_err(Error::transport)
            .service(client::<Full<Bytes>>());
        for i in 0..3 {
            let resp = svc
                .clone()
                .oneshot(chat(&sim.base_url(), &format!("g{i}")))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let snap = gate.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].1.admitted, 3);
    })
    .await
}

#[tokio::test]
async fn observation_alone_counts_calls_and_attempts() {
    bounded(30, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 0 }, status_fault(500, vec![])).await;
        let rec = Recorded::new();
        let svc = rec.build(|| {
            let observer = Observer::new();
            ServiceBuilder::new()
                .layer(ObserveLayer::new(observer.clone()))
                .layer(AttemptObserveLayer::new(observer))
                .map_err(Error::transport)
                .service(client::<Full<Bytes>>())
        });
        let resp = svc.oneshot(chat(&sim.base_url(), "o1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
        assert_eq!(
            rec.counter(
                names::ATTEMPTS,
                &[("class", "success"), ("reached_server", "true")]
            ),
            1
        );
        assert_eq!(
            rec.counters_by(names::CALLS, "outcome")
                .values()
                .sum::<u64>(),
            1
        );
    })
    .await
}

#[tokio::test]
async fn auth_alone_sends_the_key() {
    bounded(30, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 0 }, status_fault(500, vec![])).await;
        let svc = ServiceBuilder::new()
            .layer(AuthLayer::new(ApiKey::new(KEY).unwrap()))
            .service(client::<Full<Bytes>>());
        let mut req = chat(&sim.base_url(), "a1");
        req.headers_mut().remove("authorization");
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "the layer added the key the simulator requires"
        );
    })
    .await
}
