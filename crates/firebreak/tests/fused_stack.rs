//! Issue #15, the fused hot path: `Stack` runs every layer as one future (`StackCall` around
//! `StackAttempt`). It must answer exactly as the same layers composed one by one with plain
//! tower do. Each scenario below runs through both, in paused time, against the same scripted
//! inner service, and compares everything a caller or an operator can see: the answer (status,
//! body, `RetryInfo`) or the error (class, message), the attempts the inner service received,
//! the virtual time taken, the gate's counts and the metrics.

use bytes::Bytes;
use firebreak::classify::ClassifyLayer;
use firebreak::gate::{GateLayer, KeyBy};
use firebreak::observe::{AttemptObserveLayer, ObserveLayer, Observer};
use firebreak::retry::{RetryConfig, RetryLayer};
use firebreak::timeout::{AttemptTimeoutLayer, DeadlineLayer, TimeoutConfig, Workload};
use firebreak::{BoxError, RetryInfo, Stack, names};
use firebreak_testkit::{Recorded, bounded};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// What the inner service does on one attempt.
#[derive(Debug, Clone)]
enum Step {
    /// Answers with this status, headers and body.
    Answer(u16, Vec<(&'static str, &'static str)>, &'static str),
    /// Never answers.
    Hang,
    /// Fails before any answer, as a refused connection does.
    Refused,
}

fn ok() -> Step {
    Step::Answer(
        200,
        vec![("content-type", "application/json")],
        r#"{"id":"x"}"#,
    )
}

fn status(s: u16) -> Step {
    Step::Answer(
        s,
        vec![("content-type", "application/json")],
        r#"{"error":{"message":"no","type":"x","code":"y"}}"#,
    )
}

/// A scripted inner service: each attempt takes the next step (the last one repeats), and
/// the attempts it received are counted.
#[derive(Clone)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<Mutex<u32>>,
}

impl Script {
    fn new(steps: &[Step]) -> Script {
        Script {
            steps: Arc::new(Mutex::new(steps.iter().cloned().collect())),
            calls: Arc::new(Mutex::new(0)),
        }
    }

    fn calls(&self) -> u32 {
        *self.calls.lock().unwrap()
    }
}

impl<B: Send + 'static> Service<Request<B>> for Script {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        *self.calls.lock().unwrap() += 1;
        let step = {
            let mut steps = self.steps.lock().unwrap();
            if steps.len() > 1 {
                steps.pop_front().unwrap()
            } else {
                steps.front().cloned().unwrap()
            }
        };
        Box::pin(async move {
            match step {
                Step::Answer(s, headers, body) => {
                    let mut b = Response::builder().status(s);
                    for (k, v) in headers {
                        b = b.header(k, v);
                    }
                    Ok(b.body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap())
                }
                Step::Hang => std::future::pending().await,
                Step::Refused => Err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )) as BoxError),
            }
        })
    }
}

/// What one run looked like from outside.
#[derive(Debug, PartialEq)]
struct Seen {
    outcome: String,
    inner_calls: u32,
    elapsed: Duration,
    admitted: u64,
    refused: u64,
    metrics: Vec<(String, u64)>,
}

fn settings() -> Stack {
    let mut s = Stack::preset(Workload::Interactive);
    s.retry = RetryConfig {
        seed: Some(7),
        ..RetryConfig::default()
    };
    s.timeouts = TimeoutConfig {
        headers: Some(Duration::from_secs(2)),
        attempt: Some(Duration::from_secs(10)),
        deadline: Some(Duration::from_secs(20)),
        ..s.timeouts
    };
    s
}

/// The metrics a dashboard reads, by name and class.
fn counts(rec: &Recorded) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for name in [
        names::REQUESTS,
        names::ATTEMPTS,
        names::RETRIES,
        names::HTTP_429,
        names::CLIENT_FAILURES,
    ] {
        for (label, n) in rec.counters_by(name, "class") {
            out.push((format!("{name}{{class={label}}}"), n));
        }
        for (label, n) in rec.counters_by(name, "outcome") {
            out.push((format!("{name}{{outcome={label}}}"), n));
        }
    }
    out
}

