//! The control-plane client: one GET, one action (`:resume`, `:cancel`) and the trainer's health
//! check, each one call through the firebreak stack with a deadline of its own.

use crate::JobsError;
use bytes::Bytes;
use firebreak::client::ApiKey;
use firebreak::retry::{Backoff, Jitter, RetryConfig, RetryOn};
use firebreak::timeout::{TimeoutConfig, Workload};
use firebreak::{BoxStack, Class, Deadline, Error, FireworksClient, Stack, TimeoutPhase};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The control plane's base URL: resources live under `/v1/accounts/{account}/`.
pub const FIREWORKS_CONTROL_URL: &str = "https://api.fireworks.ai";

/// Largest control-plane answer read (a resource's JSON is a few KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The kinds of long-running resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResourceKind {
    /// `deployments/{id}`.
    Deployment,
    /// `batchInferenceJobs/{id}`.
    BatchInferenceJob,
    /// `supervisedFineTuningJobs/{id}` (`:resume`).
    SupervisedFineTuningJob,
    /// `reinforcementFineTuningJobs/{id}` (`:resume`, `:cancel`).
    ReinforcementFineTuningJob,
    /// `dpoJobs/{id}` (`:resume`).
    DpoJob,
    /// `rlorTrainerJobs/{id}` (`:resume`, and a health check).
    RlorTrainerJob,
}

impl ResourceKind {
    /// The collection in the path.
    pub fn collection(self) -> &'static str {
        match self {
            ResourceKind::Deployment => "deployments",
            ResourceKind::BatchInferenceJob => "batchInferenceJobs",
            ResourceKind::SupervisedFineTuningJob => "supervisedFineTuningJobs",
            ResourceKind::ReinforcementFineTuningJob => "reinforcementFineTuningJobs",
            ResourceKind::DpoJob => "dpoJobs",
            ResourceKind::RlorTrainerJob => "rlorTrainerJobs",
        }
    }

    /// Whether the control plane offers `:resume`.
    pub fn can_resume(self) -> bool {
        !matches!(
            self,
            ResourceKind::Deployment | ResourceKind::BatchInferenceJob
        )
    }
}

/// One resource: its kind, account and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    kind: ResourceKind,
    account: String,
    id: String,
}

impl Resource {
    /// A resource, its account and id checked so that they stay one path segment each.
    ///
    /// ```
    /// use firebreak_jobs::{Resource, ResourceKind};
    /// let r = Resource::new(ResourceKind::RlorTrainerJob, "my-account", "job-1").unwrap();
    /// assert_eq!(r.path(), "/v1/accounts/my-account/rlorTrainerJobs/job-1");
    /// assert!(Resource::new(ResourceKind::DpoJob, "a", "../x").is_err());
    /// ```
    ///
    /// # Errors
    /// [`JobsError::Config`] for an empty value or one with `/`, `?`, `#`, `:`, `%`, `.`-only
    /// or whitespace.
    pub fn new(
        kind: ResourceKind,
        account: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<Resource, JobsError> {
        let (account, id) = (account.into(), id.into());
        for (what, v) in [("account", &account), ("id", &id)] {
            let bad = v.is_empty()
                || v.chars().all(|c| c == '.')
                || v.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | ':' | '%')
                });
            if bad {
                return Err(JobsError::Config(format!(
                    "{what} {v:?} is not a valid resource name (one path segment: letters, digits, '-', '_')"
                )));
            }
        }
        Ok(Resource { kind, account, id })
    }

    /// A stand-in for a name that was refused, in a [`WaitError`](crate::WaitError)'s report.
    pub(crate) fn placeholder(kind: ResourceKind) -> Resource {
        Resource {
            kind,
            account: String::new(),
            id: "(invalid)".into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> ResourceKind {
        self.kind
    }

    /// The account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `/v1/accounts/{account}/{collection}/{id}`.
    pub fn path(&self) -> String {
        format!(
            "/v1/accounts/{}/{}/{}",
            self.account,
            self.kind.collection(),
            self.id
        )
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.collection(), self.id)
    }
}

/// What one GET said about a resource.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The `state` field as sent (empty when absent).
    pub state: String,
    /// `status.message`, when non-empty: the control plane's reason, e.g. why a job failed.
    pub message: Option<String>,
    /// `dcpSaveInterval` (or `dcp_save_interval`), wherever it is in the resource, when present.
    pub dcp_save_interval: Option<u64>,
    /// The whole answer.
    pub raw: serde_json::Value,
}

impl Snapshot {
    /// Why it is in its state: the control plane's message, else the state itself.
    pub fn reason(&self) -> String {
        self.message.clone().unwrap_or_else(|| self.state.clone())
    }

