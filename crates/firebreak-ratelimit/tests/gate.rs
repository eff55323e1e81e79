//! The 429 gate under paused time, against tower-test mocks behind the classify layer.

use bytes::Bytes;
use firebreak_classify::{Class, ClassifyLayer, Error};
use firebreak_ratelimit::*;
use firebreak_timeout::Deadline;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Req = Request<Full<Bytes>>;
type Handle = mock::Handle<Req, Response<Full<Bytes>>>;
type Svc = RateLimit<firebreak_classify::Classify<mock::Mock<Req, Response<Full<Bytes>>>>>;

fn gate(cfg: GateConfig, key_by: KeyBy) -> (RateLimitLayer, Svc, Handle) {
    let (m, h) = mock::pair::<Req, Response<Full<Bytes>>>();
    let layer = RateLimitLayer::new(cfg, key_by).unwrap();
    let svc = layer.layer(ClassifyLayer::new().layer(m));
    (layer, svc, h)
}

fn req() -> Req {
    Request::post("http://api.fireworks.ai/inference/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn answer(status: u16, headers: &[(&'static str, &str)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

/// A rate-limit 429 (the body says so, as Fireworks' gateway does) asking for `retry_after` s.
fn limited(retry_after: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(429)
        .header("retry-after", retry_after)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"error":{"message":"rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","type":"error"}}"#,
        )))
        .unwrap()
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("test bound")
}

type Call = tokio::task::JoinHandle<Result<StatusCode, Error>>;

/// Sends through the gate and drains the body (releasing the request's place).
fn spawn(s: &Svc, r: Req) -> Call {
    let s = s.clone();
    tokio::spawn(async move {
        let resp = s.oneshot(r).await?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    })
}

/// Answers the next request that reaches the upstream; returns when it arrived.
async fn next(h: &mut Handle, resp: Response<Full<Bytes>>) -> Instant {
    let (_r, send) = h.next_request().await.expect("a request");
    let at = Instant::now();
    send.send_response(resp);
    at
}

async fn none_arrives_within(h: &mut Handle, d: Duration) -> bool {
    matches!(
        tokio::time::timeout(d, h.next_request()).await,
        Err(_) | Ok(None)
    )
}

