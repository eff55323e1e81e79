//! The accept loop, per-connection plumbing and the request handler.

use crate::bodies::{self, Kind};
use crate::body::{Cut, LogGuard, SimBody, pieces};
use crate::bucket::{Admit, Bucket};
use crate::config::{
    CapacityReject, DelayHeader, ErrorShape, Fault, RateLimitDelay, RateUnit, SimConfig, Trigger,
};
use crate::log::{AttemptLog, AttemptRecord};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// State shared by every connection of one simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) start: Instant,
    pub(crate) created_unix: u64,
    pub(crate) log: AttemptLog,
    pub(crate) seq: AtomicU64,
    pub(crate) attempts: Mutex<HashMap<String, u32>>,
    pub(crate) bucket: Option<Mutex<Bucket>>,
    pub(crate) in_flight: AtomicUsize,
    /// Requests in flight per deployment, in `cfg.deployments` order.
    pub(crate) deployment_in_flight: Vec<AtomicUsize>,
    /// Models taken down at run time ([`crate::Sim::take_down`]), with the fault every
    /// request naming them meets.
    pub(crate) outages: Mutex<HashMap<String, Fault>>,
    pub(crate) control: crate::control::ControlPlane,
    pub(crate) exporter: crate::exporter::ScrapeLimit,
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let start = Instant::now();
        let cfg_deployments = cfg.deployments.clone();
        let bucket = cfg
            .rate_limit
            .clone()
            .map(|rl| Mutex::new(Bucket::new(rl, start)));
        Shared {
            control: crate::control::ControlPlane::new(cfg.control.clone()),
            exporter: crate::exporter::ScrapeLimit::default(),
            log: AttemptLog::new(cfg.log_capacity),
            cfg,
            start,
            created_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            seq: AtomicU64::new(0),
            attempts: Mutex::new(HashMap::new()),
            bucket,
            in_flight: AtomicUsize::new(0),
            deployment_in_flight: cfg_deployments
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            outages: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn elapsed_ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64() * 1000.0
    }
}

/// Accepts connections until `shutdown` fires; then every connection task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_conn(stream, shared.clone()));
            }
        }
    }
    conns.shutdown().await;
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = hyper_util::rt::TokioIo::new(ResettableStream {
        inner: stream,
        reset: reset.clone(),
    });
    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), reset.clone(), req));
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // Errors here are the faults we injected, or clients hanging up: nothing to report.
    let _ = builder.serve_connection(io, svc).await;
}

