//! Paused-time tests of every branch and timer, against a scripted control plane in memory.
//! Each timer is asserted from both sides: a resource that gets there when the time runs out
//! succeeds, one that gets there a second later fails, at exactly that time.

use super::*;
use bytes::Bytes;
use firebreak::{Error, FireworksBody};
use firebreak_testkit::{Captured, bounded};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What the scripted control plane answers.
enum A {
    State(&'static str),
    StateMsg(&'static str, &'static str),
    Json(String),
    Status(u16),
    Hang,
    Reset,
}

type Calls = Arc<Mutex<Vec<(f64, String)>>>;

/// A control plane whose answers are `script(seconds since start, method + path)`.
fn plane(script: impl Fn(f64, &str) -> A + Send + Sync + 'static) -> (ControlPlane, Calls) {
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let t0 = Instant::now();
    let script = Arc::new(script);
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let t = t0.elapsed().as_secs_f64();
        let what = format!("{} {}", req.method(), req.uri().path());
        let mut calls = log.lock().unwrap();
        // A wait that never ends would poll forever without moving the clock: bound it.
        assert!(calls.len() < 10_000, "runaway polling: {what} at {t} s");
        calls.push((t, what.clone()));
        drop(calls);
        let answer = script(t, &what);
        async move {
            let (status, body) = match answer {
                A::State(s) => (200, format!(r#"{{"state":"{s}"}}"#)),
                A::StateMsg(s, m) => (
                    200,
                    format!(r#"{{"state":"{s}","status":{{"message":"{m}"}}}}"#),
                ),
                A::Json(j) => (200, j),
                A::Status(s) => (s, r#"{"code":14,"message":"unavailable"}"#.to_owned()),
                A::Hang => {
                    tokio::time::sleep(Duration::from_secs(100_000)).await;
                    (200, String::new())
                }
                A::Reset => {
                    return Err(Error::transport(std::io::Error::from(
                        std::io::ErrorKind::ConnectionReset,
                    )));
                }
            };
            let body: FireworksBody = Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed();
            let mut resp = Response::new(body);
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, Error>(resp)
        }
    });
    let cp = ControlPlane::with_service(
        "http://control.invalid",
        tower::util::BoxCloneSyncService::new(svc),
    );
    (cp, calls)
}

fn job() -> Resource {
    Resource::new(ResourceKind::RlorTrainerJob, "acct", "job").unwrap()
}

const GET: &str = "GET /v1/accounts/acct/rlorTrainerJobs/job";
const RESUME: &str = "POST /v1/accounts/acct/rlorTrainerJobs/job:resume";
const HEALTH: &str = "GET /training/v1/rlorTrainerJobs/acct/job/api/v1/healthz";

fn times(calls: &Calls, what: &str) -> Vec<f64> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, w)| w == what)
        .map(|(t, _)| *t)
        .collect()
}

fn count(calls: &Calls, what: &str) -> usize {
    times(calls, what).len()
}

async fn reconnect(
    cp: &ControlPlane,
    cfg: ReconnectConfig,
) -> (Result<Outcome, WaitError>, Vec<Progress>) {
    let mut seen = Vec::new();
    let r = bounded(
        400_000,
        cp.reconnect_and_wait(&job(), &cfg, &mut |p| seen.push(p.clone())),
    )
    .await;
    (r, seen)
}

