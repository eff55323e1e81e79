//! firebreak inside [reqwest-middleware](https://docs.rs/reqwest-middleware) (feature `reqwest`).
//!
//! [`FirebreakMiddleware`] runs the rest of the middleware chain, and reqwest under it, as the
//! innermost service of the firebreak stack: the same layers, the same policy code, as around a
//! hyper client. Every attempt is one `next.run(…)`: classification, retries with backoff,
//! server delays and the budget, the 429 gate, the deadline and observation all apply.
//!
//! ```no_run
//! use firebreak::{Stack, reqwest::FirebreakMiddleware};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(FirebreakMiddleware::new(Stack::interactive())?)
//!     .build();
//! // client.post(url).bearer_auth(key).json(&body).send().await, as with any reqwest client.
//! # Ok(()) }
//! ```
//!
//! What reqwest cannot give that firebreak's own hyper client does:
//! - **Connect timeout.** reqwest connects inside `next.run`, so the stack's `connect` timer
//!   does not apply; set `reqwest::ClientBuilder::connect_timeout` yourself. A connect failure is
//!   still classified as one (refused, DNS, TLS) from reqwest's error chain.
//! - **Request bodies** get the retry layer's bounded replay, as on the hyper path: a streaming
//!   body is kept as it is sent, up to `retry.max_replay_body` (16 MiB by default), and resent
//!   on a retry; a longer one is sent once, never as a second, cut copy: the answer that would
//!   have needed a retry comes back as it is, its [`RetryInfo`](crate::RetryInfo) (in the
//!   response's extensions) saying [`GaveUp::BodyNotReplayable`](crate::GaveUp).
//! - **Where it sits.** Middlewares added after this one run once per attempt; those before it
//!   once per call. Do not add reqwest-retry as well: its attempts would each be a firebreak call
//!   with its own retries.
//!
//! Errors firebreak raises itself (a timeout, the deadline, a server delay over the cap) are
//! `reqwest_middleware::Error::Middleware`; [`firebreak_error`] reaches firebreak's [`Error`]
//! inside. An error answer firebreak gave up on is a `Response` with its status, as reqwest
//! returns it.

use crate::{Error, Stack, StackConfigError, StackLayer};
use bytes::Bytes;
use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// The firebreak stack as a reqwest-middleware `Middleware`. Clones share its retry budget and
/// 429 gate.
#[derive(Clone, Debug)]
pub struct FirebreakMiddleware {
    layer: StackLayer,
}

impl FirebreakMiddleware {
    /// Builds the stack.
    ///
    /// # Errors
    /// [`StackConfigError`] naming the first invalid setting.
    pub fn new(stack: Stack) -> Result<FirebreakMiddleware, StackConfigError> {
        Ok(FirebreakMiddleware {
            layer: stack.layer()?,
        })
    }
}

/// firebreak's [`Error`] inside a `reqwest_middleware::Error`, when firebreak raised it.
pub fn firebreak_error(e: &reqwest_middleware::Error) -> Option<&Error> {
    match e {
        reqwest_middleware::Error::Middleware(a) => a.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

#[async_trait::async_trait]
impl Middleware for FirebreakMiddleware {
    async fn handle(
        &self,
        req: ::reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<::reqwest::Response> {
        // The body goes through the retry layer's bounded replay, like any other: a streaming
        // one is kept up to the replay bound and resent; past it, it is sent once and a retry
        // is refused with `NotReplayable`.
        let req: http::Request<::reqwest::Body> = req.try_into()?;
        let inner = NextService {
            next,
            extensions: extensions.clone(),
        };
        match self.layer.layer(inner).oneshot(req).await {
            Ok(resp) => Ok(::reqwest::Response::from(resp.map(::reqwest::Body::wrap))),
            Err(e) => Err(reqwest_middleware::Error::middleware(e)),
        }
    }
}

/// The rest of the chain as the stack's innermost service: one `next.run` per attempt.
#[derive(Clone)]
struct NextService<'a> {
    next: Next<'a>,
    extensions: Extensions,
}

impl<'a, B> Service<http::Request<B>> for NextService<'a>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::BoxError>,
{
    type Response = http::Response<::reqwest::Body>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send + 'a>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let next = self.next.clone();
        let mut extensions = self.extensions.clone();
        Box::pin(async move {
            let req = ::reqwest::Request::try_from(req.map(::reqwest::Body::wrap))
                .map_err(Error::transport)?;
            match next.run(req, &mut extensions).await {
                Ok(resp) => Ok(http::Response::from(resp)),
                Err(reqwest_middleware::Error::Reqwest(e)) => Err(Error::transport(e)),
                Err(reqwest_middleware::Error::Middleware(e)) => {
                    Err(Error::transport(crate::BoxError::from(e)))
                }
            }
        })
    }
}
