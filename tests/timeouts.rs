//! firebreak-timeout over real loopback sockets against firebreak-sim's hang, stall, slow-TTFB
//! and slow-upload faults, through deadline → attempt timeouts → classify → hyper client.
//! Durations are short real times (hundreds of milliseconds); only lower and upper bounds that
//! the phase logic guarantees are asserted, never speed.

use bytes::Bytes;
use firebreak::client::{ClientConfig, build_with, https_connector};
use firebreak::timeout::{
    AttemptTimeoutLayer, AttemptTimeouts, DeadlineLayer, TimedRequestBody, TimedResponseBody,
    TimeoutConfig,
};
use firebreak::{
    Class, Error, TimeoutError, TimeoutPhase, classify::ClassifiedBody, classify::ClassifyLayer,
};
use firebreak_sim::{Fault, Latency, Sim, SimConfig, Trigger};
use firebreak_testkit::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Resp = Response<TimedResponseBody<ClassifiedBody<hyper::body::Incoming>>>;

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

fn cfg() -> TimeoutConfig {
    TimeoutConfig::default()
        .connect(ms(300))
        .ready(ms(1000))
        .write(ms(400))
        .headers(ms(400))
        .first_event(ms(400))
        .idle(ms(400))
        .attempt(ms(8000))
        .deadline(None)
}

/// attempt timeouts → classify → hyper client with a timed connector.
fn stack(
    c: &TimeoutConfig,
) -> impl Service<Request<Full<Bytes>>, Response = Resp, Error = Error> + Clone {
    let client_cfg = ClientConfig::default();
    let client = build_with::<_, TimedRequestBody<Full<Bytes>>>(
        https_connector(&client_cfg).unwrap(),
        &client_cfg,
    );
    ServiceBuilder::new()
        .layer(AttemptTimeoutLayer::new(c).unwrap())
        .layer(ClassifyLayer::new())
        .service(client)
}

fn req(base: &str, id: &str, stream: bool) -> Request<Full<Bytes>> {
    post(base, "/chat/completions", chat_body(id, stream))
}

fn phase(e: &Error) -> (TimeoutPhase, Duration) {
    let Class::Timeout(p) = e.class() else {
        panic!("not a timeout: {e:?}")
    };
    let t = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<TimeoutError>())
        .expect("TimeoutError");
    (p, t.after())
}

async fn read_until_error(resp: Resp) -> (Vec<u8>, Result<(), Error>) {
    let mut body = resp.into_body();
    let mut got = Vec::new();
    for _ in 0..100_000 {
        match body.frame().await {
            None => return (got, Ok(())),
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
            Some(Err(e)) => return (got, Err(e)),
        }
    }
    (got, Ok(()))
}

#[tokio::test]
async fn a_hang_before_headers_is_a_response_header_timeout() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::Hang { for_ms: 3000 }),
        )
        .await
        .unwrap();
        let t = Instant::now();
        let e = stack(&cfg())
            .oneshot(req(&sim.base_url(), "hang", false))
            .await
            .unwrap_err();
        assert_eq!(
            phase(&e),
            (TimeoutPhase::Headers, Duration::from_millis(400))
        );
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert!(!e.is_client_side(), "the request reached the server");
        assert!(e.is_retryable());
    })
    .await
}

#[tokio::test]
async fn a_requests_own_attempt_timeouts_replace_the_layers() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::SlowTtfb { delay_ms: 900 }),
        )
        .await
        .unwrap();
        // The layer's 400 ms headers timer would cut this; the request's own 3 s does not.
        let mut longer = cfg();
        longer.headers = ms(3000);
        let mut r = req(&sim.base_url(), "own-longer", false);
        r.extensions_mut().insert(AttemptTimeouts::from(&longer));
        let resp = stack(&cfg()).oneshot(r).await.unwrap();
        assert_eq!(resp.status(), 200);
        // And a shorter one fires first, naming its own duration.
        let mut shorter = longer;
        shorter.headers = ms(150);
        let mut r = req(&sim.base_url(), "own-shorter", false);
        r.extensions_mut().insert(AttemptTimeouts::from(&shorter));
        let e = stack(&longer).oneshot(r).await.unwrap_err();
        assert_eq!(
            phase(&e),
            (TimeoutPhase::Headers, Duration::from_millis(150))
        );
    })
    .await
}

#[tokio::test]
async fn a_slow_first_byte_fires_the_headers_timer_only_when_it_is_too_slow() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::SlowTtfb { delay_ms: 900 }),
        )
        .await
        .unwrap();
        let e = stack(&cfg())
            .oneshot(req(&sim.base_url(), "ttfb", false))
            .await
            .unwrap_err();
        assert_eq!(phase(&e).0, TimeoutPhase::Headers);
        let mut relaxed = cfg();
        relaxed.headers = ms(3000);
        let resp = stack(&relaxed)
            .oneshot(req(&sim.base_url(), "ttfb2", false))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (body, end) = read_until_error(resp).await;
        end.unwrap();
        assert!(body.starts_with(b"{"));
    })
    .await
}

