//! [`FireworksPolicy`]: the retry decision, as a `tower::retry::Policy`.

use crate::Deadline;
use crate::retry::config::{RetryConfig, RetryOn};
use crate::retry::replay::ReplayBody;
use crate::{AttemptContext, DelayReason, GaveUp, NotReplayable, RetryInfo};
use crate::{Class, Classification, Error};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::retry::budget::{Budget, TpsBudget};

#[derive(Debug)]
pub(crate) struct PolicyShared {
    pub(crate) cfg: RetryConfig,
    budget: Option<TpsBudget>,
    /// How many deposits one retry costs (tower's `TpsBudget` withdraws `1/ratio` deposits).
    refund: u32,
    calls: AtomicU64,
}

impl PolicyShared {
    pub(crate) fn new(cfg: RetryConfig) -> Self {
        let budget = cfg
            .budget
            .map(|b| TpsBudget::new(b.window, b.min_per_sec, b.ratio));
        let refund = cfg.budget.map_or(0, |b| {
            if b.ratio > 0.0 && b.ratio <= 1.0 {
                (1.0 / b.ratio) as u32
            } else {
                1
            }
        });
        if let (Some(b), Some(bc)) = (&budget, cfg.budget) {
            // The one-off start credit: `initial` retries' worth of deposits.
            for _ in 0..bc.initial.saturating_mul(refund.max(1)).min(1 << 20) {
                b.deposit();
            }
        }
        PolicyShared {
            cfg,
            budget,
            refund,
            calls: AtomicU64::new(0),
        }
    }
}

/// A body the policy can send again.
pub trait Replayable: Sized {
    /// A copy to send from the start.
    ///
    /// # Errors
    /// [`NotReplayable`] when it cannot be sent again.
    fn replay(&self) -> Result<Self, NotReplayable>;
}

impl<B> Replayable for ReplayBody<B> {
    fn replay(&self) -> Result<Self, NotReplayable> {
        self.try_clone()
    }
}

impl Replayable for http_body_util::Full<Bytes> {
    fn replay(&self) -> Result<Self, NotReplayable> {
        Ok(self.clone())
    }
}

impl Replayable for http_body_util::Empty<Bytes> {
    fn replay(&self) -> Result<Self, NotReplayable> {
        Ok(*self)
    }
}

/// The retry decision. One instance per call (tower clones it for each request); the budget
/// and settings are shared by all clones.
///
/// It implements [`tower::retry::Policy`], so it also works with a plain `tower::retry::Retry`
/// around any service whose error is [`Error`](crate::Error):
///
/// ```
/// use bytes::Bytes;
/// use firebreak::classify::ClassifyLayer;
/// use firebreak::retry::{FireworksPolicy, RetryConfig};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let hyper_client = tower::service_fn(|_r: http::Request<Full<Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
/// # });
/// let policy = FireworksPolicy::new(RetryConfig::default()).unwrap();
/// let svc = tower::retry::Retry::new(policy, ClassifyLayer::new().layer(hyper_client));
/// let resp = svc.oneshot(http::Request::new(Full::new(Bytes::from_static(b"{}")))).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// # }
/// ```
#[derive(Debug)]
pub struct FireworksPolicy {
    shared: Arc<PolicyShared>,
    attempts: u32,
    slept: Duration,
    first_end: Option<Instant>,
    previous: Option<Duration>,
    classes: [Option<Class>; 8],
    rng: Option<SmallRng>,
}

