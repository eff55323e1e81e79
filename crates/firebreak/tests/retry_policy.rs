//! The retry layer under paused time, against tower-test mocks (through the classify layer, as
//! in the real stack).

use bytes::Bytes;
use firebreak::retry::*;
use firebreak::{AttemptContext, Deadline, DelayReason, GaveUp, RetryInfo};
use firebreak::{
    Class, ConnectKind, Error, TimeoutPhase, classify::ClassifiedBody, classify::ClassifyLayer,
};
use firebreak_testkit::bounded;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Chunk = Result<Frame<Bytes>, std::io::Error>;
type RespBody = StreamBody<Pin<Box<dyn futures_util::Stream<Item = Chunk> + Send + Sync>>>;
type Req = Request<ReplayBody<Full<Bytes>>>;
type Handle = mock::Handle<Req, Response<RespBody>>;
type Svc = Retry<firebreak::classify::Classify<mock::Mock<Req, Response<RespBody>>>>;

fn body_of(chunks: Vec<Chunk>) -> RespBody {
    StreamBody::new(Box::pin(futures_util::stream::iter(chunks)))
}

fn answer(status: u16, headers: &[(&'static str, String)]) -> Response<RespBody> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(body_of(vec![Ok(Frame::data(Bytes::from_static(b"{}")))]))
        .unwrap()
}

fn base() -> RetryConfig {
    RetryConfig::default()
        .backoff(Backoff {
            jitter: Jitter::Full,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        })
        .seed(Some(7))
}

fn svc(c: RetryConfig) -> (Svc, Handle) {
    let (m, h) = mock::pair::<Req, Response<RespBody>>();
    (
        RetryLayer::new(c)
            .unwrap()
            .layer(ClassifyLayer::new().layer(m)),
        h,
    )
}

fn req() -> Request<Full<Bytes>> {
    Request::post("http://api.fireworks.ai/inference/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[]}"#,
        )))
        .unwrap()
}

async fn drain(r: Req) -> Bytes {
    r.into_body().collect().await.unwrap().to_bytes()
}

/// No further attempt within a minute (`None`: every handle to the mock is gone, also none).
async fn no_more_attempts(h: &mut Handle) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(60), h.next_request()).await,
        Err(_) | Ok(None)
    )
}

type Call = tokio::task::JoinHandle<Result<Response<ClassifiedBody<RespBody>>, Error>>;

fn spawn(s: Svc, r: Request<Full<Bytes>>) -> Call {
    tokio::spawn(s.oneshot(r))
}

