//! The classify layer against in-memory services: pass-through, bounded replay, SSE errors,
//! transport and body errors, readiness, `Result` semantics and tower-http integration.

use bytes::Bytes;
use firebreak::classify::*;
use firebreak::*;
use firebreak_testkit::bounded;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt, service_fn};

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;
type TestBody = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
>;

fn stream_body(frames: Frames) -> TestBody {
    StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn success_body_passes_through_zero_copy() {
    bounded(10, async {
        let payload = Bytes::from(vec![7u8; 4096]);
        let ptr = payload.as_ptr();
        let svc = ClassifyLayer::new().layer(service_fn(move |_r: Request<()>| {
            let p = payload.clone();
            async move { Ok::<_, Infallible>(Response::new(Full::new(p))) }
        }));
        let resp = svc.oneshot(Request::new(())).await.unwrap();
        // A plain success is left unmarked (no allocation); `of` reads it as a success.
        assert!(resp.extensions().get::<Classification>().is_none());
        assert_eq!(Classification::of(&resp).class(), Class::Success);
        assert_eq!(Classification::class_of(&resp), Class::Success);
        let mut body = resp.into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame.as_ptr(), ptr, "the same allocation, not a copy");
        assert!(body.frame().await.is_none());
    })
    .await
}

#[tokio::test]
async fn error_body_in_pieces_is_parsed_and_replayed_whole() {
    bounded(10, async {
        let json = br#"{"error":{"message":"Service overloaded","code":"SERVICE_UNAVAILABLE","type":"error"},"request_id":"r-1"}"#;
        let pieces: Frames = json.chunks(7).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        let svc = ClassifyLayer::new().layer(service_fn(move |_r: Request<()>| {
            let pieces = pieces.iter().map(|f| Ok(Frame::data(f.as_ref().unwrap().data_ref().unwrap().clone()))).collect();
            async move {
                Ok::<_, Infallible>(Response::builder().status(503).body(stream_body(pieces)).unwrap())
            }
        }));
        let resp = svc.oneshot(Request::new(())).await.unwrap();
        let c = resp.extensions().get::<Classification>().unwrap().clone();
        assert_eq!(c.class(), Class::Overloaded);
        assert!(c.is_retryable());
        assert_eq!(c.api_error().unwrap().code.as_deref(), Some("SERVICE_UNAVAILABLE"));
        assert_eq!(c.request_id(), Some("r-1"));
        let all = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &json[..], "the caller gets every byte");
    })
    .await
}

#[tokio::test]
async fn huge_error_body_is_read_only_up_to_the_bound() {
    bounded(10, async {
        let pulled = Arc::new(AtomicUsize::new(0));
        let p2 = pulled.clone();
        let svc = ClassifyLayer::new()
            .max_error_body(64 * 1024)
            .layer(service_fn(move |_r: Request<()>| {
                let pulled = p2.clone();
                async move {
                    // 1 MiB in 16 KiB frames; count how many the layer pulls before answering.
                    let mut first = true;
                    let frames = (0..64).map(move |i| {
                        pulled.fetch_add(1, Ordering::SeqCst);
                        let mut chunk = vec![b'x'; 16 * 1024];
                        if first {
                            let head = br#"{"error":{"code":"INTERNAL","message":"big "#;
                            chunk[..head.len()].copy_from_slice(head);
                            first = false;
                        }
                        let _ = i;
                        Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk)))
                    });
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(500)
                            .body(StreamBody::new(futures_util::stream::iter(frames)))
                            .unwrap(),
                    )
                }
            }));
        let resp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            4,
            "64 KiB = 4 frames read before classifying"
        );
        let c = resp.extensions().get::<Classification>().unwrap().clone();
        assert!(c.api_error().unwrap().truncated);
        assert_eq!(c.api_error().unwrap().code.as_deref(), Some("INTERNAL"));
        let all = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 1 << 20, "the rest streams on to the caller");
    })
    .await
}

#[tokio::test]
async fn a_body_error_while_reading_the_prefix_is_kept_for_the_caller() {
    bounded(10, async {
        let svc = ClassifyLayer::new().layer(service_fn(|_r: Request<()>| async {
            let frames: Frames = vec![
                Ok(Frame::data(Bytes::from_static(b"<html>bad gateway"))),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                )),
            ];
            Ok::<_, Infallible>(
                Response::builder()
                    .status(502)
                    .body(stream_body(frames))
                    .unwrap(),
            )
        }));
        let resp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            resp.extensions().get::<Classification>().unwrap().class(),
            Class::ServerError
        );
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"<html>bad gateway");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.class(), Class::ResetMidBody);
        assert!(body.frame().await.is_none());
    })
    .await
}

