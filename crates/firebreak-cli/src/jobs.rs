//! `firebreak jobs …`: waiting on Fireworks' long-running resources (`firebreak-jobs`).

use crate::args::{api_key, base_url};
use clap::{Args, Subcommand};
use firebreak_jobs::{
    ControlPlane, FIREWORKS_CONTROL_URL, Outcome, Progress, ReconnectConfig, Resource,
    ResourceKind, WaitConfig, WaitError,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// `firebreak jobs`.
#[derive(Debug, Clone, Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Clone, Subcommand)]
enum JobsCommand {
    /// Bring a trainer job back after preemption or a transient failure and wait until it is
    /// healthy (the Fireworks SDK's `reconnect_and_wait`).
    ReconnectAndWait(ReconnectArgs),
    /// Wait until a deployment is READY, or a job ends.
    Wait(WaitArgs),
}

/// Flags every `jobs` command shares.
#[derive(Debug, Clone, Args)]
struct Common {
    /// The Fireworks account id.
    #[arg(long)]
    account: String,
    /// The control plane's base URL.
    #[arg(long, default_value = FIREWORKS_CONTROL_URL)]
    base_url: String,
    /// Print exactly one JSON object: {"resource", "state", "healthy", "resumed", "polls",
    /// "failed_polls", "elapsed_s", "error"}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Args)]
struct ReconnectArgs {
    #[command(flatten)]
    common: Common,
    /// The rlorTrainerJob id.
    #[arg(long)]
    job: String,
    /// Seconds between polls while waiting until healthy.
    #[arg(long, default_value_t = 5.0)]
    poll_interval: f64,
    /// Seconds from leaving PENDING to healthy.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Seconds allowed for failed polls and for states that are neither running nor resumable.
    #[arg(long, default_value_t = 120.0)]
    max_wait_for_resumable: f64,
    /// Seconds allowed in PENDING (waiting for capacity).
    #[arg(long, default_value_t = 172_800.0)]
    pending_timeout: f64,
}

#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
struct Target {
    /// A deployment, until READY.
    #[arg(long, group = "target")]
    deployment: Option<String>,
    /// A batch inference job, until it ends.
    #[arg(long, group = "target")]
    batch_job: Option<String>,
    /// A supervised fine-tuning job, until it ends.
    #[arg(long, group = "target")]
    sft_job: Option<String>,
    /// A reinforcement fine-tuning job, until it ends.
    #[arg(long, group = "target")]
    rft_job: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct WaitArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    target: Target,
    /// Seconds to wait in all.
    #[arg(long, default_value_t = 3600.0)]
    timeout: f64,
    /// Seconds between polls.
    #[arg(long, default_value_t = 5.0)]
    poll_interval: f64,
}

/// A number of seconds in (0, a year] (a PENDING wait alone defaults to 48 h).
fn seconds(flag: &str, x: f64) -> Result<Duration, String> {
    crate::args::secs_up_to(flag, x, 366.0 * 86_400.0)
}

fn client(c: &Common) -> Result<ControlPlane, String> {
    let key = api_key(None)?.ok_or("no API key: set FIREWORKS_API_KEY")?;
    let base = base_url("--base-url", &c.base_url)?;
    ControlPlane::new(&base, key).map_err(|e| e.to_string())
}

pub(crate) async fn run(args: JobsArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Heartbeats, failed polls and the resume warning go to stderr (RUST_LOG to change).
    crate::logging::init();
    let (common, resource, result) = match args.command {
        JobsCommand::ReconnectAndWait(a) => {
            let cfg = ReconnectConfig {
                poll_interval: seconds("poll-interval", a.poll_interval)?,
                timeout: seconds("timeout", a.timeout)?,
                max_wait_for_resumable: seconds(
                    "max-wait-for-resumable",
                    a.max_wait_for_resumable,
                )?,
                pending_timeout: seconds("pending-timeout", a.pending_timeout)?,
                ..ReconnectConfig::default()
            };
            let job = Resource::new(ResourceKind::RlorTrainerJob, &a.common.account, &a.job)?;
            let cp = client(&a.common)?;
            let mut spin = Spinner::new(&job, a.common.json);
            let r = cp.reconnect_and_wait(&job, &cfg, &mut |p| spin.on(p)).await;
            spin.finish();
            (a.common, job, r)
        }
        JobsCommand::Wait(a) => {
            let cfg = WaitConfig {
                poll_interval: seconds("poll-interval", a.poll_interval)?,
                timeout: seconds("timeout", a.timeout)?,
                ..WaitConfig::default()
            };
            let t = &a.target;
            let (kind, id) = match (&t.deployment, &t.batch_job, &t.sft_job, &t.rft_job) {
                (Some(id), ..) => (ResourceKind::Deployment, id),
                (_, Some(id), ..) => (ResourceKind::BatchInferenceJob, id),
                (_, _, Some(id), _) => (ResourceKind::SupervisedFineTuningJob, id),
                (.., Some(id)) => (ResourceKind::ReinforcementFineTuningJob, id),
                _ => {
                    return Err(
                        "name one of --deployment, --batch-job, --sft-job, --rft-job".into(),
                    );
                }
            };
            let r = Resource::new(kind, &a.common.account, id)?;
            let cp = client(&a.common)?;
            let mut spin = Spinner::new(&r, a.common.json);
            let res = if kind == ResourceKind::Deployment {
                cp.wait_ready(&r, &cfg, &mut |p| spin.on(p)).await
            } else {
                cp.wait_terminal(&r, &cfg, &mut |p| spin.on(p)).await
            };
            spin.finish();
            (a.common, r, res)
        }
    };
    report(&common, &resource, result)
}

/// Prints the outcome: one JSON object with `--json`, else a line on success. A failure is
/// the error (one line on stderr, by `main`) and exit 1, with `--json` as well.
fn report(
    common: &Common,
    resource: &Resource,
    result: Result<Outcome, WaitError>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (out, error) = match result {
        Ok(o) => (o, None),
        Err(e) => {
            let text = e.to_string();
            (*e.so_far, Some(text))
        }
    };
    if common.json {
        let v = serde_json::json!({
            "resource": resource.to_string(),
            "state": out.state,
            "healthy": out.healthy,
            "resumed": out.resumed,
            "polls": out.polls,
            "failed_polls": out.failed_polls,
            "elapsed_s": out.elapsed.as_secs_f64(),
            "error": error,
        });
        println!("{v}");
    } else if error.is_none() {
        println!(
            "{resource}: {} after {:.1} s ({} polls, {} failed{})",
            if out.healthy {
                "healthy"
            } else {
                out.state.as_str()
            },
            out.elapsed.as_secs_f64(),
            out.polls,
            out.failed_polls,
            if out.resumed { ", resumed" } else { "" }
        );
    }
    match error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// A spinner with the state and the elapsed time, on a terminal only (never with `--json`).
struct Spinner(Option<ProgressBar>);

impl Spinner {
    fn new(r: &Resource, json: bool) -> Spinner {
        if json || !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]") {
            bar.set_style(style);
        }
        bar.set_prefix(r.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(Some(bar))
    }

    fn on(&mut self, p: &Progress) {
        let Some(bar) = &self.0 else { return };
        match p {
            Progress::Polled { state, .. } => bar.set_message(state.clone()),
            Progress::PollFailed { failed_polls, .. } => {
                bar.set_message(format!("poll failed ({failed_polls} so far), trying again"));
            }
            Progress::Resumed { from, .. } => bar.set_message(format!("resumed from {from}")),
            Progress::Health { healthy: false } => bar.set_message("running, not healthy yet"),
            _ => {}
        }
    }

    fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}