#[tokio::test]
async fn a_stalled_stream_is_cut_by_body_idle_after_the_tokens_already_delivered() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .latency(Latency { ttfb_ms: 0, token_delay_ms: 20, completion_tokens: 8 })
                .fault(Trigger::Always, Fault::StallAfter { after_chunks: 4, for_ms: 3000 }),
        )
        .await
        .unwrap();
        let resp = stack(&cfg()).oneshot(req(&sim.base_url(), "stall", true)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let t = Instant::now();
        let (got, end) = read_until_error(resp).await;
        let e = end.unwrap_err();
        assert_eq!(phase(&e), (TimeoutPhase::Idle, Duration::from_millis(400)));
        assert!(t.elapsed() >= Duration::from_millis(400));
        // Exactly the four chunks sent before the stall, byte for byte.
        let events = sse_data(&got);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&events[0]).unwrap()["choices"][0]["delta"]["role"], "assistant");
        for (i, ev) in events[1..].iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(ev).unwrap();
            assert_eq!(v["choices"][0]["delta"]["content"], format!("tok{i} "));
        }
        assert!(!e.is_retryable(), "tokens reached the caller: never retried");
    })
    .await
}

#[tokio::test]
async fn a_healthy_long_stream_is_not_cut_by_the_idle_timeout() {
    bounded(30, async {
        // 30 tokens 150 ms apart: 4.5 s of streaming, over ten times the 400 ms idle timeout.
        let sim = Sim::start(SimConfig::default().api_key(KEY).latency(Latency {
            ttfb_ms: 0,
            token_delay_ms: 150,
            completion_tokens: 30,
        }))
        .await
        .unwrap();
        let mut body = chat_body("long", true).to_vec();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut v = v;
        v["max_tokens"] = 30.into();
        body = serde_json::to_vec(&v).unwrap();
        let t = Instant::now();
        let resp = stack(&cfg())
            .oneshot(post(
                &sim.base_url(),
                "/chat/completions",
                Bytes::from(body),
            ))
            .await
            .unwrap();
        let (got, end) = read_until_error(resp).await;
        end.expect("the stream ran to its end");
        assert!(t.elapsed() >= Duration::from_millis(30 * 150));
        let events = sse_data(&got);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(events.len(), 30 + 3);
    })
    .await
}

#[tokio::test]
async fn a_slow_upload_is_a_request_write_timeout() {
    bounded(30, async {
        let mut sc = SimConfig::default()
            .api_key(KEY)
            .fault(Trigger::Always, Fault::SlowUpload { delay_ms: 3000 });
        sc.max_request_body = 64 << 20;
        let sim = Sim::start(sc).await.unwrap();
        // 48 MiB cannot sit in loopback socket buffers while the server is not reading.
        let mut body = Vec::with_capacity(48 << 20);
        body.extend_from_slice(br#"{"messages":[{"role":"user","content":""#);
        body.resize((48 << 20) - 4, b'a');
        body.extend_from_slice(br#""}]}"#);
        let t = Instant::now();
        let e = stack(&cfg())
            .oneshot(post(
                &sim.base_url(),
                "/chat/completions",
                Bytes::from(body),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            phase(&e),
            (TimeoutPhase::Write, Duration::from_millis(400)),
            "{e:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "failed long before the server started reading"
        );
    })
    .await
}

#[tokio::test]
async fn a_connect_that_never_completes_is_a_client_side_connect_timeout() {
    bounded(20, async {
        let (addr, _fill, _l) = blackhole();
        // The connect timer is in the connector `FireworksClient` builds: the stack's
        // `timeouts.connect` (300 ms here), one attempt.
        let stack = firebreak::Stack::interactive()
            .timeouts(cfg())
            .retry(firebreak::retry::RetryConfig::default().max_attempts(1));
        let client = firebreak::FireworksClient::new(
            &format!("http://{addr}/inference/v1"),
            firebreak::client::ApiKey::new(KEY).unwrap(),
            stack,
        )
        .unwrap();
        let e = client
            .post("/chat/completions", chat_body("c", false))
            .await
            .unwrap_err();
        assert_eq!(
            phase(&e),
            (TimeoutPhase::Connect, Duration::from_millis(300)),
            "{e:?}"
        );
        assert!(e.is_client_side());
    })
    .await
}

#[tokio::test]
async fn the_deadline_wraps_it_all() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::Hang { for_ms: 3000 }),
        )
        .await
        .unwrap();
        let mut c = cfg();
        c.headers = ms(5000);
        let svc = DeadlineLayer::new(Duration::from_millis(600))
            .unwrap()
            .layer(stack(&c));
        let t = Instant::now();
        let e = svc
            .oneshot(req(&sim.base_url(), "dl", false))
            .await
            .unwrap_err();
        assert_eq!(
            phase(&e),
            (TimeoutPhase::Deadline, Duration::from_millis(600))
        );
        assert!(
            t.elapsed() >= Duration::from_millis(600) && t.elapsed() < Duration::from_millis(4000)
        );
    })
    .await
}
