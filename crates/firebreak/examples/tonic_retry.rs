//! A tonic `Channel` wrapped with firebreak's retry, per-attempt timeout and classification
//! layers, calling a gRPC server that answers UNAVAILABLE, then RESOURCE_EXHAUSTED (with a
//! pushback), then OK. The gRPC health service is used, so no protoc is needed.
//!
//! `cargo run -p firebreak --example tonic_retry`

use firebreak::retry::{Jitter, RetryConfig, RetryLayer};
use firebreak::timeout::{AttemptTimeoutLayer, TimeoutConfig, Workload};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Fails twice (UNAVAILABLE, then RESOURCE_EXHAUSTED with a 200 ms pushback), then serves.
pub(crate) struct Flaky(pub(crate) AtomicU32);

#[tonic::async_trait]
impl Health for Flaky {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.0.fetch_add(1, Ordering::SeqCst) {
            0 => Err(Status::unavailable("warming up")),
            1 => {
                let mut s = Status::resource_exhausted("quota");
                s.metadata_mut()
                    .insert("grpc-retry-pushback-ms", "200".parse().expect("ascii"));
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

/// Starts the flaky server on 127.0.0.1, calls it once through firebreak, and returns the
/// serving status with the number of calls the server saw.
pub(crate) async fn run() -> Result<(i32, u32), Box<dyn std::error::Error + Send + Sync>> {
    let flaky = Arc::new(Flaky(AtomicU32::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::from_arc(flaky.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let retry = RetryConfig::default().backoff(firebreak::retry::Backoff {
        jitter: Jitter::Full,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    });
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(retry)?)
        .layer(AttemptTimeoutLayer::new(&TimeoutConfig::preset(
            Workload::Interactive,
        ))?)
        .layer(firebreak::classify::ClassifyLayer::new())
        // The channel takes tonic's own body type.
        .map_request(|r: http::Request<_>| r.map(tonic::body::Body::new))
        .service(channel);
    let mut client = HealthClient::new(svc);
    let resp = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok((resp.into_inner().status, flaky.0.load(Ordering::SeqCst)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (status, calls) = run().await?;
    println!(
        "status {status} after {calls} calls: UNAVAILABLE and RESOURCE_EXHAUSTED were retried"
    );
    Ok(())
}
