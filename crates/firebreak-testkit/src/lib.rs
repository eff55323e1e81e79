//! Helpers shared by the workspace's integration tests and benches: a plain hyper client, request
//! builders, and a time bound for every test.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::time::Duration;

pub mod baselines;
mod fleet;
mod inmem;
mod recorded;
mod route;
pub use fleet::{FleetPlan, FleetRun, MemoryFleet, run_fleet};
pub use inmem::{Captured, CountPolicy, Ok200, inmem_request, logged};
pub use recorded::Recorded;
pub use route::{Routed, drive_router};

/// The key tests send. The simulator in a test accepts it via `SimConfig::api_key`.
pub const KEY: &str = "fw_test_key_0123456789";

/// A plain hyper-util client (HTTP/1.1, no TLS): the "bare client" of the tests.
pub type PlainClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP/1.1 client.
pub fn plain_client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build(connector())
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

/// A plain HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> PlainClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector())
}

/// A chat completion body whose `user` field is the logical request id.
pub fn chat_body(id: &str, stream: bool) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 4,
            "stream": stream,
            "user": id,
        })
        .to_string(),
    )
}

/// A POST to `base/path` with the test key.
pub fn post(base: &str, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("valid request")
}

/// A whole response.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` and reads the whole answer.
pub async fn send(
    client: &PlainClient,
    req: Request<Full<Bytes>>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Runs `f`, failing the test if it takes longer than `secs` (so a bug fails fast, never
/// hangs). Under paused time (`start_paused`), the clock auto-advances, so the bound is in
/// virtual seconds and a generous one costs nothing.
pub async fn bounded<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the test exceeded its {secs} s bound: an awaited call, answer or request never came (see the last step it reached)"
            )
        })
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

/// A loopback address where TCP connects hang (for connect-timeout tests): a listener that
/// never accepts and whose backlog is already full, so the kernel drops further SYNs. Keep the
/// returned guard alive while using the address.
pub fn blackhole() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    socket2::Socket,
) {
    blackhole_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// As [`blackhole`], on a given loopback address (for example one where connects were
/// refused a moment ago, to turn refusals into connect timeouts behind the same URL).
pub fn blackhole_on(
    at: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    socket2::Socket,
) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    l.set_reuse_address(true).expect("SO_REUSEADDR");
    l.bind(&at.into()).expect("bind");
    l.listen(0).expect("listen");
    let addr = l
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet addr");
    // Fill the accept queue; connects that still complete are kept open. Bounded: a few tries.
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            fill.push(s);
        }
    }
    (addr, fill, l)
}

/// A loopback address where nothing listens (connects are refused).
pub fn refused_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A loopback TLS server with a fresh self-signed certificate that accepts connections and
/// completes handshakes (which a client trusting only the webpki roots must reject). Returns
/// its address; the server task ends with the test runtime.
pub async fn self_signed_tls_server() -> std::net::SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    serve_connections(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let _ = acceptor.accept(tcp).await;
        }
    })
    .await
}

/// A loopback listener on a free port that hands each of its first 16 connections (a handful
/// is all a test needs) to `serve`, on a task of its own. Returns its address; the tasks end
/// with the test runtime.
pub async fn serve_connections<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// A loopback server that answers every connection with bytes that are not HTTP.
pub async fn garbage_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    serve_connections(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"SMTP READY\r\nthis is not http\r\n\r\n").await;
        let _ = s.shutdown().await;
    })
    .await
}

/// A simulator on a free loopback port that accepts [`KEY`] and applies `fault` when `when`
/// fires.
pub async fn sim_with(
    when: firebreak_sim::Trigger,
    fault: firebreak_sim::Fault,
) -> firebreak_sim::Sim {
    firebreak_sim::Sim::start(
        firebreak_sim::SimConfig::default()
            .api_key(KEY)
            .fault(when, fault),
    )
    .await
    .expect("the simulator starts")
}

/// A simulator fault answering `status` with the default error body and these delay headers.
pub fn status_fault(status: u16, delay: Vec<firebreak_sim::DelayHeader>) -> firebreak_sim::Fault {
    firebreak_sim::Fault::status(status).delay(delay)
}

/// An error answer with a body `shape` (the default gateway one when `None`) and a `message`.
pub fn error_fault(
    status: u16,
    shape: Option<firebreak_sim::ErrorShape>,
    message: Option<&str>,
) -> firebreak_sim::Fault {
    firebreak_sim::Fault::status(status)
        .shape(shape)
        .message(message.map(str::to_owned))
}

/// Open file descriptors and resident memory (KiB) of process `pid`, from `/proc` (zeros where
/// `/proc` is not there).
pub fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    (fds, rss)
}

/// The interactive stack made fast for tests: backoff from 5 ms capped at 50 ms, and a 300 ms
/// first byte (response head and first SSE event), so a hang is cut and retried in well under a
/// second.
pub fn fast_interactive() -> firebreak::Stack {
    let mut s = firebreak::Stack::interactive();
    s.retry.backoff = firebreak::retry::Backoff {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        ..s.retry.backoff
    };
    s.timeouts.headers = Some(Duration::from_millis(300));
    s.timeouts.first_event = Some(Duration::from_millis(300));
    s
}

/// A `redis-server` of the test's own, on a free loopback port, with no persistence; killed
/// when dropped. Tests that need Redis fail (they do not skip) when it cannot start:
/// `scripts/test` installs `redis-server` when it is missing.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port and waits (at most 10 s) until it answers `PING`.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RedisServer::start_on(port)
    }

    /// Starts one on `port` (for a restart on the same address).
    pub fn start_on(port: u16) -> RedisServer {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (apt-get install redis-server; scripts/test does)")
            });
        let mut s = RedisServer {
            child: Some(child),
            port,
        };
        let t = std::time::Instant::now();
        // Bounded: 10 s of 20 ms tries.
        while t.elapsed() < Duration::from_secs(10) {
            if s.ping() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.stop();
        panic!("redis-server did not answer PING on 127.0.0.1:{port} within 10 s");
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers `PING` now.
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        c.write_all(b"PING\r\n").is_ok()
            && c.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Kills it (SIGKILL: a crash, not a shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
