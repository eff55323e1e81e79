//! The observation layers around in-memory services, in paused time, with a recording metrics
//! recorder and a captured tracing subscriber.

use bytes::Bytes;
use firebreak::gate::GateConfig;
use firebreak::names;
use firebreak::observe::{AttemptObserveLayer, ObserveLayer, Observer};
use firebreak::{Class, Error, classify::ClassifyLayer};
use firebreak_testkit::Recorded;

mod common;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_retried_request_is_one_request_two_attempts_and_one_retry() {
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[503], Duration::from_millis(10)),
        GateConfig::default(),
        true,
    );
    let resp = svc.oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"ok\":true}");

    let seen = &rec;
    assert_eq!(seen.counter(names::CALLS, &[("outcome", "success")]), 1);
    assert_eq!(seen.counter(names::CALLS, &[]), 1);
    assert_eq!(seen.counter(names::ATTEMPTS, &[("class", "overloaded")]), 1);
    assert_eq!(seen.counter(names::ATTEMPTS, &[("class", "success")]), 1);
    assert_eq!(
        seen.counter(names::ATTEMPTS, &[("reached_server", "false")]),
        0
    );
    assert_eq!(seen.counter(names::RETRIES, &[("reason", "overloaded")]), 1);
    assert_eq!(seen.counter(names::RETRIES, &[]), 1);
    assert_eq!(seen.counter(names::HTTP_429, &[]), 0);
    assert_eq!(seen.counter(names::CLIENT_FAILURES, &[]), 0);
    // Paused time: the backoff is exactly 100 ms (jitter full over [100, 100]... drawn ≤ 100).
    let backoff = seen.samples(names::BACKOFF_MS, &[("reason", "backoff")]);
    assert_eq!(backoff.len(), 1);
    assert!(backoff[0] <= 100.0, "{backoff:?}");
    let total = seen.samples(names::OVERALL_MS, &[("outcome", "success")]);
    assert_eq!(total.len(), 1);
    // Two 10 ms answers plus the backoff.
    assert!(
        (total[0] - (20.0 + backoff[0])).abs() < 1.0,
        "{total:?} vs {backoff:?}"
    );
    assert_eq!(seen.samples(names::FIRST_BYTE_MS, &[]).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_count_once_by_class_and_429s_are_counted() {
    let rec = Recorded::new();
    // 404 is not retried; 429 twice then 200 for the second call.
    let svc = stack(
        &rec,
        Script::new(&[404, 429, 429], Duration::from_millis(5)),
        GateConfig::default(),
        true,
    );
    let r1 = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(r1.status(), 404);
    drop(r1);
    let r2 = svc.oneshot(req()).await.unwrap();
    assert_eq!(r2.status(), 200);
    r2.into_body().collect().await.unwrap();

    let seen = &rec;
    assert_eq!(
        seen.counter(
            names::CALLS,
            &[("outcome", "failure"), ("class", "client_error_not_found")]
        ),
        1
    );
    assert_eq!(seen.counter(names::CALLS, &[("outcome", "success")]), 1);
    assert_eq!(seen.counter(names::CALLS, &[("outcome", "cancelled")]), 0);
    assert_eq!(seen.counter(names::HTTP_429, &[]), 2);
    assert_eq!(
        seen.counter(names::ATTEMPTS, &[("class", "rate_limited")]),
        2
    );
    assert_eq!(
        seen.counter(names::RETRIES, &[("reason", "rate_limited")]),
        2
    );
    assert_eq!(seen.counter(names::ATTEMPTS, &[]), 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_or_future_counts_as_cancelled() {
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[], Duration::from_millis(50)),
        GateConfig::default(),
        true,
    );
    // The future dropped before the answer.
    let pending = svc.clone().oneshot(req());
    assert!(
        tokio::time::timeout(Duration::from_millis(10), pending)
            .await
            .is_err()
    );
    // The response taken but its body never read.
    let resp = svc.oneshot(req()).await.unwrap();
    drop(resp);
    let seen = &rec;
    assert_eq!(seen.counter(names::CALLS, &[("outcome", "cancelled")]), 2);
    assert_eq!(seen.counter(names::CALLS, &[("outcome", "success")]), 0);
    assert_eq!(
        seen.samples(names::OVERALL_MS, &[("outcome", "cancelled")])
            .len(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn the_gate_reports_its_wait_limit_and_queue() {
    let rec = Recorded::new();
    let gate = GateConfig::default()
        .initial_concurrency(1)
        .min_concurrency(1)
        .max_concurrency(1);
    let svc = stack(
        &rec,
        Script::new(&[], Duration::from_millis(100)),
        gate,
        true,
    );
    // Each task reads its body: the permit is held until the body ends.
    let call = |svc: Svc| async move {
        let resp = svc.oneshot(req()).await.unwrap();
        resp.into_body().collect().await.unwrap();
    };
    let a = tokio::spawn(call(svc.clone()));
    let b = tokio::spawn(call(svc.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // One in flight, one queued.
    assert_eq!(rec.gauge(names::GATE_QUEUE, &[]), 1.0);
    for h in [a, b] {
        h.await.unwrap();
    }
    let seen = &rec;
    assert_eq!(seen.gauge(names::GATE_QUEUE, &[]), 0.0);
    assert_eq!(seen.gauge(names::GATE_LIMIT, &[]), 1.0);
    let waits = seen.samples(names::GATE_WAIT_MS, &[("reason", "concurrency")]);
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!((waits[0] - 100.0).abs() < 1.0, "{waits:?}");
    assert_eq!(seen.counter(names::CALLS, &[("outcome", "success")]), 2);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_observer_records_nothing() {
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[503], Duration::from_millis(1)),
        GateConfig::default(),
        false,
    );
    let resp = svc.oneshot(req()).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let seen = &rec;
    assert_eq!(seen.counter(names::CALLS, &[]), 0);
    assert_eq!(seen.counter(names::ATTEMPTS, &[]), 0);
    let series = seen.series();
    assert!(
        series.iter().all(|(n, _)| n.starts_with("firebreak_gate")),
        "only the gate's own series: {series:?}"
    );
}

#[test]
fn every_series_is_registered_up_front_with_bounded_labels() {
    let rec = Recorded::new();
    let _obs = rec.build(Observer::new);
    let series = rec.series();
    let n = Class::ALL.len();
    // requests: success + one failure per non-success class + cancelled; attempts: one per
    // class; retries: one per non-success class; client failures: 7 kinds; one 429 counter.
    let count = |name: &str| series.iter().filter(|(x, _)| x == name).count();
    assert_eq!(count(names::CALLS), 1 + (n - 1) + 1);
    assert_eq!(count(names::ATTEMPTS), n);
    assert_eq!(count(names::RETRIES), n - 1);
    assert_eq!(count(names::CLIENT_FAILURES), 7);
    assert_eq!(count(names::HTTP_429), 1);
    for (_, labels) in &series {
        for (k, _) in labels {
            assert!(
                ["outcome", "class", "reached_server", "reason", "kind"].contains(&k.as_str()),
                "unexpected label {k}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_layer_alone_passes_answers_through_untouched() {
    let obs = Observer::disabled();
    let svc = ObserveLayer::new(obs.clone()).layer(
        AttemptObserveLayer::new(obs)
            .layer(ClassifyLayer::new().layer(Script::new(&[418], Duration::ZERO))),
    );
    let resp = svc.oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), 418);
}

#[tokio::test]
async fn credentials_are_marked_sensitive_for_everything_below() {
    for obs in [Observer::new(), Observer::disabled()] {
        let inner = tower::service_fn(|r: Request<Full<Bytes>>| async move {
            assert!(r.headers()["authorization"].is_sensitive());
            assert!(r.headers()["x-api-key"].is_sensitive());
            assert!(!format!("{r:?}").contains("SECRET"), "{r:?}");
            Ok::<_, Error>(Response::new(Full::new(Bytes::new())))
        });
        let svc = ObserveLayer::new(obs).layer(inner);
        let mut r = req();
        r.headers_mut()
            .insert("authorization", "Bearer fw_SECRET".parse().unwrap());
        r.headers_mut()
            .insert("x-api-key", "fw_SECRET".parse().unwrap());
        let resp = svc.oneshot(r).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn the_gate_says_when_it_waited_for_a_cooldown_or_for_pacing() {
    // Cooldown: a 429 asking for 500 ms holds the next call in the gate until it ends.
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[429], Duration::from_millis(10)),
        GateConfig::default(),
        true,
    );
    let first = tokio::spawn(svc.clone().oneshot(req()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let resp = svc.oneshot(req()).await.unwrap();
    resp.into_body().collect().await.unwrap();
    first
        .await
        .unwrap()
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let cooled = rec.samples(names::GATE_WAIT_MS, &[("reason", "cooldown")]);
    assert!(!cooled.is_empty(), "no cooldown wait recorded");
    assert!(cooled.iter().all(|w| *w > 0.0 && *w <= 500.0), "{cooled:?}");

    // Pacing: a cap of 60 requests a minute spaces sends a second apart.
    let rec = Recorded::new();
    let gate = GateConfig::default().requests_per_minute(Some(60));
    let svc = stack(&rec, Script::new(&[], Duration::from_millis(1)), gate, true);
    for _ in 0..2 {
        let resp = svc.clone().oneshot(req()).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let paced = rec.samples(names::GATE_WAIT_MS, &[("reason", "pacing")]);
    assert_eq!(paced.len(), 1, "{paced:?}");
    assert!(paced[0] > 900.0 && paced[0] <= 1000.0, "{paced:?}");
}

/// A request for `model`, or one with no model.
fn req_for(model: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = req();
    if let Some(m) = model {
        r.extensions_mut()
            .insert(firebreak::Model(std::sync::Arc::from(m)));
    }
    r
}

#[tokio::test(start_paused = true)]
async fn model_labels_are_capped_and_nothing_is_lost() {
    let rec = Recorded::new();
    let _current = rec.install();
    let obs = Observer::with_model_cap(3);
    let svc = tower::ServiceBuilder::new()
        .layer(ObserveLayer::new(obs.clone()))
        .layer(firebreak::retry::RetryLayer::new(retry()).unwrap())
        .layer(AttemptObserveLayer::new(obs))
        .layer(ClassifyLayer::new())
        .service(Script::new(&[503], Duration::from_millis(5)));
    let models = [
        Some("llama#accounts/acme/deployments/d1"),
        Some("accounts/fireworks/models/qwen"),
        Some("llama#accounts/acme/deployments/d1"),
        Some("m3"),
        Some("m4"),
        Some("m5"),
        None,
    ];
    // Longer than the 256 bytes a label value may take.
    let long = "x".repeat(257);
    for m in models.iter().copied().chain([Some(long.as_str())]) {
        let resp = svc.clone().oneshot(req_for(m)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }

    let calls = rec.counters_by(names::CALLS, "model");
    assert_eq!(
        calls,
        [
            ("accounts/fireworks/models/qwen".to_owned(), 1),
            ("llama#accounts/acme/deployments/d1".to_owned(), 2),
            ("m3".to_owned(), 1),
            ("other".to_owned(), 3),
        ]
        .into(),
        "three models of their own, then `other` (the long id included)"
    );
    // Every call is counted once: the one without a model has no model label.
    assert_eq!(rec.counter(names::CALLS, &[]), models.len() as u64 + 1);
    // The first attempt of the first call was the scripted 503, retried.
    assert_eq!(
        rec.counter(
            names::ATTEMPTS,
            &[
                ("model", "llama#accounts/acme/deployments/d1"),
                ("deployment", "accounts/acme/deployments/d1"),
                ("class", "overloaded"),
                ("reached_server", "true"),
            ]
        ),
        1
    );
    // d1: three attempts over two calls; the four other labelled calls name no deployment;
    // the call without a model has no deployment label at all.
    assert_eq!(
        rec.counters_by(names::ATTEMPTS, "deployment"),
        [
            (String::new(), 5),
            ("accounts/acme/deployments/d1".to_owned(), 3),
        ]
        .into()
    );
    assert_eq!(rec.counter(names::ATTEMPTS, &[]), models.len() as u64 + 2);
}

#[tokio::test(start_paused = true)]
async fn a_cap_of_zero_turns_model_labels_off() {
    let rec = Recorded::new();
    let _current = rec.install();
    let obs = Observer::with_model_cap(0);
    let svc = tower::ServiceBuilder::new()
        .layer(ObserveLayer::new(obs.clone()))
        .layer(AttemptObserveLayer::new(obs))
        .layer(ClassifyLayer::new())
        .service(Script::new(&[], Duration::from_millis(5)));
    let resp = svc.oneshot(req_for(Some("m1"))).await.unwrap();
    resp.into_body().collect().await.unwrap();
    assert!(rec.counters_by(names::CALLS, "model").is_empty());
    assert_eq!(rec.counter(names::CALLS, &[("outcome", "success")]), 1);
    assert_eq!(rec.counter(names::ATTEMPTS, &[("class", "success")]), 1);
}