    /// Reads a resource's JSON.
    ///
    /// ```
    /// let s = firebreak_jobs::Snapshot::from_json(
    ///     br#"{"state":"JOB_STATE_FAILED","status":{"message":"preempted"},"trainingConfig":{"dcpSaveInterval":"0"}}"#,
    /// ).unwrap();
    /// assert_eq!((s.state.as_str(), s.message.as_deref(), s.dcp_save_interval),
    ///            ("JOB_STATE_FAILED", Some("preempted"), Some(0)));
    /// ```
    ///
    /// # Errors
    /// The JSON error, for a body that is not JSON.
    pub fn from_json(body: &[u8]) -> Result<Snapshot, serde_json::Error> {
        let raw: serde_json::Value = serde_json::from_slice(body)?;
        let state = raw["state"].as_str().unwrap_or_default().to_owned();
        let message = raw["status"]["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        Ok(Snapshot {
            state,
            message,
            dcp_save_interval: find_dcp(&raw, 0),
            raw,
        })
    }
}

/// `dcpSaveInterval` anywhere in the resource (depth-bounded), as a number or a numeric string.
fn find_dcp(v: &serde_json::Value, depth: u32) -> Option<u64> {
    let obj = v.as_object().filter(|_| depth < 8)?;
    for key in ["dcpSaveInterval", "dcp_save_interval"] {
        if let Some(x) = obj.get(key) {
            return x.as_u64().or_else(|| x.as_str()?.parse().ok());
        }
    }
    obj.values().find_map(|x| find_dcp(x, depth + 1))
}

/// The stack for control-plane calls, after the control plane's own REST retry: 408, 429, 5xx,
/// connect errors and timeouts are retried with exponential backoff from 1 s, capped at 30 s,
/// within 5 minutes, `Retry-After` honoured. Unlike the SDK's `min(2^n, 30)`, the backoff has
/// full jitter, so many waiters do not poll in step. Each call's own deadline (see
/// [`CallTimeouts`]) is shorter than those 5 minutes and bounds it first.
pub fn control_plane_stack() -> Stack {
    let mut stack = Stack::preset(Workload::BatchSubmit);
    stack.timeouts = TimeoutConfig::preset(Workload::BatchSubmit)
        .attempt(Some(Duration::from_secs(60)))
        .deadline(Some(Duration::from_secs(300)))
        // Below the attempt's total, so that a control plane that hangs is retried.
        .headers(Some(Duration::from_secs(30)));
    stack.retry = RetryConfig::default()
        .max_attempts(10)
        .backoff(Backoff {
            jitter: Jitter::Full,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        })
        // Already a slow schedule: the same when the control plane cannot be reached.
        .unreachable_backoff(None)
        .max_retry_time(Some(Duration::from_secs(300)))
        .retry_on(RetryOn {
            also: vec![408],
            ..RetryOn::default()
        });
    stack
}

/// The per-call deadlines (the SDK's HTTP timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeouts {
    /// A resource GET: 30 s.
    pub get: Duration,
    /// An action (`:resume`): 60 s.
    pub action: Duration,
    /// The trainer's health check: 5 s.
    pub healthz: Duration,
}

impl Default for CallTimeouts {
    fn default() -> Self {
        CallTimeouts {
            get: Duration::from_secs(30),
            action: Duration::from_secs(60),
            healthz: Duration::from_secs(5),
        }
    }
}

/// A client for the control plane.
#[derive(Clone)]
pub struct ControlPlane {
    svc: BoxStack,
    base: Arc<str>,
    timeouts: CallTimeouts,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("base_url", &self.base)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A client for `base_url` (e.g. [`FIREWORKS_CONTROL_URL`]) with `key`, through
    /// [`control_plane_stack`].
    ///
    /// # Errors
    /// [`JobsError::Config`] for an invalid URL.
    pub fn new(base_url: &str, key: ApiKey) -> Result<ControlPlane, JobsError> {
        Self::with_stack(base_url, key, control_plane_stack())
    }

    /// As [`ControlPlane::new`] with a stack of your own (start from [`control_plane_stack`]).
    ///
    /// # Errors
    /// [`JobsError::Config`] for an invalid URL or setting.
    pub fn with_stack(
        base_url: &str,
        key: ApiKey,
        stack: Stack,
    ) -> Result<ControlPlane, JobsError> {
        let client = FireworksClient::new(base_url, key, stack)
            .map_err(|e| JobsError::Config(e.to_string()))?;
        Ok(Self::with_service(client.base_url(), client.service()))
    }

    /// Any service as the transport (a stack of your own, or a test double). `base_url` is
    /// prefixed to every path.
    pub fn with_service(base_url: &str, svc: BoxStack) -> ControlPlane {
        ControlPlane {
            svc,
            base: base_url.trim_end_matches('/').into(),
            timeouts: CallTimeouts::default(),
        }
    }

