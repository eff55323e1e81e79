//! The [`Gate`] service: each attempt's passage through its key's gate, from admission to the
//! answer the gate learns from.

use crate::gate::body::PermitBody;
use crate::gate::estimate::TokenEstimate;
use crate::gate::future::{ResponseFuture, State};
use crate::gate::key::{GateKey, RequestHead};
use crate::gate::layer::Shared;
use crate::gate::state::{LocalGate, Permit};
use crate::gate::store::Answer;
use crate::parse::ratelimit::RateLimitHeaders;
use crate::{Class, Classification, Deadline, Error, Model};
use http::{Request, Response};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::Service;

/// The service [`GateLayer`](crate::gate::GateLayer) makes.
///
/// Admission happens in the call's future, not in `poll_ready` (where tower's
/// `ConcurrencyLimit` waits), for three reasons:
/// - the gate is per key, and the key is a function of the request (its credential and
///   model), which `poll_ready` does not see: waiting there would hold every key's callers
///   behind one key's cooldown;
/// - the wait ends at the call's deadline, which travels on the request;
/// - a caller that drops the future gives its place back at once (an admission reserved in
///   `poll_ready` and never called would keep it until the service is dropped).
///
/// `poll_ready` forwards the inner service's readiness alone.
#[derive(Debug)]
pub struct Gate<Svc> {
    inner: Svc,
    shared: Arc<Shared>,
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
    pub(crate) fn new(inner: Svc, shared: Arc<Shared>) -> Self {
        Gate { inner, shared }
    }

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
        ResponseFuture::new(state, passage)
    }
}

/// One attempt's passage through the gate: its key and gate, from admission to the answer it
/// learns from.
pub(crate) struct Passage {
    shared: Arc<Shared>,
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
    fn enter<B: Body>(sh: &Arc<Shared>, req: &Request<B>) -> (Passage, Entry) {
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
        let entry = match gate.try_admit(&sh.store, tokens, now, &sh.cfg) {
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
                        .is_some_and(crate::ApiError::says_rate_limit),
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
                Ok(resp.map(|b| PermitBody::new(b, permit)))
            }
            Err(e) => {
                let obs = Answer {
                    class: e.class(),
                    retry_after: e.retry_after(),
                    rate_limit: None,
                    rate_limit_body: e.api_error().is_some_and(crate::ApiError::says_rate_limit),
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
