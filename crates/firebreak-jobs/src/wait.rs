//! Waiting: the generic [`ControlPlane::wait_for`], and on top of it the trainer's
//! reconnect-and-wait, a deployment's readiness and a job's end.
//!
//! Every timer is a deadline checked at a poll, and no sleep runs past one: the last poll
//! happens exactly when the time runs out, so a resource that gets there at that moment counts.

use crate::client::{ControlPlane, Resource, ResourceKind, Snapshot};
use crate::error::{JobsError, WaitError};
use crate::state::{DeploymentState, JobState};
use std::time::Duration;
use tokio::time::Instant;

/// The trainer's `reconnect_and_wait` settings; the defaults are the Fireworks SDK's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Between health polls once resumed or running: 5 s.
    pub poll_interval: Duration,
    /// From leaving PENDING to healthy: 600 s.
    pub timeout: Duration,
    /// From the start, for failed GETs and for states that are neither running nor resumable
    /// (CREATING, DELETING…); also the longest streak of failed polls later on: 120 s.
    pub max_wait_for_resumable: Duration,
    /// Waiting for capacity (JOB_STATE_PENDING): 48 h.
    pub pending_timeout: Duration,
    /// Between two tries of a failed GET: 5 s.
    pub failed_get_retry: Duration,
    /// Between two polls of a transitional state before the resume decision: 10 s.
    pub transitional_repoll: Duration,
    /// Between two heartbeat log lines: 60 s.
    pub heartbeat: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            poll_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(600),
            max_wait_for_resumable: Duration::from_secs(120),
            pending_timeout: Duration::from_secs(48 * 3600),
            failed_get_retry: Duration::from_secs(5),
            transitional_repoll: Duration::from_secs(10),
            heartbeat: Duration::from_secs(60),
        }
    }
}

impl ReconnectConfig {
    fn validate(&self) -> Result<(), JobsError> {
        check(&[
            ("poll_interval", self.poll_interval),
            ("timeout", self.timeout),
            ("max_wait_for_resumable", self.max_wait_for_resumable),
            ("pending_timeout", self.pending_timeout),
            ("failed_get_retry", self.failed_get_retry),
            ("transitional_repoll", self.transitional_repoll),
            ("heartbeat", self.heartbeat),
        ])
    }
}

/// Settings of a generic wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitConfig {
    /// Between polls: 5 s.
    pub poll_interval: Duration,
    /// The whole wait: 1 h.
    pub timeout: Duration,
    /// The longest streak of failed polls: 120 s.
    pub max_unreachable: Duration,
    /// Between two heartbeat log lines: 60 s.
    pub heartbeat: Duration,
}

impl Default for WaitConfig {
    fn default() -> Self {
        WaitConfig {
            poll_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3600),
            max_unreachable: Duration::from_secs(120),
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// A day a year: longer settings are taken as a unit mistake.
const MAX_SETTING: Duration = Duration::from_secs(366 * 24 * 3600);

fn check(values: &[(&str, Duration)]) -> Result<(), JobsError> {
    for (name, d) in values {
        if d.is_zero() || *d > MAX_SETTING {
            return Err(JobsError::Config(format!(
                "{name} must be over 0 and at most a year, got {d:?}"
            )));
        }
    }
    Ok(())
}

/// What a wait saw, for its end (success or not) and for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The resource.
    pub resource: Resource,
    /// The last state seen (empty before the first successful poll).
    pub state: String,
    /// Whether the trainer's health check answered 200.
    pub healthy: bool,
    /// Whether `:resume` was sent.
    pub resumed: bool,
    /// Successful polls.
    pub polls: u32,
    /// Failed polls.
    pub failed_polls: u32,
    /// From the start of the wait to its end.
    pub elapsed: Duration,
}

/// What happened, as it happens: for spinners and logs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Progress {
    /// A poll answered.
    Polled {
        /// The state.
        state: String,
        /// Since the start.
        elapsed: Duration,
    },
    /// A poll failed (it will be tried again).
    PollFailed {
        /// The failure, as text.
        error: String,
        /// Failed polls so far.
        failed_polls: u32,
    },
    /// `:resume` was sent.
    Resumed {
        /// The state it was resumed from.
        from: String,
        /// The job's `dcpSaveInterval`, when it states one (0: optimizer state since the last
        /// final checkpoint is lost).
        dcp_save_interval: Option<u64>,
    },
    /// The health check answered.
    Health {
        /// Whether it was exactly 200.
        healthy: bool,
    },
    /// Still waiting (every `heartbeat`).
    Heartbeat {
        /// The last state.
        state: String,
        /// Since the start.
        elapsed: Duration,
    },
}

