//! Observation (feature `observe`): tracing spans and metrics, one span per call with a child
//! span per attempt, and counters and histograms through the [`metrics`] facade, so any exporter
//! works (Prometheus, StatsD, OpenTelemetry…).
//!
//! Two layers, placed as [the architecture](crate#how-a-call-flows-outside-to-inside) says:
//!
//! - [`ObserveLayer`] is outermost: it sees the call from its start to the end of the response
//!   body, whatever happens in between (retries, waits, the deadline). It counts the outcome
//!   once, when the call ends, even if the caller drops it half way (`cancelled`).
//! - [`AttemptObserveLayer`] sits between retry and the gate: it sees every attempt, including
//!   the ones the gate refused to send, which are client-side failures. The retry layer tells it
//!   which attempt it is and how long it waited before it, and why ([`AttemptContext`](crate::AttemptContext));
//!   the gate records its own wait on the attempt span (`gate_wait_ms`, `gate_wait_reason`).
//!
//! Both classify with the same verdict every other layer uses ([`Class`](crate::Class)). The span
//! and metric names are constants in [`names`](crate::names).
//!
//! # Spans
//! Following tower-http's `TraceLayer`: spans at `DEBUG`, an event when the request finishes
//! (`"finished processing request"`, `DEBUG`) or fails (`"response failed"`, `ERROR`, except 4xx,
//! which are the caller's to handle), with the latency in milliseconds.
//!
//! | span | fields |
//! |---|---|
//! | `firebreak.call` | `method`, `uri`, `version`, `request_id` (the `x-request-id` sent, else the one answered), `attempts`, `status`, `class`, `outcome`, `ttfb_ms`, `total_ms` |
//! | `firebreak.attempt` (child) | `attempt`, `delay_ms` and `delay_reason` (`none`, `backoff`, `server`) before it, `retry_after_class`, `gate_wait_ms` and `gate_wait_reason` (`concurrency`, `pacing`, `cooldown`), `status`, `class`, `headers_ms` |
//!
//! Headers are never recorded, and [`ObserveLayer`] marks `Authorization` and `x-api-key` as
//! sensitive (on or off), so that nothing below it, a `TraceLayer` logging headers included,
//! prints them.
//!
//! # Metrics
//! Names are chosen to sit beside Fireworks' own dedicated-deployment metrics
//! (`request_counter_total`, `requests_error_total{http_code}`, `latency_to_first_token_ms`,
//! `latency_overall_ms`) on one dashboard; times are in milliseconds like theirs. The series
//! of calls keeps its first name, `firebreak_requests_total` (a call was once a "request"):
//! renaming it would break users' dashboards.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `firebreak_requests_total` | counter | `outcome` (`success`, `failure`, `cancelled`), `class`; `model`, `deployment` (below) | calls, counted once when they end |
//! | `firebreak_attempts_total` | counter | `class`, `reached_server`; `model`, `deployment` (below) | attempts; `reached_server="true"` is what the provider can see |
//! | `firebreak_retries_total` | counter | `reason` (the class that caused it) | retries |
//! | `firebreak_http_429_total` | counter | – | 429 answers received |
//! | `firebreak_client_failures_total` | counter | `kind` (`dns`, `refused`, `tls`, `connect_other`, `connect_timeout`, `ready_timeout`, `gate_refused`) | attempts that never reached the server |
//! | `firebreak_latency_to_first_byte_ms` | histogram | – | call to first body byte at the caller, retries included |
//! | `firebreak_latency_overall_ms` | histogram | `outcome` | call to the end of the body (or the error) |
//! | `firebreak_backoff_ms` | histogram | `reason` (`backoff`, `server`) | sleep before each retry |
//! | `firebreak_gate_wait_ms` | histogram | `reason` (`concurrency`, `pacing`, `cooldown`) | time a request waited in the 429 gate (only requests that waited) |
//! | `firebreak_gate_concurrency_limit` | gauge | – | the gate's adaptive concurrency limit, summed over keys |
//! | `firebreak_gate_queue_length` | gauge | – | requests waiting in the gate, summed over keys |
//!
//! `class` is one of the fixed labels of [`Class::label`](crate::Class::label). A call whose
//! request carries a [`Model`](crate::Model) is counted in the two counters with `model` (its
//! id) and `deployment` (`accounts/{a}/deployments/{id}` for a dedicated deployment, as
//! Fireworks' exporter names it, else empty), so the two views can be put side by side per
//! deployment. Those labels are opt-in and bounded: at most the cap given to
//! [`Observer::with_model_cap`] or [`Stack::model_labels`](crate::Stack::model_labels) (`firebreak
//! proxy` uses 64), then `model="other"`. Every other series is fixed when the layer is built. No request id, URL or
//! key is ever a label.
//!
//! # Example
//! ```
//! use firebreak::observe::{AttemptObserveLayer, ObserveLayer, Observer};
//! use tower::ServiceBuilder;
//! # use firebreak::{classify::ClassifyLayer, Error};
//! # let hyper_client = tower::service_fn(|_r: http::Request<http_body_util::Full<bytes::Bytes>>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! # });
//!
//! // Install the exporter first (e.g. `metrics_exporter_prometheus::PrometheusBuilder`), then:
//! let obs = Observer::new();
//! let svc = ServiceBuilder::new()
//!     .layer(ObserveLayer::new(obs.clone()))
//!     // … deadline, retry …
//!     .layer(AttemptObserveLayer::new(obs))
//!     // … gate, timeouts …
//!     .layer(ClassifyLayer::new())
//!     .service(hyper_client);
//! # let _ = svc;
//! ```
//!
//! [`Stack`](crate::Stack) does this for you; its `observe: false` turns it off.
//!
//! How to read these metrics beside Fireworks' own: [`client_failures`].

mod attempt;
#[doc = include_str!("../../docs/client-failures.md")]
pub mod client_failures {}
mod call;
mod instruments;

pub use attempt::{AttemptFuture, AttemptObserve, AttemptObserveLayer};
pub use call::{CallFuture, Observe, ObserveLayer, ObservedBody};
pub use instruments::{Observer, Outcome};
