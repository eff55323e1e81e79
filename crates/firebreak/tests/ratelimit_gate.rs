//! The 429 gate under paused time, against tower-test mocks behind the classify layer.

use bytes::Bytes;
use firebreak::Deadline;
use firebreak::gate::*;
use firebreak::{Class, Error, Model, classify::ClassifyLayer};
use firebreak_testkit::bounded;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Req = Request<Full<Bytes>>;
type Handle = mock::Handle<Req, Response<Full<Bytes>>>;
type Svc = Gate<firebreak::classify::Classify<mock::Mock<Req, Response<Full<Bytes>>>>>;

fn gate(cfg: GateConfig, key_by: KeyBy) -> (GateLayer, Svc, Handle) {
    let (m, h) = mock::pair::<Req, Response<Full<Bytes>>>();
    let layer = GateLayer::new(cfg, key_by).unwrap();
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

/// A gate that has learned a pace of exactly one send a second (60 per minute, no headroom).
async fn paced_at_one_a_second() -> (Svc, Handle) {
    let cfg = GateConfig::default()
        .header_unit(HeaderUnit::PerMinute)
        .headroom(1.0);
    let (_layer, svc, mut h) = gate(cfg, KeyBy::Client);
    let c = spawn(&svc, req());
    next(&mut h, answer(200, &[("x-ratelimit-limit-requests", "60")])).await;
    c.await.unwrap().unwrap();
    (svc, h)
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

/// Eight calls in flight at once (sent with 1..=8 in flight, in order), and their pending answers.
async fn eight_in_flight(
    svc: &Svc,
    h: &mut Handle,
) -> (Vec<Call>, Vec<mock::SendResponse<Response<Full<Bytes>>>>) {
    let calls: Vec<Call> = (0..8).map(|_| spawn(svc, req())).collect();
    let mut sends = Vec::new();
    for _ in 0..8 {
        sends.push(h.next_request().await.unwrap().1);
    }
    (calls, sends)
}

/// Answers the next request that reaches the upstream; returns when it arrived.
async fn next(h: &mut Handle, resp: Response<Full<Bytes>>) -> Instant {
    let (_r, send) = tokio::time::timeout(Duration::from_secs(600), h.next_request())
        .await
        .expect("expected the gate to send a request upstream; none came within 600 s")
        .expect("a request");
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
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default().initial_concurrency(8), KeyBy::Client);
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
        assert_eq!((snap.queue_len, snap.admitted, snap.refused), (0, 7, 0));
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
    bounded(3600, async {
        let cfg = GateConfig::default().header_unit(HeaderUnit::PerMinute);
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
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let limit = |l: &GateLayer| l.snapshot()[0].1.concurrency_limit;
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
        let (calls, mut sends) = eight_in_flight(&svc, &mut h).await;
        for s in sends.drain(5..) {
            s.send_response(answer(503, &[]));
        }
        for s in sends {
            s.send_response(answer(200, &[]));
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        // The first refusal was sent with 6 in flight: capacity is under 6; aim at
        // (6 - 1) × 0.8 = 4.
        assert_eq!(limit(&layer), 4);
        // Then additive increase: one more after 2 × 4 successes.
        for _ in 0..8 {
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
        }
        assert_eq!(limit(&layer), 5);
        // And with time: quiet for `recovery` (30 s), the key is back at full speed.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(
            limit(&layer),
            1024,
            "fully recovered 30 s after the last evidence"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_admitted_before_its_deadline_fails_at_once() {
    bounded(3600, async {
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
        assert_eq!(e.class(), Class::GateRefused);
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
        assert_eq!(layer.snapshot()[0].1.refused, 1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_arrival_order() {
    bounded(3600, async {
        let cfg = GateConfig::default()
            .initial_concurrency(1)
            .max_concurrency(1);
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
            order.push(r.uri().path().to_owned());
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
    bounded(3600, async {
        let cfg = GateConfig::default()
            .initial_concurrency(1)
            .max_concurrency(1)
            .max_queue(2);
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let busy = spawn(&svc, req());
        let (_r, hold) = h.next_request().await.unwrap();
        let waiting: Vec<Call> = (0..2).map(|_| spawn(&svc, req())).collect();
        tokio::task::yield_now().await;
        let e = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(e.class(), Class::GateRefused);
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
        assert_eq!(layer.snapshot()[0].1.refused, 1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_place_is_held_until_the_response_body_ends() {
    bounded(3600, async {
        let cfg = GateConfig::default()
            .initial_concurrency(1)
            .max_concurrency(1);
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
    bounded(3600, async {
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
    bounded(3600, async {
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
    bounded(3600, async {
        let cfg = GateConfig::default()
            .requests_per_minute(Some(120))
            .initial_concurrency(8);
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
    bounded(3600, async {
        // 600 tokens/min = 10 tokens/s.
        let cfg = GateConfig::default()
            .tokens_per_minute(Some(600))
            .default_completion_tokens(10)
            .initial_concurrency(8);
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
    bounded(3600, async {
        let cfg = GateConfig::default()
            .header_unit(HeaderUnit::PerSecond)
            .initial_concurrency(8);
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
    bounded(3600, async {
        let by_tenant = KeyBy::Custom(Arc::new(|h: &RequestHead<'_>| {
            GateKey::of(h.headers.get("x-tenant").map(|v| v.as_bytes().to_vec()))
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
        GateConfig::default().min_concurrency(0),
        GateConfig::default().initial_concurrency(2000),
        GateConfig::default().decrease(f64::NAN),
        GateConfig::default().headroom(1.5),
        GateConfig::default().requests_per_minute(Some(0)),
        GateConfig::default().max_queue(0),
    ];
    for c in bad {
        assert!(GateLayer::new(c.clone(), KeyBy::Client).is_err(), "{c:?}");
    }
    assert!(GateLayer::new(GateConfig::default(), KeyBy::Client).is_ok());
}

// ---- #13: the gate reacts only to evidence ----

/// Spawns `n` calls, answers each with `resp()` after `latency`, and returns the instant each
/// reached the upstream, in order.
async fn serve_all(
    svc: &Svc,
    h: &mut Handle,
    n: usize,
    latency: Duration,
    resp: impl Fn() -> Response<Full<Bytes>>,
) -> (Vec<Instant>, Vec<Call>) {
    let calls: Vec<Call> = (0..n).map(|_| spawn(svc, req())).collect();
    let mut at = Vec::new();
    let mut sends = Vec::new();
    for _ in 0..n {
        let (_r, send) = h.next_request().await.expect("a request");
        at.push(Instant::now());
        sends.push(send);
        if sends.len() == n {
            break;
        }
    }
    tokio::time::sleep(latency).await;
    for s in sends {
        s.send_response(resp());
    }
    (at, calls)
}

#[tokio::test(start_paused = true)]
async fn healthy_slow_traffic_is_admitted_without_waiting_for_answers() {
    // Point 1: 64 callers, 2 s answers. All are sent within the clock ramp (16 → 64 in 100 ms),
    // none waits for an answer to come back.
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let t0 = Instant::now();
        let (at, calls) = serve_all(&svc, &mut h, 64, Duration::from_secs(2), || {
            answer(200, &[])
        })
        .await;
        assert!(
            *at.last().unwrap() - t0 <= Duration::from_millis(100),
            "the 64th was sent {:?} after the first",
            *at.last().unwrap() - t0
        );
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), 200);
        }
        assert!(
            t0.elapsed() <= Duration::from_millis(2100),
            "makespan {:?}",
            t0.elapsed()
        );
        assert_eq!(layer.snapshot()[0].1.refused, 0);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn one_requests_fault_never_holds_the_others() {
    // Point 2: a lone 503 with a 5 s delay, a 500, a hang cut by a timeout, a reset: the next
    // requests go out at once, exactly as on a fresh key.
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let faulty = spawn(&svc, req());
        next(&mut h, answer(503, &[("retry-after", "5")])).await;
        assert_eq!(faulty.await.unwrap().unwrap(), 503);
        let faulty = spawn(&svc, req());
        next(&mut h, answer(500, &[("x-ratelimit-reset-requests", "20s")])).await;
        assert_eq!(faulty.await.unwrap().unwrap(), 500);
        // A dedicated deployment's "capacity exceeded" 429, alone: one request's refusal.
        let faulty = spawn(&svc, req());
        let capacity = Response::builder()
            .status(429)
            .header("retry-after", "5")
            .body(Full::new(Bytes::from_static(
                br#"{"error":{"message":"Deployment capacity exceeded","code":"RATE_LIMIT_EXCEEDED"}}"#,
            )))
            .unwrap();
        next(&mut h, capacity).await;
        assert_eq!(faulty.await.unwrap().unwrap(), 429);
        let t0 = Instant::now();
        let (at, calls) = serve_all(&svc, &mut h, 8, Duration::ZERO, || answer(200, &[])).await;
        assert!(
            at.iter().all(|a| *a == t0),
            "the others are sent at once: {:?}",
            at.iter().map(|a| *a - t0).collect::<Vec<_>>()
        );
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let snap = layer.snapshot()[0].1;
        assert_eq!(snap.cooldown_remaining, Duration::ZERO, "no fleet cooldown");
        assert_eq!(snap.rate_per_sec, None, "no pacing learned");
        assert_eq!(snap.waited, Duration::ZERO);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn one_requests_own_retries_never_chain_into_fleet_evidence() {
    // Point 2: one request refused 503 five times in a row (each retry sent after the last
    // answer) is not several requests: the window stays open and nobody is held.
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        for _ in 0..5 {
            let c = spawn(&svc, req());
            next(&mut h, answer(503, &[("retry-after", "2")])).await;
            c.await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let snap = layer.snapshot()[0].1;
        assert_eq!(snap.cooldown_remaining, Duration::ZERO);
        assert!(snap.concurrency_limit >= 16, "{}", snap.concurrency_limit);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn three_refusals_in_flight_together_are_fleet_wide_evidence() {
    // Point 2: the threshold. Two overlapping 503s with a delay hold nobody; a third makes a
    // fleet-wide cooldown of the delay they asked for.
    bounded(3600, async {
        for (refused, held) in [(2usize, false), (3, true)] {
            let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
            let calls: Vec<Call> = (0..refused).map(|_| spawn(&svc, req())).collect();
            let mut sends = Vec::new();
            for _ in 0..refused {
                sends.push(h.next_request().await.unwrap().1);
            }
            for s in sends {
                s.send_response(answer(503, &[("retry-after", "2")]));
            }
            for c in calls {
                c.await.unwrap().unwrap();
            }
            let snap = layer.snapshot()[0].1;
            assert_eq!(
                snap.cooldown_remaining > Duration::ZERO,
                held,
                "{refused} refusals: {snap:?}"
            );
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_cooldown_with_no_known_rate_ends_in_a_bounded_ramp() {
    // Point 3: no rate known (no headers): waiters are released 20 ms apart, not all at once.
    bounded(3600, async {
        let (_layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let c = spawn(&svc, req());
        let t0 = next(&mut h, limited("1")).await;
        c.await.unwrap().unwrap();
        let calls: Vec<Call> = (0..5).map(|_| spawn(&svc, req())).collect();
        let mut at = Vec::new();
        for _ in 0..5 {
            at.push(next(&mut h, answer(200, &[])).await);
        }
        assert!(at[0] - t0 >= Duration::from_secs(1), "not before the delay");
        for w in at.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(20), "{at:?}");
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_delay_over_the_cap_holds_nobody_else() {
    // Point 4: `Retry-After: 3600` (plausible, over the 60 s cap) and `86400` (absurd): the
    // request that got it is answered, and the others are sent at once.
    bounded(3600, async {
        for delay in ["3600", "86400", "-5", "soon"] {
            let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
            let c = spawn(&svc, req());
            next(&mut h, limited(delay)).await;
            assert_eq!(c.await.unwrap().unwrap(), 429);
            let t0 = Instant::now();
            let (at, calls) = serve_all(&svc, &mut h, 4, Duration::ZERO, || answer(200, &[])).await;
            assert!(at.iter().all(|a| *a == t0), "{delay}: others held");
            for c in calls {
                c.await.unwrap().unwrap();
            }
            assert_eq!(
                layer.snapshot()[0].1.cooldown_remaining,
                Duration::ZERO,
                "{delay}"
            );
        }
    })
    .await
}

fn quota_429() -> Response<Full<Bytes>> {
    Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        )))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_quota_fails_later_calls_fast_until_the_recheck() {
    // Point 6: one quota answer; the next calls on the key fail at once, client-side, with an
    // error that says so; after `quota_recheck` one goes through again.
    bounded(3600, async {
        let cfg = GateConfig::default().quota_recheck(Duration::from_secs(10));
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let c = spawn(&svc, req());
        next(&mut h, quota_429()).await;
        assert_eq!(c.await.unwrap().unwrap(), 429);
        let t0 = Instant::now();
        for _ in 0..5 {
            let e = svc.clone().oneshot(req()).await.unwrap_err();
            assert_eq!(t0.elapsed(), Duration::ZERO, "fails fast");
            assert!(e.is_quota_exhausted() && e.is_client_side() && !e.is_retryable());
            assert!(e.to_string().contains("add credits"), "{e}");
        }
        assert!(none_arrives_within(&mut h, Duration::from_secs(1)).await);
        assert_eq!(layer.snapshot()[0].1.refused, 5);
        tokio::time::sleep(Duration::from_secs(9)).await;
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        assert_eq!(c.await.unwrap().unwrap(), 200, "rechecked after 10 s");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn one_tenants_429_leaves_the_other_tenant_untouched() {
    // Point 7: two callers' keys on the same model; A is told to wait 5 s; B's calls go out at
    // once, before, during and after.
    bounded(3600, async {
        let (_layer, svc, mut h) = gate(GateConfig::default(), KeyBy::ApiKeyAndModel);
        let keyed = |key: &str| {
            let mut r = req();
            r.headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            r.extensions_mut().insert(Model(Arc::from("llama")));
            r
        };
        let a = spawn(&svc, keyed("fw_tenant_a"));
        next(&mut h, limited("5")).await;
        a.await.unwrap().unwrap();
        for _ in 0..3 {
            let t0 = Instant::now();
            let b = spawn(&svc, keyed("fw_tenant_b"));
            next(&mut h, answer(200, &[])).await;
            assert_eq!(t0.elapsed(), Duration::ZERO, "B is not held by A's 429");
            b.await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_use_the_fallback_credential() {
    // Point 7: the auth layer sits below the gate; the gate keys such requests by the key it
    // will send, so they share a gate with requests that carry that key, and not another's.
    bounded(3600, async {
        let (m, mut h) = mock::pair::<Req, Response<Full<Bytes>>>();
        let layer = GateLayer::new(GateConfig::default(), KeyBy::ApiKeyAndModel)
            .unwrap()
            .fallback_credential(b"Bearer fw_configured");
        let svc = layer.layer(ClassifyLayer::new().layer(m));
        let with = |auth: Option<&str>| {
            let mut r = req();
            if let Some(a) = auth {
                r.headers_mut().insert("authorization", a.parse().unwrap());
            }
            r
        };
        let c = spawn(&svc, with(None));
        next(&mut h, limited("5")).await;
        c.await.unwrap().unwrap();
        let t0 = Instant::now();
        let other = spawn(&svc, with(Some("Bearer fw_other")));
        next(&mut h, answer(200, &[])).await;
        other.await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let same = spawn(&svc, with(Some("Bearer fw_configured")));
        next(&mut h, answer(200, &[])).await;
        same.await.unwrap().unwrap();
        assert!(
            t0.elapsed() >= Duration::from_secs(5),
            "the configured key's gate"
        );
        assert_eq!(layer.snapshot().len(), 2);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_map_of_keys_is_bounded_and_evicts_idle_keys() {
    // Point 7: hostile callers with endless keys cannot grow the map past `max_keys`.
    bounded(3600, async {
        let cfg = GateConfig::default().max_keys(16);
        let (m, mut h) = mock::pair::<Req, Response<Full<Bytes>>>();
        let layer = GateLayer::new(cfg, KeyBy::ApiKeyAndModel).unwrap();
        let svc = layer.layer(ClassifyLayer::new().layer(m));
        for i in 0..200 {
            let mut r = req();
            r.headers_mut()
                .insert("authorization", format!("Bearer k{i}").parse().unwrap());
            let c = spawn(&svc, r);
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
            assert!(
                layer.snapshot().len() <= 16,
                "{i}: {}",
                layer.snapshot().len()
            );
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_per_second_reading_is_a_hypothesis_never_a_stall() {
    // Point 8: `x-ratelimit-limit-requests: 20` read per second: twelve calls go at once (a
    // per-minute reading would have spaced them 3 s apart). A 429 that comes while the client
    // sent less than 20 in the last second drops the hypothesis for per minute.
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[("x-ratelimit-limit-requests", "20")])).await;
        c.await.unwrap().unwrap();
        let t0 = Instant::now();
        let calls: Vec<Call> = (0..12).map(|_| spawn(&svc, req())).collect();
        let mut last = t0;
        for _ in 0..12 {
            last = next(&mut h, answer(200, &[("x-ratelimit-limit-requests", "20")])).await;
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert!(last - t0 <= Duration::from_millis(600), "{:?}", last - t0);
        assert!(layer.snapshot()[0].1.rate_per_sec.unwrap() > 19.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let c = spawn(&svc, req());
        let mut r429 = limited("1");
        r429.headers_mut()
            .insert("x-ratelimit-limit-requests", "20".parse().unwrap());
        next(&mut h, r429).await;
        c.await.unwrap().unwrap();
        let rate = layer.snapshot()[0].1.rate_per_sec.unwrap();
        assert!(rate < 1.0, "20 per minute now, lowered by the 429: {rate}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_learned_rate_is_forgotten_after_the_recovery_time() {
    // Point 10: after a rate-limit 429 the learned rate paces; 30 s with no throttle later it
    // is gone and the key is at full speed. (A 429 that says when to come back and states no
    // limit teaches no pace: its cooldown is the whole answer.)
    bounded(3600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        for _ in 0..3 {
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // A rate-limit 429 with no delay and no stated limit: the gate must learn a pace.
        let c = spawn(&svc, req());
        let mut r429 = limited("1");
        r429.headers_mut().remove("retry-after");
        next(&mut h, r429).await;
        c.await.unwrap().unwrap();
        assert!(
            layer.snapshot()[0].1.rate_per_sec.is_some(),
            "a rate was learned"
        );
        tokio::time::sleep(Duration::from_secs(29)).await;
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert!(
            layer.snapshot()[0].1.rate_per_sec.is_some(),
            "still within 30 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let (at, calls) = serve_all(&svc, &mut h, 10, Duration::ZERO, || answer(200, &[])).await;
        assert!(at.iter().all(|a| *a == t0), "full speed");
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(layer.snapshot()[0].1.rate_per_sec, None);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_gives_up_returns_its_slot_at_once() {
    // Point 10: paced at 1/s (60 per minute), two callers queue for slots 1 and 2 s away and
    // give up. The next caller gets the slot 1 s away, not 3 s.
    bounded(3600, async {
        let (svc, mut h) = paced_at_one_a_second().await;
        // This one takes the slot at once; the next free one is 1 s away.
        let t0 = Instant::now();
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        let quitters: Vec<_> = (0..2)
            .map(|_| {
                let s = svc.clone();
                tokio::spawn(async move { s.oneshot(req()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        for q in quitters {
            q.abort();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let c = spawn(&svc, req());
        let at = next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert!(
            at - t0 <= Duration::from_millis(1000),
            "sent {:?} after, the abandoned slots were given back",
            at - t0
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn long_streams_do_not_starve_a_short_call() {
    // Point 10: a place is held until the body ends, but with no overload signal the window is
    // wide: eight 60 s streams leave a short call free to go at once.
    bounded(3600, async {
        let (_layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
        let mut streams = Vec::new();
        for _ in 0..8 {
            let f = tokio::spawn(svc.clone().oneshot(req()));
            next(&mut h, answer(200, &[])).await;
            streams.push(f.await.unwrap().unwrap()); // bodies not read: in flight
        }
        let t0 = Instant::now();
        let short = spawn(&svc, req());
        next(&mut h, answer(200, &[])).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        short.await.unwrap().unwrap();
        drop(streams);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn nothing_remaining_on_a_success_holds_the_next_send_for_one_interval() {
    // #21 mutant 7: `x-ratelimit-remaining-requests: 0` on a 200 holds the next send one
    // interval (1 s at 60 per minute) from the answer, not from the previous send.
    bounded(3600, async {
        let cfg = GateConfig::default().header_unit(HeaderUnit::PerMinute);
        let (_layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let c = spawn(&svc, req());
        let (_r, send) = h.next_request().await.unwrap();
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_millis(900)).await;
        send.send_response(answer(
            200,
            &[
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "0"),
            ],
        ));
        c.await.unwrap().unwrap();
        let c = spawn(&svc, req());
        let at = next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert!(
            at - sent >= Duration::from_millis(1900),
            "held one interval after the answer: sent {:?} after the first",
            at - sent
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_cooldown_that_starts_while_a_caller_waits_for_its_slot_holds_it_too() {
    // Paced at 1/s; a caller sleeping for its slot 1 s away is held again by a 3 s cooldown
    // that began while it slept.
    bounded(3600, async {
        let (svc, mut h) = paced_at_one_a_second().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = spawn(&svc, req());
        let (_r, send) = h.next_request().await.unwrap();
        let t0 = Instant::now();
        let waiter = spawn(&svc, req()); // its slot: t0 + 1 s
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut r429 = limited("3");
        r429.headers_mut()
            .insert("x-ratelimit-limit-requests", "60".parse().unwrap());
        send.send_response(r429);
        c.await.unwrap().unwrap();
        let at = next(&mut h, answer(200, &[])).await;
        waiter.await.unwrap().unwrap();
        assert!(
            at - t0 >= Duration::from_millis(3100),
            "sent {:?} after, inside the cooldown",
            at - t0
        );
    })
    .await
}

/// A fleet of four, in memory: a fixed share, and a record of what was published.
type FakeFleet = firebreak_testkit::MemoryFleet;

fn fleet_gate(fleet: Arc<FakeFleet>) -> (Svc, Handle) {
    let (m, h) = mock::pair::<Req, Response<Full<Bytes>>>();
    let cfg = GateConfig::default()
        .header_unit(HeaderUnit::PerMinute)
        .headroom(1.0);
    let layer = GateLayer::with_fleet(cfg, KeyBy::Client, fleet).unwrap();
    (layer.layer(ClassifyLayer::new().layer(m)), h)
}

#[tokio::test(start_paused = true)]
async fn a_fleet_member_paces_at_its_share_and_publishes_its_cooldowns() {
    bounded(600, async {
        let fleet = Arc::new(FakeFleet::recording(0.25));
        let (svc, mut h) = fleet_gate(fleet.clone());
        // 60 a minute for the account; a quarter of it here: one send every 4 s.
        let c = spawn(&svc, req());
        next(&mut h, answer(200, &[("x-ratelimit-limit-requests", "60")])).await;
        c.await.unwrap().unwrap();
        let calls: Vec<Call> = (0..3).map(|_| spawn(&svc, req())).collect();
        let mut at = Vec::new();
        for _ in 0..3 {
            at.push(next(&mut h, answer(200, &[])).await);
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(at[1] - at[0], Duration::from_secs(4));
        assert_eq!(at[2] - at[1], Duration::from_secs(4));
        assert!(
            fleet.published.lock().unwrap().is_empty(),
            "no evidence, nothing published"
        );
        // A rate-limit 429 with a delay: published as a cooldown of that delay.
        let c = spawn(&svc, req());
        next(&mut h, limited("7")).await;
        assert_eq!(c.await.unwrap().unwrap(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            fleet.published.lock().unwrap().as_slice(),
            &[(
                GateKey::from_raw(0),
                FleetEvent::Cooldown(Duration::from_secs(7))
            )]
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn another_members_cooldown_holds_this_one_and_is_not_published_again() {
    bounded(600, async {
        let fleet = Arc::new(FakeFleet::recording(0.25));
        let (svc, mut h) = fleet_gate(fleet.clone());
        let inbox = fleet.inboxes.lock().unwrap()[0].clone();
        // Another key's cooldown leaves this one alone.
        inbox.apply(
            GateKey::from_raw(99),
            FleetEvent::Cooldown(Duration::from_secs(5)),
        );
        let t = Instant::now();
        let c = spawn(&svc, req());
        let sent = next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(sent - t, Duration::ZERO);
        inbox.apply(
            GateKey::from_raw(0),
            FleetEvent::Cooldown(Duration::from_secs(5)),
        );
        let t0 = Instant::now();
        let c = spawn(&svc, req());
        let sent = next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert_eq!(sent - t0, Duration::from_secs(5));
        // An absurd remote delay is ignored, as a local one would be.
        inbox.apply(
            GateKey::from_raw(0),
            FleetEvent::Cooldown(Duration::from_secs(3600)),
        );
        let t1 = Instant::now();
        let c = spawn(&svc, req());
        let sent = next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        assert!(sent - t1 < Duration::from_secs(1));
        // A remote exhausted quota fails calls fast, client-side.
        inbox.apply(
            GateKey::from_raw(0),
            FleetEvent::QuotaExhausted(Duration::from_secs(60)),
        );
        let e = spawn(&svc, req()).await.unwrap().unwrap_err();
        assert!(e.is_quota_exhausted(), "{e}");
        assert!(
            fleet.published.lock().unwrap().is_empty(),
            "remote events are not echoed"
        );
    })
    .await;
}

/// What a target's kind changes: a serverless gate takes a bare 429 for a rate limit (a
/// fleet-wide cooldown), an `auto` one for one request's capacity refusal (nobody else waits),
/// and a dedicated one never paces by rate headers.
#[tokio::test(start_paused = true)]
async fn the_target_kind_decides_what_a_429_means() {
    bounded(60, async {
        let bare_429 = || {
            Response::builder()
                .status(429)
                .header("retry-after", "5")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"try later"}}"#,
                )))
                .unwrap()
        };
        for (kind, cools) in [
            (firebreak::TargetKind::Serverless, true),
            (firebreak::TargetKind::Auto, false),
            (firebreak::TargetKind::Dedicated, false),
        ] {
            let cfg = GateConfig::default().kind(kind);
            let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
            let c = spawn(&svc, req());
            next(&mut h, bare_429()).await;
            c.await.unwrap().unwrap();
            let s = layer.snapshot()[0].1;
            assert_eq!(
                s.cooldown_remaining > Duration::ZERO,
                cools,
                "{kind:?}: {s:?}"
            );
        }
        // Rate headers pace a serverless (or auto) key, never a dedicated one.
        for (kind, paced) in [
            (firebreak::TargetKind::Serverless, true),
            (firebreak::TargetKind::Dedicated, false),
        ] {
            let cfg = GateConfig::default().kind(kind);
            let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &[("x-ratelimit-limit-requests", "60")])).await;
            c.await.unwrap().unwrap();
            let s = layer.snapshot()[0].1;
            assert_eq!(s.rate_per_sec.is_some(), paced, "{kind:?}: {s:?}");
        }
    })
    .await
}

/// A dedicated target's queueing time steers its window: successes that queued past the
/// target while in flight together narrow it (as refusals would), short queues and one slow
/// request do not, and a gate that is not dedicated ignores the header.
#[tokio::test(start_paused = true)]
async fn a_dedicated_targets_queueing_time_narrows_its_window() {
    bounded(600, async {
        for (kind, queued, narrows) in [
            (firebreak::TargetKind::Dedicated, "1.5", true),
            (firebreak::TargetKind::Dedicated, "0.2", false),
            (firebreak::TargetKind::Auto, "1.5", false),
        ] {
            let cfg = GateConfig::default().kind(kind);
            let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
            let limit = |l: &GateLayer| l.snapshot()[0].1.concurrency_limit;
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
            // Eight in flight together; the last three answers say they queued.
            let (calls, mut sends) = eight_in_flight(&svc, &mut h).await;
            for s in sends.drain(5..) {
                s.send_response(answer(200, &[("fireworks-prefill-queue-duration", queued)]));
            }
            for s in sends {
                s.send_response(answer(200, &[]));
            }
            for c in calls {
                assert_eq!(c.await.unwrap().unwrap(), StatusCode::OK);
            }
            let l = limit(&layer);
            assert_eq!(l < 8, narrows, "{kind:?} queued {queued}: window {l}");
        }
        // One slow request alone concerns itself.
        let cfg = GateConfig::default().kind(firebreak::TargetKind::Dedicated);
        let (layer, svc, mut h) = gate(cfg, KeyBy::Client);
        let c = spawn(&svc, req());
        next(
            &mut h,
            answer(200, &[("fireworks-prefill-queue-duration", "9")]),
        )
        .await;
        c.await.unwrap().unwrap();
        assert_eq!(layer.snapshot()[0].1.concurrency_limit, 16);
    })
    .await
}

/// A per-(key, model) gate left at `Auto` reads each model's kind from its id: a bare 429 on a
/// serverless model is a rate limit, on a deployment a capacity refusal; three refusals in
/// 10 s make a deployment "keep refusing", and its answers then carry the advice, naming it.
#[tokio::test(start_paused = true)]
async fn a_per_model_gate_reads_the_kind_from_the_model_id_and_advises_once() {
    bounded(600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::ApiKeyAndModel);
        let with = |m: &str| {
            let mut r = req();
            r.extensions_mut().insert(Model(Arc::from(m)));
            r
        };
        let bare_429 = || {
            Response::builder()
                .status(429)
                .header("retry-after", "2")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"busy"}}"#,
                )))
                .unwrap()
        };
        let serverless = "accounts/fireworks/models/llama-v3p1-8b-instruct";
        let dedicated =
            "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acme/deployments/d7";
        let cooling = |l: &GateLayer| {
            l.snapshot()
                .iter()
                .filter(|(_, s)| s.cooldown_remaining > Duration::ZERO)
                .count()
        };
        {
            let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::ApiKeyAndModel);
            let c = spawn(&svc, with(serverless));
            next(&mut h, bare_429()).await;
            c.await.unwrap().unwrap();
            assert_eq!(cooling(&layer), 1, "the serverless model cools down");
        }
        let send = |svc: &Svc, r: Req| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(r).await })
        };
        let mut advised = Vec::new();
        for _ in 0..4 {
            let c = send(&svc, with(dedicated));
            next(&mut h, bare_429()).await;
            let resp = c.await.unwrap().unwrap();
            advised.push(
                resp.extensions()
                    .get::<CapacityAdvice>()
                    .map(|a| a.0.to_string()),
            );
        }
        assert_eq!(
            cooling(&layer),
            0,
            "one request's capacity refusals cool nobody down"
        );
        assert_eq!(advised[..2], [None, None]);
        let a = advised[2]
            .clone()
            .expect("the third refusal carries the advice");
        assert!(
            a.contains("d7") && a.contains("firectl deployment update d7"),
            "{a}"
        );
        assert_eq!(advised[3].as_deref(), Some(a.as_str()));
    })
    .await
}

/// Refusals the server's own successes contradict are not capacity evidence: eight in flight,
/// the three sent last succeed (the server served 8 at once), then the three sent first are
/// refused. Random load shedding looks like this; the window stays. The same three refusals
/// with no success above them (a real limit under 6) narrow it.
#[tokio::test(start_paused = true)]
async fn refusals_below_an_in_flight_count_the_server_just_served_are_noise() {
    bounded(600, async {
        for noise in [true, false] {
            let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::Client);
            let c = spawn(&svc, req());
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
            let (calls, mut sends) = eight_in_flight(&svc, &mut h).await;
            // Sent with 1..=8 in flight, in that order.
            let high: Vec<_> = sends.drain(5..).collect();
            let (first, refused, then) = if noise {
                let low: Vec<_> = sends.drain(..3).collect();
                (high, low, sends)
            } else {
                (sends, high, Vec::new())
            };
            for s in first {
                s.send_response(answer(200, &[]));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            for s in refused {
                s.send_response(answer(503, &[]));
            }
            for s in then {
                s.send_response(answer(200, &[]));
            }
            for c in calls {
                c.await.unwrap().unwrap();
            }
            let limit = layer.snapshot()[0].1.concurrency_limit;
            assert_eq!(limit < 8, !noise, "noise {noise}: window {limit}");
        }
    })
    .await
}

/// Queueing evidence on one dedicated model narrows that model's window alone, and the window
/// is back at full width `recovery` (30 s) after the last evidence.
#[tokio::test(start_paused = true)]
async fn queueing_evidence_stays_with_its_model_and_recovers_with_time() {
    bounded(600, async {
        let (layer, svc, mut h) = gate(GateConfig::default(), KeyBy::ApiKeyAndModel);
        let with = |m: &str| {
            let mut r = req();
            r.extensions_mut().insert(Model(Arc::from(m)));
            r
        };
        let slow = "llama#accounts/acme/deployments/slow";
        let other = "llama#accounts/acme/deployments/other";
        // The other model is in use too, healthy.
        let c = spawn(&svc, with(other));
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        let c = spawn(&svc, with(slow));
        next(&mut h, answer(200, &[])).await;
        c.await.unwrap().unwrap();
        let calls: Vec<Call> = (0..8).map(|_| spawn(&svc, with(slow))).collect();
        let mut sends = Vec::new();
        for _ in 0..8 {
            sends.push(h.next_request().await.unwrap().1);
        }
        for s in sends.drain(5..) {
            s.send_response(answer(200, &[("fireworks-prefill-queue-duration", "2")]));
        }
        for s in sends {
            s.send_response(answer(200, &[]));
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let limits = |l: &GateLayer| {
            let mut v: Vec<u32> = l
                .snapshot()
                .iter()
                .map(|(_, s)| s.concurrency_limit)
                .collect();
            v.sort_unstable();
            v
        };
        let narrowed = limits(&layer);
        assert!(narrowed[0] < 8, "the slow model narrowed: {narrowed:?}");
        assert!(narrowed[1] >= 16, "the other model untouched: {narrowed:?}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        for m in [slow, other] {
            let c = spawn(&svc, with(m));
            next(&mut h, answer(200, &[])).await;
            c.await.unwrap().unwrap();
        }
        assert_eq!(
            limits(&layer),
            [1024, 1024],
            "both at full width 30 s later"
        );
    })
    .await
}