impl Clone for FireworksPolicy {
    fn clone(&self) -> Self {
        // A clone serves a new call: fresh per-call state, shared settings and budget. The call
        // counter (a contended atomic) is touched only when a seed asks for reproducible jitter.
        let rng = self.shared.cfg.seed.map(|s| {
            let n = self.shared.calls.fetch_add(1, Ordering::Relaxed);
            SmallRng::seed_from_u64(s ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        });
        Self::fresh(self.shared.clone(), rng)
    }
}

/// How one attempt ended, as the retry decision reads it.
enum Ended<'a> {
    /// An answer, with its classification.
    Answer(&'a Classification),
    /// A failure (a transport error, a timeout, a refusal by the gate).
    Failed(&'a Error),
}

impl Ended<'_> {
    fn class(&self) -> Class {
        match self {
            Ended::Answer(c) => c.class(),
            Ended::Failed(e) => e.class(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Ended::Answer(c) => c.retry_after(),
            Ended::Failed(e) => e.retry_after(),
        }
    }

    /// Whether it may be retried: the caller's status overrides first, then the class's rule
    /// ([`Class::is_retryable_given`], the one owner of the precedence) with the server's
    /// `x-should-retry` hint. A failure without a status keeps its own verdict.
    fn retryable(&self, on: &RetryOn) -> bool {
        let (status, hint) = match self {
            Ended::Answer(c) => (Some(c.status()), c.should_retry()),
            Ended::Failed(e) => match e.status() {
                Some(s) => (Some(s), None),
                None => return e.is_retryable(),
            },
        };
        let Some(s) = status else { return false };
        if on.never.contains(&s.as_u16()) {
            return false;
        }
        let hint = hint.filter(|_| !on.ignore_should_retry);
        self.class().is_retryable_given(hint) || (hint.is_none() && on.also.contains(&s.as_u16()))
    }
}

impl FireworksPolicy {
    /// A policy with `cfg`, for a plain `tower::retry::Retry` (the retry layer builds its own).
    ///
    /// # Errors
    /// [`crate::retry::RetryConfigError`] when `cfg` does not validate.
    pub fn new(cfg: RetryConfig) -> Result<Self, crate::retry::RetryConfigError> {
        cfg.validate()?;
        Ok(Self::from_shared(Arc::new(PolicyShared::new(cfg))))
    }

    pub(crate) fn from_shared(shared: Arc<PolicyShared>) -> Self {
        let rng = shared.cfg.seed.map(SmallRng::seed_from_u64);
        Self::fresh(shared, rng)
    }

    /// A policy for a new call: no attempts yet.
    fn fresh(shared: Arc<PolicyShared>, rng: Option<SmallRng>) -> Self {
        FireworksPolicy {
            shared,
            attempts: 0,
            slept: Duration::ZERO,
            first_end: None,
            previous: None,
            classes: [None; 8],
            rng,
        }
    }

    fn info(&self, gave_up: Option<GaveUp>) -> RetryInfo {
        RetryInfo {
            attempts: self.attempts,
            slept: self.slept,
            classes: self.classes,
            gave_up,
        }
    }

    fn draw(&mut self, class: Class) -> Duration {
        let n = self.attempts.saturating_sub(1);
        let cfg = &self.shared.cfg;
        // An endpoint nobody answers at is out for seconds, not one request's moment.
        let unreachable = matches!(
            class,
            Class::Connect(_) | Class::Timeout(crate::TimeoutPhase::Connect)
        );
        let b = match cfg.unreachable_backoff {
            Some(u) if unreachable => u,
            _ => cfg.backoff,
        };
        match self.rng.as_mut() {
            Some(r) => b.delay(n, self.previous, r),
            None => b.delay(n, self.previous, &mut rand::rng()),
        }
    }

    /// The decision for one answer: `Ok(wait)` to retry after `wait`, or why not.
    fn decide<B: Replayable>(
        &mut self,
        req: &Request<B>,
        ended: &Ended<'_>,
    ) -> Result<(Duration, DelayReason), GaveUp> {
        let cfg = &self.shared.cfg;
        let server_delay = ended.retry_after();
        if !ended.retryable(&cfg.retry_on) {
            return Err(GaveUp::NotRetryable);
        }
        if self.attempts >= cfg.max_attempts {
            return Err(GaveUp::AttemptsExhausted);
        }
        req.body()
            .replay()
            .map(drop)
            .map_err(GaveUp::BodyNotReplayable)?;
        if let Some(d) = server_delay {
            if d > cfg.max_server_delay {
                return Err(GaveUp::ServerDelayOverCap(d));
            }
        }
        let backoff = self.draw(ended.class());
        // Never earlier than the server asked.
        let wait = backoff.max(server_delay.unwrap_or(Duration::ZERO));
        let reason = if server_delay.is_some_and(|d| d > backoff) {
            DelayReason::Server
        } else {
            DelayReason::Backoff
        };
        let now = Instant::now();
        let first_end = *self.first_end.get_or_insert(now);
        if let Some(max) = self.shared.cfg.max_retry_time {
            if now.saturating_duration_since(first_end) + wait > max {
                return Err(GaveUp::RetryTimeExhausted);
            }
        }
        if let Some(dl) = Deadline::of(req) {
            if dl.check_wait(wait, Duration::ZERO).is_err() {
                return Err(GaveUp::Deadline);
            }
        }
        // A retry the server scheduled (a usable delay header) is not charged to the budget:
        // the server is pacing that load itself. Only retries on our own schedule are.
        if let (Some(b), None) = (&self.shared.budget, server_delay) {
            if !b.withdraw() {
                return Err(GaveUp::BudgetExhausted);
            }
        }
        Ok((wait, reason))
    }
}

impl<B, ResB> tower::retry::Policy<Request<B>, Response<ResB>, Error> for FireworksPolicy
where
    B: Replayable,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<ResB>, Error>,
    ) -> Option<Sleep> {
        self.attempts += 1;
        let answer;
        let ended = match result {
            Ok(resp) => {
                answer = Classification::of(resp);
                Ended::Answer(&answer)
            }
            Err(e) => Ended::Failed(e),
        };
        let class = ended.class();
        if let Some(slot) = self.classes.get_mut(self.attempts as usize - 1) {
            *slot = Some(class);
        }
        if let (Some(b), true) = (&self.shared.budget, class.is_success()) {
            // A success deposits its share; if it took retries, the last one worked: refund it.
            b.deposit();
            if self.attempts > 1 {
                for _ in 0..self.shared.refund {
                    b.deposit();
                }
            }
        }
        if class.is_success() {
            // A first-attempt success carries no `RetryInfo` (see `RetryInfo::of`): inserting
            // one would allocate the extensions map on every call.
            if let (Ok(resp), true) = (result, self.attempts > 1) {
                resp.extensions_mut().insert(self.info(None));
            }
            return None;
        }
        match self.decide(req, &ended) {
            Ok((wait, reason)) => {
                self.slept += wait;
                req.extensions_mut().insert(AttemptContext {
                    attempt: self.attempts + 1,
                    delay: wait,
                    reason,
                    after: class,
                });
                self.previous = Some(wait);
                if let Some(h) = &self.shared.cfg.attempt_header {
                    req.headers_mut()
                        .insert(h.clone(), HeaderValue::from(self.attempts));
                }
                Some(tokio::time::sleep(wait))
            }
            Err(why) => {
                let info = self.info(Some(why));
                let taken = std::mem::replace(result, Err(Error::new(Class::Other)));
                *result = finalize(taken, info, why, req);
                None
            }
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let body = req.body().replay().ok()?;
        let mut r = Request::new(body);
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        *r.extensions_mut() = req.extensions().clone();
        Some(r)
    }
}

/// The final result. A response keeps its status, with [`RetryInfo`] in its extensions, except
/// in two cases where waiting was refused and the caller must decide: a server delay over the cap
/// becomes a typed error carrying the delay, and a wait past the overall deadline becomes a
/// deadline error that names the last answer. Errors get a sentence saying why they were not
/// retried.
fn finalize<ResB, B>(
    result: Result<Response<ResB>, Error>,
    info: RetryInfo,
    why: GaveUp,
    req: &Request<B>,
) -> Result<Response<ResB>, Error> {
    let why_text = format!("after {} attempt(s): {why}", info.attempts);
    let last = match result {
        Ok(mut resp) => {
            if !matches!(why, GaveUp::ServerDelayOverCap(_) | GaveUp::Deadline) {
                resp.extensions_mut().insert(info);
                return Ok(resp);
            }
            Error::from_classification(&Classification::of(&resp))
        }
        Err(e) => e,
    };
    let e = match why {
        // An attempt timeout is the one non-retryable error whose reason is not plain from its
        // class: say why (other errors are the attempt's own, as they came).
        GaveUp::NotRetryable
            if last.detail().is_none()
                && last.class() == crate::Class::Timeout(crate::TimeoutPhase::Attempt) =>
        {
            last.with_detail(
                "not retried: the attempt used its whole time budget (a hang before the response head is cut by the retryable `headers` timer)",
            )
        }
        GaveUp::NotRetryable => last,
        GaveUp::ServerDelayOverCap(d) => last.with_retry_after(d).with_detail(why_text),
        GaveUp::Deadline => match Deadline::of(req) {
            Some(dl) => dl
                .error()
                .with_detail(format!("{why_text}; the last attempt got: {last}")),
            None => last.with_detail(why_text),
        },
        _ => last.with_detail(why_text),
    };
    Err(e.with_attempts(info.attempts))
}

/// A fresh idempotency key: 128 random bits, hex.
pub(crate) fn idempotency_key() -> HeaderValue {
    let v: u128 = rand::rng().random();
    HeaderValue::from_str(&format!("{v:032x}")).expect("hex is a valid header value")
}