    /// Replaces the per-call deadlines.
    pub fn timeouts(mut self, t: CallTimeouts) -> ControlPlane {
        self.timeouts = t;
        self
    }

    /// Reads a resource.
    ///
    /// # Errors
    /// The stack's [`Error`]; a non-2xx answer becomes one too, with its class and status.
    pub async fn get(&self, r: &Resource) -> Result<Snapshot, Error> {
        self.get_within(r, self.timeouts.get).await
    }

    /// A GET bounded by `limit` or the GET timeout, whichever is shorter.
    pub(crate) async fn get_within(
        &self,
        r: &Resource,
        limit: Duration,
    ) -> Result<Snapshot, Error> {
        let limit = limit.min(self.timeouts.get);
        let (_, body) = self.call(Method::GET, &r.path(), limit).await?;
        parse(&body)
    }

    /// Sends `POST {resource}:{action}` (e.g. `resume`) and reads the resource it returns.
    ///
    /// # Errors
    /// As [`ControlPlane::get`].
    pub async fn action(&self, r: &Resource, action: &str) -> Result<Snapshot, Error> {
        let path = format!("{}:{action}", r.path());
        let (_, body) = self.call(Method::POST, &path, self.timeouts.action).await?;
        // Some actions answer `{}` or nothing; the state is then read by the next GET.
        Ok(parse(&body).unwrap_or_default())
    }

    /// Whether a trainer job is healthy: `GET {base}/training/v1/rlorTrainerJobs/{account}/{job}/api/v1/healthz`
    /// answered exactly 200. Any other answer is `Ok(false)`. Like every call it goes through the
    /// stack, so a 503 is retried within the health check's own 5 s.
    ///
    /// # Errors
    /// Only for a call that got no answer (connect failure, timeout).
    pub async fn healthz(&self, job: &Resource) -> Result<bool, Error> {
        let path = format!(
            "/training/v1/rlorTrainerJobs/{}/{}/api/v1/healthz",
            job.account, job.id
        );
        match self.call(Method::GET, &path, self.timeouts.healthz).await {
            Ok((status, _)) => Ok(status == 200),
            Err(e) if e.status().is_some() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One call, bounded by `limit` (request and body together).
    async fn call(
        &self,
        method: Method,
        path: &str,
        limit: Duration,
    ) -> Result<(u16, Bytes), Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::new(Class::Other).with_detail(format!("invalid request: {e}")))?;
        // The stack never starts a retry that cannot finish within it...
        Deadline::after(limit).apply(&mut req);
        let svc = self.svc.clone();
        let call = async move {
            let resp = svc.oneshot(req).await?;
            let failure = (!resp.status().is_success())
                .then(|| Error::from_classification(&firebreak::Classification::of(&resp)));
            let status = resp.status().as_u16();
            if let Some(e) = failure {
                return Err(e);
            }
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(Error::transport)?
                .to_bytes();
            Ok((status, body))
        };
        // ...and the call as a whole ends at it, whatever the service below does.
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(TimeoutPhase::Deadline, limit)),
        }
    }
}

fn parse(body: &[u8]) -> Result<Snapshot, Error> {
    Snapshot::from_json(body).map_err(|e| {
        Error::new(Class::Other).with_detail(format!(
            "the control plane's answer is not a resource's JSON: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_read_state_message_and_the_checkpoint_interval() {
        let s = Snapshot::from_json(br#"{"state":"JOB_STATE_RUNNING","status":{"message":""}}"#)
            .unwrap();
        assert_eq!(s.state, "JOB_STATE_RUNNING");
        assert_eq!(s.message, None);
        assert_eq!(s.dcp_save_interval, None);
        let s = Snapshot::from_json(br#"{"dcpSaveInterval":25}"#).unwrap();
        assert_eq!((s.state.as_str(), s.dcp_save_interval), ("", Some(25)));
        assert!(Snapshot::from_json(b"<html>").is_err());
    }

    #[test]
    fn resource_names_stay_one_segment() {
        for bad in ["", "a/b", "a?b", "..", "a b", "a:resume", "%2e"] {
            assert!(
                Resource::new(ResourceKind::Deployment, bad, "x").is_err(),
                "{bad}"
            );
            assert!(
                Resource::new(ResourceKind::Deployment, "x", bad).is_err(),
                "{bad}"
            );
        }
        let r = Resource::new(ResourceKind::Deployment, "acct", "dep-1").unwrap();
        assert_eq!(r.to_string(), "deployments/dep-1");
    }

    #[test]
    fn the_control_plane_stack_is_valid() {
        assert!(control_plane_stack().layer().is_ok());
    }
}
