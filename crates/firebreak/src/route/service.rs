//! [`Router`]: one deadline, a chain of targets per alias, a stack per target, a breaker per
//! target.

use crate::client::{ApiKey, AuthLayer, ClientConfig};
use crate::gate::{Fleet, FleetEvent, FleetInbox, GateKey, GateLayer, KeyBy};
use crate::names;
use crate::observe::{AttemptObserveLayer, ObserveLayer};
use crate::retry::{RetryConfig, RetryLayer};
use crate::route::breaker::{Admit, Breaker, BreakerState, fleet_key, opened_event};
use crate::route::config::{BreakerConfig, RouteConfig, RouteConfigError, Target};
use crate::route::rewrite::ModelBody;
use crate::stack::{FireworksBody, InnerBody, Stack, StackLayer};
use crate::{Class, Classification, Error, Model};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics::{Counter, Gauge};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Which target answered a routed call: an extension on the response (`firebreak proxy` sends
/// it as the `firebreak-target` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredBy {
    /// The target's configured name.
    pub target: Arc<str>,
    /// The model id it was sent.
    pub model: Arc<str>,
    /// Targets of the chain this call passed over before it: skipped (open, or its gate
    /// cooling down) or failed with a retryable class.
    pub passed_over: u32,
}

/// The per-target state every clone shares: breaker and metrics.
struct TargetShared {
    target: Target,
    cfg: BreakerConfig,
    breaker: Mutex<Breaker>,
    fleet: Option<(Arc<dyn Fleet>, GateKey)>,
    /// By [`Class::index`].
    attempts: Vec<Counter>,
    state_gauge: Gauge,
    transitions: [Counter; 3],
    fallbacks: [Counter; 4],
}

impl fmt::Debug for TargetShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetShared")
            .field("target", &self.target)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Why a call passed a target over (the `reason` label of `firebreak_fallbacks_total`).
#[derive(Debug, Clone, Copy)]
enum Passed {
    Open = 0,
    Holding = 1,
    Failed = 2,
    Capacity = 3,
}

