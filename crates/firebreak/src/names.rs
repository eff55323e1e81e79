//! The names other code depends on: spans, the span fields one layer writes into another's
//! span, and metrics. Written once here; the layers and the dashboards read them.
//!
//! The metrics table with labels and units is in [the observe module](crate::observe) docs.

/// The span of one call, across its attempts (the observe module's outer layer).
pub const CALL_SPAN: &str = "firebreak.call";
/// The span of one attempt, a child of [`CALL_SPAN`] (the observe module's inner layer).
pub const ATTEMPT_SPAN: &str = "firebreak.attempt";
/// The field of [`ATTEMPT_SPAN`] the 429 gate records its wait in, in ms.
pub const GATE_WAIT_MS_FIELD: &str = "gate_wait_ms";
/// The field of [`ATTEMPT_SPAN`] the 429 gate records why it waited in (`concurrency`,
/// `pacing`, `cooldown`).
pub const GATE_WAIT_REASON_FIELD: &str = "gate_wait_reason";

/// Calls, by `outcome` and `class`. Named `CALLS` after the glossary; the series keeps its
/// first name, `firebreak_requests_total`, so that users' dashboards and alerts keep working.
pub const CALLS: &str = "firebreak_requests_total";
/// Attempts, by `class` and `reached_server`.
pub const ATTEMPTS: &str = "firebreak_attempts_total";
/// Retries, by `reason`.
pub const RETRIES: &str = "firebreak_retries_total";
/// 429 answers received.
pub const HTTP_429: &str = "firebreak_http_429_total";
/// Client-side failures, by `kind`.
pub const CLIENT_FAILURES: &str = "firebreak_client_failures_total";
/// Time to the first body byte, in ms.
pub const FIRST_BYTE_MS: &str = "firebreak_latency_to_first_byte_ms";
/// Total latency, in ms, by `outcome`.
pub const OVERALL_MS: &str = "firebreak_latency_overall_ms";
/// Sleep before a retry, in ms, by `reason`.
pub const BACKOFF_MS: &str = "firebreak_backoff_ms";

/// Time a request waited in the gate, in ms, by `reason` (`concurrency`, `pacing`,
/// `cooldown`): only requests that waited.
pub const GATE_WAIT_MS: &str = "firebreak_gate_wait_ms";
/// The adaptive concurrency limit, summed over keys.
pub const GATE_LIMIT: &str = "firebreak_gate_concurrency_limit";
/// Requests waiting to be admitted, summed over keys.
pub const GATE_QUEUE: &str = "firebreak_gate_queue_length";
/// Idle keys evicted to keep the gate's map within `max_keys`.
pub const GATE_EVICTIONS: &str = "firebreak_gate_evictions_total";

/// Attempts per configured route target, by `target` and `class` (the route module).
pub const TARGET_ATTEMPTS: &str = "firebreak_target_attempts_total";
/// A route target's circuit breaker: 0 closed, 1 half-open, 2 open, by `target`.
pub const BREAKER_STATE: &str = "firebreak_breaker_state";
/// Circuit breaker transitions, by `target` and `to` (`open`, `half_open`, `closed`).
pub const BREAKER_TRANSITIONS: &str = "firebreak_breaker_transitions_total";
/// Calls moved past a target, by `target` (the one passed over) and `reason` (`open`: its
/// breaker; `holding`: its gate is cooling down; `failed`: it answered with a retryable failure;
/// `capacity`: it refused for capacity or rate).
pub const FALLBACKS: &str = "firebreak_fallbacks_total";