/// Runs one call of `steps` through `svc` and describes it.
async fn run<S, B>(mut svc: S, script: &Script, gate: &GateLayer, rec: &Recorded) -> Seen
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = firebreak::Error>,
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let _recording = rec.install();
    let t0 = Instant::now();
    let req = Request::post("http://api.test/inference/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
        .unwrap();
    // Bounded in (virtual) time: the stack's deadline is 20 s.
    let outcome = bounded(60, async {
        match svc.ready().await.unwrap().call(req).await {
            Ok(resp) => {
                let head = format!(
                    "{} attempts={}",
                    resp.status().as_u16(),
                    RetryInfo::of(&resp).attempts()
                );
                match resp.into_body().collect().await {
                    Ok(b) => format!("{head} body={:?}", b.to_bytes()),
                    Err(e) => format!("{head} body error: {e}"),
                }
            }
            Err(e) => format!("error {:?}: {e}", e.class()),
        }
    })
    .await;
    let (admitted, refused) = gate
        .snapshot()
        .iter()
        .fold((0, 0), |(a, r), (_, s)| (a + s.admitted, r + s.refused));
    Seen {
        outcome,
        inner_calls: script.calls(),
        elapsed: t0.elapsed(),
        admitted,
        refused,
        metrics: counts(rec),
    }
}

/// The scenario through the fused stack and through the layers one by one.
async fn both(steps: &[Step]) -> (Seen, Seen) {
    let s = settings();
    let rec = Recorded::new();
    let fused_layer = rec.build(|| s.layer().unwrap());
    let script = Script::new(steps);
    let fused = fused_layer.layer(script.clone());
    let fused = run(fused, &script, fused_layer.gate(), &rec).await;

    let rec = Recorded::new();
    let script = Script::new(steps);
    let (svc, gate) = rec.build(|| {
        let obs = Observer::new();
        let gate = GateLayer::new(s.gate.clone(), KeyBy::Client).unwrap();
        let svc = ServiceBuilder::new()
            .layer(ObserveLayer::new(obs.clone()))
            .layer(DeadlineLayer::new(s.timeouts.deadline.unwrap()).unwrap())
            .layer(RetryLayer::new(s.retry.clone()).unwrap())
            .layer(AttemptObserveLayer::new(obs))
            .layer(gate.clone())
            .layer(AttemptTimeoutLayer::new(&s.timeouts).unwrap())
            .layer(ClassifyLayer::new())
            .service(script.clone());
        (svc, gate)
    });
    let layered = run(svc, &script, &gate, &rec).await;
    (fused, layered)
}

async fn same(steps: &[Step], expect: &str) -> Seen {
    let (fused, layered) = both(steps).await;
    assert_eq!(fused, layered, "the fused stack and the layers one by one");
    assert!(
        fused.outcome.contains(expect),
        "expected {expect:?} in {:?}",
        fused.outcome
    );
    fused
}

#[tokio::test(start_paused = true)]
async fn a_first_answer_is_the_answer() {
    let seen = same(&[ok()], "200 attempts=1").await;
    assert_eq!((seen.inner_calls, seen.admitted), (1, 1));
    assert!(
        seen.metrics
            .iter()
            .any(|(m, n)| m.contains("success") && *n == 1)
    );
}

#[tokio::test(start_paused = true)]
async fn overloads_are_retried_with_the_same_waits() {
    let seen = same(&[status(503), status(503), ok()], "200 attempts=3").await;
    assert_eq!(seen.inner_calls, 3);
    assert!(seen.elapsed > Duration::ZERO, "backoff took time");
}

#[tokio::test(start_paused = true)]
async fn a_bad_request_is_never_retried() {
    let seen = same(&[status(400), ok()], "400 attempts=1").await;
    assert_eq!(seen.inner_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_waits_as_the_server_asks() {
    let limited = Step::Answer(
        429,
        vec![("content-type", "application/json"), ("retry-after", "3")],
        r#"{"error":{"message":"rate limit exceeded","code":"RATE_LIMIT_EXCEEDED"}}"#,
    );
    let seen = same(&[limited, ok()], "200 attempts=2").await;
    assert!(seen.elapsed >= Duration::from_secs(3), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hang_times_out_on_its_headers_and_is_retried() {
    let seen = same(&[Step::Hang, ok()], "200 attempts=2").await;
    assert!(seen.elapsed >= Duration::from_secs(2), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_a_client_side_failure_retried_alike() {
    let seen = same(&[Step::Refused, ok()], "200 attempts=2").await;
    assert!(
        seen.metrics.iter().any(|(m, _)| m.contains("connect")),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_run_out_alike() {
    let seen = same(&[status(503)], "503").await;
    assert!(seen.inner_calls > 1, "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_call_that_keeps_hanging() {
    let seen = same(&[Step::Hang], "error").await;
    assert!(seen.elapsed <= Duration::from_secs(20), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_first_event_is_an_error_is_retried_alike() {
    let sse_error = Step::Answer(
        200,
        vec![("content-type", "text/event-stream")],
        "data: {\"error\":{\"message\":\"overloaded\",\"code\":\"503\"}}\n\n",
    );
    let sse_ok = Step::Answer(
        200,
        vec![("content-type", "text/event-stream")],
        "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
    );
    same(&[sse_error, sse_ok], "DONE").await;
}