impl Passed {
    /// In `as usize` order.
    const LABELS: [&'static str; 4] = ["open", "holding", "failed", "capacity"];
}

impl TargetShared {
    fn new(target: Target, cfg: BreakerConfig, fleet: Option<Arc<dyn Fleet>>) -> Self {
        let name = target.name.to_string();
        let attempts = Class::ALL
            .iter()
            .map(|c| metrics::counter!(names::TARGET_ATTEMPTS, "target" => name.clone(), "class" => c.label()))
            .collect();
        let transition = |to: BreakerState| metrics::counter!(names::BREAKER_TRANSITIONS, "target" => name.clone(), "to" => to.label());
        let fallback = |reason: &'static str| metrics::counter!(names::FALLBACKS, "target" => name.clone(), "reason" => reason);
        let state_gauge = metrics::gauge!(names::BREAKER_STATE, "target" => name.clone());
        state_gauge.set(BreakerState::Closed.gauge());
        TargetShared {
            fleet: fleet.map(|f| (f, fleet_key(&target.base_url, &target.model))),
            target,
            cfg,
            breaker: Mutex::new(Breaker::new(Instant::now())),
            attempts,
            state_gauge,
            transitions: [
                transition(BreakerState::Closed),
                transition(BreakerState::HalfOpen),
                transition(BreakerState::Open),
            ],
            fallbacks: Passed::LABELS.map(fallback),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> BreakerState {
        self.breaker().state()
    }

    fn moved(&self, to: BreakerState, remote: bool) {
        self.state_gauge.set(to.gauge());
        self.transitions[to.gauge() as usize].increment(1);
        let name = &*self.target.name;
        match to {
            BreakerState::Open => tracing::warn!(
                target: "firebreak::route",
                target_name = name,
                cooldown_ms = self.cfg.cooldown.as_millis() as u64,
                remote,
                "circuit breaker opened: calls skip this target until probes succeed"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(target: "firebreak::route", target_name = name, "circuit breaker half-open: probing")
            }
            BreakerState::Closed => {
                tracing::info!(target: "firebreak::route", target_name = name, "circuit breaker closed: the target answers again")
            }
        }
        if to == BreakerState::Open && !remote {
            if let Some((f, key)) = &self.fleet {
                f.publish(*key, opened_event(&self.cfg));
            }
        }
    }

    /// Whether a call could use the target now (no slot is taken).
    fn would_admit(&self, now: Instant) -> bool {
        self.breaker().would_admit(&self.cfg, now)
    }

    fn admit(&self, now: Instant) -> Admit {
        let (admit, moved) = self.breaker().admit(&self.cfg, now);
        if let Some(m) = moved {
            self.moved(m, false);
        }
        admit
    }

    /// One attempt on this target ended with `class`.
    fn record(&self, class: Class) {
        if let Some(c) = self.attempts.get(class.index()) {
            c.increment(1);
        }
        let now = Instant::now();
        let moved = self.breaker().record(&self.cfg, class, now);
        if let Some(m) = moved {
            self.moved(m, false);
        }
    }
}

impl crate::gate::FleetSink for Board {
    fn apply_remote(&self, key: GateKey, event: FleetEvent, now: Instant) {
        let FleetEvent::BreakerOpen(d) = event else {
            return;
        };
        for t in &self.targets {
            if t.fleet.as_ref().is_some_and(|(_, k)| *k == key) {
                let moved = t
                    .breaker()
                    .open_remote(d.min(Duration::from_secs(3600)), now);
                if let Some(m) = moved {
                    t.moved(m, true);
                }
            }
        }
    }
}

/// Every target's shared state, for the fleet's inbox.
#[derive(Debug)]
struct Board {
    targets: Vec<Arc<TargetShared>>,
}

/// Counts each attempt on a target and feeds its breaker: between the retry layer and the
/// attempt observation in a target's stack, so that it sees every attempt.
#[derive(Debug, Clone)]
struct Tap<S> {
    inner: S,
    target: Arc<TargetShared>,
}

impl<S, X, ResB> Service<Request<X>> for Tap<S>
where
    S: Service<Request<X>, Response = Response<ResB>, Error = Error>,
    S::Future: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<X>) -> Self::Future {
        let fut = self.inner.call(req);
        let target = self.target.clone();
        Box::pin(async move {
            let r = fut.await;
            target.record(match &r {
                Ok(resp) => Classification::class_of(resp),
                Err(e) => e.class(),
            });
            r
        })
    }
}

/// A target's stack (everything of [`Stack`] below the deadline, with the tap), or the
/// router's whole service, boxed.
type TargetService =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<FireworksBody>, Error>;

struct TargetRuntime {
    shared: Arc<TargetShared>,
    gate: GateLayer,
    /// One attempt: a failure moves the call on to the next target at once.
    once: TargetService,
    /// The stack's retries: for the last target a call can use.
    full: TargetService,
}

struct Inner {
    aliases: HashMap<Arc<str>, Vec<Vec<usize>>>,
    targets: Vec<TargetRuntime>,
    _board: Arc<Board>,
}

/// Routes calls for configured aliases through their chains of targets (see the
/// [module docs](crate::route)). Cheap to clone; clones share breakers, gates and budgets.
///
/// ```
/// use firebreak::route::{RouteConfig, Router};
/// use firebreak::Stack;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cfg = RouteConfig::new().fallbacks(
///     "chat",
///     "http://127.0.0.1:9",
///     &["llama#accounts/acme/deployments/d1", "accounts/fireworks/models/llama-v3p1-8b-instruct"],
/// );
/// let router = Router::new(cfg, Stack::interactive(), None, &Default::default()).unwrap();
/// assert!(router.routes("chat"));
/// assert!(!router.routes("accounts/fireworks/models/other"));
/// # }
/// ```
#[derive(Clone)]
pub struct Router {
    /// The call observation and the deadline around [`route`], boxed.
    svc: TargetService,
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("aliases", &self.inner.aliases.keys().collect::<Vec<_>>())
            .field(
                "targets",
                &self
                    .inner
                    .targets
                    .iter()
                    .map(|t| &t.shared)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Router {
    /// A router for `cfg`, each target with `stack`'s settings (its gate set to the target's
    /// kind). A target's own key replaces any `Authorization` a request carries; `default_key`
    /// is sent to the others when a request carries none (`None`: requests go as they come). Metric handles are registered here: install
    /// the exporter first.
    ///
    /// # Errors
    /// [`RouteConfigError`] for a configuration or a stack that cannot work.
    pub fn new(
        cfg: RouteConfig,
        stack: Stack,
        default_key: Option<ApiKey>,
        client: &ClientConfig,
    ) -> Result<Router, RouteConfigError> {
        let http = crate::stack::shared_https(&stack, client)
            .map_err(|e| RouteConfigError::Stack(e.to_string()))?;
        Self::with_client(cfg, stack, default_key, http)
    }

    /// As [`Router::new`], over any HTTP client service (one shared by every target; each
    /// target's key is added above it).
    ///
    /// # Errors
    /// [`RouteConfigError`] for a configuration or a stack that cannot work.
    pub fn with_client<S, RB>(
        cfg: RouteConfig,
        stack: Stack,
        default_key: Option<ApiKey>,
        http: S,
    ) -> Result<Router, RouteConfigError>
    where
        S: Service<Request<InnerBody<Full<Bytes>>>, Response = Response<RB>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<crate::BoxError>,
        S::Future: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        RB::Error: Into<crate::BoxError>,
    {
        cfg.validate()?;
        let err = |e: &dyn fmt::Display| RouteConfigError::Stack(e.to_string());
        let layer = stack.layer().map_err(|e| err(&e))?;
        let once_retry = RetryLayer::new(RetryConfig {
            max_attempts: 1,
            ..stack.retry.clone()
        })
        .map_err(|e| err(&e))?;

        // One runtime per distinct target name, in first-seen order.
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut defs: Vec<Target> = Vec::new();
        let mut aliases = HashMap::new();
        for (alias, tiers) in &cfg.aliases {
            let tiers = tiers
                .iter()
                .map(|tier| {
                    tier.iter()
                        .map(|t| {
                            *index.entry(t.name.clone()).or_insert_with(|| {
                                defs.push(t.clone());
                                defs.len() - 1
                            })
                        })
                        .collect()
                })
                .collect();
            aliases.insert(alias.clone(), tiers);
        }
        let shared: Vec<Arc<TargetShared>> = defs
            .into_iter()
            .map(|t| {
                Arc::new(TargetShared::new(
                    t,
                    cfg.breaker.clone(),
                    stack.fleet.clone(),
                ))
            })
            .collect();
        let board = Arc::new(Board {
            targets: shared.clone(),
        });
        if let Some(f) = &stack.fleet {
            let sink: Arc<dyn crate::gate::FleetSink> = board.clone();
            f.attach(FleetInbox {
                sink: Arc::downgrade(&sink),
            });
        }
        let targets = shared
            .into_iter()
            .map(|t| build_target(t, &stack, &layer, &once_retry, &http, default_key.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let inner = Arc::new(Inner {
            aliases,
            targets,
            _board: board,
        });
        let routed = {
            let inner = inner.clone();
            tower::service_fn(move |req| route(inner.clone(), req))
        };
        let svc = TargetService::new(
            ServiceBuilder::new()
                .map_response(|r: Response<_>| r.map(BodyExt::boxed))
                .layer(ObserveLayer::new(layer.observer.clone()))
                .layer(layer.deadline)
                .service(routed),
        );
        Ok(Router { svc, inner })
    }

    /// Whether `model` is a configured alias.
    pub fn routes(&self, model: &str) -> bool {
        self.inner.aliases.contains_key(model)
    }

    /// Each target's breaker state, by name.
    pub fn breakers(&self) -> Vec<(String, BreakerState)> {
        self.inner
            .targets
            .iter()
            .map(|t| (t.shared.target.name.to_string(), t.shared.state()))
            .collect()
    }

    /// A JSON POST of `json` to `path` (relative to each target's base URL, e.g.
    /// `/chat/completions`), routed by the body's `model`.
    ///
    /// # Errors
    /// As the [`Service`] impl.
    pub async fn post(&self, path: &str, json: Bytes) -> Result<Response<FireworksBody>, Error> {
        let mut req = Request::post(path)
            .body(Full::new(json))
            .map_err(|e| Error::new(Class::Other).with_source(e))?;
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.clone().oneshot(req).await
    }
}

fn build_target<S, RB>(
    shared: Arc<TargetShared>,
    stack: &Stack,
    layer: &StackLayer,
    once_retry: &RetryLayer,
    http: &S,
    default_key: Option<&ApiKey>,
) -> Result<TargetRuntime, RouteConfigError>
where
    S: Service<Request<InnerBody<Full<Bytes>>>, Response = Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<crate::BoxError>,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    RB::Error: Into<crate::BoxError>,
{
    let t = &shared.target;
    let key = t.key.as_ref().or(default_key);
    let cfg = crate::gate::GateConfig {
        kind: t.kind,
        ..stack.gate.clone()
    };
    let gate = match &stack.fleet {
        None => GateLayer::new(cfg, KeyBy::ApiKeyAndModel),
        Some(f) => GateLayer::with_fleet(cfg, KeyBy::ApiKeyAndModel, f.clone()),
    }
    .map_err(|e| RouteConfigError::Stack(e.to_string()))?;
    let gate = match key {
        Some(k) => gate.fallback_credential(k.header_value().as_bytes()),
        None => gate,
    };
    // A target's own key replaces whatever the request carries; the router's default key is
    // sent only where the request carries none.
    let auth = match (&t.key, default_key) {
        (Some(k), _) => Some(AuthLayer::new(k.clone())),
        (None, Some(k)) => Some(AuthLayer::new(k.clone()).if_missing()),
        (None, None) => None,
    };
    let client = match auth {
        Some(a) => tower::util::Either::Left(a.layer(http.clone())),
        None => tower::util::Either::Right(http.clone()),
    };
    let below = ServiceBuilder::new()
        .layer(AttemptObserveLayer::new(layer.observer.clone()))
        .layer(gate.clone())
        .layer(layer.attempt)
        .layer(layer.classify)
        .service(client);
    let tap = Tap {
        inner: below,
        target: shared.clone(),
    };
    let boxed = |retry: &RetryLayer| {
        TargetService::new(
            retry
                .layer(tap.clone())
                .map_response(|r: Response<_>| r.map(BodyExt::boxed)),
        )
    };
    Ok(TargetRuntime {
        once: boxed(once_retry),
        full: boxed(&layer.retry),
        gate,
        shared,
    })
}

impl Service<Request<Full<Bytes>>> for Router {
    type Response = Response<FireworksBody>;
    type Error = Error;
    type Future = <TargetService as Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Ready at once: every target's stack waits inside the call (its gate).
        self.svc.poll_ready(cx)
    }

    /// Routes one call: the body's `model` names the alias; the request's path (and query)
    /// is appended to each target's base URL.
    ///
    /// # Errors
    /// An [`Error`] of class `Other` when the body names no configured alias; otherwise the
    /// last target's error.
    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.svc.call(req)
    }
}

/// Weighted order without replacement within each tier, tiers in order.
fn call_order(inner: &Inner, tiers: &[Vec<usize>]) -> Vec<usize> {
    let mut order = Vec::with_capacity(tiers.iter().map(Vec::len).sum());
    for tier in tiers {
        let mut left: Vec<usize> = tier.clone();
        while !left.is_empty() {
            let total: f64 = left
                .iter()
                .map(|i| inner.targets[*i].shared.target.weight)
                .sum();
            let mut x = rand::random::<f64>() * total;
            let mut pick = left.len() - 1;
            for (j, i) in left.iter().enumerate() {
                x -= inner.targets[*i].shared.target.weight;
                if x < 0.0 {
                    pick = j;
                    break;
                }
            }
            order.push(left.remove(pick));
        }
    }
    order
}

/// Gives a probe slot back when the try ends, however it ends.
struct ProbeSlot(Option<Arc<TargetShared>>);

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.breaker().end_probe();
        }
    }
}