#[tokio::test(start_paused = true)]
async fn a_429_cools_the_fleet_down_then_releases_it_one_interval_apart() {
    bounded(async {
        let (layer, svc, mut h) = gate(
            GateConfig {
                initial_concurrency: 8,
                ..GateConfig::default()
            },
            KeyBy::Client,
        );
        let first = spawn(&svc, req());
        let t0 = next(
            &mut h,
            answer(
                429,
                &[
                    ("retry-after", "2"),
                    ("x-ratelimit-limit-requests", "600"),
                    ("x-ratelimit-remaining-requests", "0"),
                ],
            ),
        )
        .await;
        assert_eq!(first.await.unwrap().unwrap(), 429);
        // Six callers arrive during the cooldown: none is sent before it ends.
        let calls: Vec<Call> = (0..6).map(|_| spawn(&svc, req())).collect();
        tokio::task::yield_now().await;
        let snap = layer.snapshot()[0].1;
        assert_eq!(snap.queue_len, 6);
        assert!(snap.cooldown_remaining > Duration::from_millis(1900));
        let mut arrivals = Vec::new();
        for _ in 0..6 {
            arrivals.push(
                next(
                    &mut h,
                    answer(200, &[("x-ratelimit-limit-requests", "600")]),
                )
                .await,
            );
        }
        assert!(
            arrivals[0] - t0 >= Duration::from_secs(2),
            "held for the server's delay"
        );
        // 600/min read per minute = 10/s, paced at 98% = 9.8/s, and the 429 lowered that by the
        // multiplicative decrease (× 0.8) = 7.84/s: about 128 ms apart, never all at once.
        for w in arrivals.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(125) && gap <= Duration::from_millis(130),
                "gap {gap:?}"
            );
        }
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), 200);
        }
        let snap = layer.snapshot()[0].1;
        assert_eq!((snap.queue_len, snap.admitted, snap.throttled), (0, 7, 0));
        assert!(
            snap.waited >= Duration::from_secs(12),
            "six waits of 2 s or more: {:?}",
            snap.waited
        );
        // Six successes since: the rate grows back by 1% each, under the header's 9.8/s.
        let want = 7.84 * 1.01f64.powi(6);
        assert!(
            (snap.rate_per_sec.unwrap() - want).abs() < 1e-6,
            "{:?}",
            snap.rate_per_sec
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn rate_limit_headers_on_successes_set_the_pace() {
    bounded(async {
        let cfg = GateConfig {
            header_unit: HeaderUnit::PerMinute,
            ..GateConfig::default()
        };
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let c = spawn(&svc, req());
        next(
            &mut h,
            answer(
                200,
                &[
                    ("x-ratelimit-limit-requests", "300"),
                    ("x-ratelimit-remaining-requests", "9"),
                ],
            ),
        )
        .await;
        c.await.unwrap().unwrap();
        // 300/min = 5/s, at 98%: sends about 204 ms apart, without a single 429 having been seen.
        let calls: Vec<Call> = (0..3).map(|_| spawn(&svc, req())).collect();
        let mut at = Vec::new();
        for _ in 0..3 {
            at.push(
                next(
                    &mut h,
                    answer(200, &[("x-ratelimit-limit-requests", "300")]),
                )
                .await,
            );
        }
        for w in at.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(200) && gap <= Duration::from_millis(210),
                "gap {gap:?}"
            );
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert!((layer.snapshot()[0].1.rate_per_sec.unwrap() - 4.9).abs() < 1e-9);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_window_ramps_by_the_clock_then_backs_off_on_fleet_wide_overload() {
    bounded(async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let limit = |l: &RateLimitLayer| l.snapshot()[0].1.concurrency_limit;
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(limit(&layer), 16, "starts at 16");
        // No answer needed: the window doubles every 50 ms by the clock.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(limit(&layer), 64, "two doublings in 100 ms");
        // Eight in flight at once; three of them are refused while in flight together: that
        // is fleet-wide evidence, and capacity is under 8.
        let calls: Vec<Call> = (0..8).map(|_| spawn(&svc, req())).collect();
        let mut sends = Vec::new();
        for _ in 0..8 {
            sends.push(h.next_request().await.unwrap().1);
        }
        for s in sends.drain(5..) {
            s.send_response(answer(503, &[]));
        }
        for s in sends {
            s.send_response(answer(200, &[]));
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        // Refused with 8 in flight: aim at (8 - 1) × 0.8 = 5.
        assert_eq!(limit(&layer), 5);
        // Then additive increase: one more after 2 × 5 successes.
        for _ in 0..10 {
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
        }
        assert_eq!(limit(&layer), 6);
        // And with time: quiet for `recovery` (30 s), the key is back at full speed.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(limit(&layer), 1024, "fully recovered 30 s after the last evidence");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_admitted_before_its_deadline_fails_at_once() {
    bounded(async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let c = spawn(&svc, req());
        next(&mut h, limited("30")).await;
        c.await.unwrap().unwrap();
        let mut r = req();
        Deadline::after(Duration::from_secs(5)).apply(&mut r);
        let t0 = Instant::now();
        let e = svc.clone().oneshot(r).await.unwrap_err();
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "failed at once, not at the deadline"
        );
        assert_eq!(e.class(), Class::Throttled);
        assert!(e.is_client_side() && e.is_rate_limited() && !e.is_retryable());
        let wait = e.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(
            none_arrives_within(&mut h, Duration::from_secs(1)).await,
            "never sent"
        );
        assert_eq!(layer.snapshot()[0].1.throttled, 1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_arrival_order() {
    bounded(async {
        let cfg = GateConfig {
            initial_concurrency: 1,
            max_concurrency: 1,
            ..GateConfig::default()
        };
        let (_layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let mut calls = Vec::new();
        for i in 0..6u32 {
            let r = Request::post(format!("http://h/{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            calls.push(spawn(&svc, r));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut order = Vec::new();
        for _ in 0..6 {
            let (r, send) = h.next_request().await.unwrap();
            order.push(r.uri().path().to_string());
            send.send_response(answer(200, &[]));
        }
        assert_eq!(order, ["/0", "/1", "/2", "/3", "/4", "/5"]);
        for c in calls {
            c.await.unwrap().unwrap();
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded() {
    bounded(async {
        let cfg = GateConfig {
            initial_concurrency: 1,
            max_concurrency: 1,
            max_queue: 2,
            ..GateConfig::default()
        };
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let busy = spawn(&svc, req());
        let (_r, hold) = h.next_request().await.unwrap();
        let waiting: Vec<Call> = (0..2).map(|_| spawn(&svc, req())).collect();
        tokio::task::yield_now().await;
        let e = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(e.class(), Class::Throttled);
        assert!(e.to_string().contains("queue is full"), "{e}");
        hold.send_response(answer(200, &[]));
        for _ in 0..2 {
            next(&mut h, answer(200, &[])).await;
        }
        busy.await.unwrap().unwrap();
        for c in waiting {
            assert_eq!(
                c.await.unwrap().unwrap(),
                200,
                "nothing dropped without an error"
            );
        }
        assert_eq!(layer.snapshot()[0].1.throttled, 1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_place_is_held_until_the_response_body_ends() {
    bounded(async {
        let cfg = GateConfig {
            initial_concurrency: 1,
            max_concurrency: 1,
            ..GateConfig::default()
        };
        let (_layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let first = svc.clone().oneshot(req());
        let first = tokio::spawn(first);
        next(&mut h, answer(200, &[])).await;
        let resp = first.await.unwrap().unwrap(); // body not read yet: still in flight
        let second = spawn(&svc, req());
        assert!(
            none_arrives_within(&mut h, Duration::from_secs(5)).await,
            "the first stream still holds the place"
        );
        drop(resp.into_body().collect().await);
        next(&mut h, answer(200, &[])).await;
        second.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn keys_do_not_share_a_cooldown() {
    bounded(async {
        let (_layer, svc, mut h) = gate(GateConfig::default(), KeyBy::ApiKeyAndModel);
        let keyed = |key: &str, model: &str| {
            let mut r = req();
            r.headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            r.extensions_mut().insert(Model(Arc::from(model)));
            r
        };
        let c = spawn(&svc, keyed("fw_a", "llama"));
        next(&mut h, limited("30")).await;
        c.await.unwrap().unwrap();
        let t0 = Instant::now();
        let other = spawn(&svc, keyed("fw_a", "qwen"));
        next(&mut h, answer(200, &[])).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "another model is not held");
        other.await.unwrap().unwrap();
        let same = spawn(&svc, keyed("fw_a", "llama"));
        assert!(
            none_arrives_within(&mut h, Duration::from_secs(10)).await,
            "the same key is held"
        );
        next(&mut h, answer(200, &[])).await;
        same.await.unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(29));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn contradictory_or_garbage_rate_headers_are_ignored() {
    bounded(async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        for headers in [
            [
                ("x-ratelimit-limit-requests", "10"),
                ("x-ratelimit-remaining-requests", "50"),
            ], // remaining > limit
            [
                ("x-ratelimit-limit-requests", "0"),
                ("x-ratelimit-remaining-requests", "0"),
            ], // a zero limit
            [
                ("x-ratelimit-limit-requests", "-5"),
                ("x-ratelimit-remaining-requests", "NaN"),
            ], // garbage
        ] {
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &headers)).await;
            c.await.unwrap().unwrap();
            assert_eq!(
                layer.snapshot()[0].1.rate_per_sec,
                None,
                "{headers:?} set no pace"
            );
        }
        // Requests still flow at once.
        let t0 = Instant::now();
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
    })
    .await
}

/// Sends `n` requests at once; returns when each reached the upstream.
async fn arrivals(svc: &Svc, h: &mut Handle, reqs: Vec<Req>) -> Vec<Instant> {
    let calls: Vec<Call> = reqs.into_iter().map(|r| spawn(svc, r)).collect();
    let mut at = Vec::new();
    for _ in 0..calls.len() {
        at.push(next(h, answer(200, &[])).await);
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    at
}

fn gaps(at: &[Instant]) -> Vec<Duration> {
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_static_requests_per_minute_cap_paces_sends() {
    bounded(async {
        let cfg = GateConfig {
            requests_per_minute: Some(120),
            initial_concurrency: 8,
            ..GateConfig::default()
        };
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let at = arrivals(&svc, &mut h, (0..4).map(|_| req()).collect()).await;
        // 120/min = one every 500 ms, with no header and no 429 involved.
        assert!(
            gaps(&at).iter().all(|g| *g == Duration::from_millis(500)),
            "{:?}",
            gaps(&at)
        );
        assert_eq!(layer.snapshot()[0].1.rate_per_sec, Some(2.0));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_static_tokens_per_minute_cap_uses_the_estimate() {
    bounded(async {
        // 600 tokens/min = 10 tokens/s.
        let cfg = GateConfig {
            tokens_per_minute: Some(600),
            default_completion_tokens: 10,
            initial_concurrency: 8,
            ..GateConfig::default()
        };
        let (_layer, svc, mut h) = gate(cfg, KeyBy::Client);
        // With the caller's estimate: 20 tokens each, so 2 s apart.
        let with_estimate = (0..3)
            .map(|_| {
                let mut r = req();
                r.extensions_mut().insert(TokenEstimate(20));
                r
            })
            .collect();
        let at = arrivals(&svc, &mut h, with_estimate).await;
        assert!(
            gaps(&at).iter().all(|g| *g == Duration::from_secs(2)),
            "{:?}",
            gaps(&at)
        );
        // Without one: 40 body bytes / 4 + 10 completion tokens = 20 tokens, the same pace.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let body = || {
            Request::post("http://h/x")
                .body(Full::new(Bytes::from(vec![b'x'; 40])))
                .unwrap()
        };
        let at = arrivals(&svc, &mut h, (0..3).map(|_| body()).collect()).await;
        assert!(
            gaps(&at).iter().all(|g| *g == Duration::from_secs(2)),
            "{:?}",
            gaps(&at)
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn header_limits_can_be_read_per_second() {
    bounded(async {
        let cfg = GateConfig {
            header_unit: HeaderUnit::PerSecond,
            initial_concurrency: 8,
            ..GateConfig::default()
        };
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[("x-ratelimit-limit-requests", "5")])).await;
        c.await.unwrap().unwrap();
        // 5 per second at 98%: 4.9/s, about 204 ms apart.
        let at = arrivals(&svc, &mut h, (0..3).map(|_| req()).collect()).await;
        for g in gaps(&at) {
            assert!(
                g >= Duration::from_millis(200) && g <= Duration::from_millis(210),
                "{g:?}"
            );
        }
        assert!((layer.snapshot()[0].1.rate_per_sec.unwrap() - 4.9).abs() < 1e-9);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_custom_key_function_separates_gates() {
    bounded(async {
        let by_tenant = KeyBy::Custom(Arc::new(|h: &RequestHead<'_>| {
            GateKey(
                h.headers
                    .get("x-tenant")
                    .map_or(0, |v| v.as_bytes().len() as u64),
            )
        }));
        let (layer, svc, mut h) = gate(GateConfig::default(), by_tenant);
        let tenant = |t: &str| {
            let mut r = req();
            r.headers_mut().insert("x-tenant", t.parse().unwrap());
            r
        };
        let c = spawn(&svc, tenant("a"));
        next(&mut h, answer(429, &[("retry-after", "30")])).await;
        c.await.unwrap().unwrap();
        let t0 = Instant::now();
        let other = spawn(&svc, tenant("bb"));
        next(&mut h, answer(200, &[])).await;
        other.await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO, "another tenant is not held");
        assert_eq!(layer.snapshot().len(), 2);
    })
    .await
}

#[test]
fn token_estimates_read_the_body_and_max_tokens() {
    let body =
        br#"{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":100}"#;
    assert_eq!(
        TokenEstimate::from_json_body(body, 256),
        TokenEstimate(body.len() as u32 / 4 + 100)
    );
    let no_max = br#"{"model":"m","messages":[]}"#;
    assert_eq!(
        TokenEstimate::from_json_body(no_max, 256),
        TokenEstimate(no_max.len() as u32 / 4 + 256)
    );
    assert_eq!(
        TokenEstimate::from_json_body(b"not json at all!", 7),
        TokenEstimate(4 + 7)
    );
}

#[test]
fn bad_settings_are_rejected() {
    let bad = [
        GateConfig {
            min_concurrency: 0,
            ..GateConfig::default()
        },
        GateConfig {
            initial_concurrency: 2000,
            ..GateConfig::default()
        },
        GateConfig {
            decrease: f64::NAN,
            ..GateConfig::default()
        },
        GateConfig {
            headroom: 1.5,
            ..GateConfig::default()
        },
        GateConfig {
            requests_per_minute: Some(0),
            ..GateConfig::default()
        },
        GateConfig {
            max_queue: 0,
            ..GateConfig::default()
        },
    ];
    for c in bad {
        assert!(
            RateLimitLayer::new(c.clone(), KeyBy::Client).is_err(),
            "{c:?}"
        );
    }
    assert!(RateLimitLayer::new(GateConfig::default(), KeyBy::Client).is_ok());
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RateLimitLayer>();
    send_sync::<GateSnapshot>();
    send_sync::<InProcessStore>();
    fn send<T: Send>() {}
    send::<Svc>();
}
