//! The stack's fused call: the call observation, the overall deadline and retry around the
//! fused attempt, as one service and one future; why and how: ARCHITECTURE.md, "The fused
//! path". Every rule is the layer's own step; retry's policy is driven as
//! `tower::retry::Retry` drives it.

// Public because `StackService` names these types; unreachable by path on purpose (see
// `stack/mod.rs`).
#![allow(unreachable_pub)]

use super::attempt::{StackAttempt, StackAttemptFuture};
use crate::classify::ClassifiedBody;
use crate::deadline::SCOPED;
use crate::gate::PermitBody;
use crate::observe::{CallWatch, ObservedBody, Observer};
use crate::retry::{FireworksPolicy, ReplayBody, Replayable, RetryLayer};
use crate::timeout::{TimedRequestBody, TimedResponseBody};
use crate::{BoxError, Deadline, Error};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;
use tower::Service;
use tower::retry::Policy;

/// The answer of the composed stack over an inner service answering `Response<B>`.
pub type StackBody<B> = ObservedBody<AttemptBody<B>>;

/// An attempt's answer.
type AttemptBody<B> = PermitBody<TimedResponseBody<ClassifiedBody<B>>>;

/// The copy of `req` kept for the next attempt, by the policy's rule.
fn keep<B, ResB>(
    policy: &mut FireworksPolicy,
    req: &Request<ReplayBody<B>>,
) -> Option<Request<ReplayBody<B>>>
where
    ReplayBody<B>: Replayable,
{
    <FireworksPolicy as Policy<_, Response<AttemptBody<ResB>>, Error>>::clone_request(policy, req)
}

/// The composed service ([`StackService`](crate::StackService)): the call observation, the
/// overall deadline and retry around a [`StackAttempt`], in one future.
pub struct StackCall<S> {
    attempt: StackAttempt<S>,
    obs: Observer,
    deadline: Duration,
    retry: RetryLayer,
    policy: FireworksPolicy,
}

impl<S> StackCall<S> {
    pub(crate) fn new(inner: S, layer: &crate::StackLayer) -> Self {
        StackCall {
            attempt: StackAttempt::new(inner, layer),
            obs: layer.observer.clone(),
            deadline: layer.deadline_total(),
            retry: layer.retry.clone(),
            policy: layer.retry.policy(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.attempt.get_ref()
    }
}

impl<S: Clone> Clone for StackCall<S> {
    fn clone(&self) -> Self {
        StackCall {
            attempt: self.attempt.clone(),
            obs: self.obs.clone(),
            deadline: self.deadline,
            retry: self.retry.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S> fmt::Debug for StackCall<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackCall")
            .field("deadline", &self.deadline)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for StackCall<S>
where
    S: Service<Request<TimedRequestBody<ReplayBody<ReqB>>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Body<Data = Bytes>,
    ReplayBody<ReqB>: Body<Data = Bytes> + Replayable,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<StackBody<ResB>>;
    type Error = Error;
    type Future = StackCallFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.attempt.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let watch = CallWatch::start(&self.obs, &mut req);
        let dl = Deadline::after(self.deadline).shortened_by(Deadline::of(&req));
        let req = self.retry.prepare(req);
        // As `tower::retry::Retry`: a copy kept for the next attempt, a fresh policy per call,
        // the service polled ready makes the first attempt and a clone makes the others.
        let kept = keep::<ReqB, ResB>(&mut self.policy, &req);
        let clone = self.attempt.clone();
        let mut svc = std::mem::replace(&mut self.attempt, clone);
        // The first attempt is made here, in the call span and the deadline's scope.
        let fut = {
            let _entered = watch.span().enter();
            SCOPED.sync_scope(dl, || svc.call(req))
        };
        StackCallFuture {
            state: State::Calling { fut },
            svc,
            kept,
            policy: self.policy.clone(),
            dl,
            watch,
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<TimedRequestBody<ReplayBody<ReqB>>>>, ReqB, ResB> {
        // An attempt in flight.
        Calling { #[pin] fut: StackAttemptFuture<S, ReplayBody<ReqB>, ResB> },
        // The wait the policy chose before the next attempt.
        Waiting { #[pin] sleep: Sleep },
        // Waiting for the service to be ready for the next attempt.
        Retrying,
    }
}

pin_project! {
    /// The future of [`StackCall`].
    pub struct StackCallFuture<S: Service<Request<TimedRequestBody<ReplayBody<ReqB>>>>, ReqB, ResB> {
        #[pin]
        state: State<S, ReqB, ResB>,
        svc: StackAttempt<S>,
        kept: Option<Request<ReplayBody<ReqB>>>,
        policy: FireworksPolicy,
        dl: Deadline,
        watch: CallWatch,
    }
}

impl<S: Service<Request<TimedRequestBody<ReplayBody<ReqB>>>>, ReqB, ResB> fmt::Debug
    for StackCallFuture<S, ReqB, ResB>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackCallFuture")
            .field("deadline", &self.dl)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Future for StackCallFuture<S, ReqB, ResB>
where
    S: Service<Request<TimedRequestBody<ReplayBody<ReqB>>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Body<Data = Bytes>,
    ReplayBody<ReqB>: Body<Data = Bytes> + Replayable,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<StackBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let dl = *this.dl;
        let entered = this.watch.span().enter();
        // Bounded: an attempt ends in an answer or a wait, a wait in a new attempt, and the
        // policy allows a bounded number of attempts.
        let result = loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let mut result = ready!(SCOPED.sync_scope(dl, || fut.poll(cx)));
                    let Some(req) = this.kept.as_mut() else {
                        // Not replayable: the first answer is the answer.
                        break result;
                    };
                    match SCOPED.sync_scope(dl, || this.policy.retry(req, &mut result)) {
                        Some(sleep) => this.state.set(State::Waiting { sleep }),
                        None => break result,
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    if let Err(e) = ready!(SCOPED.sync_scope(dl, || this.svc.poll_ready(cx))) {
                        break Err(e);
                    }
                    let req = this.kept.take().expect("a kept request while retrying");
                    *this.kept = keep::<ReqB, ResB>(this.policy, &req);
                    let svc = &mut *this.svc;
                    let fut = SCOPED.sync_scope(dl, || svc.call(req));
                    this.state.set(State::Calling { fut });
                }
            }
        };
        drop(entered);
        Poll::Ready(this.watch.finish(result))
    }
}
