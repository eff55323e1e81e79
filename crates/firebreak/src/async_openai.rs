//! firebreak inside [async-openai](https://docs.rs/async-openai) (feature `async-openai`).
//!
//! async-openai 0.43's `middleware` seam, `Client::with_http_service`, takes any tower service
//! from its `HttpRequestFactory` to a `reqwest::Response`. [`FirebreakService`] is one: each
//! call builds the `reqwest::Request` once, turns it into an `http::Request` with its body in
//! memory, runs it through the whole firebreak stack over firebreak's hyper client, and hands
//! the answer back as a `reqwest::Response` whose body streams as it arrives, so async-openai's
//! SSE parsing works unchanged.
//!
//! The easy path is [`fireworks_client`]: an async-openai `Client` for Fireworks with the key in
//! firebreak's auth layer (async-openai never holds it).
//!
//! ```no_run
//! use firebreak::{Stack, client::ApiKey};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = firebreak::async_openai::fireworks_client(ApiKey::from_env()?, Stack::interactive())?;
//! // client.chat().create(request).await, as with any async-openai client.
//! # Ok(()) }
//! ```
//!
//! - **Do not stack async-openai's `OpenAIRetryLayer` on top**: every attempt it makes would be
//!   a whole firebreak call with its own retries, multiplying attempts. `with_http_service`
//!   replaces async-openai's default executor, its retries included.
//! - **Errors.** A non-2xx answer that firebreak gave up on reaches async-openai as a response,
//!   which it turns into `OpenAIError::ApiError` with the server's message, as usual. An error
//!   firebreak raised itself (a timeout, the deadline, a refused connection, a server delay over
//!   the cap) is `OpenAIError::Boxed` holding firebreak's [`Error`]: [`firebreak_error`] reaches
//!   it, with its class, attempts and whether the server saw the request.
//! - **Bodies.** JSON bodies (chat, completions, embeddings) are bytes already. A multipart
//!   upload's streaming body is read into memory first, up to 16 MiB (firebreak's replay bound,
//!   so that it can be retried); a larger one fails with `OpenAIError::InvalidArgument`, before
//!   anything is sent.

use crate::client::{ApiKey, AuthLayer, ClientConfig, FIREWORKS_BASE_URL};
use crate::{BoxStack, Error, FireworksClient, Stack, StackConfigError};
use ::async_openai::Client;
use ::async_openai::config::OpenAIConfig;
use ::async_openai::error::OpenAIError;
use ::async_openai::middleware::HttpRequestFactory;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

/// The firebreak stack as async-openai's HTTP service. Clones share the stack (its retry
/// budget and 429 gate).
#[derive(Clone)]
pub struct FirebreakService {
    svc: BoxStack,
    max_body: usize,
}

impl std::fmt::Debug for FirebreakService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirebreakService").finish_non_exhaustive()
    }
}

impl FirebreakService {
    /// Runs requests through `client`'s stack (its base URL is not used: async-openai sends
    /// absolute URLs). Streaming bodies are read into memory up to 16 MiB, the retry layer's
    /// default replay bound.
    pub fn new(client: &FireworksClient) -> FirebreakService {
        FirebreakService {
            svc: client.service(),
            max_body: crate::retry::RetryConfig::default().max_replay_body,
        }
    }
}

impl Service<HttpRequestFactory> for FirebreakService {
    type Response = ::reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<::reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        // Each call drives a clone of the stack to readiness itself (`oneshot`): the stack's
        // own readiness (the 429 gate's queue) is waited on per call, under its deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let (svc, max_body) = (self.svc.clone(), self.max_body);
        Box::pin(async move {
            let req = into_http(factory.build().await?, max_body).await?;
            let resp = svc
                .oneshot(req)
                .await
                .map_err(|e| OpenAIError::Boxed(Box::new(e)))?;
            Ok(::reqwest::Response::from(resp.map(::reqwest::Body::wrap)))
        })
    }
}

/// A `reqwest::Request` as an `http::Request` with its body in memory (at most `max_body`).
async fn into_http(
    req: ::reqwest::Request,
    max_body: usize,
) -> Result<http::Request<Full<Bytes>>, OpenAIError> {
    let req: http::Request<::reqwest::Body> = req.try_into().map_err(OpenAIError::Reqwest)?;
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| {
            OpenAIError::InvalidArgument(format!(
                "the request body could not be read for replay (firebreak keeps at most {max_body} bytes): {e}"
            ))
        })?
        .to_bytes();
    Ok(http::Request::from_parts(parts, Full::new(bytes)))
}

/// firebreak's [`Error`] inside an `OpenAIError`, when firebreak raised it.
pub fn firebreak_error(e: &OpenAIError) -> Option<&Error> {
    match e {
        OpenAIError::Boxed(b) => b.downcast_ref::<Error>(),
        _ => None,
    }
}

/// An async-openai `Client` for `base_url` (an OpenAI-compatible `/v1` base) whose every call
/// goes through `stack`, with `key` sent by firebreak's auth layer.
///
/// # Errors
/// [`StackConfigError`] for an invalid URL or setting.
pub fn client(
    base_url: &str,
    key: ApiKey,
    stack: Stack,
) -> Result<Client<OpenAIConfig>, StackConfigError> {
    let max_body = stack.retry.max_replay_body;
    let fw = FireworksClient::with_auth(
        base_url,
        Some(AuthLayer::new(key)),
        stack,
        &ClientConfig::default(),
    )?;
    // The key stays in firebreak's auth layer, which replaces the empty one async-openai sends.
    let config = OpenAIConfig::new()
        .with_api_base(fw.base_url())
        .with_api_key("");
    let svc = FirebreakService {
        max_body,
        ..FirebreakService::new(&fw)
    };
    Ok(Client::with_config(config).with_http_service(svc))
}

/// [`client`] for Fireworks' inference endpoint.
///
/// # Errors
/// As [`client`].
pub fn fireworks_client(
    key: ApiKey,
    stack: Stack,
) -> Result<Client<OpenAIConfig>, StackConfigError> {
    client(FIREWORKS_BASE_URL, key, stack)
}
