//! Classification overhead: a 200 and a 503 with a JSON error body, through `ClassifyLayer`
//! around an in-memory service that answers at once, beside the bare service, plus the pure
//! parsers on their own. No network, no runtime: every future is ready on first poll.
//!
//! `cargo bench --bench classify`

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use firebreak::parse::parse_error_body;
use firebreak::{Class, Classification, classify::ClassifyLayer};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::SystemTime;
use tower::{Layer, Service};

const ERROR_JSON: &[u8] = br#"{"error":{"message":"Service overloaded, please try again later","param":null,"code":"SERVICE_UNAVAILABLE","type":"error"},"request_id":"7d3f6a0e-5b1c-4c7e-9a55-2f0b6c1d8e90"}"#;

/// Answers every request at once with a clone of a prepared response.
#[derive(Clone)]
struct Canned {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Service<Request<()>> for Canned {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<()>) -> Self::Future {
        let mut r = Response::new(Full::new(self.body.clone()));
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.clone();
        ready(Ok(r))
    }
}

fn canned(status: u16, body: &'static [u8]) -> Canned {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from_static("7d3f6a0e"));
    Canned {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::from_static(body),
    }
}

fn call<S>(svc: &mut S) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::get("http://api.fireworks.ai/inference/v1/models")
        .body(())
        .unwrap();
    svc.call(req).now_or_never().expect("ready").expect("ok")
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    let ok_body = br#"{"id":"x","object":"chat.completion","choices":[]}"#;
    let mut bare_ok = canned(200, ok_body);
    let mut layered_ok = ClassifyLayer::new().layer(canned(200, ok_body));
    let mut bare_503 = canned(503, ERROR_JSON);
    let mut layered_503 = ClassifyLayer::new().layer(canned(503, ERROR_JSON));
    g.bench_function("200/bare", |b| b.iter(|| black_box(call(&mut bare_ok))));
    g.bench_function("200/classified", |b| {
        b.iter(|| black_box(call(&mut layered_ok)))
    });
    // For the 503 both sides also read the body, as a caller would.
    g.bench_function("503_json/bare+read", |b| {
        b.iter(|| black_box(call(&mut bare_503).into_body().collect().now_or_never()))
    });
    g.bench_function("503_json/classified+read", |b| {
        b.iter(|| black_box(call(&mut layered_503).into_body().collect().now_or_never()))
    });
    g.bench_function("pure/from_status", |b| {
        b.iter(|| black_box(Class::from_status(black_box(StatusCode::OK))))
    });
    g.bench_function("pure/parse_error_body", |b| {
        b.iter(|| black_box(parse_error_body(black_box(ERROR_JSON), false)))
    });
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("2"));
    h.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from_static("0"),
    );
    let now = SystemTime::now();
    // The delay headers are parsed inside `Classification::from_response` (their parser is
    // crate-private): a 429 with `Retry-After` and a rate-limit header, no body.
    g.bench_function("pure/from_response_429_headers", |b| {
        b.iter(|| {
            black_box(Classification::from_response(
                StatusCode::TOO_MANY_REQUESTS,
                black_box(&h),
                None,
                now,
            ))
        })
    });
    g.finish();
}

criterion_group!(classify, benches);
criterion_main!(classify);
