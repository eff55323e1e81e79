//! Shared by the CLI tests: running `firebreak proxy` as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `firebreak proxy`; killed when dropped.
pub(crate) struct Proxy {
    child: Child,
    /// `host:port` it listens on.
    pub(crate) addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `firebreak proxy` on a free loopback port in front of `upstream`, with `extra` flags,
/// and waits for its "listening" line (which must not show any key).
pub(crate) fn proxy(upstream: &str, extra: &[&str]) -> Proxy {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream])
        .args(extra)
        .env_remove("FIREWORKS_API_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the firebreak binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("a listening line");
    assert!(!line.contains("SECRET"), "{line}");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("an address")
        .to_string();
    Proxy { child, addr }
}
