//! firebreak as a reqwest-middleware `Middleware`, through reqwest's real client against
//! firebreak-sim on 127.0.0.1: the simulator's log is the witness of every attempt.

use firebreak::reqwest::{FirebreakMiddleware, firebreak_error};
use firebreak::{Class, GaveUp, RetryInfo, Stack};
use firebreak_sim::{ErrorShape, Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::{KEY, bounded, chat_body, error_fault, status_fault};
use http_body_util::StreamBody;
use hyper::body::Frame;
use reqwest_middleware::ClientWithMiddleware;
use std::time::Duration;

fn stack() -> Stack {
    firebreak_testkit::fast_interactive()
}

fn client(stack: Stack) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(FirebreakMiddleware::new(stack).unwrap())
        .build()
}

async fn send(
    c: &ClientWithMiddleware,
    sim: &Sim,
    body: reqwest::Body,
) -> reqwest_middleware::Result<reqwest::Response> {
    bounded(
        20,
        c.post(format!("{}/chat/completions", sim.base_url()))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
}

fn statuses(sim: &Sim, id: &str) -> Vec<u16> {
    sim.attempts_for(id).iter().map(|r| r.status).collect()
}

async fn sim(rules: Vec<(Trigger, Fault)>) -> Sim {
    let mut cfg = SimConfig::default().api_key(KEY);
    for (when, fault) in rules {
        cfg = cfg.fault(when, fault);
    }
    Sim::start(cfg).await.unwrap()
}

fn flaky() -> Vec<(Trigger, Fault)> {
    vec![
        (Trigger::FirstAttempts { n: 1 }, status_fault(503, vec![])),
        (Trigger::FirstAttempts { n: 2 }, status_fault(429, vec![])),
    ]
}

#[tokio::test]
async fn a_call_and_a_stream_succeed_after_a_503_and_a_429() {
    let sim = sim(flaky()).await;
    let c = client(stack());
    for (id, stream) in [("rqm-1", false), ("rqm-2", true)] {
        let resp = send(&c, &sim, chat_body(id, stream).into()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = bounded(20, resp.text()).await.unwrap();
        if stream {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        } else {
            assert!(text.contains("chat.completion"), "{text}");
        }
        assert_eq!(statuses(&sim, id), [503, 429, 200], "{id}");
    }
}

#[tokio::test]
async fn a_400_and_a_quota_429_are_sent_once() {
    let bad = error_fault(400, None, Some("messages must not be empty"));
    let sim1 = sim(vec![(Trigger::Always, bad)]).await;
    let resp = send(&client(stack()), &sim1, chat_body("rqm-3", false).into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("messages must not be empty")
    );
    assert_eq!(statuses(&sim1, "rqm-3"), [400]);

    let quota = error_fault(429, Some(ErrorShape::InsufficientQuota), None);
    let sim2 = sim(vec![(Trigger::Always, quota)]).await;
    let resp = send(&client(stack()), &sim2, chat_body("rqm-4", false).into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(statuses(&sim2, "rqm-4"), [429]);
}

#[tokio::test]
async fn a_hang_is_cut_at_the_first_byte_timeout_and_retried() {
    let sim = sim(vec![(
        Trigger::FirstAttempts { n: 1 },
        Fault::Hang { for_ms: 30_000 },
    )])
    .await;
    let started = std::time::Instant::now();
    let resp = send(&client(stack()), &sim, chat_body("rqm-5", false).into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(sim.attempts_for("rqm-5").len(), 2);
}

/// A request body that arrives as a stream of chunks.
fn streamed(bytes: bytes::Bytes, chunk: usize) -> reqwest::Body {
    let chunks: Vec<Result<Frame<bytes::Bytes>, std::io::Error>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    reqwest::Body::wrap(StreamBody::new(futures_util::stream::iter(chunks)))
}

#[tokio::test]
async fn a_streaming_body_is_resent_byte_for_byte_or_refused_when_it_cannot_be() {
    let sim = sim(vec![(
        Trigger::FirstAttempts { n: 1 },
        status_fault(503, vec![]),
    )])
    .await;
    let body = chat_body("rqm-6", false);
    let resp = send(&client(stack()), &sim, streamed(body.clone(), 7))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let log = sim.attempts_for("rqm-6");
    assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 200]);
    assert!(
        log.iter()
            .all(|r| r.body_len == body.len() as u64 && r.body_hash == log[0].body_hash)
    );

    // Over the replay bound: sent once, and the retry it would need is refused, clearly.
    let mut small = stack();
    small.retry.max_replay_body = 64;
    let resp = send(&client(small), &sim, streamed(chat_body("rqm-7", false), 7))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let info = resp
        .extensions()
        .get::<RetryInfo>()
        .copied()
        .expect("the retry record");
    assert!(
        matches!(info.gave_up(), Some(GaveUp::BodyNotReplayable(_))),
        "{:?}",
        info.gave_up()
    );
    assert!(info.gave_up().unwrap().to_string().contains("replay"));
    assert_eq!(
        statuses(&sim, "rqm-7"),
        [503],
        "sent once, never a cut copy"
    );
}

#[tokio::test]
async fn firebreaks_own_errors_are_reachable_and_connect_failures_classified() {
    let addr = firebreak_testkit::refused_addr();
    let e = bounded(
        20,
        client(stack())
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(KEY)
            .body(chat_body("rqm-8", false))
            .send(),
    )
    .await
    .unwrap_err();
    let fe = firebreak_error(&e).expect("firebreak's error inside");
    assert!(
        matches!(fe.class(), Class::Connect(_)) && fe.is_client_side(),
        "{fe}"
    );
    assert!(fe.attempts().is_some_and(|n| n > 1), "{fe}");
    assert!(!e.to_string().contains(KEY));
}
