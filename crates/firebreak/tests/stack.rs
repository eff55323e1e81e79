//! The composed stack against firebreak-sim on loopback.

use bytes::Bytes;
use firebreak::{
    Class, FireworksClient, Stack, StackConfigError, client::ApiKey, client::ClientConfig,
    timeout::TimeoutConfig, timeout::Workload,
};
use firebreak_sim::{Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::bounded;
use http_body_util::BodyExt;
use std::time::Duration;

const KEY: &str = "fw_stack_test_SECRET";

fn chat(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"max_tokens":3,"user":"{id}"}}"#
    ))
}

#[tokio::test]
async fn a_call_through_the_whole_stack_recovers_and_authenticates() {
    bounded(30, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::FirstAttempts { n: 2 }, Fault::status(503)),
        )
        .await
        .unwrap();
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new(KEY).unwrap(),
            Stack::interactive(),
        )
        .unwrap();
        let resp = client.post("/chat/completions", chat("s-1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(
            sim.attempts_for("s-1")
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>(),
            [503, 503, 200]
        );
        let (_, snap) = client.layer().gate().snapshot()[0];
        assert!(
            snap.admitted >= 3,
            "every attempt went through the gate: {snap:?}"
        );
        assert!(!format!("{client:?}").contains("SECRET"));
    })
    .await
}

#[tokio::test]
async fn a_wrong_key_is_a_401_response_not_retried() {
    bounded(30, async {
        let sim = Sim::start(SimConfig::default().api_key(KEY)).await.unwrap();
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new("fw_wrong").unwrap(),
            Stack::interactive(),
        )
        .unwrap();
        let resp = client.post("/chat/completions", chat("bad")).await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(sim.log().len(), 1);
    })
    .await
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_call() {
    bounded(30, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::Hang { for_ms: 10_000 }),
        )
        .await
        .unwrap();
        // No first-byte timer: the attempt's total cuts the hang.
        let t = TimeoutConfig::preset(Workload::Interactive)
            .headers(None)
            .attempt(Some(Duration::from_millis(500)))
            .deadline(Some(Duration::from_millis(800)));
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new(KEY).unwrap(),
            Stack::interactive().timeouts(t),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let e = client
            .post("/chat/completions", chat("dl"))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(matches!(e.class(), Class::Timeout(_)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the deadline, not the hang"
        );
    })
    .await
}

#[test]
fn bad_settings_are_typed_errors() {
    let key = || ApiKey::new(KEY).unwrap();
    assert!(matches!(
        FireworksClient::new("ftp://x", key(), Stack::interactive()),
        Err(StackConfigError::BaseUrl(_))
    ));
    assert!(matches!(
        FireworksClient::new("not a url", key(), Stack::interactive()),
        Err(StackConfigError::BaseUrl(_))
    ));
    let mut s = Stack::preset(Workload::Agentic);
    s.retry.max_attempts = 0;
    let e = s.layer().unwrap_err();
    assert!(matches!(e, StackConfigError::Retry(_)), "{e}");
    let mut s = Stack::preset(Workload::LongContext);
    s.timeouts.idle = Some(Duration::ZERO);
    assert!(matches!(s.layer(), Err(StackConfigError::Timeout(_))));
    for s in [
        Stack::interactive(),
        Stack::preset(Workload::Agentic),
        Stack::preset(Workload::LongContext),
        Stack::preset(Workload::BatchSubmit),
    ] {
        s.layer().unwrap();
    }
    let _ = ClientConfig::default();
}

#[tokio::test]
async fn layers_one_by_one_in_order_with_plain_tower() {
    use firebreak::classify::ClassifyLayer;
    use firebreak::gate::{GateConfig, GateLayer, KeyBy};
    use firebreak::retry::{RetryConfig, RetryLayer};
    use firebreak::timeout::{AttemptTimeoutLayer, DeadlineLayer};
    use tower::{ServiceBuilder, ServiceExt};
    bounded(30, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::FirstAttempts { n: 1 }, Fault::status(502)),
        )
        .await
        .unwrap();
        let t = TimeoutConfig::preset(Workload::Interactive);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<firebreak::InnerBody<http_body_util::Full<Bytes>>>();
        let svc = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(30)).unwrap())
            .layer(RetryLayer::new(RetryConfig::default()).unwrap())
            .layer(GateLayer::new(GateConfig::default(), KeyBy::Client).unwrap())
            .layer(AttemptTimeoutLayer::new(&t).unwrap())
            .layer(ClassifyLayer::new())
            .service(client);
        let req = http::Request::post(format!("{}/chat/completions", sim.base_url()))
            .header("authorization", format!("Bearer {KEY}"))
            .body(http_body_util::Full::new(chat("ext")))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            sim.attempts_for("ext").len(),
            2,
            "retried once through the hand-made stack"
        );
        assert!(RetryLayer::new(RetryConfig::default().max_attempts(0)).is_err());
    })
    .await
}

#[tokio::test]
async fn the_client_estimates_tokens_from_the_body_and_max_tokens() {
    bounded(30, async {
        let sim = Sim::start(SimConfig::default().api_key(KEY)).await.unwrap();
        // 60,000 tokens/min = 1,000 tokens/s; each call asks for 1,000 completion tokens.
        let mut stack = Stack::interactive();
        stack.gate.tokens_per_minute = Some(60_000);
        let client =
            FireworksClient::new(&sim.base_url(), ApiKey::new(KEY).unwrap(), stack).unwrap();
        let body = |id: &str| {
            Bytes::from(format!(
                r#"{{"model":"m","messages":[],"max_tokens":1000,"user":"{id}"}}"#
            ))
        };
        for id in ["t-1", "t-2"] {
            let resp = client.post("/chat/completions", body(id)).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        let log = sim.log();
        let gap = log[1].t_ms - log[0].t_ms;
        assert!(
            gap >= 1000.0,
            "the second call waited for the first one's ~1,014 tokens: {gap} ms"
        );
    })
    .await
}

#[tokio::test]
async fn a_gate_per_key_and_model_separates_models_and_uses_the_clients_key() {
    // #13 point 7: `post` reads the model from the body, and the gate keys calls without an
    // `Authorization` header by the key the auth layer below it sends. A 429 on one model
    // leaves the other model free.
    bounded(30, async {
        let sim = Sim::start(SimConfig::default().api_key(KEY).fault(
            Trigger::FirstAttemptsOfEvery {
                n: 1,
                every: 1000,
                offset: 0,
            },
            Fault::status(429).delay(vec![firebreak_sim::DelayHeader::RetryAfterSecs {
                secs: 2.0,
            }]),
        ))
        .await
        .unwrap();
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new(KEY).unwrap(),
            Stack::interactive().key_by(firebreak::gate::KeyBy::ApiKeyAndModel),
        )
        .unwrap();
        let body = |model: &str, id: &str| {
            Bytes::from(format!(
                r#"{{"model":"{model}","messages":[],"max_tokens":3,"user":"{id}"}}"#
            ))
        };
        // Model A's first call is answered 429 + 2 s: its retry waits 2 s.
        let c = client.clone();
        let a =
            tokio::spawn(async move { c.post("/chat/completions", body("model-a", "r0")).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        let resp = client
            .post("/chat/completions", body("model-b", "r1"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "model B was held {:?} by model A's cooldown",
            t.elapsed()
        );
        assert_eq!(a.await.unwrap().unwrap().status(), 200);
        assert_eq!(
            client.layer().gate().snapshot().len(),
            2,
            "one gate per model"
        );
    })
    .await
}
