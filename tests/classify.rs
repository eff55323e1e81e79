//! The classify layer over real loopback sockets: one test per status and per transport failure,
//! through `ClassifyLayer` around firebreak-client's hyper client.

use bytes::Bytes;
use firebreak::client::{ClientConfig, build};
use firebreak::{
    BodyShape, Class, Classification, ClientErrorKind, ConnectKind, Error, TimeoutPhase,
    classify::ClassifyLayer,
};
use firebreak_sim::{
    DelayHeader, ErrorShape, Fault, RateLimitConfig, RateLimitDelay, Sim, SimConfig, Trigger,
};
use firebreak_testkit::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tower::{Layer, ServiceExt};

fn request(url: String, stream: bool) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(chat_body("cl", stream)))
        .unwrap()
}

async fn classify(
    url: String,
    stream: bool,
) -> Result<(Classification, Result<Bytes, Error>), Error> {
    let client = build::<Full<Bytes>>(&ClientConfig::default()).unwrap();
    let resp = ClassifyLayer::new()
        .layer(client)
        .oneshot(request(url, stream))
        .await?;
    let c = Classification::of(&resp);
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    Ok((c, body))
}

fn status_fault(status: u16, shape: Option<ErrorShape>) -> Fault {
    Fault::status(status).shape(shape)
}

#[tokio::test]
async fn every_status_is_classified() {
    bounded(60, async {
        let table = [
            (
                400,
                Class::ClientError(ClientErrorKind::BadRequest),
                false,
                "INVALID_ARGUMENT",
            ),
            (
                401,
                Class::ClientError(ClientErrorKind::Unauthorized),
                false,
                "UNAUTHORIZED",
            ),
            (402, Class::QuotaExhausted, false, "PAYMENT_REQUIRED"),
            (
                403,
                Class::ClientError(ClientErrorKind::Forbidden),
                false,
                "FORBIDDEN",
            ),
            (
                404,
                Class::ClientError(ClientErrorKind::NotFound),
                false,
                "NOT_FOUND",
            ),
            (408, Class::RequestTimeout, true, "REQUEST_TIMEOUT"),
            (
                412, // the simulator's 412 says "Account suspended": a quota class
                Class::QuotaExhausted,
                false,
                "PRECONDITION_FAILED",
            ),
            (
                413,
                Class::ClientError(ClientErrorKind::PayloadTooLarge),
                false,
                "PAYLOAD_TOO_LARGE",
            ),
            (429, Class::RateLimited, true, "RATE_LIMIT_EXCEEDED"),
            (500, Class::ServerError, true, "INTERNAL"),
            (502, Class::ServerError, true, "BAD_GATEWAY"),
            (503, Class::Overloaded, true, "SERVICE_UNAVAILABLE"),
            (504, Class::ServerError, true, "GATEWAY_TIMEOUT"),
        ];
        for (status, class, retryable, code) in table {
            let sim = Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .fault(Trigger::Always, status_fault(status, None)),
            )
            .await
            .unwrap();
            let (c, body) = classify(format!("{}/chat/completions", sim.base_url()), false)
                .await
                .unwrap();
            assert_eq!(c.class(), class, "{status}");
            assert_eq!(c.is_retryable(), retryable, "{status}");
            assert!(c.class().reached_server());
            let api = c.api_error().unwrap();
            assert_eq!(api.code.as_deref(), Some(code), "{status}");
            assert_eq!(api.shape, BodyShape::Gateway);
            assert!(
                c.request_id().is_some(),
                "{status}: request id from x-request-id"
            );
            let body = body.unwrap();
            assert_eq!(
                body.len() as u64,
                sim.log()[0].bytes_sent,
                "{status}: body replayed whole"
            );
        }
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, status_fault(422, None)),
        )
        .await
        .unwrap();
        let (c, _) = classify(format!("{}/chat/completions", sim.base_url()), false)
            .await
            .unwrap();
        assert_eq!(
            c.class(),
            Class::ClientError(ClientErrorKind::Unprocessable)
        );
        assert_eq!(c.api_error().unwrap().shape, BodyShape::FastApi);
    })
    .await
}

