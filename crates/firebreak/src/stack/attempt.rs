//! The stack's fused attempt: the per-attempt layers (attempt observation, the 429 gate,
//! per-attempt timeouts, classification) as one service and one future; why and how:
//! ARCHITECTURE.md, "The fused path". Every rule is the layer's own step.

// Public because `StackService` names these types; unreachable by path on purpose (see
// `stack/mod.rs`).
#![allow(unreachable_pub)]

use crate::classify::ClassifiedBody;
use crate::gate::{Admission, Admitted, Entry, GateLayer, Passage, PermitBody};
use crate::observe::{AttemptWatch, Observer};
use crate::timeout::{AttemptTimeouts, AttemptTimers, TimedRequestBody, TimedResponseBody};
use crate::{BoxError, Error};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Sleep;
use tower::Service;

/// The per-attempt part of [`StackService`](crate::StackService): what
/// `AttemptObserve<Gate<AttemptTimeout<Classify<S>>>>` does, in one future.
pub struct StackAttempt<S> {
    inner: S,
    obs: Observer,
    gate: GateLayer,
    t: AttemptTimeouts,
    classify: crate::classify::Config,
    ready_sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> StackAttempt<S> {
    pub(crate) fn new(inner: S, layer: &crate::StackLayer) -> Self {
        StackAttempt {
            inner,
            obs: layer.observer.clone(),
            gate: layer.gate().clone(),
            t: layer.attempt.timeouts(),
            classify: layer.classify.config(),
            ready_sleep: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for StackAttempt<S> {
    fn clone(&self) -> Self {
        // A clone has not waited for readiness yet: its ready timer starts afresh.
        StackAttempt {
            inner: self.inner.clone(),
            obs: self.obs.clone(),
            gate: self.gate.clone(),
            t: self.t,
            classify: self.classify,
            ready_sleep: None,
        }
    }
}

impl<S> fmt::Debug for StackAttempt<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackAttempt")
            .field("timeouts", &self.t)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for StackAttempt<S>
where
    S: Service<Request<TimedRequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<PermitBody<TimedResponseBody<ClassifiedBody<ResB>>>>;
    type Error = Error;
    type Future = StackAttemptFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let inner = self.inner.poll_ready(cx);
        crate::timeout::ready_within(inner, self.t.ready, &mut self.ready_sleep, cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let watch = AttemptWatch::start(&self.obs, req.extensions());
        // The clone-and-replace idiom: the service polled ready is the one that will be called.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        // The gate is entered and the attempt sent in the attempt span, as the layers do.
        let (passage, step) = {
            let _entered = watch.span().enter();
            let (passage, entry) = self.gate.enter(&req);
            let step = match entry {
                Entry::Admitted(admitted) => send(svc, req, self.t, self.classify, admitted),
                Entry::Wait(admit) => Step::Admitting {
                    admit,
                    svc: Some(svc),
                    req: Some(req),
                },
            };
            (passage, step)
        };
        StackAttemptFuture {
            step,
            watch,
            passage,
            t: self.t,
            classify: self.classify,
        }
    }
}

/// Sends an admitted attempt: its timers start, and the inner call is classified.
fn send<S, ReqB, ResB>(
    mut svc: S,
    req: Request<ReqB>,
    t: AttemptTimeouts,
    classify: crate::classify::Config,
    admitted: Admitted,
) -> Step<S, ReqB, ResB>
where
    S: Service<Request<TimedRequestBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
{
    match AttemptTimers::start(t, req) {
        Ok((timers, req)) => Step::Calling {
            fut: crate::classify::ResponseFuture::call(&mut svc, req, classify),
            timers,
            admitted: Some(admitted),
        },
        Err(err) => Step::Failed {
            err: Some(err),
            admitted: Some(admitted),
        },
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<S: Service<Request<TimedRequestBody<ReqB>>>, ReqB, ResB> {
        // Waiting for the gate.
        Admitting { admit: Admission, svc: Option<S>, req: Option<Request<ReqB>> },
        // Sent: the inner call, classified, under the attempt's timers.
        Calling {
            #[pin]
            fut: crate::classify::ResponseFuture<S::Future, ResB>,
            timers: AttemptTimers,
            admitted: Option<Admitted>,
        },
        // Admitted after the deadline passed: not sent.
        Failed { err: Option<Error>, admitted: Option<Admitted> },
        Done,
    }
}

pin_project! {
    /// The future of [`StackAttempt`].
    pub struct StackAttemptFuture<S: Service<Request<TimedRequestBody<ReqB>>>, ReqB, ResB> {
        #[pin]
        step: Step<S, ReqB, ResB>,
        watch: AttemptWatch,
        passage: Passage,
        t: AttemptTimeouts,
        classify: crate::classify::Config,
    }
}

impl<S: Service<Request<TimedRequestBody<ReqB>>>, ReqB, ResB> fmt::Debug
    for StackAttemptFuture<S, ReqB, ResB>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackAttemptFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Future for StackAttemptFuture<S, ReqB, ResB>
where
    S: Service<Request<TimedRequestBody<ReqB>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<PermitBody<TimedResponseBody<ClassifiedBody<ResB>>>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let entered = this.watch.span().enter();
        // Admitting moves to Calling or Failed, which always return: at most two turns.
        let result = loop {
            match this.step.as_mut().project() {
                StepProj::Admitting { admit, svc, req } => {
                    let admitted = match std::task::ready!(admit.as_mut().poll(cx)) {
                        // Refused by the gate: nothing was sent, nothing to learn.
                        Err(e) => {
                            this.step.set(Step::Done);
                            break Err(e);
                        }
                        Ok(p) => Admitted::new(p),
                    };
                    let svc = svc.take().expect("service present while admitting");
                    let req = req.take().expect("request present while admitting");
                    let step = send(svc, req, *this.t, *this.classify, admitted);
                    this.step.set(step);
                }
                StepProj::Calling {
                    fut,
                    timers,
                    admitted,
                } => {
                    let answer = match fut.poll(cx) {
                        Poll::Ready(Ok(resp)) => Ok(timers.finish(resp)),
                        Poll::Ready(Err(e)) => Err(e),
                        Poll::Pending => Err(std::task::ready!(timers.poll_expired(cx))),
                    };
                    let admitted = admitted.take().expect("admitted while calling");
                    this.step.set(Step::Done);
                    break this.passage.finish(admitted, answer);
                }
                StepProj::Failed { err, admitted } => {
                    let err = err.take().expect("error present once");
                    let admitted = admitted.take().expect("admitted once");
                    this.step.set(Step::Done);
                    break this.passage.finish(admitted, Err(err));
                }
                StepProj::Done => panic!("StackAttemptFuture polled after completion"),
            }
        };
        drop(entered);
        this.watch.done(&result);
        Poll::Ready(result)
    }
}
