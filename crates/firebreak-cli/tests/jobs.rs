//! `firebreak jobs` against firebreak-sim's control plane: `--json` prints exactly one object,
//! the exit code says whether the resource got there, and the key never appears in any output.

use firebreak_sim::{ControlResource, Sim, SimConfig};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

const KEY: &str = "fw_jobs_SECRET_key";

fn sim(rt: &tokio::runtime::Runtime) -> Sim {
    let cfg = SimConfig::default()
        .api_key(KEY)
        // Preempted: resumed, then healthy at once.
        .resource(ControlResource::new("rlorTrainerJobs", "preempted").stay("JOB_STATE_FAILED"))
        .resource(ControlResource::new("rlorTrainerJobs", "gone").stay("JOB_STATE_DELETED"))
        .resource(
            ControlResource::new("deployments", "dep")
                .then("CREATING", 2)
                .stay("READY"),
        )
        .resource(
            ControlResource::new("reinforcementFineTuningJobs", "rft").stay("JOB_STATE_COMPLETED"),
        )
        .resource(
            ControlResource::new("batchInferenceJobs", "bad")
                .then("JOB_STATE_RUNNING", 1)
                .stay("JOB_STATE_FAILED"),
        );
    rt.block_on(Sim::start(cfg)).unwrap()
}

fn jobs(args: &[&str], key: Option<&str>) -> (Output, serde_json::Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    c.arg("jobs").args(args).env_remove("FIREWORKS_API_KEY");
    if let Some(k) = key {
        c.env("FIREWORKS_API_KEY", k);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stdout.contains(KEY) && !stderr.contains(KEY),
        "the key leaked: {stdout} {stderr}"
    );
    let json = if args.contains(&"--json") {
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one object: {stdout:?}");
        serde_json::from_str(lines[0]).unwrap()
    } else {
        serde_json::Value::Null
    };
    (out, json)
}

const KEYS: [&str; 8] = [
    "resource",
    "state",
    "healthy",
    "resumed",
    "polls",
    "failed_polls",
    "elapsed_s",
    "error",
];

#[test]
fn reconnect_and_wait_prints_one_object_and_exits_by_outcome() {
    let rt = common::runtime();
    let sim = sim(&rt);
    let base = format!("http://{}", sim.addr());
    let (out, v) = jobs(
        &[
            "reconnect-and-wait",
            "--account",
            "acct",
            "--job",
            "preempted",
            "--base-url",
            &base,
            "--json",
        ],
        Some(KEY),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(v["resource"], "rlorTrainerJobs/preempted");
    assert_eq!(v["state"], "JOB_STATE_RUNNING");
    assert_eq!(
        (v["healthy"].as_bool(), v["resumed"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(v["polls"], 2);
    assert_eq!(v["failed_polls"], 0);
    assert!(v["error"].is_null());
    let resumes = sim
        .log()
        .iter()
        .filter(|r| r.path.ends_with(":resume"))
        .count();
    assert_eq!(resumes, 1);

    // A tombstone: exit 1, the error in the object and in one line on stderr.
    let (out, v) = jobs(
        &[
            "reconnect-and-wait",
            "--account",
            "acct",
            "--job",
            "gone",
            "--base-url",
            &base,
            "--json",
        ],
        Some(KEY),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("tombstone") && err.contains("create a new one"),
        "{err}"
    );
    assert_eq!(v["healthy"], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("firebreak: ") && last.contains("tombstone"),
        "{stderr}"
    );
}

#[test]
fn wait_covers_deployments_and_jobs() {
    let rt = common::runtime();
    let sim = sim(&rt);
    let base = format!("http://{}", sim.addr());
    let common = [
        "--account",
        "acct",
        "--base-url",
        &base,
        "--poll-interval",
        "0.02",
        "--json",
    ];
    let (out, v) = jobs(
        &[&["wait", "--deployment", "dep"], &common[..]].concat(),
        Some(KEY),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (v["state"].as_str(), v["polls"].as_u64()),
        (Some("READY"), Some(3))
    );
    let (out, v) = jobs(
        &[&["wait", "--batch-job", "bad"], &common[..]].concat(),
        Some(KEY),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["state"], "JOB_STATE_FAILED");
    assert!(v["error"].as_str().unwrap().contains("failed"), "{v}");
    let (out, v) = jobs(
        &[&["wait", "--rft-job", "rft"], &common[..]].concat(),
        Some(KEY),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["resource"], "reinforcementFineTuningJobs/rft");
    // An unknown resource is refused at once, not polled.
    let (out, v) = jobs(
        &[&["wait", "--sft-job", "nope"], &common[..]].concat(),
        Some(KEY),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["polls"], 0);
    assert!(v["error"].as_str().unwrap().contains("refused"), "{v}");
}

#[test]
fn bad_input_and_missing_keys_are_one_line_errors_and_keys_never_show() {
    let rt = common::runtime();
    let sim = sim(&rt);
    let base = format!("http://{}", sim.addr());
    let line = |o: &Output| String::from_utf8_lossy(&o.stderr).trim().to_owned();
    let head = ["wait", "--account", "acct", "--base-url", &base];
    let wait = |extra: &[&str], key| jobs(&[&head[..], extra].concat(), key);
    let (out, _) = wait(&["--deployment", "dep"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&out).contains("FIREWORKS_API_KEY"), "{}", line(&out));
    let (out, _) = wait(&["--deployment", "dep", "--timeout", "0"], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&out).contains("--timeout"), "{}", line(&out));
    let (out, _) = jobs(
        &[
            "wait",
            "--account",
            "a/b",
            "--deployment",
            "dep",
            "--base-url",
            &base,
        ],
        Some(KEY),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&out).contains("a/b"), "{}", line(&out));
    // Exactly one target.
    let (out, _) = wait(&[], Some(KEY));
    assert_eq!(out.status.code(), Some(2));
    let (out, _) = wait(&["--deployment", "dep", "--batch-job", "b"], Some(KEY));
    assert_eq!(out.status.code(), Some(2));
    // A wrong key: refused at once, and neither key is shown.
    let (out, v) = wait(
        &["--deployment", "dep", "--json"],
        Some("fw_wrong_SECRET_key"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(v["error"].as_str().unwrap().contains("refused"), "{v}");
    assert!(!v.to_string().contains("fw_wrong_SECRET_key"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("fw_wrong_SECRET_key"));
    // Nothing listening: unreachable once the allowance is spent, in about that time.
    let refused = firebreak_testkit_free_port();
    let t = Instant::now();
    let (out, v) = jobs(
        &[
            "reconnect-and-wait",
            "--account",
            "acct",
            "--job",
            "j",
            "--base-url",
            &format!("http://127.0.0.1:{refused}"),
            "--max-wait-for-resumable",
            "1",
            "--json",
        ],
        Some(KEY),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");
    assert!(v["failed_polls"].as_u64() >= Some(1), "{v}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A loopback port nothing listens on.
fn firebreak_testkit_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