/// A predicate's verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Keep polling.
    Wait,
    /// Done: the wait succeeds.
    Done,
    /// Failed, with the control plane's message.
    Failed(String),
    /// Ended in a state that is not success.
    Ended,
    /// A tombstone.
    Gone,
}

/// One wait's clock, counters and progress sink: the one owner of polling, failure
/// allowances, sleeps that stop at deadlines, and heartbeats.
struct Waiter<'a> {
    cp: &'a ControlPlane,
    out: Outcome,
    start: Instant,
    last_beat: Instant,
    heartbeat: Duration,
    on: &'a mut dyn FnMut(&Progress),
}

impl<'a> Waiter<'a> {
    fn new(
        cp: &'a ControlPlane,
        r: &Resource,
        heartbeat: Duration,
        on: &'a mut dyn FnMut(&Progress),
    ) -> Self {
        let now = Instant::now();
        Waiter {
            cp,
            out: Outcome {
                resource: r.clone(),
                state: String::new(),
                healthy: false,
                resumed: false,
                polls: 0,
                failed_polls: 0,
                elapsed: Duration::ZERO,
            },
            start: now,
            last_beat: now,
            heartbeat,
            on,
        }
    }

    fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    fn fail(mut self, reason: JobsError) -> Result<Outcome, WaitError> {
        self.out.elapsed = self.elapsed();
        Err(WaitError {
            reason,
            so_far: Box::new(self.out),
        })
    }

    fn done(mut self) -> Result<Outcome, WaitError> {
        self.out.elapsed = self.elapsed();
        tracing::info!(resource = %self.out.resource, state = %self.out.state, elapsed_s = self.out.elapsed.as_secs_f64(), "wait over");
        Ok(self.out)
    }

    fn resource(&self) -> Resource {
        self.out.resource.clone()
    }

    /// A heartbeat when one is due.
    fn beat(&mut self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_beat) >= self.heartbeat {
            self.last_beat = now;
            let elapsed = self.elapsed();
            tracing::info!(resource = %self.out.resource, state = %self.out.state, elapsed_s = elapsed.as_secs(), "still waiting");
            (self.on)(&Progress::Heartbeat {
                state: self.out.state.clone(),
                elapsed,
            });
        }
    }

    /// Sleeps `every`, but never past `until`.
    async fn pause(&mut self, every: Duration, until: Instant) {
        let now = Instant::now();
        tokio::time::sleep_until((now + every).min(until.max(now))).await;
        self.beat();
    }

    /// GETs the resource. A failed GET that could succeed later is tried again every `every`,
    /// until `give_up_at` or until the failures have lasted `allowance`, whichever is first;
    /// a definite refusal (401, 403, 404, 400) ends the wait at once. Each GET is bounded by
    /// the GET timeout and by the time left (at least a second).
    async fn get(
        &mut self,
        every: Duration,
        allowance: Duration,
        give_up_at: Instant,
    ) -> Result<Snapshot, JobsError> {
        let r = self.resource();
        let mut streak: Option<(Instant, u32)> = None;
        loop {
            // A poll never outlives the time it has: the stack's own retries inside it stop
            // there too (but a poll at the very end still gets a second).
            let until = streak.map_or(give_up_at, |(since, _)| give_up_at.min(since + allowance));
            let limit = until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            match self.cp.get_within(&r, limit).await {
                Ok(s) => {
                    self.out.polls += 1;
                    self.out.state.clone_from(&s.state);
                    let elapsed = self.elapsed();
                    (self.on)(&Progress::Polled {
                        state: s.state.clone(),
                        elapsed,
                    });
                    return Ok(s);
                }
                Err(e) if !worth_waiting(&e) => {
                    return Err(JobsError::Refused {
                        resource: r,
                        error: e,
                    });
                }
                Err(e) => {
                    self.out.failed_polls += 1;
                    let now = Instant::now();
                    let (since, n) = streak.get_or_insert((now, 0));
                    *n += 1;
                    (self.on)(&Progress::PollFailed {
                        error: e.to_string(),
                        failed_polls: self.out.failed_polls,
                    });
                    tracing::warn!(resource = %r, error = %e, "poll failed; trying again");
                    let until = give_up_at.min(*since + allowance);
                    if now >= until {
                        return Err(JobsError::Unreachable {
                            resource: r,
                            waited: now.saturating_duration_since(*since),
                            failures: *n,
                            last: e,
                        });
                    }
                    self.pause(every, until).await;
                }
            }
        }
    }
}

