//! What the observation tests share: a scripted service and the stack around it.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use firebreak::gate::{GateConfig, GateLayer, KeyBy};
use firebreak::observe::{AttemptObserveLayer, ObserveLayer, Observer};
use firebreak::retry::{Jitter, RetryConfig, RetryLayer};
use firebreak::{Error, classify::ClassifyLayer};
use firebreak_testkit::Recorded;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Service, ServiceBuilder};

/// Answers with the next status of a script (200 when it runs out), after `delay`.
#[derive(Clone)]
pub struct Script {
    statuses: Arc<Mutex<VecDeque<u16>>>,
    delay: Duration,
}

impl Script {
    pub fn new(statuses: &[u16], delay: Duration) -> Self {
        Script {
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            delay,
        }
    }
}

impl<B: Send + 'static> Service<Request<B>> for Script {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let s = self.statuses.lock().unwrap().pop_front().unwrap_or(200);
        // A 429 is a rate limit (its body says so) and asks for a wait longer than the tests'
        // backoff (at most 100 ms).
        let wait = if s == 429 { "500" } else { "0" };
        let body: &'static [u8] = if s == 429 {
            br#"{"error":{"message":"rate limit exceeded","code":"RATE_LIMIT_EXCEEDED"}}"#
        } else {
            b"{\"ok\":true}"
        };
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Response::builder()
                .status(s)
                .header("retry-after-ms", wait)
                .body(Full::new(Bytes::from_static(body)))
                .unwrap())
        })
    }
}

pub fn retry() -> RetryConfig {
    RetryConfig::default()
        .backoff(firebreak::retry::Backoff {
            jitter: Jitter::Full,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(100),
        })
        .seed(Some(7))
}

pub fn req() -> Request<Full<Bytes>> {
    Request::post("http://sim.invalid/chat/completions")
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

pub type Svc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<firebreak::observe::ObservedBody<http_body_util::combinators::BoxBody<Bytes, Error>>>,
    Error,
>;

/// observe → retry → observe attempt → gate → classify → script, built under `rec`.
pub fn stack(rec: &Recorded, script: Script, gate: GateConfig, obs_on: bool) -> Svc {
    rec.build(|| {
        let obs = if obs_on {
            Observer::new()
        } else {
            Observer::disabled()
        };
        let svc = ServiceBuilder::new()
            .layer(ObserveLayer::new(obs.clone()))
            .map_response(|r: Response<_>| r.map(BodyExt::boxed))
            .layer(RetryLayer::new(retry()).unwrap())
            .layer(AttemptObserveLayer::new(obs))
            .layer(GateLayer::new(gate, KeyBy::Client).unwrap())
            .layer(ClassifyLayer::new())
            .service(script);
        tower::util::BoxCloneSyncService::new(svc)
    })
}
