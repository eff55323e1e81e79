//! Every preset retries a server that hangs before its response head, within its deadline
//! (the timeout module's rule, "Hangs are retried"): in paused time through the whole `Stack`
//! over an in-memory service, and over a real socket against firebreak-sim for the default
//! preset.

use bytes::Bytes;
use firebreak::timeout::{TimeoutConfig, TimeoutConfigError, Workload};
use firebreak::{Class, FireworksClient, InnerBody, RetryInfo, Stack, client::ApiKey};
use firebreak_sim::{Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::bounded;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const PRESETS: [Workload; 4] = [
    Workload::Interactive,
    Workload::Agentic,
    Workload::LongContext,
    Workload::BatchSubmit,
];

/// A server whose first `hangs` answers never come; the next ones are a 200 at once. `calls`
/// counts the attempts it saw.
fn hanging_then_ok(
    hangs: usize,
    calls: &Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<InnerBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send {
    let seen = calls.clone();
    tower::service_fn(move |_req: Request<InnerBody<Full<Bytes>>>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < hangs {
                std::future::pending::<()>().await;
            }
            Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn every_preset_retries_a_hang_before_the_head_within_its_deadline() {
    for w in PRESETS {
        let t = TimeoutConfig::preset(w);
        let headers = t.headers.unwrap();
        bounded(4 * 3600, async {
            let calls = Arc::new(AtomicUsize::new(0));
            let svc = hanging_then_ok(1, &calls);
            let stack = Stack::preset(w).observe(false).layer().unwrap().layer(svc);
            let t0 = Instant::now();
            let resp = stack
                .oneshot(Request::new(Full::new(Bytes::from_static(b"{}"))))
                .await
                .unwrap_or_else(|e| panic!("{w:?}: {e}"));
            let took = t0.elapsed();
            assert_eq!(resp.status(), 200, "{w:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{w:?}: one retry");
            assert_eq!(RetryInfo::of(&resp).attempts(), 2, "{w:?}");
            // Cut by the headers timer, then one backoff (full jitter, at most 100 ms).
            assert!(
                took >= headers && took <= headers + Duration::from_millis(200),
                "{w:?}: {took:?} against headers {headers:?}"
            );
            assert!(took < t.deadline.unwrap(), "{w:?}: within the deadline");
        })
        .await;
    }
}

#[test]
fn a_headers_timeout_at_or_over_the_attempt_total_is_refused() {
    // The tie the presets had: the attempt's total, not retried, fires first on a hang.
    for w in PRESETS {
        let t = TimeoutConfig::preset(w);
        let tie = t.headers(t.attempt);
        assert!(
            matches!(
                tie.validate(),
                Err(TimeoutConfigError::HeadersNotBelowAttempt { .. })
            ),
            "{w:?}"
        );
        let e = Stack::preset(w).timeouts(tie).layer().unwrap_err();
        assert!(e.to_string().contains("not retried"), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_that_was_not_retried_says_why() {
    bounded(3600, async {
        // No first-byte timer: the attempt's total cuts the hang, and it is not retried.
        let timeouts = TimeoutConfig::preset(Workload::Interactive).headers(None);
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = hanging_then_ok(1, &calls);
        let stack = Stack::interactive()
            .timeouts(timeouts)
            .observe(false)
            .layer()
            .unwrap()
            .layer(svc);
        let e = stack
            .oneshot(Request::new(Full::new(Bytes::from_static(b"{}"))))
            .await
            .unwrap_err();
        assert_eq!(e.class(), Class::Timeout(firebreak::TimeoutPhase::Attempt));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let msg = e.to_string();
        assert!(
            msg.contains("not retried: the attempt used its whole time budget")
                && msg.contains("`headers` timer"),
            "{msg}"
        );
    })
    .await
}

#[tokio::test]
async fn the_default_preset_retries_a_real_hang_over_a_socket() {
    // Real time: the interactive preset's 30 s first-byte timer, unchanged, against a
    // simulator whose first attempt of the call never answers.
    bounded(90, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(firebreak_testkit::KEY)
                .fault(Trigger::FirstAttempts { n: 1 }, Fault::Hang { for_ms: 60_000 }),
        )
        .await
        .unwrap();
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new(firebreak_testkit::KEY).unwrap(),
            Stack::interactive(),
        )
        .unwrap();
        let body = Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"user":"hang-1"}"#,
        );
        let t0 = std::time::Instant::now();
        let resp = client.post("/chat/completions", body).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(RetryInfo::of(&resp).attempts(), 2);
        resp.into_body().collect().await.unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(30) && took < Duration::from_secs(40),
            "{took:?}"
        );
        let log = sim.log();
        assert_eq!(log.len(), 2, "the hung attempt and the retry");
    })
    .await
}
