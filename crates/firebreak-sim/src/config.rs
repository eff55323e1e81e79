//! Scenario configuration: what the simulator answers, and which faults it injects.
//!
//! Every type here is `serde`-(de)serialisable, so the `firebreak-sim` binary reads the same
//! scenario from a JSON file that tests build in code.

use serde::{Deserialize, Serialize};

/// A whole scenario: accepted keys, normal-path behaviour, rate limit, capacity and fault rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed for every probabilistic decision. The same seed, logical request id and attempt
    /// number always give the same decision, whatever the arrival order.
    pub seed: u64,
    /// API keys accepted in `Authorization: Bearer <key>`. Empty: any non-empty bearer token is
    /// accepted (a missing or empty one still gets 401).
    pub api_keys: Vec<String>,
    /// Model ids served. A request naming another model gets 404 `NOT_FOUND` (param `model`).
    /// Empty: every model name is accepted.
    pub models: Vec<String>,
    /// Normal-path latency and sizes.
    pub latency: Latency,
    /// A shared token-bucket request limit, answered with 429 when exhausted.
    pub rate_limit: Option<RateLimitConfig>,
    /// A limit on requests in flight (the dedicated-deployment behaviour).
    pub capacity: Option<CapacityConfig>,
    /// Fault rules, tried in order; the first whose trigger fires is applied.
    pub faults: Vec<FaultRule>,
    /// Largest request body read; a larger one is answered with 413.
    pub max_request_body: usize,
    /// Largest number of attempts kept in the log; further attempts are counted in
    /// [`crate::Sim::log_dropped`], never silently lost.
    pub log_capacity: usize,
    /// Control-plane resources (jobs, deployments), served under `/v1/accounts/{account}/`.
    pub control: Vec<crate::ControlResource>,
    /// Dedicated deployments, each with its own capacity and faults: a request naming one's
    /// `model` skips the shared rate limit (a dedicated deployment has none), is held to the
    /// deployment's `capacity`, and meets its `faults` before the scenario's.
    pub deployments: Vec<DeploymentConfig>,
}

/// One dedicated deployment the simulator hosts (see [`SimConfig::deployments`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The model id requests name it by (`accounts/{a}/deployedModels/{x}`, or
    /// `{model}#accounts/{a}/deployments/{id}`).
    pub model: String,
    /// Its replicas' capacity: requests in flight beyond it are refused.
    #[serde(default)]
    pub capacity: Option<CapacityConfig>,
    /// Its own fault rules, tried before the scenario's.
    #[serde(default)]
    pub faults: Vec<FaultRule>,
    /// Its replicas serve this many requests at once; each one beyond waits in a queue (a
    /// queue of `k` adds `k / queue_after` times the time to first byte), and every answer
    /// says how long it queued in `fireworks-prefill-queue-duration`, as Fireworks' dedicated
    /// deployments do. `None`: no queueing, no header.
    #[serde(default)]
    pub queue_after: Option<usize>,
}

impl DeploymentConfig {
    /// A deployment answering `model`, with no capacity limit and no faults.
    pub fn new(model: impl Into<String>) -> Self {
        DeploymentConfig {
            model: model.into(),
            capacity: None,
            faults: Vec::new(),
            queue_after: None,
        }
    }

    /// Serves `slots` requests at once and queues the rest (see
    /// [`DeploymentConfig::queue_after`]).
    pub fn queue_after(mut self, slots: usize) -> Self {
        self.queue_after = Some(slots);
        self
    }

    /// Limits it to `max_in_flight`, refusing the rest with `reject_with`.
    pub fn capacity(mut self, max_in_flight: usize, reject_with: CapacityReject) -> Self {
        self.capacity = Some(CapacityConfig {
            max_in_flight,
            reject_with,
        });
        self
    }

    /// Adds a fault rule.
    pub fn fault(mut self, when: Trigger, fault: Fault) -> Self {
        self.faults.push(FaultRule::on_every_path(when, fault));
        self
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            api_keys: Vec::new(),
            models: Vec::new(),
            latency: Latency::default(),
            rate_limit: None,
            capacity: None,
            faults: Vec::new(),
            max_request_body: 32 * 1024 * 1024,
            log_capacity: 1_000_000,
            control: Vec::new(),
            deployments: Vec::new(),
        }
    }
}

impl SimConfig {
    /// Adds a fault rule (builder style).
    pub fn fault(mut self, when: Trigger, fault: Fault) -> Self {
        self.faults.push(FaultRule::on_every_path(when, fault));
        self
    }

    /// Adds a control-plane resource (builder style).
    pub fn resource(mut self, r: crate::ControlResource) -> Self {
        self.control.push(r);
        self
    }

