//! firebreak's metrics over real loopback sockets against firebreak-sim: the counters a
//! recording recorder saw must equal the simulator's own attempt log, class by class, and
//! failures that never reached the server must be counted as client-side.

use firebreak::names;
use firebreak::retry::Jitter;
use firebreak::timeout::{TimeoutConfig, Workload};
use firebreak::{
    Class, Error, FireworksClient, Stack, client::ApiKey, gate::GateConfig, retry::RetryConfig,
};
use firebreak_sim::{AttemptRecord, DelayHeader, Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::*;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::time::Duration;

use firebreak_testkit::status_fault as status;

fn stack(max_attempts: u32) -> Stack {
    let timeouts = TimeoutConfig::preset(Workload::Interactive)
        .headers(Some(Duration::from_millis(300)))
        .connect(Some(Duration::from_millis(200)));
    let retry = RetryConfig::default()
        .max_attempts(max_attempts)
        .backoff(firebreak::retry::Backoff {
            jitter: Jitter::Full,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        })
        .seed(Some(3));
    Stack::interactive().timeouts(timeouts).retry(retry)
}

/// The class firebreak must give an attempt the simulator logged.
fn class_of(r: &AttemptRecord) -> Class {
    match (r.status, r.fault.as_deref()) {
        (0, Some("hang")) => Class::Timeout(firebreak::TimeoutPhase::Headers),
        (0, Some("reset_before_response")) => Class::ResetBeforeResponse,
        (0, other) => panic!("unexpected headless attempt: {other:?}"),
        (s, _) => status_class(s),
    }
}

/// The class of each status this test's simulator sends, written out (not computed by the
/// classifier under test).
fn status_class(s: u16) -> Class {
    match s {
        200 => Class::Success,
        404 => Class::ClientError(firebreak::ClientErrorKind::NotFound),
        429 => Class::RateLimited,
        500 => Class::ServerError,
        503 => Class::Overloaded,
        other => panic!("the simulator sent an unexpected status {other}"),
    }
}

/// One call, body read to the end: its final class.
async fn call(client: &FireworksClient, id: &str) -> Class {
    match client.post("/chat/completions", chat_body(id, true)).await {
        Err(e) => e.class(),
        Ok(resp) if !resp.status().is_success() => status_class(resp.status().as_u16()),
        Ok(resp) => match resp.into_body().collect().await {
            Ok(_) => Class::Success,
            Err(e) => e.class(),
        },
    }
}

/// Waits (bounded) until the simulator's log stops growing: hung attempts are logged when the
/// simulator lets go of them.
async fn settled_log(sim: &Sim) -> Vec<AttemptRecord> {
    let mut last = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = sim.log_len();
        if n == last {
            break;
        }
        last = n;
    }
    sim.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_simulators_attempt_log_exactly() {
    bounded(90, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .seed(11)
                .fault(Trigger::Probability { p: 0.10 }, status(503, vec![]))
                .fault(
                    Trigger::Probability { p: 0.08 },
                    status(429, vec![DelayHeader::RetryAfterMs { ms: 30.0 }]),
                )
                .fault(Trigger::Probability { p: 0.06 }, status(500, vec![]))
                .fault(Trigger::Probability { p: 0.05 }, Fault::ResetBeforeResponse)
                .fault(
                    Trigger::Probability { p: 0.04 },
                    Fault::Hang { for_ms: 500 },
                )
                .fault(
                    Trigger::Probability { p: 0.04 },
                    Fault::ResetMidStream { after_chunks: 2 },
                )
                .fault(Trigger::Probability { p: 0.03 }, status(404, vec![])),
        )
        .await
        .unwrap();
        let rec = Recorded::new();
        let client = rec
            .build(|| FireworksClient::new(&sim.base_url(), ApiKey::new(KEY).unwrap(), stack(5)))
            .unwrap();
        const N: usize = 80;
        let outcomes: Vec<Class> = futures_util::stream::iter(0..N)
            .map(|i| {
                let client = client.clone();
                async move { call(&client, &format!("obs-{i:03}")).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let log = settled_log(&sim).await;

        // Attempts: every logged attempt, class by class, and nothing else reached the server.
        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &log {
            *expected.entry(class_of(r).label()).or_default() += 1;
        }
        let seen: BTreeMap<String, u64> = rec
            .counters_by(names::ATTEMPTS, "class")
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        let expected_owned: BTreeMap<String, u64> =
            expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(
            seen, expected_owned,
            "attempts by class vs the simulator's log"
        );
        assert!(
            expected.len() >= 5,
            "the fault mix should show: {expected:?}"
        );
        assert_eq!(
            rec.counter(names::ATTEMPTS, &[("reached_server", "true")]),
            log.len() as u64
        );
        assert_eq!(rec.counter(names::CLIENT_FAILURES, &[]), 0);
        let logged_429 = log.iter().filter(|r| r.status == 429).count() as u64;
        assert!(logged_429 > 0);
        assert_eq!(rec.counter(names::HTTP_429, &[]), logged_429);

        // Retries: every attempt after a request's first, by the class of the one before it.
        let mut by_id: BTreeMap<&str, Vec<&AttemptRecord>> = BTreeMap::new();
        for r in &log {
            by_id
                .entry(r.request_id.as_deref().unwrap())
                .or_default()
                .push(r);
        }
        assert_eq!(by_id.len(), N, "every request reached the simulator");
        let mut retries: BTreeMap<String, u64> = BTreeMap::new();
        for attempts in by_id.values_mut() {
            attempts.sort_by_key(|r| r.attempt);
            for w in attempts.windows(2) {
                *retries
                    .entry(class_of(w[0]).label().to_owned())
                    .or_default() += 1;
            }
        }
        let seen_retries: BTreeMap<String, u64> = rec
            .counters_by(names::RETRIES, "reason")
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert_eq!(seen_retries, retries);
        let n_retries: u64 = retries.values().sum();
        assert_eq!(
            rec.samples(names::BACKOFF_MS, &[]).len() as u64,
            n_retries,
            "one backoff sample per retry"
        );

        // Logical requests: each once, with the class the caller saw.
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for c in &outcomes {
            if !c.is_success() {
                *want.entry(c.label().to_owned()).or_default() += 1;
            }
        }
        let failures: BTreeMap<String, u64> = rec
            .counters_by(names::CALLS, "class")
            .into_iter()
            .filter(|(k, v)| *v > 0 && k != "success")
            .collect();
        assert_eq!(failures, want);
        let successes = outcomes.iter().filter(|c| c.is_success()).count() as u64;
        assert_eq!(
            rec.counter(names::CALLS, &[("outcome", "success")]),
            successes
        );
        assert_eq!(rec.counter(names::CALLS, &[]), N as u64);
        assert_eq!(rec.samples(names::OVERALL_MS, &[]).len(), N);
        // Streams cut after two chunks failed as reset_mid_body, never retried.
        let cut = log
            .iter()
            .filter(|r| r.fault.as_deref() == Some("reset_mid_stream"))
            .count() as u64;
        assert_eq!(
            rec.counter(
                names::CALLS,
                &[("outcome", "failure"), ("class", "reset_mid_body")]
            ),
            cut
        );
        assert!(rec.samples(names::FIRST_BYTE_MS, &[]).len() as u64 >= successes);
    })
    .await
}

#[tokio::test]
async fn refused_connects_bad_certificates_and_connect_timeouts_are_client_side() {
    bounded(30, async {
        let rec = Recorded::new();
        let refused = rec
            .build(|| {
                FireworksClient::new(
                    &format!("http://{}", refused_addr()),
                    ApiKey::new(KEY).unwrap(),
                    stack(3),
                )
            })
            .unwrap();
        for i in 0..4 {
            let e: Error = refused
                .post("/chat/completions", chat_body(&format!("r{i}"), false))
                .await
                .unwrap_err();
            assert!(e.is_client_side(), "{e}");
        }
        assert_eq!(
            rec.counter(names::CLIENT_FAILURES, &[("kind", "refused")]),
            12
        );
        assert_eq!(
            rec.counter(names::ATTEMPTS, &[("class", "connect_refused")]),
            12
        );
        assert_eq!(
            rec.counter(names::ATTEMPTS, &[("reached_server", "true")]),
            0
        );
        assert_eq!(
            rec.counter(
                names::CALLS,
                &[("outcome", "failure"), ("class", "connect_refused")]
            ),
            4
        );

        // A bad certificate: client-side, and not retried (it will not fix itself).
        let tls = self_signed_tls_server().await;
        let rec = Recorded::new();
        let bad_cert = rec
            .build(|| {
                FireworksClient::new(
                    &format!("https://localhost:{}", tls.port()),
                    ApiKey::new(KEY).unwrap(),
                    stack(3),
                )
            })
            .unwrap();
        let e = bad_cert
            .post("/chat/completions", chat_body("tls", false))
            .await
            .unwrap_err();
        assert!(e.is_client_side(), "{e}");
        assert_eq!(rec.counter(names::CLIENT_FAILURES, &[("kind", "tls")]), 1);
        assert_eq!(rec.counter(names::CLIENT_FAILURES, &[]), 1);
        assert_eq!(
            rec.counter(
                names::CALLS,
                &[("outcome", "failure"), ("class", "connect_tls")]
            ),
            1
        );

        let (addr, _fill, _listener) = blackhole();
        let rec = Recorded::new();
        let hole = rec
            .build(|| {
                FireworksClient::new(
                    &format!("http://{addr}"),
                    ApiKey::new(KEY).unwrap(),
                    stack(2),
                )
            })
            .unwrap();
        let e = hole
            .post("/chat/completions", chat_body("hole", false))
            .await
            .unwrap_err();
        assert!(e.is_client_side(), "{e}");
        assert_eq!(
            rec.counter(names::CLIENT_FAILURES, &[("kind", "connect_timeout")]),
            2
        );
        assert_eq!(rec.counter(names::CLIENT_FAILURES, &[]), 2);
        assert_eq!(
            rec.counter(names::ATTEMPTS, &[("reached_server", "false")]),
            2
        );
    })
    .await
}

#[tokio::test]
async fn a_request_the_gate_refuses_is_a_client_side_failure_the_server_never_sees() {
    bounded(30, async {
        let sim = Sim::start(
            SimConfig::default()
                .api_key(KEY)
                .fault(Trigger::Always, Fault::SlowTtfb { delay_ms: 300 }),
        )
        .await
        .unwrap();
        let gate = GateConfig::default()
            .initial_concurrency(1)
            .min_concurrency(1)
            .max_concurrency(1)
            .max_queue(1);
        let rec = Recorded::new();
        let client = rec
            .build(|| {
                FireworksClient::new(
                    &sim.base_url(),
                    ApiKey::new(KEY).unwrap(),
                    Stack::interactive().gate(gate),
                )
            })
            .unwrap();
        let calls = (0..3).map(|i| {
            let client = client.clone();
            async move { call(&client, &format!("g{i}")).await }
        });
        let outcomes = futures_util::future::join_all(calls).await;
        assert_eq!(
            outcomes
                .iter()
                .filter(|c| **c == Class::GateRefused)
                .count(),
            1,
            "{outcomes:?}"
        );
        let log = settled_log(&sim).await;
        assert_eq!(log.len(), 2);
        assert_eq!(
            rec.counter(names::CLIENT_FAILURES, &[("kind", "gate_refused")]),
            1
        );
        assert_eq!(
            rec.counter(names::ATTEMPTS, &[("reached_server", "true")]),
            2
        );
        let waited = rec.samples(names::GATE_WAIT_MS, &[("reason", "concurrency")]);
        assert_eq!(waited.len(), 1, "{waited:?}");
        assert!(waited[0] >= 250.0, "{waited:?}");
    })
    .await
}
