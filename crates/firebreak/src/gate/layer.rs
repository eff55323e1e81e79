//! [`GateLayer`], the [`Gate`] service, its future and its body.

use crate::Deadline;
use crate::gate::config::{GateConfig, GateConfigError};
use crate::gate::fleet::{Fleet, FleetInbox};
use crate::gate::state::{GateMetrics, LocalGate, Permit};
use crate::gate::store::{Answer, GateKey, InProcessStore, RateStore};

/// The one store the public types use; the trait stays the seam for a shared one (#16).
type Store = InProcessStore;
use crate::parse::ratelimit::RateLimitHeaders;
use crate::{BoxError, Class, Classification, Error, Model};
use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// The tokens a request will use (prompt + completion), set by the caller in the extensions for
/// token caps. Without it the gate estimates `body bytes / 4 + default_completion_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate(pub u32);

impl TokenEstimate {
    /// Estimates a JSON request: its bytes / 4 for the prompt (about four bytes a token), plus
    /// its `max_tokens` (or `default_completion`) for the answer. An estimate, not a count; a body
    /// that is not JSON counts its bytes / 4 plus the default.
    pub fn from_json_body(body: &[u8], default_completion: u32) -> TokenEstimate {
        #[derive(serde::Deserialize)]
        struct MaxTokens {
            max_tokens: Option<u32>,
        }
        let completion = serde_json::from_slice::<MaxTokens>(body)
            .ok()
            .and_then(|m| m.max_tokens)
            .unwrap_or(default_completion);
        Self::of_size(body.len() as u64, completion)
    }

    /// The one estimate rule: a body of `bytes` (about four bytes a token) plus `completion`.
    pub(crate) fn of_size(bytes: u64, completion: u32) -> TokenEstimate {
        let prompt = u32::try_from(bytes / 4).unwrap_or(u32::MAX);
        TokenEstimate(prompt.saturating_add(completion))
    }
}

/// The parts of a request a key function may look at.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a Method,
    /// URI.
    pub uri: &'a Uri,
    /// Headers (the `Authorization` value must only ever be hashed, never kept).
    pub headers: &'a HeaderMap,
    /// Extensions.
    pub extensions: &'a Extensions,
}

/// How requests are grouped into gates.
#[derive(Clone, Default)]
pub enum KeyBy {
    /// One gate for the whole client (the default).
    #[default]
    Client,
    /// One gate per (API key, model): Fireworks serverless limits are per account and model.
    /// The key is the request's `Authorization` header or, when it has none (the auth layer
    /// adds it below the gate), the key given to [`GateLayer::fallback_credential`]; it is
    /// hashed, never stored. The model comes from the [`Model`] extension.
    ApiKeyAndModel,
    /// Any function of the request head.
    Custom(Arc<dyn Fn(&RequestHead<'_>) -> GateKey + Send + Sync>),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBy::Client => f.write_str("Client"),
            KeyBy::ApiKeyAndModel => f.write_str("ApiKeyAndModel"),
            KeyBy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl KeyBy {
    fn key(&self, head: &RequestHead<'_>, fallback: u64) -> GateKey {
        match self {
            KeyBy::Client => GateKey(0),
            KeyBy::ApiKeyAndModel => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                match head.headers.get(http::header::AUTHORIZATION) {
                    Some(a) => xxhash_rust::xxh3::xxh3_64(a.as_bytes()).hash(&mut h),
                    None => fallback.hash(&mut h),
                }
                if let Some(m) = head.extensions.get::<Model>() {
                    m.0.hash(&mut h);
                }
                GateKey(h.finish())
            }
            KeyBy::Custom(f) => f(head),
        }
    }
}

/// What a key's gate looks like right now: for metrics and dashboards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSnapshot {
    /// The adaptive concurrency limit.
    pub concurrency_limit: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests waiting to be admitted.
    pub queue_len: usize,
    /// The pacing rate in requests per second, when one is known.
    pub rate_per_sec: Option<f64>,
    /// Time left in a fleet-wide cooldown.
    pub cooldown_remaining: Duration,
    /// Total time requests spent waiting in the gate.
    pub waited: Duration,
    /// Requests refused without being sent (queue full, or no slot before the deadline).
    pub refused: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Time before a key whose quota is exhausted lets a call through to recheck.
    pub quota_recheck_in: Duration,
}

#[derive(Debug)]
struct Shared<S> {
    cfg: Arc<GateConfig>,
    key_by: KeyBy,
    /// The hash of the credential used when a request carries no `Authorization`.
    fallback: AtomicU64,
    store: Arc<S>,
    gates: RwLock<nohash_hasher::IntMap<GateKey, Arc<LocalGate>>>,
    metrics: GateMetrics,
    epoch: Instant,
}

impl<S: RateStore> Shared<S> {
    fn gate(&self, key: GateKey, now: Instant, model: Option<&Model>) -> Arc<LocalGate> {
        let stamp =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        if let Some(g) = self
            .gates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            g.last_used.store(stamp, Ordering::Relaxed);
            return g.clone();
        }
        let mut gates = self.gates.write().unwrap_or_else(|e| e.into_inner());
        if !gates.contains_key(&key) && gates.len() >= self.cfg.max_keys {
            self.evict(&mut gates);
        }
        let g = gates
            .entry(key)
            .or_insert_with(|| {
                // A per-(key, model) gate knows its model: its kind can come from the id.
                let model = model.filter(|_| matches!(self.key_by, KeyBy::ApiKeyAndModel));
                Arc::new(LocalGate::new(
                    key,
                    &self.cfg,
                    self.metrics.clone(),
                    now,
                    model,
                ))
            })
            .clone();
        g.last_used.store(stamp, Ordering::Relaxed);
        g
    }

