//! The `firebreak-sim` binary: serves a JSON scenario and writes the attempt log as JSONL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serves_a_scenario_and_logs_attempts_as_jsonl() {
    let dir = std::env::temp_dir().join(format!("firebreak-sim-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("s.json");
    let log = dir.join("log.jsonl");
    let _ = std::fs::remove_file(&log);
    std::fs::write(&scenario, r#"{"api_keys":["fw_bin"],"faults":[{"when":{"kind":"always"},"fault":{"kind":"status","status":503}}]}"#).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak-sim"))
        .args(["--listen", "127.0.0.1:0", "--scenario"])
        .arg(&scenario)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let body = r#"{"user":"bin-1","messages":[]}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "POST /inference/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fw_bin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    // The log is flushed once a second; wait for it (bounded).
    let t = Instant::now();
    let mut text = String::new();
    while t.elapsed() < Duration::from_secs(10) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        // A whole line: the writer may be caught half-way through one.
        if text.contains('\n') {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let rec: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a log line")).unwrap();
    assert_eq!(rec["status"], 503);
    assert_eq!(rec["request_id"], "bin-1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_scenario_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("firebreak-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("bad.json");
    std::fs::write(
        &scenario,
        r#"{"faults":[{"when":{"kind":"probability","p":2.0},"fault":{"kind":"hang"}}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak-sim"))
        .args(["--listen", "127.0.0.1:0", "--scenario"])
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("probability 2 is not in [0, 1]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