fn sse_service(
    sse_errors: bool,
) -> impl Service<
    Request<()>,
    Response = Response<ClassifiedBody<impl http_body::Body<Data = Bytes, Error = std::io::Error>>>,
    Error = Error,
> {
    const FRAMES: &[&[u8]] = &[
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        b"data: {\"error\":{\"message\":\"generation failed\",\"code\":\"INTERNAL\"},\"request_id\":\"rq\"}\n",
        b"\n",
        b"data: [DONE]\n\n",
    ];
    sse_of(FRAMES, sse_errors)
}

#[tokio::test]
async fn an_sse_error_event_ends_the_body_with_a_stream_error_after_its_bytes() {
    bounded(10, async {
        let resp = sse_service(true).oneshot(Request::new(())).await.unwrap();
        let mut body = resp.into_body();
        let mut data = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => data.extend_from_slice(&f.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("expected a stream error"),
            }
        };
        assert!(
            String::from_utf8_lossy(&data).contains("generation failed"),
            "event bytes delivered first"
        );
        assert_eq!(err.class(), Class::StreamError);
        assert_eq!(
            err.api_error().unwrap().message.as_deref(),
            Some("generation failed")
        );
        assert_eq!(err.request_id(), Some("rq"));
        assert!(
            !err.is_retryable(),
            "never retried once tokens reached the caller"
        );
        assert!(body.frame().await.is_none());

        let resp = sse_service(false).oneshot(Request::new(())).await.unwrap();
        let all = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            all.ends_with(b"data: [DONE]\n\n"),
            "pass-through when disabled"
        );
    })
    .await
}

#[tokio::test]
async fn transport_errors_become_classified_errors_with_the_host() {
    bounded(10, async {
        let svc = ClassifyLayer::new().layer(service_fn(|_r: Request<()>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        }));
        let req = Request::get("http://api.fireworks.ai/inference/v1/models")
            .body(())
            .unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        assert_eq!(err.class(), Class::Connect(ConnectKind::Refused));
        assert!(err.is_client_side() && err.is_retryable() && err.is_connect());
        assert_eq!(
            err.to_string(),
            "connection refused from api.fireworks.ai: refused"
        );
    })
    .await
}

