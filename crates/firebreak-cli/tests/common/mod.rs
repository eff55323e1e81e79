//! Shared by the CLI tests: running `firebreak proxy` as a child process, and raw HTTP/1.1 over
//! loopback sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `firebreak proxy`; killed when dropped.
pub(crate) struct Proxy {
    child: Child,
    /// `host:port` it listens on.
    pub(crate) addr: String,
    /// Its startup line.
    pub(crate) line: String,
    /// Everything it wrote to stderr so far (its log).
    log: Arc<Mutex<String>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Its log (stderr) so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal by name (`TERM`, `INT`).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits up to `limit` for it to exit; its exit status, or `None` if still running.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether it is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn spawn(mut cmd: Command) -> Result<Proxy, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the firebreak binary starts");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        // Ends when the process closes stderr.
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if line.is_empty() {
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let err = log.lock().unwrap().clone();
        return Err(err);
    }
    assert!(!line.contains("SECRET"), "{line}");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split(|c: char| c.is_whitespace() || c == ';').next())
        .expect("an address")
        .to_owned();
    Ok(Proxy {
        child,
        addr,
        line,
        log,
    })
}

/// The command for `firebreak proxy` on a free loopback port in front of `upstream`.
pub(crate) fn proxy_cmd(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    c.args(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream])
        .args(extra)
        .env_remove("FIREWORKS_API_KEY")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Starts `firebreak proxy` on a free loopback port in front of `upstream`, with `extra` flags,
/// and waits for its "listening" line (which must not show any key).
pub(crate) fn proxy(upstream: &str, extra: &[&str]) -> Proxy {
    proxy_env(upstream, extra, &[])
}

/// As [`proxy`], with environment variables.
pub(crate) fn proxy_env(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
    spawn(proxy_cmd(upstream, extra, env))
        .unwrap_or_else(|log| panic!("the proxy did not start: {log}"))
}

/// Runs a command that is expected to refuse to start; its stderr.
pub(crate) fn refused(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A raw exchange: writes `raw`, reads until the peer closes (or `limit`); the response text.
pub(crate) fn exchange(addr: &str, raw: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of a raw response (0 when there was none).
pub(crate) fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A request, `Connection: close`, with extra header lines; status, head and body.
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let text = exchange(addr, raw.as_bytes(), Duration::from_secs(30));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status_of(head), head.to_owned(), body.to_owned())
}

/// A chat body.
pub(crate) fn chat(user: &str, stream: bool, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"m","messages":[],"max_tokens":{max_tokens},"stream":{stream},"user":"{user}"}}"#
    )
}

/// A response header's value (case-insensitive name).
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Starts a proxy from a prepared command (e.g. under `sh -c "ulimit …; exec …"`).
pub(crate) fn spawn_cmd(cmd: Command) -> Proxy {
    spawn(cmd).unwrap_or_else(|log| panic!("the proxy did not start: {log}"))
}

/// A runtime and a simulator started on it (the proxy runs in its own process).
pub(crate) fn sim_on_runtime(
    cfg: firebreak_sim::SimConfig,
) -> (tokio::runtime::Runtime, firebreak_sim::Sim) {
    let rt = runtime();
    let sim = rt.block_on(firebreak_sim::Sim::start(cfg)).unwrap();
    (rt, sim)
}

/// A two-thread runtime for the simulator (the CLI under test runs in its own process).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}
