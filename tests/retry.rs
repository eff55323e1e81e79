//! firebreak-retry over real loopback sockets against firebreak-sim, checked against the
//! simulator's attempt log: attempt counts, byte-identical bodies, waits at least the server's
//! delay, and recovery from resets and refused connections.

use bytes::Bytes;
use firebreak::RetryInfo;
use firebreak::client::{ClientConfig, build};
use firebreak::retry::{Jitter, ReplayBody, RetryConfig, RetryLayer};
use firebreak::timeout::{
    AttemptTimeoutLayer, TimedRequestBody, TimedResponseBody, TimeoutConfig, Workload,
};
use firebreak::{Error, classify::ClassifiedBody, classify::ClassifyLayer};
use firebreak_sim::{DelayHeader, Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::*;
use http::{Request, Response};
use http_body_util::Full;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type Resp = Response<TimedResponseBody<ClassifiedBody<hyper::body::Incoming>>>;

fn stack(
    retry: RetryConfig,
) -> impl Service<Request<Full<Bytes>>, Response = Resp, Error = Error> + Clone {
    let client =
        build::<TimedRequestBody<ReplayBody<Full<Bytes>>>>(&ClientConfig::default()).unwrap();
    ServiceBuilder::new()
        .layer(RetryLayer::new(retry).unwrap())
        .layer(AttemptTimeoutLayer::new(&TimeoutConfig::preset(Workload::Interactive)).unwrap())
        .layer(ClassifyLayer::new())
        .service(client)
}

/// One chat completion through the retry stack with the fast policy.
async fn chat(sim: &Sim, id: &str) -> Resp {
    stack(fast())
        .oneshot(post(
            &sim.base_url(),
            "/chat/completions",
            chat_body(id, false),
        ))
        .await
        .unwrap()
}

fn fast() -> RetryConfig {
    RetryConfig::default().backoff(firebreak::retry::Backoff {
        jitter: Jitter::Full,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
    })
}

use firebreak_testkit::status_fault as status;

#[tokio::test]
async fn a_non_retryable_status_is_attempted_exactly_once() {
    bounded(20, async {
        for s in [400, 401, 404, 422] {
            let sim = Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .fault(Trigger::Always, status(s, vec![])),
            )
            .await
            .unwrap();
            let resp = chat(&sim, "once").await;
            assert_eq!(resp.status().as_u16(), s);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(sim.attempts_for("once").len(), 1, "{s}");
        }
    })
    .await
}

#[tokio::test]
async fn retried_bodies_are_byte_identical_and_waits_honour_the_server() {
    bounded(30, async {
        let sim = sim_with(
            Trigger::FirstAttempts { n: 2 },
            status(503, vec![DelayHeader::RetryAfterMs { ms: 300.0 }]),
        )
        .await;
        let resp = chat(&sim, "same").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.extensions().get::<RetryInfo>().unwrap().attempts(), 3);
        let log = sim.attempts_for("same");
        assert_eq!(
            log.iter().map(|r| r.status).collect::<Vec<_>>(),
            [503, 503, 200]
        );
        assert!(
            log.windows(2)
                .all(|w| w[0].body_hash == w[1].body_hash && w[0].body_len == w[1].body_len)
        );
        for w in log.windows(2) {
            let gap = w[1].t_ms - w[0].end_ms;
            assert!(
                gap >= 300.0,
                "retried {gap} ms after the answer; the server asked for 300 ms"
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_retry_after_in_seconds_is_honoured() {
    bounded(30, async {
        let sim = sim_with(
            Trigger::FirstAttempts { n: 1 },
            status(429, vec![DelayHeader::RetryAfterSecs { secs: 1.0 }]),
        )
        .await;
        let resp = chat(&sim, "ra").await;
        assert_eq!(resp.status(), 200);
        let log = sim.attempts_for("ra");
        assert_eq!(log.len(), 2);
        assert!(
            log[1].t_ms - log[0].end_ms >= 1000.0,
            "{:?}",
            log[1].t_ms - log[0].end_ms
        );
    })
    .await
}

#[tokio::test]
async fn a_reset_is_retried_and_then_succeeds() {
    bounded(20, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::FirstAttempts { n: 1 }, Fault::ResetBeforeResponse),
        )
        .await
        .unwrap();
        let resp = chat(&sim, "rst").await;
        assert_eq!(resp.status(), 200);
        let log = sim.attempts_for("rst");
        assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), [0, 200]);
        assert_eq!(log[0].body_hash, log[1].body_hash);
    })
    .await
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_then_succeeds() {
    bounded(20, async {
        // Nothing listens on the port at first; the simulator starts there 300 ms later.
        let addr = refused_addr();
        let starter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Sim::start_on(addr, SimConfig::default().api_key(KEY))
                .await
                .unwrap()
        });
        let retry = RetryConfig::default()
            .max_attempts(10)
            .backoff(firebreak::retry::Backoff {
                jitter: Jitter::Equal,
                base: Duration::from_millis(100),
                cap: Duration::from_millis(200),
            });
        let resp = stack(retry)
            .oneshot(post(
                &format!("http://{addr}/inference/v1"),
                "/chat/completions",
                chat_body("late", false),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let info = *resp.extensions().get::<RetryInfo>().unwrap();
        assert!(info.attempts() >= 2, "{info:?}");
        let sim = starter.await.unwrap();
        assert_eq!(
            sim.attempts_for("late").len(),
            1,
            "the refused attempts never reached the server"
        );
    })
    .await
}

#[tokio::test]
async fn a_stream_whose_first_event_is_an_error_is_sent_again() {
    // #13 point 9: the error came before any content reached the caller, so the retry is
    // safe; the caller gets one whole stream, and the log shows exactly two attempts.
    bounded(30, async {
        let sim = sim_with(
            Trigger::FirstAttempts { n: 1 },
            Fault::SseError {
                after_chunks: 0,
                message: Some("overloaded, try again".into()),
            },
        )
        .await;
        let resp = stack(fast())
            .oneshot(post(
                &sim.base_url(),
                "/chat/completions",
                chat_body("sse-first", true),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let events = sse_data(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(
            events.iter().all(|e| !e.contains("\"error\"")),
            "{events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let attempts: Vec<u16> = sim.log().iter().map(|r| r.status).collect();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
    })
    .await
}
