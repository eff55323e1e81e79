//! The future of the [`Gate`](crate::gate::Gate) service.

use crate::Error;
use crate::gate::body::PermitBody;
use crate::gate::service::{Admission, Admitted, Passage};
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::Service;

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<Svc: Service<Request<ReqB>>, ReqB> {
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

impl<Svc: Service<Request<ReqB>>, ReqB> ResponseFuture<Svc, ReqB> {
    pub(crate) fn new(state: State<Svc, ReqB>, passage: Passage) -> Self {
        ResponseFuture { state, passage }
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
