//! The control plane: long-running resources (jobs, deployments) that follow a scripted state
//! machine, with `:resume`, `:cancel` and the trainer's health check.
//!
//! A resource's state advances with the successful GETs of it, not with the clock, so a test
//! sees the same sequence whatever its timing: `Step { state, polls: Some(3) }` is answered to
//! three GETs, then the next step begins; `polls: None` stays for good.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

/// The collections served under `/v1/accounts/{account}/`.
pub const COLLECTIONS: [&str; 6] = [
    "deployments",
    "batchInferenceJobs",
    "supervisedFineTuningJobs",
    "reinforcementFineTuningJobs",
    "dpoJobs",
    "rlorTrainerJobs",
];

fn resumable(collection: &str) -> bool {
    matches!(
        collection,
        "supervisedFineTuningJobs" | "reinforcementFineTuningJobs" | "dpoJobs" | "rlorTrainerJobs"
    )
}

/// One state of a script, answered to `polls` GETs (`None`: for good).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The state string sent, e.g. `JOB_STATE_RUNNING` or `READY`.
    pub state: String,
    /// How many successful GETs see it; `None`: every GET from then on.
    #[serde(default)]
    pub polls: Option<u32>,
}

/// How a failing GET fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GetFailure {
    /// `503` with a gRPC-gateway error body.
    #[default]
    Unavailable,
    /// The connection is reset before any answer.
    Reset,
}

/// A long-running resource and its script.
///
/// ```
/// use firebreak_sim::ControlResource;
/// // A trainer job preempted after two polls; a resume goes back through CREATING.
/// let job = ControlResource::new("rlorTrainerJobs", "job-1")
///     .then("JOB_STATE_RUNNING", 2)
///     .stay("JOB_STATE_FAILED")
///     .after_resume(&[("JOB_STATE_CREATING", Some(1)), ("JOB_STATE_RUNNING", None)]);
/// assert_eq!(job.states.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlResource {
    /// One of [`COLLECTIONS`], e.g. `rlorTrainerJobs`.
    pub collection: String,
    /// The resource id.
    pub id: String,
    /// The script from the start.
    pub states: Vec<Step>,
    /// The script after each `:resume` (empty: `JOB_STATE_RUNNING` for good).
    pub resume_states: Vec<Step>,
    /// After each start (the first RUNNING, and each resume), the health check answers 503
    /// this many times before 200.
    pub unhealthy_checks: u32,
    /// The first this many GETs of the resource fail.
    pub get_failures: u32,
    /// How they fail.
    pub get_failure: GetFailure,
    /// `status.message` sent with the state (e.g. why it failed).
    pub message: Option<String>,
    /// `dcpSaveInterval` sent with the resource, when set.
    pub dcp_save_interval: Option<u64>,
}

impl Default for ControlResource {
    fn default() -> Self {
        ControlResource {
            collection: "rlorTrainerJobs".into(),
            id: "job".into(),
            states: Vec::new(),
            resume_states: Vec::new(),
            unhealthy_checks: 0,
            get_failures: 0,
            get_failure: GetFailure::Unavailable,
            message: None,
            dcp_save_interval: None,
        }
    }
}

impl ControlResource {
    /// A resource with an empty script.
    pub fn new(collection: impl Into<String>, id: impl Into<String>) -> Self {
        ControlResource {
            collection: collection.into(),
            id: id.into(),
            ..ControlResource::default()
        }
    }

    /// Adds a step answered to `polls` GETs.
    pub fn then(mut self, state: &str, polls: u32) -> Self {
        self.states.push(Step {
            state: state.into(),
            polls: Some(polls),
        });
        self
    }

    /// Adds a final step.
    pub fn stay(mut self, state: &str) -> Self {
        self.states.push(Step {
            state: state.into(),
            polls: None,
        });
        self
    }