/// Answers the next attempt; returns when it arrived and its body.
async fn next(h: &mut Handle, resp: Response<RespBody>) -> (Instant, Bytes, http::HeaderMap) {
    let (r, send) = tokio::time::timeout(Duration::from_secs(600), h.next_request())
        .await
        .expect("expected another attempt; none came within 600 s (the retry was not made)")
        .expect("an attempt");
    let at = Instant::now();
    let headers = r.headers().clone();
    let body = drain(r).await;
    send.send_response(resp);
    (at, body, headers)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_identical_bodies_and_info() {
    bounded(3600, async {
        let (s, mut h) = svc(base()
            .attempt_header(Some(http::HeaderName::from_static(
                "x-stainless-retry-count",
            )))
            .idempotency_key(true));
        let call = spawn(s, req());
        let (_, b1, h1) = next(&mut h, answer(502, &[])).await;
        let (_, b2, h2) = next(&mut h, answer(503, &[])).await;
        let (_, b3, h3) = next(&mut h, answer(200, &[])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!((&b1, &b2), (&b3, &b3), "byte-identical on every attempt");
        assert_eq!(b1, Bytes::from_static(br#"{"model":"m","messages":[]}"#));
        let counts: Vec<_> = [&h1, &h2, &h3]
            .iter()
            .map(|h| h["x-stainless-retry-count"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(counts, ["0", "1", "2"]);
        let keys: Vec<_> = [&h1, &h2, &h3]
            .iter()
            .map(|h| h["idempotency-key"].clone())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key, reused");
        assert_eq!(keys[0].len(), 32);
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(info.attempts(), 3);
        assert_eq!(
            info.classes().collect::<Vec<_>>(),
            [Class::ServerError, Class::Overloaded, Class::Success]
        );
        assert!(
            info.slept() <= Duration::from_millis(10 + 20),
            "full jitter within the ceilings"
        );
        assert_eq!(info.gave_up(), None);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn non_retryable_statuses_are_attempted_once() {
    bounded(3600, async {
        for status in [400, 401, 402, 403, 404, 412, 413, 422] {
            let (s, mut h) = svc(base());
            let call = spawn(s, req());
            next(&mut h, answer(status, &[])).await;
            let resp = call.await.unwrap().unwrap();
            assert_eq!(resp.status().as_u16(), status);
            let info = resp.extensions().get::<RetryInfo>().unwrap();
            assert_eq!(
                (info.attempts(), info.gave_up()),
                (1, Some(GaveUp::NotRetryable)),
                "{status}"
            );
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn should_retry_and_caller_overrides() {
    bounded(3600, async {
        // x-should-retry: true makes a 400 retryable; false stops a 503.
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        next(&mut h, answer(400, &[("x-should-retry", "true".into())])).await;
        next(&mut h, answer(503, &[("x-should-retry", "false".into())])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.extensions().get::<RetryInfo>().unwrap().attempts(), 2);
        // The caller says never retry 504, and always retry 409.
        let on = RetryOn {
            also: vec![409],
            never: vec![504],
            ignore_should_retry: false,
        };
        let (s, mut h) = svc(base().retry_on(on));
        let call = spawn(s, req());
        next(&mut h, answer(409, &[])).await;
        next(&mut h, answer(504, &[])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.extensions().get::<RetryInfo>().unwrap().attempts()
            ),
            (504, 2)
        );
        // Told to ignore the header: a 503 that says "do not retry" is retried all the same.
        let on = RetryOn {
            ignore_should_retry: true,
            ..RetryOn::default()
        };
        let (s, mut h) = svc(base().retry_on(on));
        let call = spawn(s, req());
        next(&mut h, answer(503, &[("x-should-retry", "false".into())])).await;
        next(&mut h, answer(200, &[])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn every_delay_form_is_honoured() {
    bounded(3600, async {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5));
        let forms: Vec<(&'static str, String, Duration)> = vec![
            ("retry-after-ms", "1500".into(), Duration::from_millis(1500)),
            ("retry-after", "2".into(), Duration::from_secs(2)),
            ("retry-after", "0.75".into(), Duration::from_millis(750)),
            ("retry-after", date, Duration::from_secs(3)), // HTTP-dates have 1 s resolution
            (
                "grpc-retry-pushback-ms",
                "700".into(),
                Duration::from_millis(700),
            ),
        ];
        for (name, value, at_least) in forms {
            let (s, mut h) = svc(base());
            let call = spawn(s, req());
            let (t1, ..) = next(&mut h, answer(429, &[(name, value.clone())])).await;
            let (t2, ..) = next(&mut h, answer(200, &[])).await;
            call.await.unwrap().unwrap();
            assert!(t2 - t1 >= at_least, "{name}: {value}: waited {:?}", t2 - t1);
            assert!(
                t2 - t1 <= at_least + Duration::from_secs(3),
                "{name}: {value}: waited {:?}",
                t2 - t1
            );
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn garbage_delays_fall_back_to_backoff() {
    bounded(3600, async {
        for bad in [
            "-5",
            "NaN",
            "soon",
            "99999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            let (s, mut h) = svc(base());
            let call = spawn(s, req());
            let (t1, ..) = next(&mut h, answer(503, &[("retry-after", bad.into())])).await;
            let (t2, ..) = next(&mut h, answer(200, &[])).await;
            call.await.unwrap().unwrap();
            assert!(
                t2 - t1 <= Duration::from_millis(10),
                "{bad}: backoff only, waited {:?}",
                t2 - t1
            );
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_delay_over_the_cap_fails_at_once_with_a_typed_error() {
    bounded(3600, async {
        let (s, mut h) = svc(base().max_server_delay(Duration::from_secs(60)));
        let t0 = Instant::now();
        let call = spawn(s, req());
        next(&mut h, answer(429, &[("retry-after", "120".into())])).await;
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(t0.elapsed(), Duration::ZERO, "no sleep");
        assert!(e.is_rate_limited());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(120)));
        assert_eq!(e.status().map(|s| s.as_u16()), Some(429));
        assert!(e.to_string().contains("over the cap"), "{e}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_a_wait_that_cannot_finish_in_time() {
    bounded(3600, async {
        let (s, mut h) = svc(base());
        let mut r = req();
        Deadline::after(Duration::from_secs(5)).apply(&mut r);
        let t0 = Instant::now();
        let call = spawn(s, r);
        next(&mut h, answer(503, &[("retry-after", "1".into())])).await; // fits: retried
        next(&mut h, answer(503, &[("retry-after", "10".into())])).await; // does not fit
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(e.class(), Class::Timeout(TimeoutPhase::Deadline));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "failed at once, not after 10 s: {:?}",
            t0.elapsed()
        );
        assert!(e.to_string().contains("503"), "names the last answer: {e}");
        assert_eq!(
            e.attempts(),
            Some(2),
            "the error says how many attempts were made"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn attempts_and_retry_time_are_bounded() {
    bounded(3600, async {
        let (s, mut h) = svc(base().max_attempts(3));
        let call = spawn(s, req());
        for _ in 0..3 {
            next(&mut h, answer(500, &[])).await;
        }
        let resp = call.await.unwrap().unwrap();
        let info = *resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(
            (info.attempts(), info.gave_up()),
            (3, Some(GaveUp::AttemptsExhausted))
        );

        let (s, mut h) = svc(base().max_retry_time(Some(Duration::from_secs(4))));
        let call = spawn(s, req());
        next(&mut h, answer(503, &[("retry-after", "3".into())])).await;
        next(&mut h, answer(503, &[("retry-after", "3".into())])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(
            resp.extensions().get::<RetryInfo>().unwrap().gave_up(),
            Some(GaveUp::RetryTimeExhausted)
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_clones() {
    bounded(3600, async {
        // No deposits, a reserve of exactly one retry.
        let b = BudgetConfig {
            ratio: 0.0,
            min_per_sec: 1,
            window: Duration::from_secs(1),
            initial: 0,
        };
        let (s, mut h) = svc(base().budget(Some(b)));
        let a = spawn(s.clone(), req());
        next(&mut h, answer(503, &[])).await;
        next(&mut h, answer(200, &[])).await;
        assert_eq!(
            a.await.unwrap().unwrap().status(),
            200,
            "the one retry in the budget"
        );
        let c = spawn(s.clone(), req());
        next(&mut h, answer(503, &[])).await;
        let resp = c.await.unwrap().unwrap();
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(
            (resp.status().as_u16(), info.gave_up()),
            (503, Some(GaveUp::BudgetExhausted))
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn retries_the_server_scheduled_are_not_charged_to_the_budget() {
    bounded(3600, async {
        // An empty budget: no reserve, no credit, no deposits.
        let b = BudgetConfig {
            ratio: 0.0,
            min_per_sec: 0,
            window: Duration::from_secs(1),
            initial: 0,
        };
        let (s, mut h) = svc(base().budget(Some(b)));
        let call = spawn(s.clone(), req());
        next(&mut h, answer(429, &[("retry-after", "1".into())])).await;
        next(&mut h, answer(200, &[])).await;
        assert_eq!(
            call.await.unwrap().unwrap().status(),
            200,
            "the server asked for the retry"
        );
        let call = spawn(s, req());
        next(&mut h, answer(503, &[])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(
            resp.extensions().get::<RetryInfo>().unwrap().gave_up(),
            Some(GaveUp::BudgetExhausted)
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_successful_retry_refunds_its_cost() {
    bounded(3600, async {
        // A 20% budget whose reserve is one retry: A's retry uses it; A's success refunds it,
        // so B may retry too. (Without the refund, two deposits of 0.2 would not pay for B's.)
        let b = BudgetConfig {
            ratio: 0.2,
            min_per_sec: 1,
            window: Duration::from_secs(1),
            initial: 0,
        };
        let (s, mut h) = svc(base().budget(Some(b)));
        let a = spawn(s.clone(), req());
        next(&mut h, answer(503, &[])).await;
        next(&mut h, answer(200, &[])).await;
        a.await.unwrap().unwrap();
        let c = spawn(s.clone(), req());
        next(&mut h, answer(503, &[])).await;
        next(&mut h, answer(503, &[])).await;
        let resp = c.await.unwrap().unwrap();
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(
            (info.attempts(), info.gave_up()),
            (2, Some(GaveUp::BudgetExhausted)),
            "one refunded retry, then none"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_stops_further_attempts_and_sleeps() {
    bounded(3600, async {
        let (s, mut h) = svc(base().backoff(Backoff {
            jitter: Jitter::Equal,
            base: Duration::from_secs(5),
            cap: Duration::from_secs(10),
        }));
        let call = spawn(s, req());
        next(&mut h, answer(503, &[])).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // the layer is now sleeping (2.5–5 s)
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            no_more_attempts(&mut h).await,
            "no attempt after the call was dropped"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn never_retried_once_the_body_reached_the_caller() {
    bounded(3600, async {
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        let broken = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body_of(vec![
                Ok(Frame::data(Bytes::from_static(
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                ))),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                )),
            ]))
            .unwrap();
        next(&mut h, broken).await;
        let resp = call.await.unwrap().unwrap();
        let mut body = resp.into_body();
        assert!(body.frame().await.unwrap().is_ok(), "the delivered token");
        let e = body.frame().await.unwrap().unwrap_err();
        assert_eq!(e.class(), Class::ResetMidBody);
        assert!(no_more_attempts(&mut h).await, "exactly one attempt");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_by_class() {
    bounded(3600, async {
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        let (r, send) = h.next_request().await.unwrap();
        drop(r);
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        next(&mut h, answer(200, &[])).await;
        let resp = call.await.unwrap().unwrap();
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(
            info.classes().collect::<Vec<_>>(),
            [Class::Connect(ConnectKind::Refused), Class::Success]
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_bound_is_sent_once_and_the_reason_given() {
    bounded(3600, async {
        let (s, mut h) = svc(base().max_replay_body(8));
        let call = spawn(s, req()); // 27 bytes > 8
        let (r, send) = h.next_request().await.unwrap();
        let sent = drain(r).await;
        assert_eq!(
            sent.len(),
            27,
            "the first attempt still sends the whole body"
        );
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(e.class(), Class::ResetBeforeResponse);
        assert!(
            e.to_string()
                .contains("larger than the 8-byte replay bound"),
            "{e}"
        );
        assert_eq!(e.attempts(), Some(1));
        assert!(no_more_attempts(&mut h).await);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_replayed_after_a_partial_first_attempt() {
    bounded(3600, async {
        type SReq = Request<ReplayBody<RespBody>>;
        let (m, mut h) = mock::pair::<SReq, Response<RespBody>>();
        let s = RetryLayer::new(base())
            .unwrap()
            .layer(ClassifyLayer::new().layer(m));
        let body = body_of(vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"def"))),
            Ok(Frame::data(Bytes::from_static(b"ghi"))),
        ]);
        let call = tokio::spawn(s.oneshot(Request::new(body)));
        // First attempt: the connection reads one chunk, then fails.
        let (r, send) = h.next_request().await.unwrap();
        let mut b = r.into_body();
        assert_eq!(
            b.frame().await.unwrap().unwrap().into_data().unwrap(),
            "abc"
        );
        drop(b);
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        // The retry gets the whole body: the kept chunk, then the rest of the original.
        let (r, send) = h.next_request().await.unwrap();
        let all = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdefghi");
        send.send_response(answer(200, &[]));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_reset_header_is_never_a_retry_delay_and_501_is_never_retried() {
    // #13 points 4 and 5: a 503 carrying `x-ratelimit-reset-tokens: 6m0s` is retried after
    // the ordinary backoff (not failed as "asked to wait 360 s"), a 500 with
    // `x-ratelimit-reset-requests: 20s` does not wait 20 s, and a 501 is attempted once.
    bounded(3600, async {
        for (status, header, value) in [
            (503u16, "x-ratelimit-reset-tokens", "6m0s"),
            (500, "x-ratelimit-reset-requests", "20s"),
        ] {
            let (s, mut h) = svc(base());
            let call = spawn(s, req());
            let (t1, ..) = next(&mut h, answer(status, &[(header, value.into())])).await;
            let (t2, ..) = next(&mut h, answer(200, &[])).await;
            assert_eq!(call.await.unwrap().unwrap().status(), 200, "{status}");
            assert!(
                t2 - t1 < Duration::from_secs(2),
                "{status}: waited {:?}",
                t2 - t1
            );
        }
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        next(&mut h, answer(501, &[])).await;
        assert_eq!(call.await.unwrap().unwrap().status(), 501);
        assert!(no_more_attempts(&mut h).await, "501 is not retried");
    })
    .await
}

// ---- #21: pins for documented defaults the mutation audit found unpinned ----

#[tokio::test(start_paused = true)]
async fn the_default_server_delay_cap_is_60_s() {
    // A 60 s `Retry-After` is slept with the default settings; a 61 s one fails at once with a
    // typed error carrying the delay.
    bounded(3600, async {
        assert_eq!(
            RetryConfig::default().max_server_delay,
            Duration::from_secs(60)
        );
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        let (t1, ..) = next(&mut h, answer(429, &[("retry-after", "60".into())])).await;
        let (t2, ..) = next(&mut h, answer(200, &[])).await;
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
        assert!(t2 - t1 >= Duration::from_secs(60), "{:?}", t2 - t1);

        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        next(&mut h, answer(429, &[("retry-after", "61".into())])).await;
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(61)));
        assert!(
            no_more_attempts(&mut h).await,
            "over the default cap: not retried"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_budgets_start_credit_covers_a_cold_start_burst() {
    // No reserve and no success yet: only the start credit (3) pays for retries. Three calls
    // that fail get their retry; the fourth is refused by the budget.
    bounded(3600, async {
        let b = BudgetConfig {
            ratio: 0.5,
            min_per_sec: 0,
            window: Duration::from_secs(10),
            initial: 3,
        };
        let (s, mut h) = svc(base().max_attempts(2).budget(Some(b)));
        for i in 0..4 {
            let call = spawn(s.clone(), req());
            next(&mut h, answer(503, &[])).await;
            if i < 3 {
                next(&mut h, answer(503, &[])).await;
            }
            let resp = call.await.unwrap().unwrap();
            let info = resp.extensions().get::<RetryInfo>().unwrap();
            let want = if i < 3 {
                (2, Some(GaveUp::AttemptsExhausted))
            } else {
                (1, Some(GaveUp::BudgetExhausted))
            };
            assert_eq!((info.attempts(), info.gave_up()), want, "call {i}");
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn what_the_retry_layer_tells_the_layers_below_and_the_caller() {
    // Each retry carries its number, its wait and why; the final response says how long the
    // call slept; a first-attempt success carries nothing.
    bounded(3600, async {
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        let (r1, send1) = h.next_request().await.unwrap();
        assert!(
            r1.extensions().get::<AttemptContext>().is_none(),
            "first attempt"
        );
        send1.send_response(answer(503, &[]));
        let (r2, send2) = h.next_request().await.unwrap();
        let c2 = *r2.extensions().get::<AttemptContext>().unwrap();
        send2.send_response(answer(429, &[("retry-after-ms", "500".into())]));
        let (r3, send3) = h.next_request().await.unwrap();
        let c3 = *r3.extensions().get::<AttemptContext>().unwrap();
        send3.send_response(answer(200, &[]));
        let resp = call.await.unwrap().unwrap();
        assert_eq!(
            (c2.attempt, c2.reason, c2.after),
            (2, DelayReason::Backoff, Class::Overloaded)
        );
        assert_eq!(
            (c3.attempt, c3.reason, c3.after),
            (3, DelayReason::Server, Class::RateLimited)
        );
        assert_eq!(c3.delay, Duration::from_millis(500));
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(info.slept(), c2.delay + c3.delay);
        assert_eq!(
            (DelayReason::Backoff.label(), DelayReason::Server.label()),
            ("backoff", "server")
        );

        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        next(&mut h, answer(200, &[])).await;
        let resp = call.await.unwrap().unwrap();
        assert!(
            resp.extensions().get::<RetryInfo>().is_none(),
            "nothing on a first-attempt success"
        );
        assert_eq!(RetryInfo::of(&resp).attempts(), 1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_retry_time_limit_admits_a_wait_that_ends_exactly_on_it() {
    // max_retry_time 100 ms; a server delay of exactly 100 ms is waited, 101 ms is not.
    bounded(3600, async {
        for (ms, retried) in [(100u64, true), (101, false)] {
            let (s, mut h) = svc(base()
                .backoff(Backoff {
                    jitter: Jitter::Full,
                    base: Duration::from_millis(1),
                    cap: Duration::from_millis(1),
                })
                .max_retry_time(Some(Duration::from_millis(100))));
            let call = spawn(s, req());
            next(&mut h, answer(429, &[("retry-after-ms", ms.to_string())])).await;
            if retried {
                next(&mut h, answer(200, &[])).await;
                assert_eq!(call.await.unwrap().unwrap().status(), 200, "{ms}");
            } else {
                let resp = call.await.unwrap().unwrap();
                let info = resp.extensions().get::<RetryInfo>().unwrap();
                assert_eq!(info.gave_up(), Some(GaveUp::RetryTimeExhausted), "{ms}");
            }
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_success_deposits_but_refunds_nothing() {
    // Ratio 0.5: a retry costs two deposits. One plain success deposits one: not enough. (A
    // refund, as after a successful retry, would have paid for it.)
    bounded(3600, async {
        let b = BudgetConfig {
            ratio: 0.5,
            min_per_sec: 0,
            window: Duration::from_secs(10),
            initial: 0,
        };
        let (s, mut h) = svc(base().budget(Some(b)));
        let ok = spawn(s.clone(), req());
        next(&mut h, answer(200, &[])).await;
        ok.await.unwrap().unwrap();
        let call = spawn(s, req());
        next(&mut h, answer(503, &[])).await;
        let resp = call.await.unwrap().unwrap();
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(info.gave_up(), Some(GaveUp::BudgetExhausted));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_answer_is_returned_as_it_came() {
    bounded(3600, async {
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        next(&mut h, answer(400, &[])).await;
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), 400);
        let info = resp.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(
            (info.attempts(), info.gave_up()),
            (1, Some(GaveUp::NotRetryable))
        );
        // Errors too: the error is the attempt's own, with no "after N attempts" added.
        let (s, mut h) = svc(base());
        let call = spawn(s, req());
        let (_r, send) = h.next_request().await.unwrap();
        send.send_error(Error::new(Class::Connect(ConnectKind::Tls)));
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(e.class(), Class::Connect(ConnectKind::Tls));
        assert!(!e.to_string().contains("attempt(s)"), "{e}");
    })
    .await
}

#[tokio::test]
async fn full_and_empty_bodies_replay_as_they_are() {
    let full = Full::new(Bytes::from_static(b"{\"model\":\"m\"}"));
    let again = Replayable::replay(&full).unwrap();
    assert_eq!(
        again.collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"{\"model\":\"m\"}")
    );
    let empty = http_body_util::Empty::<Bytes>::new();
    assert!(
        Replayable::replay(&empty)
            .unwrap()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

/// An endpoint nobody answers at waits on the slower `unreachable_backoff`; a 503 from a
/// server that answered waits on `backoff`.
#[tokio::test(start_paused = true)]
async fn an_unreachable_endpoint_backs_off_on_its_own_schedule() {
    bounded(3600, async {
        let slow = Backoff {
            jitter: Jitter::Equal,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(10),
        };
        for (refused, lo, hi) in [
            (true, Duration::from_secs(1), Duration::from_secs(2)),
            (false, Duration::ZERO, Duration::from_millis(10)),
        ] {
            let (s, mut h) = svc(base().unreachable_backoff(Some(slow)));
            let call = spawn(s, req());
            let (_r, send) = h.next_request().await.unwrap();
            let t = Instant::now();
            if refused {
                send.send_error(Error::new(Class::Connect(ConnectKind::Refused)));
            } else {
                send.send_response(answer(503, &[]));
            }
            let (_r, send) = h.next_request().await.unwrap();
            let waited = t.elapsed();
            send.send_response(answer(200, &[]));
            call.await.unwrap().unwrap();
            assert!(
                waited >= lo && waited <= hi,
                "refused {refused}: waited {waited:?}, expected [{lo:?}, {hi:?}]"
            );
        }
        // A bad schedule is refused like `backoff`'s.
        let bad = base().unreachable_backoff(Some(Backoff {
            base: Duration::from_secs(20),
            ..slow
        }));
        assert!(bad.validate().is_err());
    })
    .await
}
