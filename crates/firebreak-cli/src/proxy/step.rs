//! [`StepLayer`]: one server-side step of the proxy as a tower layer, written as an async
//! function of the shared state, the request and the rest of the stack ([`Next`]), in the
//! style of axum's `middleware::from_fn`. A step either answers itself (a refusal, `/healthz`)
//! or passes a request on, and may change the answer on its way back.

use super::Shared;
use super::body::ProxyBody;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// What every step and the service under them answer.
pub(crate) type Answer = Response<ProxyBody>;

/// The rest of the stack below a step, for requests with bodies `B`.
pub(crate) struct Next<B>(BoxCloneSyncService<Request<B>, Answer, Infallible>);

impl<B> Next<B> {
    /// Passes `req` on to the rest of the stack.
    pub(crate) async fn run(self, req: Request<B>) -> Answer {
        match self.0.oneshot(req).await {
            Ok(a) => a,
            Err(never) => match never {},
        }
    }
}

/// A step: `f(shared, request, next)`, taking requests with bodies `A` and passing on ones
/// with bodies `B`.
pub(crate) struct StepLayer<F, A, B> {
    shared: Arc<Shared>,
    f: F,
    _bodies: PhantomData<fn(A) -> B>,
}

impl<F, A, B, Fut> StepLayer<F, A, B>
where
    F: Fn(Arc<Shared>, Request<A>, Next<B>) -> Fut + Clone,
{
    pub(crate) fn new(shared: &Arc<Shared>, f: F) -> Self {
        StepLayer {
            shared: shared.clone(),
            f,
            _bodies: PhantomData,
        }
    }
}

impl<F: Clone, A, B, S> Layer<S> for StepLayer<F, A, B> {
    type Service = Step<F, A, B, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Step {
            shared: self.shared.clone(),
            f: self.f.clone(),
            inner,
            _bodies: PhantomData,
        }
    }
}

/// The service a [`StepLayer`] makes.
pub(crate) struct Step<F, A, B, S> {
    shared: Arc<Shared>,
    f: F,
    inner: S,
    _bodies: PhantomData<fn(A) -> B>,
}

impl<F: Clone, A, B, S: Clone> Clone for Step<F, A, B, S> {
    fn clone(&self) -> Self {
        Step {
            shared: self.shared.clone(),
            f: self.f.clone(),
            inner: self.inner.clone(),
            _bodies: PhantomData,
        }
    }
}

impl<F, A, B, S, Fut> Service<Request<A>> for Step<F, A, B, S>
where
    F: Fn(Arc<Shared>, Request<A>, Next<B>) -> Fut + Clone,
    Fut: Future<Output = Answer> + Send + 'static,
    S: Service<Request<B>, Response = Answer, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every service below is ready at once: the stack waits inside the call (its gate).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<A>) -> Self::Future {
        let next = Next(BoxCloneSyncService::new(self.inner.clone()));
        let fut = (self.f)(self.shared.clone(), req, next);
        Box::pin(async move { Ok(fut.await) })
    }
}