    /// Accepts only this API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_keys.push(key.into());
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the token-bucket rate limit.
    pub fn rate_limit(mut self, rl: RateLimitConfig) -> Self {
        self.rate_limit = Some(rl);
        self
    }

    /// Sets the in-flight capacity limit.
    pub fn capacity(mut self, cap: CapacityConfig) -> Self {
        self.capacity = Some(cap);
        self
    }

    /// Sets the normal-path latency.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Adds a dedicated deployment (builder style).
    pub fn deployment(mut self, d: DeploymentConfig) -> Self {
        self.deployments.push(d);
        self
    }

    /// Checks the scenario for values that cannot work, naming the first one found.
    pub fn validate(&self) -> Result<(), crate::SimError> {
        let bad = |what: String| Err(crate::SimError::Config(what));
        for (i, d) in self.deployments.iter().enumerate() {
            if d.model.is_empty() {
                return bad(format!("deployments[{i}]: model must not be empty"));
            }
            if self.deployments[..i].iter().any(|o| o.model == d.model) {
                return bad(format!(
                    "deployments[{i}]: model {:?} is listed twice",
                    d.model
                ));
            }
            if d.queue_after == Some(0) {
                return bad(format!("deployments[{i}]: queue_after must be >= 1"));
            }
            if d.capacity.as_ref().is_some_and(|c| c.max_in_flight == 0) {
                return bad(format!(
                    "deployments[{i}]: capacity.max_in_flight must be >= 1"
                ));
            }
            check_rules(&d.faults, &format!("deployments[{i}].faults"))
                .map_err(crate::SimError::Config)?;
        }
        for r in &self.control {
            r.validate().map_err(crate::SimError::Config)?;
        }
        if let Some(rl) = &self.rate_limit {
            if !(rl.rate_per_sec.is_finite() && rl.rate_per_sec > 0.0) {
                return bad(format!(
                    "rate_limit.rate_per_sec must be > 0, got {}",
                    rl.rate_per_sec
                ));
            }
            if !(rl.burst.is_finite() && rl.burst >= 1.0) {
                return bad(format!("rate_limit.burst must be >= 1, got {}", rl.burst));
            }
            if let Some(g) = &rl.growth {
                let ok = g.factor.is_finite()
                    && g.factor >= 1.0
                    && g.max_rate_per_sec >= rl.rate_per_sec;
                if !ok {
                    return bad(
                        "rate_limit.growth needs factor >= 1 and max_rate_per_sec >= rate_per_sec"
                            .into(),
                    );
                }
            }
        }
        if let Some(c) = &self.capacity {
            if c.max_in_flight == 0 {
                return bad("capacity.max_in_flight must be >= 1".into());
            }
        }
        check_rules(&self.faults, "faults").map_err(crate::SimError::Config)
    }
}

/// The first fault rule of `rules` that cannot work, named as `{what}[i]`.
fn check_rules(rules: &[FaultRule], what: &str) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        if let Trigger::Probability { p } = rule.when {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{what}[{i}]: probability {p} is not in [0, 1]"));
            }
        }
        if let Trigger::FirstAttemptsOfEvery { every: 0, .. } = rule.when {
            return Err(format!("{what}[{i}]: every must be at least 1"));
        }
        if let Fault::Status { status, .. } = &rule.fault {
            if !(100..=999).contains(status) {
                return Err(format!(
                    "{what}[{i}]: status {status} is not a valid HTTP status"
                ));
            }
        }
    }
    Ok(())
}

/// Normal-path behaviour: how fast and how much the "model" answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// Delay before the response headers (time to first byte), in milliseconds.
    pub ttfb_ms: u64,
    /// Delay between streamed tokens, in milliseconds.
    pub token_delay_ms: u64,
    /// Completion tokens generated when the request has no `max_tokens`.
    pub completion_tokens: u32,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            ttfb_ms: 0,
            token_delay_ms: 0,
            completion_tokens: 8,
        }
    }
}

/// A shared token bucket on requests (all keys, all models).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Refill rate in requests per second.
    pub rate_per_sec: f64,
    /// Bucket size: how many requests may arrive at once.
    pub burst: f64,
    /// Which server-requested delay a 429 carries.
    #[serde(default)]
    pub delay: RateLimitDelay,
    /// Unit of the `x-ratelimit-limit-requests` header.
    #[serde(default)]
    pub header_unit: RateUnit,
    /// Optional growth of the limit under sustained use (the serverless behaviour).
    #[serde(default)]
    pub growth: Option<Growth>,
}