async fn route(
    inner: Arc<Inner>,
    req: Request<Full<Bytes>>,
) -> Result<Response<FireworksBody>, Error> {
    let (parts, body) = req.into_parts();
    // `Full` yields its one chunk at once.
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let no_route =
        || Error::new(Class::Other).with_detail("the body's model is not a configured route alias");
    let body = ModelBody::parse(bytes).ok_or_else(no_route)?;
    let tiers = inner
        .aliases
        .get(body.model.as_str())
        .ok_or_else(no_route)?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();

    let order = call_order(&inner, tiers);
    let mut passed_over = 0u32;
    let (usable, forced) = usable(&inner, &order, &mut passed_over);
    let mut last: Option<Result<Response<FireworksBody>, Error>> = None;
    let n = usable.len();
    for (pos, i) in usable.into_iter().enumerate() {
        let t = &inner.targets[i];
        let is_last = pos + 1 == n;
        let Some(slot) = slot(t, forced, &mut passed_over) else {
            continue;
        };
        if !is_last && t.gate.holding() {
            t.shared.fallbacks[Passed::Holding as usize].increment(1);
            passed_over += 1;
            continue;
        }
        let req = target_request(&parts, &path, &body, &t.shared.target)?;
        let svc = if is_last {
            t.full.clone()
        } else {
            t.once.clone()
        };
        let result = svc.oneshot(req).await;
        drop(slot);
        if let Some(why) = move_on(&result).filter(|_| !is_last) {
            t.shared.fallbacks[why as usize].increment(1);
            passed_over += 1;
            last = Some(result);
            continue;
        }
        return finish(t, result, passed_over);
    }
    // Only reached when every usable target was passed over without a final answer: give
    // the last one's.
    match last {
        Some(r) => r,
        None => Err(Error::new(Class::GateRefused)
            .with_detail("every target of the route was open or holding")),
    }
}

