//! Real sockets: `firebreak-jobs` through the firebreak stack against firebreak-sim's control
//! plane on 127.0.0.1, with the simulator's log as the witness of every request.

use firebreak::client::ApiKey;
use firebreak::retry::Backoff;
use firebreak_jobs::{
    CallTimeouts, ControlPlane, JobsError, ReconnectConfig, Resource, ResourceKind, WaitConfig,
    control_plane_stack,
};
use firebreak_sim::{ControlResource, GetFailure, Sim, SimConfig};
use firebreak_testkit::bounded;
use std::time::Duration;

const KEY: &str = "fw-test-key-jobs";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The control-plane stack with its backoff scaled down, and waits in milliseconds.
fn client(sim: &Sim) -> ControlPlane {
    let mut stack = control_plane_stack();
    stack.retry.backoff = Backoff {
        base: ms(5),
        cap: ms(40),
        ..stack.retry.backoff
    };
    ControlPlane::with_stack(
        &format!("http://{}", sim.addr()),
        ApiKey::new(KEY).unwrap(),
        stack,
    )
    .unwrap()
    .timeouts(CallTimeouts {
        get: ms(400),
        action: ms(400),
        healthz: ms(200),
    })
}

fn fast() -> ReconnectConfig {
    ReconnectConfig {
        poll_interval: ms(20),
        timeout: Duration::from_secs(5),
        max_wait_for_resumable: ms(1500),
        pending_timeout: Duration::from_secs(5),
        failed_get_retry: ms(20),
        transitional_repoll: ms(40),
        heartbeat: Duration::from_secs(60),
    }
}

fn job(id: &str) -> Resource {
    Resource::new(ResourceKind::RlorTrainerJob, "acct", id).unwrap()
}

fn count(sim: &Sim, method: &str, suffix: &str) -> usize {
    sim.log()
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .count()
}

#[tokio::test]
async fn preemption_then_resume_then_healthy_with_one_resume_per_preemption() {
    // Running, preempted on the third poll; a resume goes back through CREATING, and the
    // trainer's health check fails twice after each start.
    let mut r = ControlResource::new("rlorTrainerJobs", "j1")
        .then("JOB_STATE_RUNNING", 2)
        .stay("JOB_STATE_FAILED")
        .after_resume(&[("JOB_STATE_CREATING", Some(2)), ("JOB_STATE_RUNNING", None)]);
    r.unhealthy_checks = 5;
    r.message = Some("node preempted".into());
    let sim = Sim::start(SimConfig::default().api_key(KEY).resource(r))
        .await
        .unwrap();
    let cp = client(&sim);

    // Waiting on a running job that gets preempted mid-wait: the failure is reported with the
    // server's message, and a running job is never resumed.
    let e = bounded(30, cp.reconnect_and_wait(&job("j1"), &fast(), &mut |_| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e.reason, JobsError::Failed { message, .. } if message == "node preempted"),
        "{e}"
    );
    assert_eq!(count(&sim, "POST", ":resume"), 0);

    // Reconnecting: one resume, back through CREATING, healthy once the checks pass.
    let out = bounded(30, cp.reconnect_and_wait(&job("j1"), &fast(), &mut |_| {}))
        .await
        .unwrap();
    assert!(out.healthy && out.resumed, "{out:?}");
    assert_eq!(out.state, "JOB_STATE_RUNNING");
    assert_eq!(count(&sim, "POST", ":resume"), 1);
    let health: Vec<u16> = sim
        .log()
        .iter()
        .filter(|r| r.path.ends_with("/healthz"))
        .map(|r| r.status)
        .collect();
    assert_eq!(health.last(), Some(&200));
    assert!(
        health.iter().filter(|s| **s == 503).count() >= 5,
        "{health:?}"
    );
    // Every request carried the key, and the log holds every control-plane request.
    assert!(
        sim.log()
            .iter()
            .all(|r| r.header_names.iter().any(|h| h == "authorization"))
    );

    // Reconnecting again to the now healthy job: no second resume.
    let out = bounded(30, cp.reconnect_and_wait(&job("j1"), &fast(), &mut |_| {}))
        .await
        .unwrap();
    assert!(out.healthy && !out.resumed);
    assert_eq!(count(&sim, "POST", ":resume"), 1);
}

async fn flaky(
    failures: u32,
    kind: GetFailure,
) -> (
    Sim,
    Result<firebreak_jobs::Outcome, firebreak_jobs::WaitError>,
) {
    let mut r = ControlResource::new("rlorTrainerJobs", "j2").stay("JOB_STATE_RUNNING");
    r.get_failures = failures;
    r.get_failure = kind;
    let sim = Sim::start(SimConfig::default().api_key(KEY).resource(r))
        .await
        .unwrap();
    let cp = client(&sim);
    let res = bounded(30, cp.reconnect_and_wait(&job("j2"), &fast(), &mut |_| {})).await;
    (sim, res)
}

