//! `firebreak-sim`: a Fireworks-compatible, fault-injecting inference server.
//!
//! It speaks HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one port, serves the
//! OpenAI-compatible routes under `/inference/v1` (and `/v1`), and injects the faults that
//! firebreak's layers must survive: transient 5xx, a shared token-bucket rate limit with or
//! without `Retry-After`, a capacity limit, every server-requested delay form (well-formed or
//! not), non-retryable 4xx in every error body shape seen in the wild, slow time to first byte,
//! hangs, stalled streams, connection resets and error events inside SSE streams.
//!
//! Every attempt is logged ([`AttemptRecord`]) so tests can assert attempt counts, the waits
//! between attempts and byte-identical bodies on retry. Probabilistic faults are decided from
//! (seed, logical request id, attempt number), so a scenario is reproducible whatever the
//! concurrency.
//!
//! # Example
//! ```
//! use firebreak_sim::{Fault, Sim, SimConfig, Trigger};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The first attempt of every logical request gets a 503, the second succeeds.
//! let config = SimConfig::default().fault(
//!     Trigger::FirstAttempts { n: 1 },
//!     Fault::status(503),
//! );
//! let sim = Sim::start(config).await?;
//! println!("listening on {}", sim.base_url()); // http://127.0.0.1:PORT/inference/v1
//! assert!(sim.log().is_empty());
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Routes
//! | route | answer |
//! |---|---|
//! | `POST /inference/v1/chat/completions` | `chat.completion` JSON, or an SSE stream of `chat.completion.chunk` ending `data: [DONE]`, usage in the last chunk |
//! | `POST /inference/v1/completions` | `text_completion` JSON or SSE |
//! | `POST /inference/v1/embeddings` | an embeddings list |
//! | `GET /inference/v1/models` | the model list |
//! | `GET /v1/accounts/{a}/{collection}/{id}` | a control-plane resource of [`SimConfig::control`], its state advancing along its script with each GET ([`ControlResource`]) |
//! | `POST /v1/accounts/{a}/{collection}/{id}:resume` (`:cancel`) | restarts the resource's script from its resume steps |
//! | `GET /v1/accounts/{a}/metrics` | Fireworks' deployment exporter (Prometheus text): what this simulator served to the account's dedicated deployments, at most 6 scrapes a minute per account, then 429 |
//! | `GET /training/v1/rlorTrainerJobs/{a}/{id}/api/v1/healthz` | 200 once the trainer job is running and its unhealthy checks are used up, else 503 |
//!
//! Every success carries the `fireworks-prompt-tokens`, `fireworks-cached-prompt-tokens`,
//! `fireworks-server-time-to-first-token` and `fireworks-server-processing-time` headers, and,
//! when a rate limit is configured, `x-ratelimit-limit-requests` / `x-ratelimit-remaining-requests`.
//!
//! # Order of checks
//! body size (413) → auth (401) → route (404/405) → JSON (400) → model (404) → rate limit (429) →
//! capacity (503/429) → the first fault rule that fires → the normal answer.

mod bodies;
mod body;
mod bucket;
mod config;
mod control;
mod exporter;
mod log;
pub mod peers;
mod server;

pub use body::{BodyAbort, SimBody};
pub use config::{
    CapacityConfig, CapacityReject, DelayHeader, DeploymentConfig, ErrorShape, Fault, FaultRule,
    Growth, Latency, RateLimitConfig, RateLimitDelay, RateUnit, SimConfig, Trigger,
};
pub use control::{COLLECTIONS, ControlResource, GetFailure, Step};
pub use log::AttemptRecord;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What can go wrong starting the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario has a value that cannot work.
    #[error("invalid simulator config: {0}")]
    Config(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A running simulator. Dropping it stops the server (in-flight connections are aborted).
#[derive(Debug)]
pub struct Sim {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sim {
    /// Starts on `127.0.0.1:0` (a free loopback port).
    ///
    /// # Errors
    /// [`SimError::Config`] for an invalid scenario, [`SimError::Bind`] if no port can be bound.
    pub async fn start(config: SimConfig) -> Result<Sim, SimError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    ///
    /// # Errors
    /// As [`Sim::start`].
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> Result<Sim, SimError> {
        config.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let shared = Arc::new(server::Shared::new(config));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(Sim {
            shared,
            addr: local,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/inference/v1`, the base URL a client should use.
    pub fn base_url(&self) -> String {
        format!("http://{}/inference/v1", self.addr)
    }

    /// Every attempt logged so far, in arrival order. An attempt is logged when its response
    /// ends (finished, cut, or dropped by the client), so one still streaming is not here yet.
    pub fn log(&self) -> Vec<AttemptRecord> {
        self.shared.log.snapshot_from(0)
    }

    /// The attempts of one logical request, in arrival order.
    pub fn attempts_for(&self, request_id: &str) -> Vec<AttemptRecord> {
        let mut v = self.log();
        v.retain(|r| r.request_id.as_deref() == Some(request_id));
        v
    }

    /// How many attempts have been logged.
    pub fn log_len(&self) -> usize {
        self.shared.log.len()
    }

    /// Records logged after the first `from` (in logging order), sorted by arrival; for tailing.
    pub fn log_since(&self, from: usize) -> Vec<AttemptRecord> {
        self.shared.log.snapshot_from(from)
    }

    /// Attempts that did not fit in the log's capacity.
    pub fn log_dropped(&self) -> u64 {
        self.shared.log.dropped()
    }

    /// Empties the log and the per-request attempt counters.
    pub fn clear_log(&self) {
        self.shared.log.clear();
        self.shared
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Writes records as JSON lines.
    ///
    /// # Errors
    /// Any I/O error from `w`.
    pub fn write_jsonl(records: &[AttemptRecord], mut w: impl Write) -> io::Result<()> {
        for r in records {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The rate limit's current rate in requests per second (it grows if so configured).
    pub fn current_rate(&self) -> Option<f64> {
        self.shared
            .bucket
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).rate())
    }

    /// Requests in flight, counted when a capacity limit is configured.
    pub fn in_flight(&self) -> usize {
        self.shared
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Requests in flight on the deployment serving `model` (0 for one not configured).
    pub fn deployment_in_flight(&self, model: &str) -> usize {
        self.shared
            .cfg
            .deployments
            .iter()
            .position(|d| d.model == model)
            .map_or(0, |i| {
                self.shared.deployment_in_flight[i].load(std::sync::atomic::Ordering::Acquire)
            })
    }

    /// Takes `model` down until [`Sim::bring_up`]: every request naming it meets `fault`
    /// (a 503, a reset, a hang…) before any limit or rule. For outage and recovery scenarios.
    pub fn take_down(&self, model: &str, fault: Fault) {
        self.shared
            .outages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.to_owned(), fault);
    }

    /// Ends an outage started by [`Sim::take_down`].
    pub fn bring_up(&self, model: &str) {
        self.shared
            .outages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(model);
    }

    /// Stops accepting, aborts open connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
