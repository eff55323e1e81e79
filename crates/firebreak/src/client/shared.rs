//! [`SharedClient`]: the hyper client behind one `Arc`, so that cloning it costs one atomic
//! increment instead of one per internal handle.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::{Client, Error, ResponseFuture};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A hyper-util client shared through one `Arc`.
///
/// tower middleware clones the service below it on every call: a retry keeps a clone to send
/// the next attempt, and a layer following the clone-and-replace idiom clones before calling.
/// A hyper-util `Client` holds several reference-counted handles (pool, executor, connector,
/// timers), so each clone is several atomic increments, and as many decrements when it drops,
/// on cache lines every worker thread touches. Behind one `Arc` a clone is one increment. The
/// client is always ready (`poll_ready` never waits), so sharing it changes nothing else.
pub struct SharedClient<C, B> {
    inner: Arc<Client<C, B>>,
}

impl<C, B> SharedClient<C, B> {
    /// Shares `client`.
    pub fn new(client: Client<C, B>) -> Self {
        SharedClient {
            inner: Arc::new(client),
        }
    }
}

impl<C, B> Clone for SharedClient<C, B> {
    fn clone(&self) -> Self {
        SharedClient {
            inner: self.inner.clone(),
        }
    }
}

impl<C, B> fmt::Debug for SharedClient<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedClient").finish_non_exhaustive()
    }
}

impl<C, B> tower::Service<Request<B>> for SharedClient<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // hyper-util's client is always ready: it queues in its own pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        self.inner.request(req)
    }
}