#[tokio::test]
async fn get_failures_shorter_than_the_allowance_are_ridden_out() {
    for kind in [GetFailure::Unavailable, GetFailure::Reset] {
        let (sim, res) = flaky(6, kind).await;
        let out = res.unwrap();
        assert!(out.healthy, "{kind:?}");
        let gets = count(&sim, "GET", "/rlorTrainerJobs/j2");
        assert!(gets >= 6 + 2, "{kind:?}: {gets} GETs");
    }
}

#[tokio::test]
async fn get_failures_longer_than_the_allowance_end_as_unreachable() {
    let started = std::time::Instant::now();
    let (sim, res) = flaky(1_000_000, GetFailure::Unavailable).await;
    let e = res.unwrap_err();
    assert!(matches!(e.reason, JobsError::Unreachable { .. }), "{e}");
    assert!(e.so_far.failed_polls >= 1);
    // The allowance is 1.5 s; a GET can be in flight for its 0.4 s deadline when it ends.
    let took = started.elapsed();
    assert!(
        took >= ms(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(count(&sim, "GET", "/rlorTrainerJobs/j2") >= 3);
    assert!(!e.to_string().contains(KEY));
}

#[tokio::test]
async fn a_tombstone_fails_on_the_first_poll_without_a_resume() {
    let r = ControlResource::new("rlorTrainerJobs", "j3").stay("JOB_STATE_DELETED");
    let sim = Sim::start(SimConfig::default().api_key(KEY).resource(r))
        .await
        .unwrap();
    // Through the account handle, as a user would call it.
    let cp = client(&sim);
    let e = bounded(
        30,
        cp.trainer_jobs("acct").reconnect_and_wait("j3", &fast()),
    )
    .await
    .unwrap_err();
    assert!(matches!(e.reason, JobsError::Tombstone { .. }), "{e}");
    assert_eq!(count(&sim, "GET", "/rlorTrainerJobs/j3"), 1);
    assert_eq!(count(&sim, "POST", ":resume"), 0);
}

#[tokio::test]
async fn a_job_stuck_in_creating_ends_as_stuck() {
    let r = ControlResource::new("rlorTrainerJobs", "j4").stay("JOB_STATE_CREATING");
    let sim = Sim::start(SimConfig::default().api_key(KEY).resource(r))
        .await
        .unwrap();
    let e = bounded(
        30,
        client(&sim).reconnect_and_wait(&job("j4"), &fast(), &mut |_| {}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e.reason, JobsError::Stuck { state, .. } if state == "JOB_STATE_CREATING"),
        "{e}"
    );
    assert_eq!(count(&sim, "POST", ":resume"), 0);
    // Re-polled every 40 ms for 1.5 s: at most about 38 GETs (never a tight loop), and more
    // than one (a slow machine's round trips only make them fewer).
    let gets = count(&sim, "GET", "/rlorTrainerJobs/j4");
    assert!((3..=60).contains(&gets), "{gets} GETs");
}

#[tokio::test]
async fn deployments_and_batch_jobs_are_waited_on_and_unknown_ones_refused() {
    let sim = Sim::start(
        SimConfig::default()
            .api_key(KEY)
            .resource(
                ControlResource::new("deployments", "d1")
                    .then("CREATING", 3)
                    .stay("READY"),
            )
            .resource(
                ControlResource::new("batchInferenceJobs", "b1")
                    .then("JOB_STATE_RUNNING", 2)
                    .then("JOB_STATE_WRITING_RESULTS", 1)
                    .stay("JOB_STATE_COMPLETED"),
            ),
    )
    .await
    .unwrap();
    let cp = client(&sim);
    let cfg = WaitConfig {
        poll_interval: ms(20),
        timeout: Duration::from_secs(5),
        ..WaitConfig::default()
    };
    let out = bounded(30, cp.deployments("acct").wait_ready("d1", &cfg))
        .await
        .unwrap();
    assert_eq!((out.state.as_str(), out.polls), ("READY", 4));
    let b = Resource::new(ResourceKind::BatchInferenceJob, "acct", "b1").unwrap();
    let out = bounded(30, cp.wait_terminal(&b, &cfg, &mut |_| {}))
        .await
        .unwrap();
    assert_eq!((out.state.as_str(), out.polls), ("JOB_STATE_COMPLETED", 4));
    let e = bounded(30, cp.deployments("acct").wait_ready("nope", &cfg))
        .await
        .unwrap_err();
    assert!(matches!(e.reason, JobsError::Refused { .. }), "{e}");
    assert_eq!(
        count(&sim, "GET", "/deployments/nope"),
        1,
        "a 404 is not retried"
    );
}
