//! The official openai Python SDK, with its own retries off, through `firebreak proxy` in front
//! of firebreak-sim with faults: JSON and streamed completions succeed, and a 401 is the SDK's
//! `AuthenticationError`. Through a second proxy that requires caller tokens: a token works and
//! its absence is a 401; a 3 s SDK timeout with a hung first attempt succeeds in time; a stream
//! cut mid-way raises the SDK's `APIError`. Through a proxy with `--config`: an alias whose
//! primary deployment is down is answered by its fallback, with the `firebreak-target` header. The SDK is installed into a throwaway virtualenv under `target/`
//! on first use (from PyPI), so `scripts/test` and CI need no extra step beyond python3.

use firebreak_sim::{DelayHeader, DeploymentConfig, Fault, Sim, SimConfig, Trigger};
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd`, failing the test after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let t = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            return child.wait_with_output().unwrap();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The venv's python, made once per test binary (its tests run in parallel).
fn venv_python() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/openai-venv");
    let py = root.join("bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&root);
        let out = run_bounded(
            c,
            Duration::from_secs(120),
            "python3 -m venv (is python3 installed?)",
        );
        assert!(
            out.status.success(),
            "venv: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c = Command::new(root.join("bin/pip"));
        c.args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai>=1",
        ]);
        let out = run_bounded(c, Duration::from_secs(600), "pip install openai");
        assert!(
            out.status.success(),
            "pip: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    py
}

#[test]
fn the_openai_sdk_works_through_the_proxy_despite_faults() {
    let python = venv_python();
    let rt = common::runtime();
    let sim = rt
        .block_on(Sim::start(
            SimConfig::default()
                .api_key("fw_sdk_key")
                .fault(Trigger::FirstAttempts { n: 1 }, Fault::status(503))
                .fault(
                    Trigger::FirstAttempts { n: 2 },
                    Fault::status(429).delay(vec![DelayHeader::RetryAfterMs { ms: 100.0 }]),
                ),
        ))
        .unwrap();
    let proxy = common::proxy(&sim.base_url(), &[]);
    let url = format!("http://{}", proxy.addr);
    // The second pair: caller tokens, a hung first attempt ("…1" ids), a stream cut ("…2").
    let sim2 = rt
        .block_on(Sim::start(
            SimConfig::default()
                .api_key("fw_sdk_key")
                .fault(
                    Trigger::FirstAttemptsOfEvery {
                        n: 1,
                        every: 10,
                        offset: 1,
                    },
                    Fault::Hang { for_ms: 20_000 },
                )
                .fault(
                    Trigger::FirstAttemptsOfEvery {
                        n: 100,
                        every: 10,
                        offset: 2,
                    },
                    Fault::ResetMidStream { after_chunks: 4 },
                ),
        ))
        .unwrap();
    let auth_proxy = common::proxy_env(
        &sim2.base_url(),
        &["--auth-token-env", "FB_CALLER_TOKENS"],
        &[
            ("FIREWORKS_API_KEY", "fw_sdk_key"),
            ("FB_CALLER_TOKENS", "caller-token-123"),
        ],
    );
    let mut c = Command::new(&python);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_sdk_check.py"))
        .env("FIREBREAK_PROXY", &url)
        .env(
            "FIREBREAK_PROXY_AUTH",
            format!("http://{}", auth_proxy.addr),
        );
    let out = run_bounded(c, Duration::from_secs(120), "the SDK check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("openai SDK ok"));
    let log = rt.block_on(async { sim.log() });
    let statuses = |id: &str| {
        log.iter()
            .filter(|r| r.request_id.as_deref() == Some(id))
            .map(|r| r.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        statuses("sdk-json"),
        [503, 429, 200],
        "the proxy absorbed both faults"
    );
    assert_eq!(statuses("sdk-stream"), [503, 429, 200]);
    assert_eq!(statuses("sdk-401"), [401], "a 401 is not retried");
    let log2 = rt.block_on(async { sim2.log() });
    let attempts = |id: &str| {
        log2.iter()
            .filter(|r| r.request_id.as_deref() == Some(id))
            .count()
    };
    assert_eq!(
        attempts("sdk-hang-1"),
        2,
        "the hung attempt was abandoned and retried"
    );
    assert_eq!(attempts("sdk-hang-stream-11"), 2);
    assert_eq!(attempts("sdk-stranger"), 0, "no token, nothing sent");
    assert_eq!(
        attempts("sdk-cut-2"),
        1,
        "a stream already delivered is not sent again"
    );
}

#[test]
fn the_openai_sdk_gets_an_alias_answered_by_the_fallback_with_the_target_header() {
    const PRIMARY: &str =
        "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acme/deployments/d1";
    const SERVERLESS: &str = "accounts/fireworks/models/llama-v3p1-8b-instruct";
    let python = venv_python();
    let rt = common::runtime();
    let sim = rt
        .block_on(Sim::start(
            SimConfig::default()
                .api_key("fw_sdk_key")
                .deployment(DeploymentConfig::new(PRIMARY)),
        ))
        .unwrap();
    sim.take_down(PRIMARY, firebreak_testkit::status_fault(503, vec![]));
    let dir = std::env::temp_dir().join(format!("firebreak-route-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.mine]\nmodel = \"{PRIMARY}\"\nkind = \"dedicated\"\nkey_env = \"FB_ROUTE_KEY\"\n\n[targets.serverless]\nmodel = \"{SERVERLESS}\"\nkey_env = \"FB_ROUTE_KEY\"\n\n[aliases]\nchat = [\"mine\", \"serverless\"]\n"
        ),
    )
    .unwrap();
    let proxy = common::proxy_env(
        &sim.base_url(),
        &["--config", config.to_str().unwrap()],
        &[("FB_ROUTE_KEY", "fw_sdk_key")],
    );
    let mut c = Command::new(&python);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_sdk_route_check.py"))
        .env("FIREBREAK_PROXY", format!("http://{}", proxy.addr));
    let out = run_bounded(c, Duration::from_secs(120), "the SDK route check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    assert!(stdout.contains("openai SDK route ok"), "{stdout}");
    let log = rt.block_on(async { sim.log() });
    let by = |model: &str, status: u16| {
        log.iter()
            .filter(|r| r.model.as_deref() == Some(model) && r.status == status)
            .count()
    };
    // Each of the three alias calls tried the primary once (its breaker needs five) and was
    // answered by the serverless model; the plain call went upstream as it came.
    assert_eq!(by(PRIMARY, 503), 3, "{log:?}");
    assert_eq!(by(SERVERLESS, 200), 3);
    assert_eq!(by("m", 200), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