/// Whether a failed call could succeed later: no answer at all (connect, reset, timeout), or a
/// retryable status (408, 429, 5xx).
fn worth_waiting(e: &firebreak::Error) -> bool {
    match e.status() {
        None => true,
        Some(s) => s.as_u16() == 408 || e.is_retryable(),
    }
}

fn job_state(s: &Snapshot) -> JobState {
    JobState::parse(&s.state)
}

impl ControlPlane {
    /// Polls `r` every `cfg.poll_interval` until `verdict` says it is done, failed or gone, or
    /// `cfg.timeout` passes. Failed polls are tried again within `cfg.max_unreachable`.
    ///
    /// ```no_run
    /// # async fn f(cp: firebreak_jobs::ControlPlane, r: firebreak_jobs::Resource) {
    /// use firebreak_jobs::{Verdict, WaitConfig};
    /// let out = cp
    ///     .wait_for(&r, &WaitConfig::default(), |s| match s.state.as_str() {
    ///         "READY" => Verdict::Done,
    ///         _ => Verdict::Wait,
    ///     }, &mut |p| eprintln!("{p:?}"))
    ///     .await;
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`WaitError`], whose reason is the ending: [`JobsError::Failed`], [`JobsError::Ended`],
    /// [`JobsError::Tombstone`], [`JobsError::TimedOut`], [`JobsError::Unreachable`],
    /// [`JobsError::Refused`] or [`JobsError::Config`].
    pub async fn wait_for(
        &self,
        r: &Resource,
        cfg: &WaitConfig,
        mut verdict: impl FnMut(&Snapshot) -> Verdict,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, WaitError> {
        if let Err(e) = check(&[
            ("poll_interval", cfg.poll_interval),
            ("timeout", cfg.timeout),
            ("max_unreachable", cfg.max_unreachable),
            ("heartbeat", cfg.heartbeat),
        ]) {
            return Err(WaitError::before_start(r.clone(), e));
        }
        let mut w = Waiter::new(self, r, cfg.heartbeat, on_progress);
        let end = w.start + cfg.timeout;
        loop {
            let s = match w.get(cfg.poll_interval, cfg.max_unreachable, end).await {
                Ok(s) => s,
                Err(e) => return w.fail(e),
            };
            let resource = w.resource();
            match verdict(&s) {
                Verdict::Done => return w.done(),
                Verdict::Failed(m) => {
                    let message = if m.is_empty() { s.reason() } else { m };
                    return w.fail(JobsError::Failed { resource, message });
                }
                Verdict::Ended => {
                    return w.fail(JobsError::Ended {
                        resource,
                        state: s.state,
                    });
                }
                Verdict::Gone => {
                    return w.fail(JobsError::Tombstone {
                        resource,
                        state: s.state,
                    });
                }
                Verdict::Wait if Instant::now() >= end => {
                    let waited = w.elapsed();
                    return w.fail(JobsError::TimedOut {
                        resource,
                        state: s.state,
                        waited,
                    });
                }
                Verdict::Wait => w.pause(cfg.poll_interval, end).await,
            }
        }
    }

    /// Waits until a deployment is READY: FAILED fails with its message, DELETED or DELETING
    /// is a tombstone, anything else (CREATING, UPDATING, unknown) is waited on.
    ///
    /// # Errors
    /// As [`ControlPlane::wait_for`]; [`JobsError::Config`] for a resource that is not a deployment.
    pub async fn wait_ready(
        &self,
        deployment: &Resource,
        cfg: &WaitConfig,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, WaitError> {
        if deployment.kind() != ResourceKind::Deployment {
            return Err(WaitError::before_start(
                deployment.clone(),
                JobsError::Config(format!("{deployment} is not a deployment")),
            ));
        }
        self.wait_for(
            deployment,
            cfg,
            |s| match DeploymentState::parse(&s.state) {
                DeploymentState::Ready => Verdict::Done,
                DeploymentState::Failed => Verdict::Failed(String::new()),
                DeploymentState::Deleted | DeploymentState::Deleting => Verdict::Gone,
                _ => Verdict::Wait,
            },
            on_progress,
        )
        .await
    }

    /// Waits until a job reaches a terminal state. COMPLETED and EARLY_STOPPED succeed; FAILED
    /// fails with the control plane's message; CANCELLED and EXPIRED are [`JobsError::Ended`];
    /// a tombstone is [`JobsError::Tombstone`].
    ///
    /// # Errors
    /// As [`ControlPlane::wait_for`].
    pub async fn wait_terminal(
        &self,
        job: &Resource,
        cfg: &WaitConfig,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, WaitError> {
        self.wait_for(
            job,
            cfg,
            |s| {
                let st = job_state(s);
                if st.is_tombstone() {
                    Verdict::Gone
                } else if st.is_success() {
                    Verdict::Done
                } else if st == JobState::Failed {
                    Verdict::Failed(String::new())
                } else if st.is_terminal() {
                    Verdict::Ended
                } else {
                    Verdict::Wait
                }
            },
            on_progress,
        )
        .await
    }

    /// The Fireworks SDK's `TrainerJobManager.reconnect_and_wait`: brings a trainer job back
    /// after preemption or a transient failure and waits until it is healthy.
    ///
    /// 1. GET the job. Failed GETs are tried again every `failed_get_retry` until
    ///    `max_wait_for_resumable` from the start; a definite refusal (404, 401) ends at once.
    /// 2. By state: RUNNING → wait until healthy. FAILED, CANCELLED, PAUSED, COMPLETED →
    ///    `:resume`, then wait until healthy. DELETED or ARCHIVED → [`JobsError::Tombstone`] at
    ///    once (the SDK only fails there when its wait runs out). Anything else → GET again
    ///    every `transitional_repoll`, and [`JobsError::Stuck`] at `max_wait_for_resumable`.
    /// 3. Waiting until healthy: a tombstone fails at once, FAILED fails with the server's
    ///    message, PENDING is bounded by `pending_timeout`, and from leaving PENDING, `timeout`
    ///    bounds the rest. Healthy is the health check answering exactly 200 while RUNNING.
    ///    A heartbeat is logged every `heartbeat`.
    ///
    /// A resume of a job whose `dcpSaveInterval` is 0 logs a WARN: optimizer state since the
    /// last final checkpoint is lost. When the job does not state it, nothing is said.
    ///
    /// # Errors
    /// [`WaitError`], whose reason names the ending; [`JobsError::Config`] for a job that is not
    /// an `rlorTrainerJob` or an invalid setting.
    pub async fn reconnect_and_wait(
        &self,
        job: &Resource,
        cfg: &ReconnectConfig,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, WaitError> {
        if job.kind() != ResourceKind::RlorTrainerJob {
            return Err(WaitError::before_start(
                job.clone(),
                JobsError::Config(format!(
                    "{job} is not an rlorTrainerJob: reconnect-and-wait needs the trainer's health check"
                )),
            ));
        }
        if let Err(e) = cfg.validate() {
            return Err(WaitError::before_start(job.clone(), e));
        }
        let mut w = Waiter::new(self, job, cfg.heartbeat, on_progress);
        let resumable_by = w.start + cfg.max_wait_for_resumable;
        loop {
            let s = match w
                .get(
                    cfg.failed_get_retry,
                    cfg.max_wait_for_resumable,
                    resumable_by,
                )
                .await
            {
                Ok(s) => s,
                Err(e) => return w.fail(e),
            };
            let st = job_state(&s);
            if st.is_tombstone() {
                return w.fail(JobsError::Tombstone {
                    resource: job.clone(),
                    state: s.state,
                });
            }
            // PENDING (queued for capacity) is on its way back: no resume, and
            // `pending_timeout` bounds it. The SDK takes it as transitional and fails after
            // `max_wait_for_resumable`, though capacity can take far longer.
            if st == JobState::Running || st == JobState::Pending {
                return wait_healthy(w, cfg).await;
            }
            if st.is_resumable() {
                if s.dcp_save_interval == Some(0) {
                    tracing::warn!(resource = %job, "resuming with dcp_save_interval 0: optimizer state since the last final checkpoint is lost; set dcp_save_interval to keep it across interruptions");
                }
                tracing::info!(resource = %job, from = %s.state, "resuming");
                if let Err(error) = w.cp.action(job, "resume").await {
                    return w.fail(JobsError::ResumeFailed {
                        resource: job.clone(),
                        error,
                    });
                }
                w.out.resumed = true;
                (w.on)(&Progress::Resumed {
                    from: s.state.clone(),
                    dcp_save_interval: s.dcp_save_interval,
                });
                return wait_healthy(w, cfg).await;
            }
            if Instant::now() >= resumable_by {
                let waited = w.elapsed();
                return w.fail(JobsError::Stuck {
                    resource: job.clone(),
                    state: s.state,
                    waited,
                });
            }
            w.pause(cfg.transitional_repoll, resumable_by).await;
        }
    }
}

/// Step 3 of [`ControlPlane::reconnect_and_wait`].
async fn wait_healthy(mut w: Waiter<'_>, cfg: &ReconnectConfig) -> Result<Outcome, WaitError> {
    let job = w.resource();
    let pending_until = Instant::now() + cfg.pending_timeout;
    let pending_since = Instant::now();
    let mut running_until: Option<Instant> = None;
    loop {
        // The deadline of the phase the job is in.
        let phase_end = running_until.unwrap_or(pending_until);
        let s = match w
            .get(cfg.poll_interval, cfg.max_wait_for_resumable, phase_end)
            .await
        {
            Ok(s) => s,
            Err(e) => return w.fail(e),
        };
        let st = job_state(&s);
        let now = Instant::now();
        if st.is_tombstone() {
            return w.fail(JobsError::Tombstone {
                resource: job,
                state: s.state,
            });
        }
        if st == JobState::Failed {
            return w.fail(JobsError::Failed {
                resource: job,
                message: s.reason(),
            });
        }
        if st == JobState::Pending && running_until.is_none() {
            if now >= pending_until {
                return w.fail(JobsError::PendingTooLong {
                    resource: job,
                    waited: now.saturating_duration_since(pending_since),
                });
            }
            w.pause(cfg.poll_interval, pending_until).await;
            continue;
        }
        let until = *running_until.get_or_insert(now + cfg.timeout);
        if st == JobState::Running {
            let healthy = w.cp.healthz(&job).await.unwrap_or(false);
            (w.on)(&Progress::Health { healthy });
            if healthy {
                w.out.healthy = true;
                return w.done();
            }
        }
        let now = Instant::now();
        if now >= until {
            let waited = now.saturating_duration_since(until - cfg.timeout);
            return w.fail(JobsError::TimedOut {
                resource: job,
                state: s.state,
                waited,
            });
        }
        w.pause(cfg.poll_interval, until).await;
    }
}