/// A TCP stream that can be told to end with a RST instead of a FIN.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    fn check(&self) -> io::Result<()> {
        if self.reset.load(Ordering::Acquire) {
            self.arm_rst();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated reset",
            ));
        }
        Ok(())
    }

    fn arm_rst(&self) {
        // SO_LINGER 0 makes close() send RST and discard unsent data.
        let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Acquire) {
            self.arm_rst();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Returned by the service to make hyper drop the connection without a response.
#[derive(Debug, thiserror::Error)]
#[error("simulated: connection dropped without a response")]
pub(crate) struct DropConnection;

#[derive(Debug, Default, serde::Deserialize)]
struct ReqInfo {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
}

fn route(path: &str) -> Option<(Route, Method)> {
    let rest = path
        .strip_prefix("/inference/v1")
        .or_else(|| path.strip_prefix("/v1"))?;
    match rest {
        "/chat/completions" => Some((Route::Chat, Method::POST)),
        "/completions" => Some((Route::Completions, Method::POST)),
        "/embeddings" => Some((Route::Embeddings, Method::POST)),
        "/models" => Some((Route::Models, Method::GET)),
        _ => None,
    }
}

/// A uniform number in [0, 1) from the decision's identity: the same seed, request id, attempt and
/// rule always decide the same way, whatever the arrival order.
fn unit(seed: u64, id: &str, attempt: u32, rule: usize) -> f64 {
    let mut key = Vec::with_capacity(id.len() + 12);
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(&attempt.to_le_bytes());
    key.extend_from_slice(&(rule as u64).to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key, seed);
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn fires(when: Trigger, seed: u64, id: &str, attempt: u32, rule: usize) -> bool {
    match when {
        Trigger::Always => true,
        Trigger::Probability { p } => unit(seed, id, attempt, rule) < p,
        Trigger::FirstAttempts { n } => attempt <= n,
        Trigger::FirstAttemptsOfEvery { n, every, offset } => {
            let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
            let k = id[id.len() - digits..].parse::<u64>().ok();
            attempt <= n
                && every > 0
                && k.is_some_and(|k| k % u64::from(every) == u64::from(offset))
        }
    }
}

fn fault_name(f: &Fault) -> &'static str {
    match f {
        Fault::Status { .. } => "status",
        Fault::Hang { .. } => "hang",
        Fault::SlowTtfb { .. } => "slow_ttfb",
        Fault::SlowUpload { .. } => "slow_upload",
        Fault::StallAfter { .. } => "stall_after",
        Fault::ResetBeforeResponse => "reset_before_response",
        Fault::ResetMidStream { .. } => "reset_mid_stream",
        Fault::SseError { .. } => "sse_error",
    }
}

struct Ctx {
    reset: Arc<AtomicBool>,
    guard: LogGuard,
    server_request_id: String,
}

impl Ctx {
    fn respond(
        self,
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        content_type: &'static str,
        body: Bytes,
    ) -> Response<SimBody> {
        self.respond_with(status, headers, content_type, |g| SimBody::full(body, g))
    }

    fn respond_with(
        mut self,
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        content_type: &'static str,
        body: impl FnOnce(LogGuard) -> SimBody,
    ) -> Response<SimBody> {
        self.guard.record.status = status;
        let mut resp = Response::new(body(self.guard));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(v) = HeaderValue::from_str(&self.server_request_id) {
            h.insert("x-request-id", v);
        }
        for (k, v) in headers {
            h.append(k, v);
        }
        resp
    }

    fn error(
        mut self,
        status: u16,
        shape: ErrorShape,
        message: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        fault: &str,
    ) -> Response<SimBody> {
        self.guard
            .record
            .fault
            .get_or_insert_with(|| fault.to_owned());
        let (ct, body) = bodies::error_body(shape, status, message, &self.server_request_id);
        self.respond(status, headers, ct, body)
    }
}

fn hv(s: impl AsRef<str>) -> Option<HeaderValue> {
    HeaderValue::from_str(s.as_ref()).ok()
}

fn delay_headers(delays: &[DelayHeader]) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for d in delays {
        let pair = match d {
            DelayHeader::RetryAfterSecs { secs } => hv(fmt_num(*secs)).map(|v| (RETRY_AFTER, v)),
            DelayHeader::RetryAfterMs { ms } => {
                hv(fmt_num(*ms)).map(|v| (HeaderName::from_static("retry-after-ms"), v))
            }
            DelayHeader::RetryAfterDate { secs_from_now } => {
                let now = SystemTime::now();
                let t = if *secs_from_now >= 0 {
                    now.checked_add(Duration::from_secs(secs_from_now.unsigned_abs()))
                } else {
                    now.checked_sub(Duration::from_secs(secs_from_now.unsigned_abs()))
                };
                t.and_then(|t| hv(httpdate::fmt_http_date(t)))
                    .map(|v| (RETRY_AFTER, v))
            }
            DelayHeader::Raw { name, value } => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .zip(HeaderValue::from_bytes(value.as_bytes()).ok()),
        };
        out.extend(pair);
    }
    out
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn rate_headers(shared: &Shared, rate: f64, remaining: f64) -> Vec<(HeaderName, HeaderValue)> {
    let unit = shared
        .cfg
        .rate_limit
        .as_ref()
        .map(|r| r.header_unit)
        .unwrap_or_default();
    let limit = match unit {
        RateUnit::PerSecond => rate,
        RateUnit::PerMinute => rate * 60.0,
    };
    let mut out = Vec::with_capacity(2);
    out.extend(
        hv(format!("{}", limit.round() as u64))
            .map(|v| (HeaderName::from_static("x-ratelimit-limit-requests"), v)),
    );
    // A bucket may hold more than one period's worth (its burst); like a real limiter, the
    // header never states more remaining than the limit.
    out.extend(
        hv(format!("{}", remaining.clamp(0.0, limit.round()) as u64))
            .map(|v| (HeaderName::from_static("x-ratelimit-remaining-requests"), v)),
    );
    out
}

/// Handles one attempt.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, DropConnection> {
    let arrived = Instant::now();
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let header_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    // Slow upload is decided before the body is read, so only from the header id.
    let pre_id = header_id.clone().unwrap_or_else(|| format!("#{seq}"));
    let pre_attempt = header_id
        .as_ref()
        .map(|id| {
            shared
                .attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .copied()
                .unwrap_or(0)
                + 1
        })
        .unwrap_or(1);
    for (i, rule) in shared.cfg.faults.iter().enumerate() {
        if let Fault::SlowUpload { delay_ms } = rule.fault {
            if path_matches(&rule.paths, parts.uri.path())
                && fires(rule.when, shared.cfg.seed, &pre_id, pre_attempt, i)
            {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                break;
            }
        }
    }

    let read = Limited::new(body, shared.cfg.max_request_body)
        .collect()
        .await;
    let (bytes, too_large) = match read {
        Ok(c) => (c.to_bytes(), false),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => (Bytes::new(), true),
        // The client went away mid-upload: nothing to answer.
        Err(_) => (Bytes::new(), false),
    };
    let info: Option<ReqInfo> = if bytes.is_empty() {
        Some(ReqInfo::default())
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let request_id = info.as_ref().and_then(|i| i.user.clone()).or(header_id);
    let attempt = match &request_id {
        Some(id) => {
            let mut m = shared.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(id.clone()).or_insert(0);
            *n += 1;
            *n
        }
        None => 1,
    };
    let stream = info.as_ref().and_then(|i| i.stream).unwrap_or(false);
    let body_hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    let server_request_id = bodies::uuid_from(body_hash ^ seq, shared.cfg.seed);
    let record = AttemptRecord {
        seq,
        t_ms: shared.elapsed_ms(arrived),
        end_ms: 0.0,
        request_id: request_id.clone(),
        attempt,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        version: format!("{:?}", parts.version),
        status: 0,
        fault: None,
        body_hash,
        body_len: bytes.len() as u64,
        stream,
        bytes_sent: 0,
        completed: false,
        header_names: parts
            .headers
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect(),
        model: info.as_ref().and_then(|i| i.model.clone()),
    };
    let ctx = Ctx {
        reset: reset.clone(),
        guard: LogGuard {
            shared: shared.clone(),
            record,
            holds_capacity: None,
        },
        server_request_id,
    };
    if too_large {
        return Ok(ctx.error(
            413,
            ErrorShape::Gateway,
            bodies::default_message(413),
            vec![],
            "too_large",
        ));
    }

    // Auth.
    let key = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let key_ok = !key.is_empty()
        && (shared.cfg.api_keys.is_empty() || shared.cfg.api_keys.iter().any(|k| k == key));
    if !key_ok {
        return Ok(ctx.error(
            401,
            ErrorShape::Gateway,
            bodies::default_message(401),
            vec![],
            "auth",
        ));
    }

    // The metrics exporter.
    if let Some(req) = crate::exporter::parse(&parts.method, parts.uri.path()) {
        return Ok(match req {
            Err(status) => ctx.error(
                status,
                ErrorShape::GrpcGateway,
                bodies::default_message(status),
                vec![],
                "route",
            ),
            Ok(account) => match shared.exporter.admit(&account, Instant::now()) {
                Ok(()) => ctx.respond(
                    200,
                    vec![],
                    "text/plain; version=0.0.4",
                    Bytes::from(crate::exporter::render(
                        &shared.log.snapshot_from(0),
                        &account,
                    )),
                ),
                Err(wait) => ctx.error(
                    429,
                    ErrorShape::GrpcGateway,
                    "metrics scrape limit exceeded: 6 requests per minute per account",
                    delay_headers(&[DelayHeader::RetryAfterSecs {
                        secs: wait.as_secs_f64().ceil().max(1.0),
                    }]),
                    "metrics_rate_limit",
                ),
            },
        });
    }

    // The control plane.
    if let Some(req) = crate::control::parse(&parts.method, parts.uri.path()) {
        use crate::control::ControlAnswer as A;
        let answer = match req {
            Ok(req) => shared.control.answer(&req),
            Err(status) => A::Error(status, bodies::default_message(status).into(), "route"),
        };
        return match answer {
            A::Json(status, v) => Ok(ctx.respond(
                status,
                vec![],
                "application/json",
                Bytes::from(v.to_string()),
            )),
            A::Error(status, message, fault) => {
                Ok(ctx.error(status, ErrorShape::GrpcGateway, &message, vec![], fault))
            }
            A::Reset => {
                let mut ctx = ctx;
                ctx.guard.record.fault = Some("control_reset".into());
                reset.store(true, Ordering::Release);
                drop(ctx);
                Err(DropConnection)
            }
        };
    }

    // Routing.
    let Some((route, method)) = route(parts.uri.path()) else {
        return Ok(ctx.error(404, ErrorShape::Gateway, "Route not found", vec![], "route"));
    };
    if parts.method != method {
        return Ok(ctx.error(
            405,
            ErrorShape::Gateway,
            bodies::default_message(405),
            vec![],
            "method",
        ));
    }
    let Some(info) = info else {
        return Ok(ctx.error(
            400,
            ErrorShape::Gateway,
            "Request body is not valid JSON",
            vec![],
            "bad_json",
        ));
    };
    let model = info
        .model
        .clone()
        .unwrap_or_else(|| "accounts/fireworks/models/llama-v3p1-8b-instruct".to_owned());
    if route != Route::Models
        && !shared.cfg.models.is_empty()
        && !shared.cfg.models.contains(&model)
    {
        return Ok(ctx.error(
            404,
            ErrorShape::Gateway,
            bodies::default_message(404),
            vec![],
            "model",
        ));
    }

    // A dedicated deployment: no shared rate limit, its own capacity and faults.
    let deployment = shared.cfg.deployments.iter().position(|d| d.model == model);
    let outage = shared
        .outages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&model)
        .cloned();

    // Rate limit.
    let mut rl_headers = Vec::new();
    if let (Some(bucket), None) = (&shared.bucket, deployment) {
        let (admit, rate) = {
            let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
            (b.try_take(Instant::now()), b.rate())
        };
        match admit {
            Admit::Yes { remaining } => rl_headers = rate_headers(&shared, rate, remaining),
            Admit::No { wait } => {
                let mut h = rate_headers(&shared, rate, 0.0);
                let delay = shared
                    .cfg
                    .rate_limit
                    .as_ref()
                    .map(|r| r.delay)
                    .unwrap_or_default();
                let secs = wait.as_secs_f64();
                let d = match delay {
                    RateLimitDelay::RetryAfterSecs => Some(DelayHeader::RetryAfterSecs {
                        secs: secs.ceil().max(1.0),
                    }),
                    RateLimitDelay::RetryAfterFractional => Some(DelayHeader::RetryAfterSecs {
                        secs: (secs * 1000.0).ceil() / 1000.0,
                    }),
                    RateLimitDelay::RetryAfterMs => Some(DelayHeader::RetryAfterMs {
                        ms: (secs * 1000.0).ceil(),
                    }),
                    RateLimitDelay::None => None,
                };
                h.extend(delay_headers(d.as_slice()));
                return Ok(ctx.error(
                    429,
                    ErrorShape::Gateway,
                    bodies::default_message(429),
                    h,
                    "rate_limit",
                ));
            }
        }
    }

    // Capacity.
    let mut ctx = ctx;
    let (capacity, counter) = match deployment {
        Some(i) => (
            shared.cfg.deployments[i].capacity.as_ref(),
            &shared.deployment_in_flight[i],
        ),
        None => (shared.cfg.capacity.as_ref(), &shared.in_flight),
    };
    let queue_after = deployment.and_then(|i| shared.cfg.deployments[i].queue_after);
    let mut queued = None;
    if outage.is_none() && capacity.is_none() && queue_after.is_some() {
        // Counted for the queue alone.
        let now = counter.fetch_add(1, Ordering::AcqRel) + 1;
        ctx.guard.holds_capacity = Some(crate::body::Slot::of(deployment));
        queued = queue_after.map(|q| now.saturating_sub(q) as f64 / q as f64);
    }
    if let (Some(cap), None) = (capacity, &outage) {
        let now = counter.fetch_add(1, Ordering::AcqRel) + 1;
        queued = queue_after.map(|q| now.saturating_sub(q) as f64 / q as f64);
        if now > cap.max_in_flight {
            counter.fetch_sub(1, Ordering::AcqRel);
            let (status, msg) = match cap.reject_with {
                CapacityReject::Overloaded503 => {
                    (503, "Service overloaded, please try again later")
                }
                CapacityReject::CapacityExceeded429 => (429, "Deployment capacity exceeded"),
            };
            return Ok(ctx.error(status, ErrorShape::Gateway, msg, vec![], "capacity"));
        }
        ctx.guard.holds_capacity = Some(crate::body::Slot::of(deployment));
    }

    // Faults: a run-time outage, then the deployment's rules, then the scenario's. A rule's
    // index in the decision hash counts the deployment's rules first.
    let fault_id = request_id.clone().unwrap_or_else(|| format!("#{seq}"));
    let own: &[crate::config::FaultRule] =
        deployment.map_or(&[], |i| &shared.cfg.deployments[i].faults);
    let fault = outage.or_else(|| {
        own.iter()
            .chain(shared.cfg.faults.iter())
            .enumerate()
            .find_map(|(i, rule)| {
                (!matches!(rule.fault, Fault::SlowUpload { .. })
                    && path_matches(&rule.paths, parts.uri.path())
                    && fires(rule.when, shared.cfg.seed, &fault_id, attempt, i))
                .then(|| rule.fault.clone())
            })
    });
    if let Some(f) = &fault {
        ctx.guard.record.fault = Some(fault_name(f).to_owned());
    }
    // A queue of k ahead at q slots waits k / q services (one time to first byte each).
    let queue_time =
        queued.map(|k| Duration::from_secs_f64(k * shared.cfg.latency.ttfb_ms as f64 / 1000.0));
    let mut extra_ttfb = queue_time.unwrap_or_default();
    let mut cut = None;
    match fault {
        Some(Fault::Status {
            status,
            shape,
            delay,
            should_retry,
            message,
        }) => {
            let shape = shape.unwrap_or(if status == 422 {
                ErrorShape::FastApi
            } else {
                ErrorShape::Gateway
            });
            let msg = message.unwrap_or_else(|| bodies::default_message(status).to_owned());
            let mut h = delay_headers(&delay);
            if let Some(sr) = should_retry {
                h.push((
                    HeaderName::from_static("x-should-retry"),
                    HeaderValue::from_static(if sr { "true" } else { "false" }),
                ));
            }
            return Ok(ctx.error(status, shape, &msg, h, "status"));
        }
        Some(Fault::Hang { for_ms }) => {
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            drop(ctx);
            return Err(DropConnection);
        }
        Some(Fault::ResetBeforeResponse) => {
            reset.store(true, Ordering::Release);
            drop(ctx);
            return Err(DropConnection);
        }
        Some(Fault::SlowTtfb { delay_ms }) => extra_ttfb = Duration::from_millis(delay_ms),
        Some(Fault::StallAfter {
            after_chunks,
            for_ms,
        }) => cut = Some((after_chunks, Cut::Stall(Duration::from_millis(for_ms)))),
        Some(Fault::ResetMidStream { after_chunks }) => cut = Some((after_chunks, Cut::Reset)),
        Some(Fault::SseError {
            after_chunks,
            message,
        }) => {
            let m = message.unwrap_or_else(|| "Internal error during generation".to_owned());
            cut = Some((
                after_chunks,
                Cut::ErrorEvent(bodies::stream_error(&m, &ctx.server_request_id)),
            ))
        }
        Some(Fault::SlowUpload { .. }) | None => {}
    }

    // The normal answer.
    let lat = &shared.cfg.latency;
    let ttfb = Duration::from_millis(lat.ttfb_ms) + extra_ttfb;
    if !ttfb.is_zero() {
        tokio::time::sleep(ttfb).await;
    }
    let prompt_tokens = (bytes.len() / 4).max(1) as u32;
    let completion_tokens = info
        .max_tokens
        .unwrap_or(lat.completion_tokens)
        .min(100_000);
    let created = shared.created_unix;
    let id = ctx.server_request_id.clone();
    let token_delay = Duration::from_millis(lat.token_delay_ms);
    let processing = ttfb.as_secs_f64() + token_delay.as_secs_f64() * completion_tokens as f64;
    let mut headers = rl_headers;
    let perf = [
        ("fireworks-prompt-tokens", prompt_tokens.to_string()),
        ("fireworks-cached-prompt-tokens", "0".to_owned()),
        (
            "fireworks-server-time-to-first-token",
            format!("{:.3}", ttfb.as_secs_f64()),
        ),
        (
            "fireworks-server-processing-time",
            format!("{processing:.3}"),
        ),
    ];
    for (k, v) in perf {
        headers.extend(hv(v).map(|v| (HeaderName::from_static(k), v)));
    }
    if let Some(q) = queue_time {
        headers.extend(hv(format!("{:.3}", q.as_secs_f64())).map(|v| {
            (
                HeaderName::from_static("fireworks-prefill-queue-duration"),
                v,
            )
        }));
    }
    let (body, content_type) = match route {
        Route::Models => (bodies::models(&shared.cfg.models), "application/json"),
        Route::Embeddings => {
            let n = match &info.input {
                Some(serde_json::Value::Array(a)) => a.len(),
                _ => 1,
            };
            (
                bodies::embeddings(&model, n, prompt_tokens),
                "application/json",
            )
        }
        Route::Chat | Route::Completions if stream => {
            let kind = if route == Route::Chat {
                Kind::Chat
            } else {
                Kind::Text
            };
            let mut chunks = VecDeque::with_capacity(completion_tokens as usize + 3);
            for i in 0..=completion_tokens + 1 {
                chunks.push_back(bodies::stream_chunk(
                    kind,
                    &id,
                    &model,
                    created,
                    i,
                    completion_tokens,
                    prompt_tokens,
                ));
            }
            chunks.push_back(Bytes::from_static(bodies::DONE));
            let reset = ctx.reset.clone();
            let mut resp = ctx.respond_with(200, headers, "text/event-stream", |g| {
                SimBody::chunked(chunks, token_delay, cut, Some(reset), g)
            });
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            return Ok(resp);
        }
        Route::Chat | Route::Completions => {
            let kind = if route == Route::Chat {
                Kind::Chat
            } else {
                Kind::Text
            };
            (
                bodies::completion(kind, &id, &model, created, prompt_tokens, completion_tokens),
                "application/json",
            )
        }
    };
    if let Some(cut) = cut {
        // A cut on a whole body: send it in 16-byte pieces so the cut lands mid-body.
        let reset = ctx.reset.clone();
        return Ok(ctx.respond_with(200, headers, content_type, |g| {
            SimBody::chunked(pieces(body, 16), Duration::ZERO, Some(cut), Some(reset), g)
        }));
    }
    Ok(ctx.respond(200, headers, content_type, body))
}

fn path_matches(paths: &[String], path: &str) -> bool {
    paths.is_empty() || paths.iter().any(|p| path.ends_with(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_deterministic_and_roughly_uniform() {
        let a = unit(7, "req-1", 1, 0);
        assert_eq!(a, unit(7, "req-1", 1, 0));
        assert_ne!(a, unit(8, "req-1", 1, 0));
        let hits = (0..10_000)
            .filter(|i| fires(Trigger::Probability { p: 0.3 }, 1, &format!("r{i}"), 1, 0))
            .count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/inference/v1/chat/completions"),
            Some((Route::Chat, Method::POST))
        );
        assert_eq!(route("/v1/models"), Some((Route::Models, Method::GET)));
        assert_eq!(route("/inference/v1/nope"), None);
        assert_eq!(route("/chat/completions"), None);
    }
}
