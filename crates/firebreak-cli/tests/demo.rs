//! `firebreak demo` end to end (small size), and clap's handling of bad flags.

use std::process::Command;

fn firebreak() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
}

#[test]
fn the_demo_runs_and_prints_the_side_by_side_table() {
    let out = firebreak()
        .args([
            "demo",
            "--requests",
            "30",
            "--concurrency",
            "8",
            "--quiet",
            "--rate",
            "100",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for client in [
        "bare hyper client",
        "Fireworks docs' retry loop",
        "firebreak (interactive preset)",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(client))
            .unwrap_or_else(|| panic!("no row for {client}:\n{stdout}"));
        let success: f64 = line[32..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        assert!((0.0..=100.0).contains(&success), "{line}");
    }
    assert!(stdout.contains("client-side"));
    // firebreak's own breakdown, from its metrics: the injected faults reached the server.
    let acked = stdout
        .lines()
        .find(|l| l.starts_with("failed attempts the server acknowledged"))
        .unwrap_or_else(|| panic!("no breakdown:\n{stdout}"));
    assert!(!acked.ends_with(": none"), "{acked}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("failed attempts that never reached the server")),
        "{stdout}"
    );
}

#[test]
fn bad_flags_get_a_usage_error() {
    let out = firebreak()
        .args(["demo", "--requests", "0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--requests"));
    let out = firebreak()
        .args(["demo", "--rate", "-1"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let out = firebreak().args(["frobnicate"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}
