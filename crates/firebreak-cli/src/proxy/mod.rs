//! `firebreak proxy`: a reliability sidecar. Any OpenAI-compatible SDK pointed at it, with its
//! own retries off, gets firebreak's behaviour.
//!
//! The proxy is a tower stack of its own, composed in [`stack`] in the order a request
//! passes:
//! 1. the connection's timers ([`conn`]: keep-alive, header, write stall), the cap on
//!    connections (further ones wait in the accept backlog), and a request head of at most
//!    [`MAX_HEAD`] (64 KiB; 431 beyond) ([`serve`]);
//! 2. the caller's credentials marked sensitive (tower-http's `SetSensitiveRequestHeaders`);
//! 3. the call's record ([`call`]): its request id, the in-flight mark on the connection, the
//!    stamps on the answer, the log line its body writes when it ends;
//! 4. admission ([`guard`], [`steps::admit`]: Host, browsers, routes, methods, dot-segments,
//!    caller tokens; `/healthz` and [`metrics`] answered here);
//! 5. the caller's preset and deadline ([`caller`], [`steps::caller`]);
//! 6. the request body ([`steps::body`]), under `--max-body`, `--body-timeout` and the
//!    `--body-memory` budget shared by all connections ([`body`]);
//! 7. header hygiene ([`headers`], [`steps::hygiene`]: hop-by-hop, `X-Forwarded-For` policy);
//! 8. the firebreak stack, one for all presets, each request carrying its own timers, or the
//!    router for an alias ([`forward`]);
//! 9. the answer back ([`respond`], [`body::ProxyBody`]), whose cut stream ends with an SSE
//!    `error` event.
//!
//! A step is a [`step::StepLayer`] over an async function. Flags: [`flags`]; startup:
//! [`startup`]. Only HTTP/1.1 is served: h2c (HTTP/2 without TLS, by prior knowledge or
//! upgrade) is off, as the SDKs speak HTTP/1.1 to a local sidecar.

/// The largest request head (request line and headers) the proxy reads: 64 KiB. hyper checks
/// the limit between reads, so a head may pass it by at most one read (another 64 KiB); one far
/// larger always gets 431. SDK requests send well under 2 KiB.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

mod body;
mod call;
mod caller;
mod conn;
mod exporter;
mod flags;
mod forward;
mod guard;
mod headers;
mod metrics;
mod respond;
mod serve;
mod startup;
mod step;
mod steps;

pub(crate) use flags::ProxyArgs;
pub(crate) use startup::run;

use firebreak::BoxStack;
use firebreak::timeout::{TimeoutConfig, Workload};
use http::Request;
use hyper::body::Incoming;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use step::{Answer, StepLayer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

/// The proxy's stack, boxed.
pub(crate) type ProxyService = BoxCloneSyncService<Request<Incoming>, Answer, Infallible>;

/// The proxy's stack, in the order of the module docs.
pub(crate) fn stack(p: &Arc<Shared>) -> ProxyService {
    let credentials = [
        http::header::AUTHORIZATION,
        http::HeaderName::from_static("x-api-key"),
    ];
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new(credentials))
            .layer(StepLayer::new(p, call::record))
            .layer(StepLayer::new(p, steps::admit))
            .layer(StepLayer::new(p, steps::caller))
            .layer(StepLayer::new(p, steps::body))
            .layer(StepLayer::new(p, steps::hygiene))
            .service(forward::Forward(p.clone())),
    )
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) svc: BoxStack,
    /// Aliases routed through chains of targets (`--config`).
    pub(crate) router: Option<firebreak::route::Router>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) upstream: Arc<str>,
    pub(crate) policy: guard::Policy,
    pub(crate) default_preset: Workload,
    pub(crate) presets: [(Workload, TimeoutConfig); 4],
    pub(crate) max_body: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) cut: CancellationToken,
    pub(crate) scrub: Arc<dyn Fn(&str) -> String + Send + Sync>,
    pub(crate) warned: Mutex<HashSet<u64>>,
    pub(crate) exporter: Option<Arc<exporter::ExporterPage>>,
}

impl Shared {
    pub(crate) fn preset(&self, w: Workload) -> &TimeoutConfig {
        self.presets
            .iter()
            .find(|(p, _)| *p == w)
            .map(|(_, t)| t)
            .unwrap_or(&self.presets[0].1)
    }
}