impl RateLimitConfig {
    /// A bucket of `rate_per_sec` with `burst`, whose 429s carry `Retry-After` in seconds.
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        RateLimitConfig {
            rate_per_sec,
            burst,
            delay: RateLimitDelay::RetryAfterSecs,
            header_unit: RateUnit::PerMinute,
            growth: None,
        }
    }

    /// Sets the delay header a 429 carries.
    pub fn delay(mut self, delay: RateLimitDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the unit `x-ratelimit-limit-requests` is stated in.
    pub fn header_unit(mut self, unit: RateUnit) -> Self {
        self.header_unit = unit;
        self
    }
}

/// The delay header on a rate-limit 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitDelay {
    /// `Retry-After` in whole seconds, rounded up from when the next token frees.
    #[default]
    RetryAfterSecs,
    /// `Retry-After` in fractional seconds (as openai-python accepts), e.g. `0.020`.
    RetryAfterFractional,
    /// `retry-after-ms` in milliseconds.
    RetryAfterMs,
    /// No delay header at all: the client must work it out.
    None,
}

/// Unit used in `x-ratelimit-limit-requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    /// Requests per second.
    PerSecond,
    /// Requests per minute.
    #[default]
    PerMinute,
}

/// The limit grows by `factor` after `after_ms` of sustained use, up to `max_rate_per_sec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Growth {
    /// How long the bucket must stay busy (no idle gap over one second) before growing.
    pub after_ms: u64,
    /// Multiplier applied to the rate and burst at each growth step.
    pub factor: f64,
    /// The rate never grows past this.
    pub max_rate_per_sec: f64,
}

/// A limit on requests in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// Requests in flight at once; one more is rejected.
    pub max_in_flight: usize,
    /// What a rejected request gets.
    #[serde(default)]
    pub reject_with: CapacityReject,
}

/// What an over-capacity request is answered with (no delay header either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityReject {
    /// 503 "service overloaded".
    #[default]
    Overloaded503,
    /// 429 "capacity exceeded" (a dedicated deployment).
    CapacityExceeded429,
}

/// A fault and when it fires.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// When the fault fires.
    pub when: Trigger,
    /// Only on these paths (suffix match, e.g. `/chat/completions`); empty: every path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// What happens.
    pub fault: Fault,
}

impl FaultRule {
    /// `fault` when `when` fires, on every path.
    pub fn on_every_path(when: Trigger, fault: Fault) -> FaultRule {
        FaultRule {
            when,
            paths: Vec::new(),
            fault,
        }
    }
}

/// When a fault rule fires. Decisions are per (seed, logical request id, attempt number).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// Every attempt.
    Always,
    /// Each attempt independently with probability `p`.
    Probability {
        /// Probability in `[0, 1]`.
        p: f64,
    },
    /// The first `n` attempts of each logical request (then it recovers).
    FirstAttempts {
        /// How many attempts fail.
        n: u32,
    },
    /// The first `n` attempts of the logical requests whose id ends in a number `k` with
    /// `k % every == offset` (ids such as `req-000007`; an id without a number never fires):
    /// gives different requests different faults.
    FirstAttemptsOfEvery {
        /// How many attempts fail.
        n: u32,
        /// The modulus (0 never fires).
        every: u32,
        /// The remainder.
        offset: u32,
    },
}

/// A fault the simulator can inject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status and error body.
    Status {
        /// HTTP status code.
        status: u16,
        /// Error body shape; by default the current gateway shape (FastAPI `detail` for 422).
        #[serde(default)]
        shape: Option<ErrorShape>,
        /// Server-requested delay headers to add.
        #[serde(default)]
        delay: Vec<DelayHeader>,
        /// `x-should-retry` header value.
        #[serde(default)]
        should_retry: Option<bool>,
        /// Message in the body; a default per status otherwise.
        #[serde(default)]
        message: Option<String>,
    },
    /// Never send headers; hold the request for `for_ms` (bounded), then close.
    Hang {
        /// How long to hold, in milliseconds.
        #[serde(default = "default_hold_ms")]
        for_ms: u64,
    },
    /// Delay the response headers by `delay_ms`, then answer normally.
    SlowTtfb {
        /// Extra time to first byte in milliseconds.
        delay_ms: u64,
    },
    /// Wait `delay_ms` before reading the request body (a slow upload for the client).
    SlowUpload {
        /// Delay before reading, in milliseconds.
        delay_ms: u64,
    },
    /// Send `after_chunks` stream chunks (or body pieces), then stall for `for_ms`, then close
    /// without finishing the stream.
    StallAfter {
        /// Chunks delivered before the stall.
        after_chunks: u32,
        /// How long the stall lasts, in milliseconds.
        #[serde(default = "default_hold_ms")]
        for_ms: u64,
    },
    /// Reset the TCP connection (RST) after reading the request, before any response.
    ResetBeforeResponse,
    /// Send `after_chunks` stream chunks (or body pieces), then reset the connection.
    ResetMidStream {
        /// Chunks delivered before the reset.
        after_chunks: u32,
    },
    /// In a stream, send `after_chunks` chunks, then an SSE event whose data has an `error` key.
    SseError {
        /// Chunks delivered before the error event.
        after_chunks: u32,
        /// Error message.
        #[serde(default)]
        message: Option<String>,
    },
}

