//! In-memory pieces for the overhead benches: a service that answers 200 at once, tower's
//! count retry policy (the peer firebreak's retry is compared with), and the request they send.

use bytes::Bytes;
use firebreak::Error;
use http::{Request, Response};
use http_body_util::Full;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

/// Answers at once with a small body; accepts any request body; fails with firebreak's error
/// type so that every layer can sit on it directly.
#[derive(Debug, Clone)]
pub struct Ok200(pub Bytes);

impl<B> tower::Service<Request<B>> for Ok200 {
    type Response = Response<Full<Bytes>>;
    type Error = Error;
    type Future = Ready<Result<Response<Full<Bytes>>, Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Full::new(self.0.clone()))))
    }
}

/// tower's simplest retry policy: retry errors up to `n` times, cloning body and URI.
#[derive(Debug, Clone)]
pub struct CountPolicy(pub u32);

impl<Res> tower::retry::Policy<Request<Full<Bytes>>, Res, tower::BoxError> for CountPolicy {
    type Future = Ready<()>;
    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Res, tower::BoxError>,
    ) -> Option<Ready<()>> {
        (result.is_err() && self.0 > 0).then(|| {
            self.0 -= 1;
            ready(())
        })
    }
    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut r = Request::new(req.body().clone());
        *r.uri_mut() = req.uri().clone();
        Some(r)
    }
}

/// The request the overhead benches send: a small JSON POST.
pub fn inmem_request() -> Request<Full<Bytes>> {
    Request::post("http://api.fireworks.ai/inference/v1/chat/completions")
        .body(Full::new(Bytes::from_static(br#"{"messages":[]}"#)))
        .expect("a valid request")
}

/// Runs `fut` on a current-thread runtime with every event at `level` or above written to a
/// buffer (this thread's subscriber); its output and what was logged.
pub fn logged<F: std::future::Future>(level: tracing::Level, fut: F) -> (F::Output, String) {
    let buf = Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let out = rt.block_on(fut);
    (out, buf.text())
}

/// A `tracing_subscriber` writer into a shared buffer, for tests that read what was logged.
#[derive(Debug, Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("buffer lock")).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}
