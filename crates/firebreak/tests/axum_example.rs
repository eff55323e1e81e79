//! The axum gateway example's own handler and router, tested against the simulator.

#[allow(dead_code)]
#[path = "../examples/axum_gateway.rs"]
mod gateway;

use axum::body::Body;
use firebreak::{
    FireworksClient, Stack, client::ApiKey, timeout::TimeoutConfig, timeout::Workload,
};
use firebreak_sim::{Fault, Sim, SimConfig, Trigger};
use http_body_util::BodyExt;
use std::time::Duration;

async fn serve(client: FireworksClient) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gateway::app(client)).await });
    addr
}

async fn call(addr: std::net::SocketAddr, user: &str) -> (u16, String) {
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let req = http::Request::post(format!("http://{addr}/chat"))
        .body(Body::from(format!(
            r#"{{"model":"m","messages":[],"user":"{user}"}}"#
        )))
        .unwrap();
    let resp = hyper.request(req).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
    )
}

#[tokio::test]
async fn the_gateway_recovers_upstream_faults_and_maps_timeouts() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let sim = Sim::start(SimConfig::default().fault(
            Trigger::FirstAttempts { n: 1 },
            Fault::status(503),
        ))
        .await
        .unwrap();
        let t = TimeoutConfig::preset(Workload::Interactive).headers(Some(Duration::from_millis(300)));
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new("fw_gw").unwrap(),
            Stack::interactive().timeouts(t),
        )
        .unwrap();
        let addr = serve(client).await;
        let (status, body) = call(addr, "gw-1").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("chat.completion"));
        assert_eq!(
            sim.attempts_for("gw-1").len(),
            2,
            "the 503 was retried behind the gateway"
        );

        let hang =
            Sim::start(SimConfig::default().fault(Trigger::Always, Fault::Hang { for_ms: 5_000 }))
                .await
                .unwrap();
        let t = TimeoutConfig::preset(Workload::Interactive).headers(Some(Duration::from_millis(200))).deadline(Some(Duration::from_secs(2))).attempt(Some(Duration::from_secs(1)));
        let retry = firebreak::retry::RetryConfig::default().max_attempts(1);
        let client = FireworksClient::new(
            &hang.base_url(),
            ApiKey::new("fw_gw").unwrap(),
            Stack::interactive().timeouts(t).retry(retry),
        )
        .unwrap();
        let addr = serve(client).await;
        let (status, body) = call(addr, "gw-2").await;
        assert_eq!(status, 504, "{body}");
        assert!(body.contains("response headers timeout"), "{body}");
    })
    .await
    .expect("the test never finished: an awaited call, answer or request never came (see the last step it reached)");
}
