//! The observation layers around in-memory services, in paused time, with a recording metrics
//! recorder and a captured tracing subscriber.

use bytes::Bytes;
use firebreak_classify::{Class, ClassifyLayer, Error};
use firebreak_observe::{AttemptObserveLayer, ObserveLayer, Observer, names};
use firebreak_ratelimit::{GateConfig, KeyBy, RateLimitLayer};
use firebreak_retry::{Jitter, RetryConfig, RetryLayer};
use firebreak_testkit::Recorded;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Answers with the next status of a script (200 when it runs out), after `delay`.
#[derive(Clone)]
struct Script {
    statuses: Arc<Mutex<VecDeque<u16>>>,
    delay: Duration,
}

impl Script {
    fn new(statuses: &[u16], delay: Duration) -> Self {
        Script {
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            delay,
        }
    }
}

impl<B: Send + 'static> Service<Request<B>> for Script {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let s = self.statuses.lock().unwrap().pop_front().unwrap_or(200);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Response::builder()
                .status(s)
                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                .unwrap())
        })
    }
}

fn retry() -> RetryConfig {
    RetryConfig::builder()
        .backoff(
            Jitter::Full,
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
        .seed(7)
        .build()
        .unwrap()
}

fn req() -> Request<Full<Bytes>> {
    Request::post("http://sim.invalid/chat/completions")
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

type Svc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<firebreak_observe::ObservedBody<http_body_util::combinators::BoxBody<Bytes, Error>>>,
    Error,
>;

/// observe → retry → observe attempt → gate → classify → script, built under `rec`.
fn stack(rec: &Recorded, script: Script, gate: GateConfig, obs_on: bool) -> Svc {
    rec.build(|| {
        let obs = if obs_on {
            Observer::new()
        } else {
            Observer::disabled()
        };
        let svc = ServiceBuilder::new()
            .layer(ObserveLayer::new(obs.clone()))
            .map_response(|r: Response<_>| r.map(BodyExt::boxed))
            .layer(RetryLayer::new(retry()).unwrap())
            .layer(AttemptObserveLayer::new(obs))
            .layer(RateLimitLayer::new(gate, KeyBy::Client).unwrap())
            .layer(ClassifyLayer::new())
            .service(script);
        tower::util::BoxCloneSyncService::new(svc)
    })
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_is_one_request_two_attempts_and_one_retry() {
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[503], Duration::from_millis(10)),
        GateConfig::default(),
        true,
    );
    let resp = svc.oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"ok\":true}");

    let seen = &rec;
    assert_eq!(seen.counter(names::REQUESTS, &[("outcome", "success")]), 1);
    assert_eq!(seen.counter(names::REQUESTS, &[]), 1);
    assert_eq!(seen.counter(names::ATTEMPTS, &[("class", "overloaded")]), 1);
    assert_eq!(seen.counter(names::ATTEMPTS, &[("class", "success")]), 1);
    assert_eq!(
        seen.counter(names::ATTEMPTS, &[("reached_server", "false")]),
        0
    );
    assert_eq!(seen.counter(names::RETRIES, &[("reason", "overloaded")]), 1);
    assert_eq!(seen.counter(names::RETRIES, &[]), 1);
    assert_eq!(seen.counter(names::HTTP_429, &[]), 0);
    assert_eq!(seen.counter(names::CLIENT_FAILURES, &[]), 0);
    // Paused time: the backoff is exactly 100 ms (jitter full over [100, 100]... drawn ≤ 100).
    let backoff = seen.samples(names::BACKOFF_MS, &[("reason", "backoff")]);
    assert_eq!(backoff.len(), 1);
    assert!(backoff[0] <= 100.0, "{backoff:?}");
    let total = seen.samples(names::OVERALL_MS, &[("outcome", "success")]);
    assert_eq!(total.len(), 1);
    // Two 10 ms answers plus the backoff.
    assert!(
        (total[0] - (20.0 + backoff[0])).abs() < 1.0,
        "{total:?} vs {backoff:?}"
    );
    assert_eq!(seen.samples(names::FIRST_BYTE_MS, &[]).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_count_once_by_class_and_429s_are_counted() {
    let rec = Recorded::new();
    // 404 is not retried; 429 twice then 200 for the second call.
    let svc = stack(
        &rec,
        Script::new(&[404, 429, 429], Duration::from_millis(5)),
        GateConfig::default(),
        true,
    );
    let r1 = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(r1.status(), 404);
    drop(r1);
    let r2 = svc.oneshot(req()).await.unwrap();
    assert_eq!(r2.status(), 200);
    r2.into_body().collect().await.unwrap();

    let seen = &rec;
    assert_eq!(
        seen.counter(
            names::REQUESTS,
            &[("outcome", "failure"), ("class", "client_error_not_found")]
        ),
        1
    );
    assert_eq!(seen.counter(names::REQUESTS, &[("outcome", "success")]), 1);
    assert_eq!(
        seen.counter(names::REQUESTS, &[("outcome", "cancelled")]),
        0
    );
    assert_eq!(seen.counter(names::HTTP_429, &[]), 2);
    assert_eq!(
        seen.counter(names::ATTEMPTS, &[("class", "rate_limited")]),
        2
    );
    assert_eq!(
        seen.counter(names::RETRIES, &[("reason", "rate_limited")]),
        2
    );
    assert_eq!(seen.counter(names::ATTEMPTS, &[]), 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_or_future_counts_as_cancelled() {
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[], Duration::from_millis(50)),
        GateConfig::default(),
        true,
    );
    // The future dropped before the answer.
    let pending = svc.clone().oneshot(req());
    assert!(
        tokio::time::timeout(Duration::from_millis(10), pending)
            .await
            .is_err()
    );
    // The response taken but its body never read.
    let resp = svc.oneshot(req()).await.unwrap();
    drop(resp);
    let seen = &rec;
    assert_eq!(
        seen.counter(names::REQUESTS, &[("outcome", "cancelled")]),
        2
    );
    assert_eq!(seen.counter(names::REQUESTS, &[("outcome", "success")]), 0);
    assert_eq!(
        seen.samples(names::OVERALL_MS, &[("outcome", "cancelled")])
            .len(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn the_gate_reports_its_wait_limit_and_queue() {
    let rec = Recorded::new();
    let gate = GateConfig {
        initial_concurrency: 1,
        min_concurrency: 1,
        max_concurrency: 1,
        ..GateConfig::default()
    };
    let svc = stack(
        &rec,
        Script::new(&[], Duration::from_millis(100)),
        gate,
        true,
    );
    // Each task reads its body: the permit is held until the body ends.
    let call = |svc: Svc| async move {
        let resp = svc.oneshot(req()).await.unwrap();
        resp.into_body().collect().await.unwrap();
    };
    let a = tokio::spawn(call(svc.clone()));
    let b = tokio::spawn(call(svc.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // One in flight, one queued.
    assert_eq!(rec.gauge(names::GATE_QUEUE, &[]), 1.0);
    for h in [a, b] {
        h.await.unwrap();
    }
    let seen = &rec;
    assert_eq!(seen.gauge(names::GATE_QUEUE, &[]), 0.0);
    assert_eq!(seen.gauge(names::GATE_LIMIT, &[]), 1.0);
    let waits = seen.samples(names::GATE_WAIT_MS, &[("reason", "concurrency")]);
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!((waits[0] - 100.0).abs() < 1.0, "{waits:?}");
    assert_eq!(seen.counter(names::REQUESTS, &[("outcome", "success")]), 2);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_observer_records_nothing() {
    let rec = Recorded::new();
    let svc = stack(
        &rec,
        Script::new(&[503], Duration::from_millis(1)),
        GateConfig::default(),
        false,
    );
    let resp = svc.oneshot(req()).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let seen = &rec;
    assert_eq!(seen.counter(names::REQUESTS, &[]), 0);
    assert_eq!(seen.counter(names::ATTEMPTS, &[]), 0);
    let series = seen.series();
    assert!(
        series.iter().all(|(n, _)| n.starts_with("firebreak_gate")),
        "only the gate's own series: {series:?}"
    );
}

#[test]
fn every_series_is_registered_up_front_with_bounded_labels() {
    let rec = Recorded::new();
    let _obs = rec.build(Observer::new);
    let series = rec.series();
    let n = Class::ALL.len();
    // requests: success + one failure per non-success class + cancelled; attempts: one per
    // class; retries: one per non-success class; client failures: 7 kinds; one 429 counter.
    let count = |name: &str| series.iter().filter(|(x, _)| x == name).count();
    assert_eq!(count(names::REQUESTS), 1 + (n - 1) + 1);
    assert_eq!(count(names::ATTEMPTS), n);
    assert_eq!(count(names::RETRIES), n - 1);
    assert_eq!(count(names::CLIENT_FAILURES), 7);
    assert_eq!(count(names::HTTP_429), 1);
    for (_, labels) in &series {
        for (k, _) in labels {
            assert!(
                ["outcome", "class", "reached_server", "reason", "kind"].contains(&k.as_str()),
                "unexpected label {k}"
            );
        }
    }
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

#[test]
fn spans_nest_attempts_under_the_request_with_their_fields() {
    let buf = Buf::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::with_default(sub, || {
        rt.block_on(async {
            let rec = Recorded::new();
            let gate = GateConfig {
                initial_concurrency: 1,
                min_concurrency: 1,
                max_concurrency: 1,
                ..GateConfig::default()
            };
            let svc = stack(
                &rec,
                Script::new(&[503], Duration::from_millis(10)),
                gate,
                true,
            );
            // Two calls through a gate of one: one waits for the other's slot. Each reads its
            // body (the slot is held until the body ends).
            let call = |svc: Svc| async move {
                let resp = svc.oneshot(req()).await.unwrap();
                resp.into_body().collect().await.unwrap();
            };
            let other = tokio::spawn(call(svc.clone()));
            call(svc).await;
            other.await.unwrap();
        })
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    // The second attempt's span is a child of the request span and says why it waited.
    let retry_line = lines
        .iter()
        .find(|l| l.contains("firebreak.request{") && l.contains("firebreak.attempt{attempt=2"))
        .unwrap_or_else(|| panic!("no nested second attempt in:\n{out}"));
    assert!(
        retry_line.contains("delay_reason=\"backoff\""),
        "{retry_line}"
    );
    assert!(
        retry_line.contains("retry_after_class=\"overloaded\""),
        "{retry_line}"
    );
    assert!(out.contains("request_id=\"req-1\""), "{out}");
    assert!(out.contains("gate_wait_reason=\"concurrency\""), "{out}");
    assert!(out.contains("outcome=\"success\""), "{out}");
    assert!(out.contains("finished processing request"), "{out}");
    assert!(out.contains("attempt failed"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn a_layer_alone_passes_answers_through_untouched() {
    let obs = Observer::disabled();
    let svc = ObserveLayer::new(obs.clone()).layer(
        AttemptObserveLayer::new(obs)
            .layer(ClassifyLayer::new().layer(Script::new(&[418], Duration::ZERO))),
    );
    let resp = svc.oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), 418);
}