#[tokio::test]
async fn success_and_rate_limit_headers() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .rate_limit(RateLimitConfig::new(0.1, 1.0).delay(RateLimitDelay::RetryAfterSecs)),
        )
        .await
        .unwrap();
        let url = format!("{}/chat/completions", sim.base_url());
        let (c, body) = classify(url.clone(), false).await.unwrap();
        assert_eq!(c.class(), Class::Success);
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        let (c, _) = classify(url, false).await.unwrap();
        assert_eq!(c.class(), Class::RateLimited);
        // `Retry-After: 10` (seconds); the `x-ratelimit-*` headers it also carries are read by
        // the gate (its tests over the simulator), and parsed in `parse::ratelimit`'s tests.
        assert_eq!(c.retry_after(), Some(Duration::from_secs(10)));
    })
    .await
}

#[tokio::test]
async fn should_retry_header_and_garbage_delays() {
    bounded(20, async {
        let fault = Fault::status(503)
            .shape(Some(ErrorShape::Html))
            .delay(vec![DelayHeader::Raw {
                name: "retry-after".into(),
                value: "-3".into(),
            }])
            .should_retry(Some(false));
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, fault),
        )
        .await
        .unwrap();
        let (c, _) = classify(format!("{}/chat/completions", sim.base_url()), false)
            .await
            .unwrap();
        assert_eq!(c.class(), Class::Overloaded);
        assert!(!c.is_retryable(), "x-should-retry: false overrides 503");
        assert_eq!(
            c.retry_after(),
            None,
            "a negative Retry-After is not a delay"
        );
        assert_eq!(c.api_error().unwrap().shape, BodyShape::Html);
        assert_eq!(
            c.api_error().unwrap().message.as_deref(),
            Some("503 Service Unavailable")
        );
    })
    .await
}

#[tokio::test]
async fn every_body_shape_through_the_layer() {
    bounded(60, async {
        let shapes = [
            (ErrorShape::Gateway, BodyShape::Gateway),
            (ErrorShape::OldInference, BodyShape::OldInference),
            (ErrorShape::OldInferenceRawOutput, BodyShape::OldInference),
            (ErrorShape::StringError, BodyShape::StringError),
            (ErrorShape::FastApi, BodyShape::FastApi),
            (ErrorShape::GrpcGateway, BodyShape::GrpcGateway),
            (ErrorShape::GrpcGatewayWrapped, BodyShape::GrpcGateway),
            (ErrorShape::LegacyFault, BodyShape::LegacyFault),
            (ErrorShape::Html, BodyShape::Html),
            (ErrorShape::PlainText, BodyShape::Text),
            (ErrorShape::Empty, BodyShape::Empty),
            (ErrorShape::Huge { bytes: 5 << 20 }, BodyShape::Text),
        ];
        for (sim_shape, want) in shapes {
            let sim = Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .fault(Trigger::Always, status_fault(429, Some(sim_shape))),
            )
            .await
            .unwrap();
            let (c, body) = classify(format!("{}/chat/completions", sim.base_url()), false)
                .await
                .unwrap();
            assert_eq!(c.class(), Class::RateLimited, "{sim_shape:?}");
            let api = c.api_error().unwrap();
            assert_eq!(api.shape, want, "{sim_shape:?}");
            if let ErrorShape::Huge { bytes } = sim_shape {
                assert!(api.truncated);
                assert_eq!(
                    api.code.as_deref(),
                    Some("RATE_LIMIT_EXCEEDED"),
                    "salvaged from the prefix"
                );
                assert_eq!(
                    body.unwrap().len(),
                    bytes,
                    "the caller still gets the whole body"
                );
            } else if sim_shape != ErrorShape::Empty {
                assert!(
                    api.message.as_deref().is_some_and(|m| !m.is_empty()),
                    "{sim_shape:?}"
                );
            }
        }
    })
    .await
}