    /// Evicts idle gates, least recently used first: an eighth of the map (at least one), so
    /// that the scan is paid once per many new keys. A gate in use is never evicted; when all
    /// are in use the map grows past `max_keys` until some are idle.
    fn evict(&self, gates: &mut nohash_hasher::IntMap<GateKey, Arc<LocalGate>>) {
        let mut idle: Vec<(u64, GateKey)> = gates
            .iter()
            .filter(|(_, g)| g.is_idle())
            .map(|(k, g)| (g.last_used.load(Ordering::Relaxed), *k))
            .collect();
        idle.sort_unstable_by_key(|(t, k)| (*t, k.0));
        let n = (gates.len() / 8).max(1).min(idle.len());
        for (_, k) in idle.into_iter().take(n) {
            if let Some(g) = gates.remove(&k) {
                g.retire();
                self.store.forget(k);
                self.metrics.evictions.increment(1);
            }
        }
    }
}

/// The 429 gate: see the [module docs](crate::gate). Clones share every gate.
#[derive(Debug)]
pub struct GateLayer {
    shared: Arc<Shared<Store>>,
}

impl Clone for GateLayer {
    fn clone(&self) -> Self {
        GateLayer {
            shared: self.shared.clone(),
        }
    }
}

impl GateLayer {
    /// A gate with `cfg`, keyed by `key_by`, keeping its state in this process.
    ///
    /// # Errors
    /// [`GateConfigError`] when `cfg` does not validate.
    pub fn new(cfg: GateConfig, key_by: KeyBy) -> Result<Self, GateConfigError> {
        cfg.validate()?;
        let store = InProcessStore::new(cfg.clone());
        Ok(Self::with_store(cfg, key_by, store))
    }

    /// A gate that shares its fleet-wide state with other processes through `fleet` (see
    /// [`Fleet`]): each process paces at its share of a stated or configured account rate, and
    /// a cooldown or an exhausted quota one of them sees holds the others too.
    ///
    /// # Errors
    /// [`GateConfigError`] when `cfg` does not validate.
    pub fn with_fleet(
        cfg: GateConfig,
        key_by: KeyBy,
        fleet: Arc<dyn Fleet>,
    ) -> Result<Self, GateConfigError> {
        cfg.validate()?;
        let store = InProcessStore::with_fleet(cfg.clone(), fleet.clone());
        let layer = Self::with_store(cfg, key_by, store);
        let sink: Arc<dyn crate::gate::fleet::FleetSink> = layer.shared.store.clone();
        fleet.attach(FleetInbox {
            sink: Arc::downgrade(&sink),
        });
        Ok(layer)
    }