    /// Sets the script after a resume.
    pub fn after_resume(mut self, steps: &[(&str, Option<u32>)]) -> Self {
        self.resume_states = steps
            .iter()
            .map(|(s, p)| Step {
                state: (*s).into(),
                polls: *p,
            })
            .collect();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let name = format!("control[{}/{}]", self.collection, self.id);
        if !COLLECTIONS.contains(&self.collection.as_str()) {
            return Err(format!("{name}: collection must be one of {COLLECTIONS:?}"));
        }
        if self.id.is_empty() || self.id.contains(['/', ':']) {
            return Err(format!("{name}: id must be non-empty without '/' or ':'"));
        }
        if self.states.is_empty() {
            return Err(format!("{name}: states is empty"));
        }
        for s in self.states.iter().chain(&self.resume_states) {
            if s.polls == Some(0) {
                return Err(format!("{name}: a step of 0 polls is never seen"));
            }
        }
        Ok(())
    }
}

/// A control-plane request, parsed from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ControlReq {
    Get {
        account: String,
        collection: String,
        id: String,
    },
    Action {
        account: String,
        collection: String,
        id: String,
        action: String,
    },
    Healthz {
        account: String,
        id: String,
    },
}

/// `None` when the path is not a control-plane path (the inference routes take it).
pub(crate) fn parse(method: &http::Method, path: &str) -> Option<Result<ControlReq, u16>> {
    if let Some(rest) = path.strip_prefix("/training/v1/rlorTrainerJobs/") {
        let mut it = rest.splitn(3, '/');
        let (Some(account), Some(id), Some("api/v1/healthz")) = (it.next(), it.next(), it.next())
        else {
            return Some(Err(404));
        };
        if method != http::Method::GET {
            return Some(Err(405));
        }
        return Some(Ok(ControlReq::Healthz {
            account: account.into(),
            id: id.into(),
        }));
    }
    let rest = path.strip_prefix("/v1/accounts/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [account, collection, last] = parts[..] else {
        return Some(Err(404));
    };
    let (account, collection) = (account.to_owned(), collection.to_owned());
    Some(match last.split_once(':') {
        None if method == http::Method::GET => Ok(ControlReq::Get {
            account,
            collection,
            id: last.into(),
        }),
        Some((id, action)) if method == http::Method::POST => Ok(ControlReq::Action {
            account,
            collection,
            id: id.into(),
            action: action.into(),
        }),
        _ => Err(405),
    })
}

/// What to answer.
#[derive(Debug, PartialEq)]
pub(crate) enum ControlAnswer {
    Json(u16, serde_json::Value),
    /// An error status with a gRPC-gateway body, and the log's fault name.
    Error(u16, String, &'static str),
    Reset,
}

#[derive(Debug, Default)]
struct Runtime {
    resumed: bool,
    step: usize,
    polls_in_step: u32,
    gets_failed: u32,
    unhealthy_left: u32,
    started: bool,
    cancelled: bool,
}

/// The resources and their progress.
#[derive(Debug, Default)]
pub(crate) struct ControlPlane {
    resources: Vec<ControlResource>,
    runtime: Mutex<HashMap<usize, Runtime>>,
}

impl ControlPlane {
    pub(crate) fn new(resources: Vec<ControlResource>) -> Self {
        ControlPlane {
            resources,
            runtime: Mutex::new(HashMap::new()),
        }
    }

    fn find(&self, collection: &str, id: &str) -> Option<usize> {
        self.resources
            .iter()
            .position(|r| r.collection == collection && r.id == id)
    }