#[tokio::test]
async fn sse_error_event_from_the_sim() {
    bounded(20, async {
        let sim = Sim::start(SimConfig::default().api_key(KEY).fault(
            Trigger::Always,
            Fault::SseError {
                after_chunks: 2,
                message: Some("model crashed".into()),
            },
        ))
        .await
        .unwrap();
        let (c, body) = classify(format!("{}/chat/completions", sim.base_url()), true)
            .await
            .unwrap();
        assert_eq!(c.class(), Class::Success, "the head said 200");
        let err = body.unwrap_err();
        assert_eq!(err.class(), Class::StreamError);
        assert_eq!(
            err.api_error().unwrap().message.as_deref(),
            Some("model crashed")
        );
    })
    .await
}

#[tokio::test]
async fn refused_port_is_client_side() {
    bounded(20, async {
        let err = classify(
            format!("http://{}/inference/v1/chat/completions", refused_addr()),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.class(), Class::Connect(ConnectKind::Refused));
        assert!(err.is_client_side() && err.is_retryable());
    })
    .await
}

#[tokio::test]
async fn connect_timeout_is_client_side() {
    bounded(20, async {
        let (addr, _fill, _l) = blackhole();
        let client = build::<Full<Bytes>>(
            &ClientConfig::default().connect_timeout(Some(Duration::from_millis(200))),
        )
        .unwrap();
        let err = ClassifyLayer::new()
            .layer(client)
            .oneshot(request(
                format!("http://{addr}/inference/v1/chat/completions"),
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.class(), Class::Timeout(TimeoutPhase::Connect));
        assert!(err.is_client_side() && err.is_timeout() && err.is_retryable());
    })
    .await
}

#[tokio::test]
async fn dns_failure_is_client_side() {
    bounded(20, async {
        // A resolver that fails like a real one would, without sending any DNS traffic.
        let resolver = tower::service_fn(
            |_name: hyper_util::client::legacy::connect::dns::Name| async {
                Err::<std::vec::IntoIter<std::net::SocketAddr>, _>(std::io::Error::other(
                    "failed to lookup address information",
                ))
            },
        );
        let client: Client<HttpConnector<_>, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new_with_resolver(resolver));
        let err = ClassifyLayer::new()
            .layer(client)
            .oneshot(request(
                "http://api.fireworks.invalid/inference/v1/models".into(),
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.class(), Class::Connect(ConnectKind::Dns));
        assert!(err.is_client_side());
        assert!(
            err.to_string()
                .starts_with("DNS lookup failed from api.fireworks.invalid"),
            "{err}"
        );
    })
    .await
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_failure() {
    bounded(20, async {
        let addr = self_signed_tls_server().await;
        let err = classify(
            format!("https://localhost:{}/inference/v1/models", addr.port()),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.class(), Class::Connect(ConnectKind::Tls), "{err:?}");
        assert!(
            err.is_client_side() && !err.is_retryable(),
            "a bad certificate will not fix itself"
        );
    })
    .await
}

#[tokio::test]
async fn resets_before_and_during_the_body() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::ResetBeforeResponse),
        )
        .await
        .unwrap();
        let err = classify(format!("{}/chat/completions", sim.base_url()), false)
            .await
            .unwrap_err();
        assert_eq!(err.class(), Class::ResetBeforeResponse, "{err:?}");
        assert!(!err.is_client_side() && err.is_retryable());

        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::ResetMidStream { after_chunks: 2 }),
        )
        .await
        .unwrap();
        let (c, body) = classify(format!("{}/chat/completions", sim.base_url()), true)
            .await
            .unwrap();
        assert_eq!(c.class(), Class::Success);
        let err = body.unwrap_err();
        assert_eq!(err.class(), Class::ResetMidBody, "{err:?}");
        assert!(!err.is_retryable(), "tokens already reached the caller");
    })
    .await
}

#[tokio::test]
async fn garbage_response_is_a_protocol_error() {
    bounded(20, async {
        let addr = garbage_server().await;
        let err = classify(format!("http://{addr}/inference/v1/models"), false)
            .await
            .unwrap_err();
        assert_eq!(err.class(), Class::Protocol, "{err:?}");
    })
    .await
}