    /// The credential [`KeyBy::ApiKeyAndModel`] uses for requests that carry no
    /// `Authorization` header (an auth layer below the gate adds it): the header value that
    /// layer sends. Only its hash is kept.
    pub fn fallback_credential(self, header_value: &[u8]) -> Self {
        self.shared
            .fallback
            .store(xxhash_rust::xxh3::xxh3_64(header_value), Ordering::Relaxed);
        self
    }
}

impl GateLayer {
    /// A gate whose shared rate and cooldown state lives in `store`. `cfg` is assumed valid.
    fn with_store(cfg: GateConfig, key_by: KeyBy, store: Store) -> Self {
        GateLayer {
            shared: Arc::new(Shared {
                cfg: Arc::new(cfg),
                key_by,
                fallback: AtomicU64::new(0),
                store: Arc::new(store),
                gates: RwLock::new(nohash_hasher::IntMap::default()),
                metrics: GateMetrics::register(),
                epoch: Instant::now(),
            }),
        }
    }

    /// The settings.
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn config(&self) -> &GateConfig {
        &self.shared.cfg
    }

    /// How requests are grouped into gates.
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn key_by(&self) -> &KeyBy {
        &self.shared.key_by
    }

    /// Whether a fleet-wide cooldown or a quota hold is on for any key now: a router moves a
    /// call on to another target rather than waiting it out.
    #[cfg_attr(not(feature = "route"), allow(dead_code))]
    pub(crate) fn holding(&self) -> bool {
        let now = Instant::now();
        let gates = self.shared.gates.read().unwrap_or_else(|e| e.into_inner());
        gates.keys().any(|k| {
            self.shared
                .store
                .cooldown_until(*k, now)
                .is_some_and(|t| t > now)
                || self.shared.store.quota_recheck_in(*k, now).is_some()
        })
    }

    /// The state of every gate, by key.
    pub fn snapshot(&self) -> Vec<(GateKey, GateSnapshot)> {
        let now = Instant::now();
        let gates: Vec<_> = self
            .shared
            .gates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        gates
            .into_iter()
            .map(|g| {
                let r = self.shared.store.snapshot(g.key, now);
                (
                    g.key,
                    GateSnapshot {
                        concurrency_limit: g.limit(),
                        in_flight: g.in_flight.load(Ordering::Acquire),
                        queue_len: g.waiting.load(Ordering::Acquire),
                        rate_per_sec: r.and_then(|r| r.rate_per_sec),
                        cooldown_remaining: r.map_or(Duration::ZERO, |r| r.cooldown_remaining),
                        waited: Duration::from_nanos(g.waited_ns.load(Ordering::Relaxed)),
                        refused: g.refused.load(Ordering::Relaxed),
                        admitted: g.admitted.load(Ordering::Relaxed),
                        quota_recheck_in: r.map_or(Duration::ZERO, |r| r.quota_recheck_in),
                    },
                )
            })
            .collect()
    }
}

