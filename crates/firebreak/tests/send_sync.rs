//! The public types can cross threads: a type that stops being `Send` or `Sync` fails to
//! compile here, one list for every layer.

use bytes::Bytes;
use firebreak::classify::{ClassifiedBody, Classify, ClassifyLayer, ResponseFuture};
use firebreak::gate::{Gate, GateLayer, GateSnapshot};
use firebreak::retry::{FireworksPolicy, ReplayBody, Retry, RetryConfig, RetryLayer};
use firebreak::timeout::{
    AttemptTimeout, AttemptTimeoutLayer, DeadlineLayer, TimedRequestBody, TimedResponseBody,
    TimeoutConfig,
};
use firebreak::{ApiError, Classification, Deadline, Error, RetryInfo};
use http::Response;
use http_body_util::Full;
use std::convert::Infallible;

/// A service the layers wrap in these checks.
type Mock<B> = tower_test::mock::Mock<http::Request<B>, Response<Full<Bytes>>>;

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<Error>();
    send_sync::<Classification>();
    send_sync::<ApiError>();
    send_sync::<Deadline>();
    send_sync::<RetryInfo>();
    send_sync::<ClassifyLayer>();
    send_sync::<Classify<()>>();
    send_sync::<ClassifiedBody<Full<Bytes>>>();
    send_sync::<TimeoutConfig>();
    send_sync::<AttemptTimeoutLayer>();
    send_sync::<DeadlineLayer>();
    send_sync::<TimedResponseBody<Full<Bytes>>>();
    send_sync::<TimedRequestBody<Full<Bytes>>>();
    send_sync::<RetryLayer>();
    send_sync::<RetryConfig>();
    send_sync::<FireworksPolicy>();
    send_sync::<ReplayBody<Full<Bytes>>>();
    send_sync::<GateLayer>();
    send_sync::<GateSnapshot>();
    send::<
        ResponseFuture<std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>, Full<Bytes>>,
    >();
    send::<AttemptTimeout<Mock<Full<Bytes>>>>();
    send::<Retry<Classify<Mock<ReplayBody<Full<Bytes>>>>>>();
    send::<Gate<Classify<Mock<Full<Bytes>>>>>();
}