/// The targets of `order` whose breakers would let a call through (the others counted as
/// passed over); when every one is open, the least recently opened one, `forced`, rather
/// than failing blind.
fn usable(inner: &Inner, order: &[usize], passed_over: &mut u32) -> (Vec<usize>, bool) {
    let now = Instant::now();
    let mut usable: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| inner.targets[*i].shared.would_admit(now))
        .collect();
    for i in order {
        if !usable.contains(i) {
            inner.targets[*i].shared.fallbacks[Passed::Open as usize].increment(1);
            *passed_over += 1;
        }
    }
    if !usable.is_empty() {
        return (usable, false);
    }
    let pick = order
        .iter()
        .copied()
        .min_by_key(|i| inner.targets[*i].shared.breaker().opened_at)
        .unwrap_or(order[0]);
    usable.push(pick);
    (usable, true)
}

/// The breaker's admission for one try at `t` (`None`: passed over, counted).
fn slot(t: &TargetRuntime, forced: bool, passed_over: &mut u32) -> Option<ProbeSlot> {
    if forced {
        let moved = {
            let mut b = t.shared.breaker();
            b.force_probe()
        };
        if let Some(m) = moved {
            t.shared.moved(m, false);
        }
        return Some(ProbeSlot(Some(t.shared.clone())));
    }
    match t.shared.admit(Instant::now()) {
        Admit::Yes => Some(ProbeSlot(None)),
        Admit::Probe => Some(ProbeSlot(Some(t.shared.clone()))),
        Admit::No => {
            t.shared.fallbacks[Passed::Open as usize].increment(1);
            *passed_over += 1;
            None
        }
    }
}

