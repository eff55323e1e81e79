//! Reconnect to a preempted trainer job and wait until it is healthy.
//!
//! `cargo run -p firebreak-jobs --example trainer_reconnect` runs against an embedded simulator
//! (no key, no network): the job was preempted (FAILED), the resume goes back through CREATING
//! and PENDING, the first polls fail with 503s and the health check fails twice before it
//! answers 200. With `FIREWORKS_API_KEY`, `FIREWORKS_ACCOUNT` and `TRAINER_JOB` set, it
//! reconnects to that job on Fireworks instead.

use firebreak::client::ApiKey;
use firebreak_jobs::{
    ControlPlane, FIREWORKS_CONTROL_URL, Progress, ReconnectConfig, Resource, ResourceKind,
};
use firebreak_sim::{ControlResource, Sim, SimConfig};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // WARN and above: the resume warning about `dcp_save_interval`, failed polls.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let real = (
        std::env::var("FIREWORKS_ACCOUNT"),
        std::env::var("TRAINER_JOB"),
        ApiKey::from_env(),
    );
    let (cp, job, cfg, _sim) = match real {
        (Ok(account), Ok(id), Ok(key)) => (
            ControlPlane::new(FIREWORKS_CONTROL_URL, key)?,
            Resource::new(ResourceKind::RlorTrainerJob, account, id)?,
            ReconnectConfig::default(),
            None,
        ),
        _ => {
            let mut job = ControlResource::new("rlorTrainerJobs", "demo-job")
                .stay("JOB_STATE_FAILED")
                .after_resume(&[
                    ("JOB_STATE_CREATING", Some(2)),
                    ("JOB_STATE_PENDING", Some(2)),
                    ("JOB_STATE_RUNNING", None),
                ]);
            job.get_failures = 2;
            job.unhealthy_checks = 2;
            job.dcp_save_interval = Some(0);
            let sim = Sim::start(SimConfig::default().resource(job)).await?;
            println!("embedded simulator on {}", sim.addr());
            let cp = ControlPlane::new(&format!("http://{}", sim.addr()), ApiKey::new("sim-key")?)?;
            // The simulator answers at once: poll faster than Fireworks would need.
            let cfg = ReconnectConfig {
                poll_interval: Duration::from_millis(200),
                failed_get_retry: Duration::from_millis(200),
                ..ReconnectConfig::default()
            };
            let job = Resource::new(ResourceKind::RlorTrainerJob, "demo-account", "demo-job")?;
            (cp, job, cfg, Some(sim))
        }
    };
    let out = cp
        .reconnect_and_wait(&job, &cfg, &mut |p| match p {
            Progress::Polled { state, elapsed } => {
                println!("{:>6.1} s  {state}", elapsed.as_secs_f64())
            }
            Progress::PollFailed { error, .. } => println!("          poll failed: {error}"),
            Progress::Resumed {
                from,
                dcp_save_interval,
            } => {
                println!(
                    "          resumed from {from} (dcp_save_interval: {dcp_save_interval:?})"
                );
            }
            Progress::Health { healthy } => println!(
                "          health check: {}",
                if *healthy { "200" } else { "not yet" }
            ),
            _ => {}
        })
        .await?;
    println!(
        "{job} healthy after {:.1} s: {} polls, {} failed, resumed: {}",
        out.elapsed.as_secs_f64(),
        out.polls,
        out.failed_polls,
        out.resumed
    );
    Ok(())
}
