//! The gRPC classifier against a real tonic server on loopback (the gRPC health service, so no
//! protoc is needed), used through tower-http's `TraceLayer` on a tonic `Channel`.

use firebreak::{Class, ClientErrorKind, classify::GrpcClassifier, classify::GrpcFailure};
use firebreak_testkit::bounded;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Answers by service name: each name is one gRPC outcome.
struct Scripted;

#[tonic::async_trait]
impl Health for Scripted {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match req.into_inner().service.as_str() {
            "ok" => Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            })),
            "unavailable" => Err(Status::unavailable("backend down")),
            "exhausted" => {
                let mut s = Status::resource_exhausted("quota");
                s.metadata_mut()
                    .insert("grpc-retry-pushback-ms", "250".parse().unwrap());
                Err(s)
            }
            "invalid" => Err(Status::invalid_argument("bad name")),
            "unauthenticated" => Err(Status::unauthenticated("no key")),
            _ => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

#[tokio::test]
async fn grpc_statuses_are_classified_from_a_real_tonic_server() {
    bounded(30, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(Scripted))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let failures: Arc<Mutex<Vec<GrpcFailure>>> = Arc::default();
        let f1 = failures.clone();
        let traced = tower::ServiceBuilder::new()
            .layer(
                tower_http::trace::TraceLayer::new(GrpcClassifier).on_failure(
                    move |f: GrpcFailure, _: Duration, _: &tracing::Span| {
                        f1.lock().unwrap().push(f)
                    },
                ),
            )
            .service(channel);
        let mut client = HealthClient::new(traced);

        let cases = [
            ("ok", None),
            ("unavailable", Some((Class::Overloaded, 14, true))),
            ("exhausted", Some((Class::RateLimited, 8, true))),
            (
                "invalid",
                Some((Class::ClientError(ClientErrorKind::BadRequest), 3, false)),
            ),
            (
                "unauthenticated",
                Some((Class::ClientError(ClientErrorKind::Unauthorized), 16, false)),
            ),
            (
                "missing",
                Some((Class::ClientError(ClientErrorKind::NotFound), 5, false)),
            ),
        ];
        for (name, want) in cases {
            failures.lock().unwrap().clear();
            let r = client
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await;
            let got = failures.lock().unwrap().clone();
            match want {
                None => {
                    assert!(r.is_ok(), "{name}: {r:?}");
                    assert!(got.is_empty(), "{name}: {got:?}");
                }
                Some((class, code, retryable)) => {
                    assert_eq!(r.unwrap_err().code() as i32, code, "{name}");
                    assert_eq!(got.len(), 1, "{name}: {got:?}");
                    assert_eq!(got[0].class, class, "{name}");
                    assert_eq!(got[0].code, Some(code), "{name}");
                    assert_eq!(got[0].is_retryable(), retryable, "{name}");
                    if name == "exhausted" {
                        assert_eq!(got[0].pushback, Some(Duration::from_millis(250)));
                    }
                }
            }
        }
    })
    .await
}

/// Fails twice (UNAVAILABLE, then RESOURCE_EXHAUSTED with a pushback), then answers SERVING.
struct Flaky(std::sync::atomic::AtomicU32);

#[tonic::async_trait]
impl Health for Flaky {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Err(Status::unavailable("warming up")),
            1 => {
                let mut s = Status::resource_exhausted("quota");
                s.metadata_mut()
                    .insert("grpc-retry-pushback-ms", "200".parse().unwrap());
                Err(s)
            }
            _ => Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            })),
        }
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

#[tokio::test]
async fn a_tonic_channel_with_firebreak_retries_unavailable_and_resource_exhausted() {
    use firebreak::retry::{Jitter, RetryConfig, RetryLayer};
    use firebreak::timeout::{AttemptTimeoutLayer, TimeoutConfig, Workload};
    bounded(30, async {
        let flaky = std::sync::Arc::new(Flaky(std::sync::atomic::AtomicU32::new(0)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::from_arc(flaky.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let retry = RetryConfig::default().backoff(firebreak::retry::Backoff {
            jitter: Jitter::Full,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        });
        let svc = tower::ServiceBuilder::new()
            .layer(RetryLayer::new(retry).unwrap())
            .layer(AttemptTimeoutLayer::new(&TimeoutConfig::preset(Workload::Interactive)).unwrap())
            .layer(firebreak::classify::ClassifyLayer::new())
            .map_request(|r: http::Request<_>| r.map(tonic::body::Body::new))
            .service(channel);
        let mut client = HealthClient::new(svc);
        let t0 = std::time::Instant::now();
        let resp = client
            .check(HealthCheckRequest {
                service: "x".into(),
            })
            .await
            .unwrap();
        assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
        assert_eq!(
            flaky.0.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "UNAVAILABLE and RESOURCE_EXHAUSTED were retried"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "the pushback was honoured: {:?}",
            t0.elapsed()
        );
    })
    .await
}