fn reason(r: Result<Outcome, WaitError>) -> (JobsError, Outcome) {
    match r {
        Err(e) => (e.reason, *e.so_far),
        Ok(o) => panic!("expected a failure, got {o:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_running_job_is_waited_on_and_never_resumed() {
    let (cp, calls) = plane(|_, w| match w {
        HEALTH => A::Status(200),
        _ => A::State("JOB_STATE_RUNNING"),
    });
    let (r, _) = reconnect(&cp, ReconnectConfig::default()).await;
    let out = r.unwrap();
    assert!(out.healthy && !out.resumed);
    assert_eq!(count(&calls, RESUME), 0);
    assert_eq!(count(&calls, HEALTH), 1);
    assert_eq!(out.elapsed, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn each_resumable_state_is_resumed_once_then_waited_on() {
    for from in [
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_PAUSED",
        "JOB_STATE_COMPLETED",
    ] {
        let resumed = Arc::new(Mutex::new(None::<f64>));
        let r2 = resumed.clone();
        let (cp, calls) = plane(move |t, w| {
            let mut r = r2.lock().unwrap();
            match (w, *r) {
                (RESUME, _) => {
                    *r = Some(t);
                    A::State("JOB_STATE_CREATING")
                }
                (GET, None) => A::State(from),
                // After the resume: CREATING for 12 s, then running and healthy.
                (GET, Some(at)) if t < at + 12.0 => A::State("JOB_STATE_CREATING"),
                (GET, Some(_)) => A::State("JOB_STATE_RUNNING"),
                (HEALTH, _) => A::Status(200),
                _ => A::Status(404),
            }
        });
        let (r, seen) = reconnect(&cp, ReconnectConfig::default()).await;
        let out = r.unwrap();
        assert!(out.healthy && out.resumed, "{from}");
        assert_eq!(count(&calls, RESUME), 1, "{from}");
        // Polls every 5 s after the resume: 0, 5, 10 (creating), 15 (running).
        assert_eq!(times(&calls, GET), [0.0, 0.0, 5.0, 10.0, 15.0], "{from}");
        assert!(
            seen.iter()
                .any(|p| matches!(p, Progress::Resumed { from: f, .. } if f == from))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_tombstone_fails_at_once_even_on_the_first_poll() {
    for state in ["JOB_STATE_DELETED", "JOB_STATE_ARCHIVED"] {
        let (cp, calls) = plane(move |_, _| A::State(state));
        let (e, so_far) = reason(reconnect(&cp, ReconnectConfig::default()).await.0);
        assert!(
            matches!(&e, JobsError::Tombstone { state: s, .. } if s == state),
            "{e}"
        );
        assert!(e.to_string().contains("create a new one"), "{e}");
        assert_eq!(so_far.elapsed, Duration::ZERO);
        assert_eq!(count(&calls, GET), 1);
        assert_eq!(count(&calls, RESUME), 0);
    }
    // And while waiting until healthy.
    let (cp, _) = plane(|t, w| match w {
        GET if t < 20.0 => A::State("JOB_STATE_RUNNING"),
        GET => A::State("JOB_STATE_DELETED"),
        _ => A::Status(503),
    });
    let (e, so_far) = reason(reconnect(&cp, ReconnectConfig::default()).await.0);
    assert!(matches!(e, JobsError::Tombstone { .. }), "{e}");
    assert_eq!(so_far.elapsed, Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn failing_while_waiting_gives_the_servers_message() {
    let (cp, calls) = plane(|t, w| match w {
        GET if t < 10.0 => A::State("JOB_STATE_RUNNING"),
        GET => A::StateMsg("JOB_STATE_FAILED", "node preempted"),
        _ => A::Status(503),
    });
    let (e, so_far) = reason(reconnect(&cp, ReconnectConfig::default()).await.0);
    assert!(
        matches!(&e, JobsError::Failed { message, .. } if message == "node preempted"),
        "{e}"
    );
    assert_eq!(so_far.elapsed, Duration::from_secs(10));
    assert_eq!(
        count(&calls, RESUME),
        0,
        "a failure after the decision is reported, not resumed again"
    );
}

/// A transitional state, re-polled every 10 s, until `max_wait_for_resumable` (120 s).
#[tokio::test(start_paused = true)]
async fn a_transitional_state_is_repolled_every_10s_until_the_resumable_wait_ends() {
    for (running_at, ok) in [(120.0, true), (121.0, false)] {
        let (cp, calls) = plane(move |t, w| match w {
            GET if t < running_at => A::State("JOB_STATE_CREATING"),
            GET => A::State("JOB_STATE_RUNNING"),
            _ => A::Status(200),
        });
        let (r, _) = reconnect(&cp, ReconnectConfig::default()).await;
        let polls = times(&calls, GET);
        let expected: Vec<f64> = (0..=12).map(|i| f64::from(i) * 10.0).collect();
        assert_eq!(polls[..13], expected[..], "running at {running_at}");
        if ok {
            assert!(r.unwrap().healthy);
        } else {
            let (e, so_far) = reason(r);
            assert!(
                matches!(&e, JobsError::Stuck { state, .. } if state == "JOB_STATE_CREATING"),
                "{e}"
            );
            assert_eq!(so_far.elapsed, Duration::from_secs(120));
            assert_eq!(polls.len(), 13);
        }
    }
}

/// Failed GETs: tried again every 5 s until `max_wait_for_resumable` (120 s).
#[tokio::test(start_paused = true)]
async fn failed_gets_are_retried_every_5s_until_the_allowance_ends() {
    for (back_at, ok) in [(120.0, true), (121.0, false)] {
        let (cp, calls) = plane(move |t, w| match w {
            GET if t < back_at && (t as u64) % 2 == 0 => A::Status(503),
            GET if t < back_at => A::Reset,
            GET => A::State("JOB_STATE_RUNNING"),
            _ => A::Status(200),
        });
        let (r, seen) = reconnect(&cp, ReconnectConfig::default()).await;
        let polls = times(&calls, GET);
        let expected: Vec<f64> = (0..=24).map(|i| f64::from(i) * 5.0).collect();
        assert_eq!(polls[..25], expected[..]);
        if ok {
            let out = r.unwrap();
            assert_eq!(out.failed_polls, 24);
            assert!(out.healthy);
        } else {
            let (e, so_far) = reason(r);
            assert!(
                matches!(&e, JobsError::Unreachable { failures: 25, .. }),
                "{e}"
            );
            assert_eq!(so_far.elapsed, Duration::from_secs(120));
            assert_eq!(so_far.failed_polls, 25);
        }
        assert!(
            seen.iter()
                .any(|p| matches!(p, Progress::PollFailed { .. }))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_get_hanging_past_30s_counts_as_failed_and_is_retried_5s_later() {
    let (cp, calls) = plane(|t, w| match w {
        GET if t < 1.0 => A::Hang,
        GET => A::State("JOB_STATE_RUNNING"),
        _ => A::Status(200),
    });
    let (r, _) = reconnect(&cp, ReconnectConfig::default()).await;
    let out = r.unwrap();
    assert_eq!(out.failed_polls, 1);
    // Not before 30 s (the GET's own deadline), then 5 s later.
    assert_eq!(times(&calls, GET)[..2], [0.0, 35.0]);
}

#[tokio::test(start_paused = true)]
async fn a_definite_refusal_ends_at_once() {
    let (cp, calls) = plane(|_, _| A::Status(404));
    let (e, _) = reason(reconnect(&cp, ReconnectConfig::default()).await.0);
    assert!(matches!(e, JobsError::Refused { .. }), "{e}");
    assert_eq!(count(&calls, GET), 1);
}

/// PENDING is bounded by `pending_timeout`; leaving it starts `timeout`.
#[tokio::test(start_paused = true)]
async fn pending_is_bounded_by_its_own_timeout() {
    let cfg = ReconnectConfig {
        pending_timeout: Duration::from_secs(100),
        ..ReconnectConfig::default()
    };
    for (running_at, ok) in [(100.0, true), (101.0, false)] {
        let resumed = Arc::new(Mutex::new(false));
        let r2 = resumed.clone();
        let (cp, calls) = plane(move |t, w| match w {
            RESUME => {
                *r2.lock().unwrap() = true;
                A::State("JOB_STATE_PENDING")
            }
            GET if !*r2.lock().unwrap() => A::State("JOB_STATE_FAILED"),
            GET if t < running_at => A::State("JOB_STATE_PENDING"),
            GET => A::State("JOB_STATE_RUNNING"),
            _ => A::Status(200),
        });
        let (r, seen) = reconnect(&cp, cfg).await;
        if ok {
            assert!(r.unwrap().healthy);
        } else {
            let (e, so_far) = reason(r);
            assert!(matches!(e, JobsError::PendingTooLong { .. }), "{e}");
            assert_eq!(so_far.elapsed, Duration::from_secs(100));
        }
        // Polled every 5 s while pending.
        let polls = times(&calls, GET);
        assert_eq!(polls[1..4], [0.0, 5.0, 10.0]);
        let beats: Vec<Duration> = seen
            .iter()
            .filter_map(|p| match p {
                Progress::Heartbeat { elapsed, .. } => Some(*elapsed),
                _ => None,
            })
            .collect();
        assert_eq!(beats, [Duration::from_secs(60)], "one heartbeat a minute");
    }
}

/// A job pending (re-queued for capacity) at the first poll is on its way back: no resume, and
/// `pending_timeout` bounds it, not the 120 s for transitional states.
#[tokio::test(start_paused = true)]
async fn a_job_pending_at_the_first_poll_is_waited_on_not_stuck() {
    let (cp, calls) = plane(|t, w| match w {
        GET if t < 200.0 => A::State("JOB_STATE_PENDING"),
        GET => A::State("JOB_STATE_RUNNING"),
        _ => A::Status(200),
    });
    let (r, seen) = reconnect(&cp, ReconnectConfig::default()).await;
    let out = r.unwrap();
    assert!(out.healthy && !out.resumed);
    assert_eq!(out.elapsed, Duration::from_secs(200));
    assert_eq!(count(&calls, RESUME), 0);
    let beats = seen
        .iter()
        .filter(|p| matches!(p, Progress::Heartbeat { .. }))
        .count();
    assert_eq!(beats, 3, "at 60, 120 and 180 s");
}

#[tokio::test(start_paused = true)]
async fn the_timeout_starts_when_the_job_leaves_pending() {
    // PENDING for 50 s, then RUNNING but unhealthy until `healthy_at`.
    for (healthy_at, ok) in [(650.0, true), (651.0, false)] {
        let (cp, calls) = plane(move |t, w| match w {
            GET if t < 50.0 => A::State("JOB_STATE_PENDING"),
            GET => A::State("JOB_STATE_RUNNING"),
            HEALTH if t >= healthy_at => A::Status(200),
            _ => A::Status(503),
        });
        let (r, _) = reconnect(&cp, ReconnectConfig::default()).await;
        if ok {
            let out = r.unwrap();
            assert!(out.healthy);
            assert_eq!(out.elapsed, Duration::from_secs(650));
        } else {
            let (e, so_far) = reason(r);
            assert!(
                matches!(&e, JobsError::TimedOut { state, .. } if state == "JOB_STATE_RUNNING"),
                "{e}"
            );
            assert_eq!(so_far.elapsed, Duration::from_secs(650));
        }
        // Health checked every 5 s while running.
        let h = times(&calls, HEALTH);
        assert_eq!(h[..3], [50.0, 55.0, 60.0]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_health_check_hanging_past_5s_is_unhealthy() {
    let (cp, calls) = plane(|t, w| match w {
        HEALTH if t < 1.0 => A::Hang,
        HEALTH => A::Status(200),
        _ => A::State("JOB_STATE_RUNNING"),
    });
    let (r, seen) = reconnect(&cp, ReconnectConfig::default()).await;
    assert!(r.unwrap().healthy);
    // The first check gives up at 5 s, the next poll is 5 s later.
    assert_eq!(times(&calls, HEALTH), [0.0, 10.0]);
    assert!(seen.contains(&Progress::Health { healthy: false }));
}

#[tokio::test(start_paused = true)]
async fn a_resume_with_dcp_save_interval_0_warns_and_an_absent_one_says_nothing() {
    for (json, warns) in [
        (
            r#"{"state":"JOB_STATE_FAILED","trainingConfig":{"dcpSaveInterval":0}}"#,
            true,
        ),
        (r#"{"state":"JOB_STATE_FAILED"}"#, false),
        (
            r#"{"state":"JOB_STATE_FAILED","dcpSaveInterval":50}"#,
            false,
        ),
    ] {
        let resumed = Arc::new(Mutex::new(false));
        let r2 = resumed.clone();
        let (cp, _) = plane(move |_, w| match w {
            RESUME => {
                *r2.lock().unwrap() = true;
                A::State("JOB_STATE_CREATING")
            }
            GET if !*r2.lock().unwrap() => A::Json(json.to_owned()),
            GET => A::State("JOB_STATE_RUNNING"),
            _ => A::Status(200),
        });
        let logs = Captured::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let _g = tracing::subscriber::set_default(sub);
        let (r, _) = reconnect(&cp, ReconnectConfig::default()).await;
        assert!(r.unwrap().resumed);
        let text = logs.text();
        assert_eq!(text.contains("optimizer state"), warns, "{json}: {text}");
        assert_eq!(text.contains("WARN"), warns, "{json}: {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_fails_ends_the_wait_with_its_error() {
    let (cp, calls) = plane(|_, w| match w {
        RESUME => A::Status(400),
        _ => A::State("JOB_STATE_PAUSED"),
    });
    let (e, so_far) = reason(reconnect(&cp, ReconnectConfig::default()).await.0);
    assert!(matches!(e, JobsError::ResumeFailed { .. }), "{e}");
    assert!(!so_far.resumed);
    assert_eq!(count(&calls, RESUME), 1);
}

#[tokio::test(start_paused = true)]
async fn unknown_states_are_waited_on_never_taken_as_an_ending() {
    let (cp, _) = plane(|t, w| match w {
        GET if t < 30.0 => A::State("JOB_STATE_SOMETHING_NEW"),
        GET => A::State("JOB_STATE_RUNNING"),
        _ => A::Status(200),
    });
    let out = reconnect(&cp, ReconnectConfig::default()).await.0.unwrap();
    assert_eq!(out.elapsed, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn bad_settings_and_kinds_are_typed_errors() {
    let (cp, calls) = plane(|_, _| A::State("JOB_STATE_RUNNING"));
    let cfg = ReconnectConfig {
        poll_interval: Duration::ZERO,
        ..ReconnectConfig::default()
    };
    let (e, _) = reason(reconnect(&cp, cfg).await.0);
    assert!(matches!(e, JobsError::Config(_)), "{e}");
    let dep = Resource::new(ResourceKind::Deployment, "a", "d").unwrap();
    let e = cp
        .reconnect_and_wait(&dep, &ReconnectConfig::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e.reason, JobsError::Config(_)));
    let e = cp
        .trainer_jobs("acct")
        .reconnect_and_wait("../x", &ReconnectConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e.reason, JobsError::Config(_)));
    assert!(
        calls.lock().unwrap().is_empty(),
        "nothing is sent for bad input"
    );
}

const DEP: &str = "GET /v1/accounts/acct/deployments/dep";

#[tokio::test(start_paused = true)]
async fn a_deployment_is_waited_on_until_ready_failed_or_deleted() {
    let cfg = WaitConfig {
        timeout: Duration::from_secs(60),
        ..WaitConfig::default()
    };
    let deployments = |cp: &ControlPlane| {
        let cp = cp.clone();
        async move { bounded(1000, cp.deployments("acct").wait_ready("dep", &cfg)).await }
    };
    for (ready_at, ok) in [(60.0, true), (61.0, false)] {
        let (cp, calls) = plane(move |t, _| {
            if t < ready_at {
                A::State("CREATING")
            } else {
                A::State("READY")
            }
        });
        let r = deployments(&cp).await;
        let expected: Vec<f64> = (0..=12).map(|i| f64::from(i) * 5.0).collect();
        assert_eq!(times(&calls, DEP), expected);
        match r {
            Ok(out) => assert!(ok && out.state == "READY"),
            Err(e) => assert!(!ok && matches!(e.reason, JobsError::TimedOut { .. })),
        }
    }
    let (cp, _) = plane(|_, _| A::StateMsg("FAILED", "quota"));
    let e = deployments(&cp).await.unwrap_err();
    assert!(matches!(&e.reason, JobsError::Failed { message, .. } if message == "quota"));
    let (cp, _) = plane(|_, _| A::State("DELETED"));
    assert!(matches!(
        deployments(&cp).await.unwrap_err().reason,
        JobsError::Tombstone { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_job_is_waited_on_until_it_ends() {
    let batch = Resource::new(ResourceKind::BatchInferenceJob, "acct", "b").unwrap();
    for (end, check) in [
        ("JOB_STATE_COMPLETED", "ok"),
        ("JOB_STATE_EARLY_STOPPED", "ok"),
        ("JOB_STATE_FAILED", "failed"),
        ("JOB_STATE_CANCELLED", "ended"),
        ("JOB_STATE_EXPIRED", "ended"),
        ("JOB_STATE_DELETED", "gone"),
    ] {
        let (cp, _) = plane(move |t, _| {
            if t < 12.0 {
                A::State("JOB_STATE_WRITING_RESULTS")
            } else {
                A::State(end)
            }
        });
        let r = bounded(
            10_000,
            cp.wait_terminal(&batch, &WaitConfig::default(), &mut |_| {}),
        )
        .await;
        match (check, r) {
            ("ok", Ok(out)) => assert_eq!(out.elapsed, Duration::from_secs(15)),
            ("failed", Err(e)) => assert!(matches!(e.reason, JobsError::Failed { .. })),
            ("ended", Err(e)) => assert!(matches!(e.reason, JobsError::Ended { .. })),
            ("gone", Err(e)) => assert!(matches!(e.reason, JobsError::Tombstone { .. })),
            (c, r) => panic!("{end}: expected {c}, got {r:?}"),
        }
    }
}

#[test]
fn every_ending_is_one_line_that_says_what_to_do() {
    let r = job;
    let e = || firebreak::Error::new(firebreak::Class::Other);
    let endings = [
        JobsError::Tombstone {
            resource: r(),
            state: "JOB_STATE_DELETED".into(),
        },
        JobsError::Failed {
            resource: r(),
            message: "node preempted".into(),
        },
        JobsError::Ended {
            resource: r(),
            state: "JOB_STATE_CANCELLED".into(),
        },
        JobsError::Stuck {
            resource: r(),
            state: "JOB_STATE_CREATING".into(),
            waited: Duration::from_secs(120),
        },
        JobsError::PendingTooLong {
            resource: r(),
            waited: Duration::from_secs(100),
        },
        JobsError::TimedOut {
            resource: r(),
            state: "JOB_STATE_RUNNING".into(),
            waited: Duration::from_secs(600),
        },
        JobsError::Unreachable {
            resource: r(),
            waited: Duration::from_secs(120),
            failures: 25,
            last: e(),
        },
        JobsError::Refused {
            resource: r(),
            error: e(),
        },
        JobsError::ResumeFailed {
            resource: r(),
            error: e(),
        },
    ];
    for ending in endings {
        let text = ending.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with("rlorTrainerJobs/job"),
            "names the resource: {text}"
        );
        // What happened; then, after the semicolon, what to do.
        let (_, advice) = text
            .rsplit_once("; ")
            .unwrap_or_else(|| panic!("no advice: {text}"));
        assert!(advice.split_whitespace().count() >= 3, "{text}");
    }
}