impl<Svc> Layer<Svc> for GateLayer {
    type Service = Gate<Svc>;
    fn layer(&self, inner: Svc) -> Gate<Svc> {
        Gate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`GateLayer`] makes.
#[derive(Debug)]
pub struct Gate<Svc> {
    inner: Svc,
    shared: Arc<Shared<Store>>,
}

impl<Svc: Clone> Clone for Gate<Svc> {
    fn clone(&self) -> Self {
        Gate {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<Svc> Gate<Svc> {
    crate::inner_service_accessors!(Svc);
}

pub(crate) type Admission = Pin<Box<dyn Future<Output = Result<(Permit, u32), Error>> + Send>>;

impl<Svc, ReqB, ResB> Service<Request<ReqB>> for Gate<Svc>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>, Error = Error> + Clone,
    ReqB: Body,
{
    type Response = Response<PermitBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<Svc, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The clone-and-replace idiom: the service polled ready is the one that will be called.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let (passage, entry) = Passage::enter(&self.shared, &req);
        let state = match entry {
            Entry::Admitted(admitted) => State::Calling {
                fut: svc.call(req),
                admitted: Some(admitted),
            },
            Entry::Wait(admit) => State::Admitting {
                admit,
                svc: Some(svc),
                req: Some(req),
            },
        };
        ResponseFuture { state, passage }
    }
}

/// One attempt's passage through the gate: its key and gate, from admission to the answer it
/// learns from.
pub(crate) struct Passage {
    shared: Arc<Shared<Store>>,
    gate: Arc<LocalGate>,
    key: GateKey,
}

/// How an attempt enters: admitted at once, or a wait for admission.
pub(crate) enum Entry {
    Admitted(Admitted),
    Wait(Admission),
}

/// An admitted attempt's place in the gate: its permit, the in-flight count it was sent with
/// and when.
pub(crate) struct Admitted {
    permit: Permit,
    in_flight_at_send: u32,
    sent_at: Instant,
}

impl Admitted {
    pub(crate) fn new((permit, in_flight_at_send): (Permit, u32)) -> Self {
        Admitted {
            permit,
            in_flight_at_send,
            sent_at: Instant::now(),
        }
    }
}

impl Passage {
    /// Keys `req`, and admits it at once when a permit is free and no wait is needed (no
    /// allocation, no timer); otherwise the admission to wait for.
    fn enter<B: Body>(sh: &Arc<Shared<Store>>, req: &Request<B>) -> (Passage, Entry) {
        let key = sh.key_by.key(
            &RequestHead {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            },
            sh.fallback.load(Ordering::Relaxed),
        );
        let tokens = match req.extensions().get::<TokenEstimate>() {
            Some(t) => t.0,
            None if sh.cfg.tokens_per_minute.is_some() => {
                let bytes = req
                    .body()
                    .size_hint()
                    .exact()
                    .unwrap_or(req.body().size_hint().lower());
                TokenEstimate::of_size(bytes, sh.cfg.default_completion_tokens).0
            }
            None => 0,
        };
        let now = Instant::now();
        let gate = sh.gate(key, now, req.extensions().get::<Model>());
        let entry = match gate.try_admit(&*sh.store, tokens, now, &sh.cfg) {
            Some((permit, n)) => Entry::Admitted(Admitted {
                permit,
                in_flight_at_send: n,
                sent_at: now,
            }),
            None => {
                let deadline = Deadline::of(req).map(|d| d.instant());
                Entry::Wait(Box::pin(gate.clone().admit(
                    sh.store.clone(),
                    sh.cfg.clone(),
                    tokens,
                    deadline,
                )))
            }
        };
        let passage = Passage {
            shared: sh.clone(),
            gate,
            key,
        };
        (passage, entry)
    }

    /// Learns from the attempt's outcome; a response keeps the permit in its body until it
    /// ends, and carries the capacity advice when there is one.
    pub(crate) fn finish<ResB>(
        &self,
        admitted: Admitted,
        result: Result<Response<ResB>, Error>,
    ) -> Result<Response<PermitBody<ResB>>, Error> {
        let Admitted {
            permit,
            in_flight_at_send,
            sent_at,
        } = admitted;
        match result {
            Ok(resp) => {
                let c = resp.extensions().get::<Classification>();
                let class =
                    c.map_or_else(|| Class::from_status(resp.status()), Classification::class);
                // The classification skips rate-limit headers on success (to stay cheap);
                // pacing needs them on every answer, so read them here.
                let rl = c.and_then(|c| c.rate_limit().copied()).or_else(|| {
                    let h = RateLimitHeaders::from_headers(resp.headers());
                    (!h.is_empty()).then_some(h)
                });
                let obs = Answer {
                    class,
                    retry_after: c.and_then(Classification::retry_after),
                    rate_limit: rl,
                    rate_limit_body: c
                        .and_then(Classification::api_error)
                        .is_some_and(says_rate_limit),
                    // Read only where it steers the window: a dedicated target.
                    queue: (self.gate.kind == crate::TargetKind::Dedicated)
                        .then(|| crate::parse::prefill_queue(resp.headers()))
                        .flatten(),
                    kind: self.gate.kind,
                    in_flight_at_send,
                    sent_at,
                };
                self.shared.learn(&self.gate, self.key, obs);
                let mut resp = resp;
                if let Some(a) = self.gate.advice_for(class) {
                    resp.extensions_mut().insert(a);
                }
                Ok(resp.map(|b| PermitBody {
                    inner: b,
                    permit: Some(permit),
                }))
            }
            Err(e) => {
                let obs = Answer {
                    class: e.class(),
                    retry_after: e.retry_after(),
                    rate_limit: None,
                    rate_limit_body: e.api_error().is_some_and(says_rate_limit),
                    queue: None,
                    kind: self.gate.kind,
                    in_flight_at_send,
                    sent_at,
                };
                self.shared.learn(&self.gate, self.key, obs);
                Err(match self.gate.advice_for(e.class()) {
                    Some(a) => e.with_detail(a.0.to_string()),
                    None => e,
                })
            }
        }
    }
}

impl<S: RateStore> Shared<S> {
    /// Learns from one finished attempt: the shared rate state, then the local window.
    fn learn(&self, gate: &LocalGate, key: GateKey, obs: Answer) {
        let learned = self.store.learn(key, &obs, Instant::now());
        if learned.noise {
            // A refusal the server's recent successes contradict: its request's alone.
            return;
        }
        gate.learn(
            obs.signal(&self.cfg),
            learned.fleet,
            obs.in_flight_at_send,
            obs.sent_at,
            &self.cfg,
        );
    }
}

/// What to do about a dedicated deployment that keeps refusing for capacity (three 429s or
/// 503s within 10 s), in one line naming the deployment: on the responses of the attempts it
/// refuses while it keeps refusing (an extension; `firebreak proxy` sends it as the
/// `firebreak-advice` header), in the detail of such an error, and once per episode (until
/// 60 s pass without a refusal) as a WARN event. Only for a dedicated key (see
/// [`GateConfig::kind`](crate::gate::GateConfig::kind)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityAdvice(pub Arc<str>);

/// Whether an error body names a rate limit (`RATE_LIMIT_EXCEEDED`, `rate_limit_error`, "rate
/// limit exceeded"): then a 429 is an account or model limit. A message that speaks of capacity
/// or overload ("Deployment capacity exceeded", "server overloaded") makes it a capacity
/// refusal whatever the code says (Fireworks has sent both under one code).
fn says_rate_limit(api: &crate::ApiError) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace([' ', '-'], "_");
    if api
        .message
        .as_deref()
        .map(norm)
        .is_some_and(|m| m.contains("capacity") || m.contains("overload"))
    {
        return false;
    }
    [
        api.code.as_deref(),
        api.kind.as_deref(),
        api.message.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|s| norm(s).contains("rate_limit"))
}

pin_project! {
    #[project = StateProj]
    enum State<Svc: Service<Request<ReqB>>, ReqB> {
        Admitting { admit: Admission, svc: Option<Svc>, req: Option<Request<ReqB>> },
        Calling { #[pin] fut: Svc::Future, admitted: Option<Admitted> },
        Done,
    }
}

pin_project! {
    /// The future of [`Gate`].
    pub struct ResponseFuture<Svc: Service<Request<ReqB>>, ReqB> {
        #[pin]
        state: State<Svc, ReqB>,
        passage: Passage,
    }
}

impl<Svc: Service<Request<ReqB>>, ReqB> fmt::Debug for ResponseFuture<Svc, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<Svc, ReqB, ResB> Future for ResponseFuture<Svc, ReqB>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>, Error = Error>,
{
    type Output = Result<Response<PermitBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Admitting moves to Calling, and Calling always returns: at most two turns.
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting { admit, svc, req } => {
                    let admitted = match admit.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(p)) => Admitted::new(p),
                    };
                    let mut svc = svc.take().expect("service present while admitting");
                    let req = req.take().expect("request present while admitting");
                    let fut = svc.call(req);
                    this.state.set(State::Calling {
                        fut,
                        admitted: Some(admitted),
                    });
                }
                StateProj::Calling { fut, admitted } => {
                    let result = std::task::ready!(fut.poll(cx));
                    let admitted = admitted.take().expect("admitted while calling");
                    this.state.set(State::Done);
                    return Poll::Ready(this.passage.finish(admitted, result));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

pin_project! {
    /// The response body, holding the request's place in the gate until it ends: a streamed
    /// generation occupies capacity for as long as it streams.
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B> fmt::Debug for PermitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitBody")
            .field("holding", &self.permit.is_some())
            .finish()
    }
}

impl<B> Body for PermitBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            *this.permit = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
