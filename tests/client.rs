//! The client module (`firebreak::client`) against firebreak-sim over loopback: HTTP/1.1, h2c, the auth layer, a
//! refused port and a connect timeout.

use bytes::Bytes;
use firebreak::client::{ApiKey, AuthLayer, ClientConfig, ClientError, build};
use firebreak_sim::{Sim, SimConfig};
use firebreak_testkit::*;
use http_body_util::{BodyExt, Full};
use std::error::Error as _;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

fn request(url: String) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(chat_body("c-1", false)))
        .unwrap()
}

#[tokio::test]
async fn http1_and_h2c_with_the_auth_layer() {
    bounded(20, async {
        let sim = Sim::start(SimConfig::default().api_key(KEY)).await.unwrap();
        for h2c in [false, true] {
            let client = build::<Full<Bytes>>(&ClientConfig::default().h2c(h2c)).unwrap();
            let svc = AuthLayer::new(ApiKey::new(KEY).unwrap()).layer(client.clone());
            let resp = svc
                .oneshot(request(format!("{}/chat/completions", sim.base_url())))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["object"], "chat.completion");
            // Without the layer the sim rejects the call.
            let resp = client
                .request(request(format!("{}/chat/completions", sim.base_url())))
                .await
                .unwrap();
            assert_eq!(resp.status(), 401);
        }
        let versions: Vec<String> = sim.log().into_iter().map(|r| r.version).collect();
        assert_eq!(versions, ["HTTP/1.1", "HTTP/1.1", "HTTP/2.0", "HTTP/2.0"]);
    })
    .await
}

#[tokio::test]
async fn refused_port_fails_fast_as_a_connect_error() {
    bounded(20, async {
        let client = build::<Full<Bytes>>(&ClientConfig::default()).unwrap();
        let err = client
            .request(request(format!(
                "http://{}/inference/v1/chat/completions",
                refused_addr()
            )))
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
        let mut io = None;
        for _ in 0..16 {
            let Some(c) = cause else { break };
            if let Some(e) = c.downcast_ref::<std::io::Error>() {
                io = Some(e);
                break;
            }
            cause = c.source();
        }
        let io = io.expect("an io::Error in the chain");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    })
    .await
}

#[tokio::test]
async fn connect_timeout_fires() {
    bounded(20, async {
        let (addr, _fill, _listener) = blackhole();
        let cfg = ClientConfig::default().connect_timeout(Some(Duration::from_millis(300)));
        let client = build::<Full<Bytes>>(&cfg).unwrap();
        let t = Instant::now();
        let err = client
            .request(request(format!(
                "http://{addr}/inference/v1/chat/completions"
            )))
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(format!("{err:?}").contains("TimedOut"), "{err:?}");
        assert!(t.elapsed() >= Duration::from_millis(300));
    })
    .await
}

#[test]
fn zero_connect_timeout_is_rejected() {
    let e = build::<Full<Bytes>>(&ClientConfig::default().connect_timeout(Some(Duration::ZERO)))
        .unwrap_err();
    assert!(matches!(e, ClientError::Config(_)), "{e}");
}