    fn current<'a>(r: &'a ControlResource, rt: &Runtime) -> &'a str {
        if rt.cancelled {
            return "JOB_STATE_CANCELLED";
        }
        let script = if rt.resumed && !r.resume_states.is_empty() {
            &r.resume_states
        } else if rt.resumed {
            return "JOB_STATE_RUNNING";
        } else {
            &r.states
        };
        script
            .get(rt.step.min(script.len().saturating_sub(1)))
            .map_or("JOB_STATE_UNSPECIFIED", |s| s.state.as_str())
    }

    fn advance(r: &ControlResource, rt: &mut Runtime) {
        let script = if rt.resumed {
            &r.resume_states
        } else {
            &r.states
        };
        let Some(step) = script.get(rt.step) else {
            return;
        };
        rt.polls_in_step += 1;
        if step.polls.is_some_and(|n| rt.polls_in_step >= n) && rt.step + 1 < script.len() {
            rt.step += 1;
            rt.polls_in_step = 0;
        }
    }

    fn body(r: &ControlResource, account: &str, state: &str) -> serde_json::Value {
        let mut v = json!({
            "name": format!("accounts/{account}/{}/{}", r.collection, r.id),
            "state": state,
            "status": {
                "code": if state.ends_with("FAILED") { "INTERNAL" } else { "OK" },
                "message": r.message.clone().unwrap_or_default(),
            },
        });
        if let Some(n) = r.dcp_save_interval {
            v["dcpSaveInterval"] = json!(n);
        }
        v
    }

    pub(crate) fn answer(&self, req: &ControlReq) -> ControlAnswer {
        let (collection, id) = match req {
            ControlReq::Get { collection, id, .. } | ControlReq::Action { collection, id, .. } => {
                (collection.as_str(), id.as_str())
            }
            ControlReq::Healthz { id, .. } => ("rlorTrainerJobs", id.as_str()),
        };
        let Some(i) = self.find(collection, id) else {
            return ControlAnswer::Error(404, "resource not found".into(), "not_found");
        };
        let r = &self.resources[i];
        let mut rts = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let rt = rts.entry(i).or_default();
        match req {
            ControlReq::Get { account, .. } => {
                if rt.gets_failed < r.get_failures {
                    rt.gets_failed += 1;
                    return match r.get_failure {
                        GetFailure::Unavailable => ControlAnswer::Error(
                            503,
                            "the service is currently unavailable".into(),
                            "control_unavailable",
                        ),
                        GetFailure::Reset => ControlAnswer::Reset,
                    };
                }
                let state = Self::current(r, rt).to_owned();
                Self::note_start(r, rt, &state);
                Self::advance(r, rt);
                ControlAnswer::Json(200, Self::body(r, account, &state))
            }
            ControlReq::Action {
                account, action, ..
            } => {
                match action.as_str() {
                    "resume" if resumable(collection) => {
                        *rt = Runtime {
                            resumed: true,
                            gets_failed: rt.gets_failed,
                            ..Runtime::default()
                        };
                    }
                    "cancel" if collection == "reinforcementFineTuningJobs" => {
                        rt.cancelled = true;
                    }
                    _ => {
                        return ControlAnswer::Error(
                            404,
                            format!("{collection} has no :{action}"),
                            "no_action",
                        );
                    }
                }
                let state = Self::current(r, rt).to_owned();
                ControlAnswer::Json(200, Self::body(r, account, &state))
            }
            ControlReq::Healthz { .. } => {
                let state = Self::current(r, rt);
                let running = state == "JOB_STATE_RUNNING";
                Self::note_start(r, rt, state);
                if running && rt.unhealthy_left == 0 {
                    ControlAnswer::Json(200, json!({"status": "ok"}))
                } else {
                    rt.unhealthy_left = rt.unhealthy_left.saturating_sub(1);
                    ControlAnswer::Error(503, "trainer is not ready".into(), "unhealthy")
                }
            }
        }
    }

    /// The first time a start (the script's, or a resume's) is seen running, the health check
    /// starts failing `unhealthy_checks` times.
    fn note_start(r: &ControlResource, rt: &mut Runtime, state: &str) {
        if state == "JOB_STATE_RUNNING" && !rt.started {
            rt.started = true;
            rt.unhealthy_left = r.unhealthy_checks;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(cp: &ControlPlane) -> ControlAnswer {
        cp.answer(&ControlReq::Get {
            account: "a".into(),
            collection: "rlorTrainerJobs".into(),
            id: "j".into(),
        })
    }

    fn state(a: ControlAnswer) -> String {
        match a {
            ControlAnswer::Json(200, v) => v["state"].as_str().unwrap_or("").to_owned(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn the_script_advances_with_gets_and_a_resume_restarts_it() {
        let cp = ControlPlane::new(vec![
            ControlResource::new("rlorTrainerJobs", "j")
                .then("JOB_STATE_RUNNING", 2)
                .stay("JOB_STATE_FAILED")
                .after_resume(&[("JOB_STATE_CREATING", Some(1)), ("JOB_STATE_RUNNING", None)]),
        ]);
        let seen: Vec<String> = (0..4).map(|_| state(get(&cp))).collect();
        assert_eq!(
            seen,
            [
                "JOB_STATE_RUNNING",
                "JOB_STATE_RUNNING",
                "JOB_STATE_FAILED",
                "JOB_STATE_FAILED"
            ]
        );
        let resumed = cp.answer(&ControlReq::Action {
            account: "a".into(),
            collection: "rlorTrainerJobs".into(),
            id: "j".into(),
            action: "resume".into(),
        });
        assert_eq!(state(resumed), "JOB_STATE_CREATING");
        let seen: Vec<String> = (0..3).map(|_| state(get(&cp))).collect();
        assert_eq!(
            seen,
            [
                "JOB_STATE_CREATING",
                "JOB_STATE_RUNNING",
                "JOB_STATE_RUNNING"
            ]
        );
    }

    #[test]
    fn failing_gets_do_not_advance_and_health_waits_for_its_count() {
        let mut r = ControlResource::new("rlorTrainerJobs", "j").stay("JOB_STATE_RUNNING");
        r.get_failures = 2;
        r.get_failure = GetFailure::Reset;
        r.unhealthy_checks = 1;
        let cp = ControlPlane::new(vec![r]);
        assert_eq!(get(&cp), ControlAnswer::Reset);
        assert_eq!(get(&cp), ControlAnswer::Reset);
        assert_eq!(state(get(&cp)), "JOB_STATE_RUNNING");
        let h = ControlReq::Healthz {
            account: "a".into(),
            id: "j".into(),
        };
        assert!(matches!(cp.answer(&h), ControlAnswer::Error(503, ..)));
        assert!(matches!(cp.answer(&h), ControlAnswer::Json(200, _)));
    }

    #[test]
    fn paths_parse_and_others_are_left_to_inference() {
        let g = http::Method::GET;
        let p = http::Method::POST;
        assert_eq!(parse(&g, "/v1/chat/completions"), None);
        assert!(matches!(
            parse(&g, "/v1/accounts/a/deployments/d"),
            Some(Ok(ControlReq::Get { .. }))
        ));
        assert!(matches!(
            parse(&p, "/v1/accounts/a/dpoJobs/d:resume"),
            Some(Ok(ControlReq::Action { .. }))
        ));
        assert_eq!(parse(&p, "/v1/accounts/a/dpoJobs/d"), Some(Err(405)));
        assert!(matches!(
            parse(&g, "/training/v1/rlorTrainerJobs/a/j/api/v1/healthz"),
            Some(Ok(ControlReq::Healthz { .. }))
        ));
        assert_eq!(parse(&g, "/v1/accounts/a"), Some(Err(404)));
    }

    #[test]
    fn a_scenario_file_describes_resources() {
        let cfg: crate::SimConfig = serde_json::from_str(
            r#"{"control": [{"collection": "rlorTrainerJobs", "id": "j",
                "states": [{"state": "JOB_STATE_RUNNING", "polls": 2}, {"state": "JOB_STATE_FAILED"}],
                "resume_states": [{"state": "JOB_STATE_RUNNING"}],
                "get_failures": 1, "get_failure": "reset", "dcp_save_interval": 0}]}"#,
        )
        .unwrap();
        let r = &cfg.control[0];
        assert_eq!(r.states[0].polls, Some(2));
        assert_eq!(r.states[1].polls, None);
        assert_eq!(
            (r.get_failure, r.dcp_save_interval),
            (GetFailure::Reset, Some(0))
        );
        assert!(cfg.validate().is_ok());
        let typo = serde_json::from_str::<crate::SimConfig>(r#"{"control": [{"colection": "x"}]}"#);
        assert!(typo.is_err(), "unknown fields are refused, not ignored");
    }

    #[test]
    fn bad_scripts_are_refused() {
        assert!(
            ControlResource::new("nope", "j")
                .stay("X")
                .validate()
                .is_err()
        );
        assert!(ControlResource::new("dpoJobs", "j").validate().is_err());
        assert!(
            ControlResource::new("dpoJobs", "j")
                .then("X", 0)
                .validate()
                .is_err()
        );
        assert!(
            ControlResource::new("dpoJobs", "j")
                .stay("X")
                .validate()
                .is_ok()
        );
    }
}