/// The call as `target` gets it: its base URL, its model in the body (every other byte
/// kept), the caller's headers, and the call's own timers and deadline.
fn target_request(
    parts: &http::request::Parts,
    path: &str,
    body: &ModelBody,
    target: &Target,
) -> Result<Request<Full<Bytes>>, Error> {
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", target.base_url))
        .version(parts.version)
        .body(Full::new(body.with_model(&target.model)))
        .map_err(|e| Error::new(Class::Other).with_source(e))?;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().remove(http::header::CONTENT_LENGTH);
    *req.extensions_mut() = parts.extensions.clone();
    req.extensions_mut().insert(Model(target.model.clone()));
    Ok(req)
}

/// Why a call moves on from a target's answer, if it does: the same verdict the retry layer
/// reads (the class, and the server's `x-should-retry`); never past the call's deadline.
fn move_on(result: &Result<Response<FireworksBody>, Error>) -> Option<Passed> {
    let (class, retryable) = match result {
        Ok(r) => {
            let c = Classification::of(r);
            (c.class(), c.is_retryable())
        }
        Err(e) => (e.class(), e.is_retryable()),
    };
    if !retryable || class == Class::Timeout(crate::TimeoutPhase::Deadline) {
        return None;
    }
    Some(
        if matches!(
            class,
            Class::RateLimited | Class::Overloaded | Class::GateRefused
        ) {
            Passed::Capacity
        } else {
            Passed::Failed
        },
    )
}

fn finish(
    t: &TargetRuntime,
    result: Result<Response<FireworksBody>, Error>,
    passed_over: u32,
) -> Result<Response<FireworksBody>, Error> {
    result.map(|mut resp| {
        resp.extensions_mut().insert(AnsweredBy {
            target: t.shared.target.name.clone(),
            model: t.shared.target.model.clone(),
            passed_over,
        });
        resp
    })
}