/// Setters of [`Fault::Status`]'s fields, named as the fields; no effect on other faults.
macro_rules! status_setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        $(
            $(#[$doc])*
            /// No effect on other faults.
            pub fn $field(mut self, to: $ty) -> Fault {
                if let Fault::Status { $field, .. } = &mut self {
                    *$field = to;
                }
                self
            }
        )*
    };
}

impl Fault {
    /// An error answer with `status`, the default body for it and no delay header; change it
    /// with [`Fault::shape`], [`Fault::delay`], [`Fault::should_retry`], [`Fault::message`].
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            shape: None,
            delay: vec![],
            should_retry: None,
            message: None,
        }
    }

    status_setters! {
        /// An error answer's body shape (`None`: the default one).
        shape: Option<ErrorShape>,
        /// An error answer's delay headers.
        delay: Vec<DelayHeader>,
        /// An error answer's `x-should-retry`.
        should_retry: Option<bool>,
        /// An error answer's message (`None`: a default per status).
        message: Option<String>,
    }
}

fn default_hold_ms() -> u64 {
    600_000
}

/// A server-requested delay header, well-formed or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DelayHeader {
    /// `Retry-After: <secs>` (fractional allowed).
    RetryAfterSecs {
        /// Seconds.
        secs: f64,
    },
    /// `retry-after-ms: <ms>`.
    RetryAfterMs {
        /// Milliseconds.
        ms: f64,
    },
    /// `Retry-After: <HTTP-date>` this many seconds from now (may be negative: in the past).
    RetryAfterDate {
        /// Offset from now, in seconds.
        secs_from_now: i64,
    },
    /// Any header with any value, for garbage, negative or huge values.
    Raw {
        /// Header name.
        name: String,
        /// Header value, sent as is.
        value: String,
    },
}

/// The shape of an error body (see `shared/FIREWORKS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ErrorShape {
    /// `{"error":{"message","param","code":"UPPER_SNAKE","type":"error"},"request_id"}`.
    Gateway,
    /// `{"error":{"object":"error","type":"invalid_request_error","code","message"}}`.
    OldInference,
    /// The older shape with a top-level `"raw_output":null`.
    OldInferenceRawOutput,
    /// `{"error":"Too Many Requests","message":"…"}`.
    StringError,
    /// OpenAI's quota answer: `{"error":{"message","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`.
    InsufficientQuota,
    /// FastAPI validation `{"detail":[{"loc","msg","type"}]}`.
    FastApi,
    /// Control plane gRPC-gateway `{"code":7,"message","details":[…ErrorInfo…]}`.
    GrpcGateway,
    /// The gRPC-gateway shape wrapped in `{"error":…}`.
    GrpcGatewayWrapped,
    /// Legacy gateway `{"fault":{"faultstring","detail":{"errorcode"}}}`.
    LegacyFault,
    /// An HTML proxy page.
    Html,
    /// A plain-text body.
    PlainText,
    /// No body at all.
    Empty,
    /// A JSON error whose message pads the body to `bytes` bytes.
    Huge {
        /// Total body size.
        bytes: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_read_from_json_and_bad_ones_are_named() {
        // The README's example.
        let cfg: SimConfig = serde_json::from_str(
            r#"{"deployments": [{"model": "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acme/deployments/d1",
               "capacity": {"max_in_flight": 8, "reject_with": "capacity_exceeded429"}, "queue_after": 4}]}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.deployments[0].queue_after, Some(4));
        let bad = |d: DeploymentConfig, want: &str| {
            let e = SimConfig::default()
                .deployment(DeploymentConfig::new("x"))
                .deployment(d)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        };
        bad(
            DeploymentConfig::new("x"),
            "deployments[1]: model \"x\" is listed twice",
        );
        bad(DeploymentConfig::new("y").queue_after(0), "queue_after");
        bad(
            DeploymentConfig::new("y").capacity(0, CapacityReject::Overloaded503),
            "max_in_flight",
        );
        bad(
            DeploymentConfig::new("y")
                .fault(Trigger::Probability { p: 2.0 }, Fault::ResetBeforeResponse),
            "deployments[1].faults[0]: probability",
        );
    }
}
