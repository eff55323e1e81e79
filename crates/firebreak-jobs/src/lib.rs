//! `firebreak-jobs`: waiting on Fireworks AI's long-running resources (trainer, fine-tuning and
//! batch jobs, deployments) through the firebreak stack.
//!
//! Every GET and POST is one call through firebreak's classify, timeout and retry layers, with
//! the control plane's preset ([`control_plane_stack`]) and a deadline per call
//! ([`CallTimeouts`]). On top of that:
//! - [`ControlPlane::reconnect_and_wait`] (or [`TrainerJobs::reconnect_and_wait`]): the
//!   Fireworks SDK's `TrainerJobManager.reconnect_and_wait`, resuming a preempted trainer job and
//!   waiting until it is healthy;
//! - [`ControlPlane::wait_ready`] (or [`Deployments::wait_ready`]): a deployment until READY;
//! - [`ControlPlane::wait_terminal`]: any job until it ends;
//! - [`ControlPlane::wait_for`]: any resource until a predicate of yours says so.
//!
//! Each ending is a [`JobsError`] variant whose one-line `Display` says what to do; unknown
//! states are kept as strings and waited on. Timers run on tokio's clock, so tests drive them
//! with paused time.
//!
//! ```no_run
//! use firebreak_jobs::{ControlPlane, ReconnectConfig, FIREWORKS_CONTROL_URL};
//! use firebreak::client::ApiKey;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cp = ControlPlane::new(FIREWORKS_CONTROL_URL, ApiKey::from_env()?)?;
//! let out = cp
//!     .trainer_jobs("my-account")
//!     .reconnect_and_wait("my-job", &ReconnectConfig::default())
//!     .await?;
//! println!("healthy after {:?} ({} polls, resumed: {})", out.elapsed, out.polls, out.resumed);
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod state;
mod wait;

pub use client::{
    CallTimeouts, ControlPlane, FIREWORKS_CONTROL_URL, Resource, ResourceKind, Snapshot,
    control_plane_stack,
};
pub use error::{JobsError, WaitError};
pub use state::{DeploymentState, JobState};
pub use wait::{Outcome, Progress, ReconnectConfig, Verdict, WaitConfig};

#[cfg(test)]
mod tests;

/// The trainer jobs of one account.
#[derive(Debug, Clone, Copy)]
pub struct TrainerJobs<'a> {
    cp: &'a ControlPlane,
    account: &'a str,
}

impl TrainerJobs<'_> {
    /// [`ControlPlane::reconnect_and_wait`] for the job `id`, without progress reports.
    ///
    /// # Errors
    /// As [`ControlPlane::reconnect_and_wait`]; an invalid id is [`JobsError::Config`].
    pub async fn reconnect_and_wait(
        &self,
        id: &str,
        cfg: &ReconnectConfig,
    ) -> Result<Outcome, WaitError> {
        let job = resource(ResourceKind::RlorTrainerJob, self.account, id)?;
        self.cp.reconnect_and_wait(&job, cfg, &mut |_| {}).await
    }
}

/// The deployments of one account.
#[derive(Debug, Clone, Copy)]
pub struct Deployments<'a> {
    cp: &'a ControlPlane,
    account: &'a str,
}

impl Deployments<'_> {
    /// [`ControlPlane::wait_ready`] for the deployment `id`, without progress reports.
    ///
    /// # Errors
    /// As [`ControlPlane::wait_ready`]; an invalid id is [`JobsError::Config`].
    pub async fn wait_ready(&self, id: &str, cfg: &WaitConfig) -> Result<Outcome, WaitError> {
        let d = resource(ResourceKind::Deployment, self.account, id)?;
        self.cp.wait_ready(&d, cfg, &mut |_| {}).await
    }
}

fn resource(kind: ResourceKind, account: &str, id: &str) -> Result<Resource, WaitError> {
    Resource::new(kind, account, id)
        .map_err(|reason| WaitError::before_start(Resource::placeholder(kind), reason))
}

impl ControlPlane {
    /// The trainer jobs of `account`.
    pub fn trainer_jobs<'a>(&'a self, account: &'a str) -> TrainerJobs<'a> {
        TrainerJobs { cp: self, account }
    }

    /// The deployments of `account`.
    pub fn deployments<'a>(&'a self, account: &'a str) -> Deployments<'a> {
        Deployments { cp: self, account }
    }
}