#[tokio::test]
async fn poll_ready_is_forwarded_and_errors_classified() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<Full<Bytes>>>();
    let mut svc = tower_test::mock::Spawn::new(ClassifyLayer::new().layer(mock));
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(matches!(svc.poll_ready(), std::task::Poll::Ready(Ok(()))));
    handle.send_error(TimeoutError::new(
        TimeoutPhase::Ready,
        Duration::from_secs(1),
    ));
    match svc.poll_ready() {
        std::task::Poll::Ready(Err(e)) => {
            assert_eq!(e.class(), Class::Timeout(TimeoutPhase::Ready))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn error_for_status_gives_result_semantics() {
    bounded(10, async {
        let svc = ClassifyLayer::new().errors_for_status(true).layer(service_fn(|r: Request<()>| async move {
            let status = if r.uri().path() == "/ok" { 200 } else { 401 };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("x-request-id", "abc")
                    .body(Full::new(Bytes::from_static(br#"{"error":{"message":"The API key you provided is invalid.","code":"UNAUTHORIZED","type":"error"}}"#)))
                    .unwrap(),
            )
        }));
        let ok = svc.clone().oneshot(Request::get("http://h/ok").body(()).unwrap()).await.unwrap();
        assert_eq!(ok.status(), 200);
        let err = svc.oneshot(Request::get("http://api.fireworks.ai/x").body(()).unwrap()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "401 Unauthorized from api.fireworks.ai: The API key you provided is invalid. (UNAUTHORIZED, request id abc)"
        );
        assert_eq!(err.class(), Class::ClientError(ClientErrorKind::Unauthorized));
    })
    .await
}

#[tokio::test]
async fn trace_layer_uses_the_shared_classifier() {
    bounded(10, async {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let trace = tower_http::trace::TraceLayer::new(FireworksClassifier).on_failure(
            move |class: Class, _latency: Duration, _span: &tracing::Span| {
                s2.lock().unwrap().push(class)
            },
        );
        let svc = trace.layer(ClassifyLayer::new().layer(service_fn(
            |_r: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(429)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            },
        )));
        let resp = svc
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        drop(resp);
        assert_eq!(*seen.lock().unwrap(), vec![Class::RateLimited]);
    })
    .await
}

/// An SSE answer whose frames are `frames`.
fn sse_of(
    frames: &'static [&'static [u8]],
    sse_errors: bool,
) -> impl Service<
    Request<()>,
    Response = Response<ClassifiedBody<impl http_body::Body<Data = Bytes, Error = std::io::Error>>>,
    Error = Error,
> {
    ClassifyLayer::new()
        .sse_errors_as_failures(sse_errors)
        .layer(service_fn(move |_r: Request<()>| async move {
            let frames: Frames = frames
                .iter()
                .map(|f| Ok(Frame::data(Bytes::from_static(f))))
                .collect();
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(stream_body(frames))
                    .unwrap(),
            )
        }))
}

#[tokio::test]
async fn a_stream_whose_first_event_is_an_error_is_retryable() {
    // #13 point 9: nothing reached the caller before the error, so re-sending is safe.
    bounded(10, async {
        const FIRST_IS_ERROR: &[&[u8]] = &[
            b": keep-alive\n\n",
            b"data: {\"error\":{\"message\":\"overloaded, try again\",\"code\":\"UNAVAILABLE\"}}\n",
            b"\n",
        ];
        for sse_errors in [true, false] {
            let resp = sse_of(FIRST_IS_ERROR, sse_errors)
                .oneshot(Request::new(()))
                .await
                .unwrap();
            let c = Classification::of(&resp);
            assert_eq!(c.class(), Class::StreamError, "classified at the head");
            assert!(c.is_retryable(), "before any content: retryable");
            let all = resp.into_body().collect().await;
            match (sse_errors, all) {
                (true, Err(e)) => assert_eq!(e.class(), Class::StreamError),
                (false, Ok(b)) => {
                    assert!(b.to_bytes().starts_with(b": keep-alive"), "replayed whole")
                }
                (mode, other) => panic!(
                    "sse_errors {mode}: unexpected {:?}",
                    other.map(|b| b.to_bytes())
                ),
            }
        }
        // After a content event: a success at the head, and the error is never retryable.
        const CONTENT_FIRST: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            b"data: {\"error\":{\"message\":\"generation failed\"}}\n\n",
        ];
        let resp = sse_of(CONTENT_FIRST, true)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(Classification::of(&resp).class(), Class::Success);
        let e = resp.into_body().collect().await.unwrap_err();
        assert_eq!(e.class(), Class::StreamError);
        assert!(!e.is_retryable());
    })
    .await
}

#[test]
fn quota_exhaustion_is_its_own_class_with_advice() {
    // #13 point 6: 402, an `insufficient_quota` 429, a 412 "account suspended" and a
    // spending-limit message are quota; a rate limit and a LoRA 412 are not.
    let cases: [(u16, &str, bool); 7] = [
        (402, r#"{"error":{"message":"Payment required"}}"#, true),
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            true,
        ),
        (
            412,
            r#"{"error":{"message":"Account suspended","code":"PRECONDITION_FAILED","type":"error"}}"#,
            true,
        ),
        (
            429,
            r#"{"error":{"message":"Monthly spending limit reached for this account","code":"RATE_LIMIT_EXCEEDED","type":"error"}}"#,
            true,
        ),
        (
            429,
            r#"{"error":{"message":"rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","type":"error"}}"#,
            false,
        ),
        (
            412,
            r#"{"error":{"message":"LoRA adapter failed to load","code":"PRECONDITION_FAILED"}}"#,
            false,
        ),
        (
            503,
            r#"{"error":{"message":"quota exceeded upstream"}}"#,
            false,
        ),
    ];
    for (status, body, quota) in cases {
        let api = parse::parse_error_body(body.as_bytes(), false);
        let c = Classification::from_response(
            http::StatusCode::from_u16(status).unwrap(),
            &http::HeaderMap::new(),
            Some(api),
            std::time::SystemTime::now(),
        );
        assert_eq!(c.class() == Class::QuotaExhausted, quota, "{status} {body}");
        if quota {
            assert!(!c.is_retryable(), "{status}");
            let e = Error::from_classification(&c);
            assert!(e.is_quota_exhausted());
            let line = e.to_string();
            assert!(
                line.contains("add credits or raise the limit") && !line.contains('\n'),
                "{line}"
            );
        }
    }
}

#[test]
fn not_implemented_is_never_retried() {
    // #13 point 5.
    let c = Class::from_status(http::StatusCode::NOT_IMPLEMENTED);
    assert_eq!(c, Class::NotImplemented);
    assert!(!c.is_retryable_by_default() && c.reached_server());
    assert_eq!(c.label(), "not_implemented");
}
