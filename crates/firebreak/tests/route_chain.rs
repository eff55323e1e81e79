//! The router's chain and breakers under paused time, over an in-memory upstream that answers
//! per model: fallback, breaker open / half-open / closed, every target open, the deadline
//! across the chain, 429s and cooling gates, weights, the body and key each target gets, and
//! breakers shared through a fleet.

use bytes::Bytes;
use firebreak::client::ApiKey;
use firebreak::gate::{CapacityAdvice, FleetEvent};
use firebreak::route::{AnsweredBy, BreakerConfig, BreakerState, RouteConfig, Router, Target};
use firebreak::{Class, InnerBody, Model, Stack, TargetKind};
use firebreak_testkit::bounded;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const BASE: &str = "http://upstream.test/v1";
const PRIMARY: &str = "llama#accounts/acme/deployments/d1";
const FALLBACK: &str = "accounts/fireworks/models/llama-v3p1-8b-instruct";

#[derive(Debug, Clone)]
enum Behave {
    Status(u16, Vec<(&'static str, &'static str)>),
    Hang(Duration),
}

#[derive(Debug)]
struct Seen {
    model: String,
    at: Instant,
    auth: Option<String>,
    body: Bytes,
}

/// An upstream answering per model, recording every attempt.
#[derive(Debug, Clone, Default)]
struct Upstream {
    behave: Arc<Mutex<HashMap<String, Behave>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn set(&self, model: &str, b: Behave) {
        self.behave.lock().unwrap().insert(model.to_owned(), b);
    }
    fn count(&self, model: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.model == model)
            .count()
    }
    fn arrivals(&self, model: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.model == model)
            .map(|s| s.at)
            .collect()
    }

    fn router(&self, cfg: RouteConfig, stack: Stack) -> Router {
        self.router_with(cfg, stack, &firebreak_testkit::Recorded::new())
    }

    fn router_with(
        &self,
        cfg: RouteConfig,
        stack: Stack,
        rec: &firebreak_testkit::Recorded,
    ) -> Router {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<InnerBody<Full<Bytes>>>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let model = Model::from_json_body(&body)
                    .map(|m| m.0.to_string())
                    .unwrap_or_default();
                let behave = me.behave.lock().unwrap().get(&model).cloned();
                me.seen.lock().unwrap().push(Seen {
                    model,
                    at: Instant::now(),
                    auth: parts
                        .headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body,
                });
                let (status, headers) = match behave {
                    None => (200, vec![]),
                    Some(Behave::Status(s, h)) => (s, h),
                    Some(Behave::Hang(d)) => {
                        tokio::time::sleep(d).await;
                        (200, vec![])
                    }
                };
                let mut b = Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                let text = if status == 200 {
                    r#"{"ok":true}"#
                } else {
                    r#"{"error":{"message":"nope"}}"#
                };
                Ok::<_, Infallible>(
                    b.body(Full::new(Bytes::from_static(text.as_bytes())))
                        .unwrap(),
                )
            }
        });
        rec.build(|| {
            Router::with_client(cfg, stack, Some(ApiKey::new("default-key").unwrap()), svc).unwrap()
        })
    }
}

fn stack() -> Stack {
    let mut s = Stack::interactive();
    s.observe = false;
    s.retry.backoff.base = Duration::from_millis(100);
    s.retry.backoff.cap = Duration::from_millis(400);
    s
}

fn breaker() -> BreakerConfig {
    BreakerConfig::default()
        .consecutive_failures(5)
        .cooldown(Duration::from_secs(10))
        .probes(1)
}

fn two(primary: Target, fallback: Target) -> RouteConfig {
    RouteConfig::new()
        .alias("chat", vec![vec![primary], vec![fallback]])
        .with_breaker(breaker())
}

/// An upstream whose primary answers `status`, and a router of the primary then the fallback.
fn primary_answering(status: u16) -> (Upstream, Router) {
    let up = Upstream::default();
    up.set(PRIMARY, Behave::Status(status, vec![]));
    let r = up.router(two(primary(), fallback()), stack());
    (up, r)
}

fn primary() -> Target {
    Target::new("primary", BASE, PRIMARY)
}

fn fallback() -> Target {
    Target::new("fallback", BASE, FALLBACK)
}

async fn call(r: &Router) -> (u16, Option<AnsweredBy>) {
    let resp = r
        .post(
            "/chat/completions",
            Bytes::from_static(br#"{"model":"chat","messages":[]}"#),
        )
        .await
        .expect("an answer");
    (
        resp.status().as_u16(),
        resp.extensions().get::<AnsweredBy>().cloned(),
    )
}

fn state(r: &Router, name: &str) -> BreakerState {
    r.breakers().into_iter().find(|(n, _)| n == name).unwrap().1
}

#[tokio::test(start_paused = true)]
async fn a_dead_primary_opens_after_five_failures_gets_only_probes_and_takes_traffic_back() {
    bounded(120, async {
        let (up, r) = primary_answering(503);
        // Each call: one attempt on the primary, then the fallback at once.
        for i in 0..5 {
            let (status, by) = call(&r).await;
            assert_eq!(status, 200);
            let by = by.unwrap();
            assert_eq!((&*by.target, by.passed_over), ("fallback", 1), "call {i}");
        }
        assert_eq!(up.count(PRIMARY), 5);
        assert_eq!(state(&r, "primary"), BreakerState::Open);
        // Open: the primary gets nothing, for the whole cooldown.
        for _ in 0..20 {
            assert_eq!(call(&r).await.0, 200);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert_eq!(up.count(PRIMARY), 5, "calls reached an open target");
        // After the cooldown: one probe, which fails, and it is open again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(call(&r).await.0, 200);
        assert_eq!(up.count(PRIMARY), 6);
        assert_eq!(state(&r, "primary"), BreakerState::Open);
        // It recovers; the next probe closes the breaker and the traffic comes back.
        up.set(PRIMARY, Behave::Status(200, vec![]));
        for _ in 0..9 {
            call(&r).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(up.count(PRIMARY), 6, "only probes while open");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, by) = call(&r).await;
        assert_eq!((status, &*by.unwrap().target), (200, "primary"));
        assert_eq!(state(&r, "primary"), BreakerState::Closed);
        for _ in 0..5 {
            assert_eq!(&*call(&r).await.1.unwrap().target, "primary");
        }
        // The probes came a cooldown apart.
        let at = up.arrivals(PRIMARY);
        assert!(
            at[5] - at[4] >= Duration::from_secs(10) && at[6] - at[5] >= Duration::from_secs(10)
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_a_bounded_number_of_probes_through() {
    bounded(60, async {
        let (up, r) = primary_answering(503);
        for _ in 0..5 {
            call(&r).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The probe hangs 2 s; nine more calls meanwhile go to the fallback alone.
        up.set(PRIMARY, Behave::Hang(Duration::from_secs(2)));
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { call(&r).await })
            })
            .collect();
        let mut by = Vec::new();
        for c in calls {
            by.push(c.await.unwrap().1.unwrap().target.to_string());
        }
        assert_eq!(up.count(PRIMARY), 6, "one probe, not ten");
        assert_eq!(by.iter().filter(|t| *t == "primary").count(), 1);
        assert_eq!(state(&r, "primary"), BreakerState::Closed);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn every_target_open_tries_the_least_recently_opened() {
    bounded(60, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Status(503, vec![]));
        up.set(FALLBACK, Behave::Status(502, vec![]));
        let mut s = stack();
        s.retry.max_attempts = 1;
        let r = up.router(two(primary(), fallback()), s);
        // Five calls open the primary (and count four failures on the fallback); the sixth,
        // seventh... open the fallback later.
        for _ in 0..5 {
            call(&r).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..5 {
            call(&r).await;
        }
        assert_eq!(state(&r, "primary"), BreakerState::Open);
        assert_eq!(state(&r, "fallback"), BreakerState::Open);
        let before = (up.count(PRIMARY), up.count(FALLBACK));
        let (status, by) = call(&r).await;
        assert_eq!(status, 503);
        assert_eq!(&*by.unwrap().target, "primary", "the primary opened first");
        assert_eq!(
            (up.count(PRIMARY), up.count(FALLBACK)),
            (before.0 + 1, before.1)
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn one_deadline_covers_the_whole_chain() {
    bounded(60, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Hang(Duration::from_secs(30)));
        up.set(FALLBACK, Behave::Hang(Duration::from_secs(30)));
        let mut s = stack();
        s.timeouts.headers = Some(Duration::from_millis(700));
        s.timeouts.attempt = Some(Duration::from_secs(1));
        s.timeouts.deadline = Some(Duration::from_secs(1));
        let r = up.router(two(primary(), fallback()), s);
        let t0 = Instant::now();
        let e = r
            .post(
                "/chat/completions",
                Bytes::from_static(br#"{"model":"chat"}"#),
            )
            .await
            .unwrap_err();
        // The primary timed out at 700 ms; the fallback had 300 ms left, not a fresh second.
        assert_eq!(
            e.class(),
            Class::Timeout(firebreak::TimeoutPhase::Deadline),
            "{e}"
        );
        assert!(
            t0.elapsed() <= Duration::from_millis(1010),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!((up.count(PRIMARY), up.count(FALLBACK)), (1, 1));
        // A deadline that ends on the primary does not start the fallback.
        s = stack();
        // No first-byte timer: the deadline (with the attempt's total) cuts the primary.
        s.timeouts.headers = None;
        s.timeouts.attempt = Some(Duration::from_millis(500));
        s.timeouts.deadline = Some(Duration::from_millis(500));
        let r = up.router(two(primary(), fallback()), s);
        let e = r
            .post(
                "/chat/completions",
                Bytes::from_static(br#"{"model":"chat"}"#),
            )
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        assert_eq!((up.count(PRIMARY), up.count(FALLBACK)), (2, 1));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_serverless_target_is_passed_over_while_its_gate_cools_down() {
    bounded(60, async {
        let up = Upstream::default();
        let limited = Behave::Status(
            429,
            vec![
                ("retry-after", "5"),
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "0"),
            ],
        );
        up.set(FALLBACK, limited);
        let cfg = RouteConfig::new().alias(
            "chat",
            vec![
                vec![Target::new("serverless", BASE, FALLBACK)],
                vec![Target::new("mine", BASE, PRIMARY)],
            ],
        );
        let r = up.router(cfg, stack());
        let (_, by) = call(&r).await;
        assert_eq!(&*by.unwrap().target, "mine");
        // Cooling down for 5 s: skipped without an attempt; the 429 did not open its breaker.
        for _ in 0..5 {
            assert_eq!(&*call(&r).await.1.unwrap().target, "mine");
        }
        assert_eq!(up.count(FALLBACK), 1);
        assert_eq!(state(&r, "serverless"), BreakerState::Closed);
        tokio::time::sleep(Duration::from_secs(6)).await;
        up.set(FALLBACK, Behave::Status(200, vec![]));
        assert_eq!(&*call(&r).await.1.unwrap().target, "serverless");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_answer_ends_the_call_and_the_last_target_gets_the_retries() {
    bounded(60, async {
        let (up, r) = primary_answering(400);
        let (status, by) = call(&r).await;
        assert_eq!((status, &*by.unwrap().target), (400, "primary"));
        assert_eq!((up.count(PRIMARY), up.count(FALLBACK)), (1, 0));
        assert_eq!(
            state(&r, "primary"),
            BreakerState::Closed,
            "a 400 is not a failure of the target"
        );
        // Both failing: one attempt on the primary, the stack's attempts on the fallback.
        up.set(PRIMARY, Behave::Status(500, vec![]));
        up.set(FALLBACK, Behave::Status(500, vec![]));
        let (status, _) = call(&r).await;
        assert_eq!(status, 500);
        assert_eq!(up.count(PRIMARY), 2);
        assert_eq!(up.count(FALLBACK), stack().retry.max_attempts as usize);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn each_target_gets_its_model_and_its_key_and_nothing_else_changes() {
    bounded(30, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Status(502, vec![]));
        let cfg = RouteConfig::new().alias(
            "chat",
            vec![
                vec![primary().key(ApiKey::new("primary-key").unwrap())],
                vec![fallback()],
            ],
        );
        let r = up.router(cfg, stack());
        let body = br#"{"messages":[{"role":"user","content":"the model is chat"}],"model":"chat","user":"u1"}"#;
        let resp = r.post("/chat/completions?x=1", Bytes::from_static(body)).await.unwrap();
        assert_eq!(resp.status(), 200);
        {
            let seen = up.seen.lock().unwrap();
            let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
            let original = String::from_utf8(body.to_vec()).unwrap();
            let with = |m: &str| original.replace(r#""model":"chat""#, &format!("\"model\":\"{m}\""));
            assert_eq!(text(&seen[0].body), with(PRIMARY));
            assert_eq!(text(&seen[1].body), with(FALLBACK));
            assert_eq!(seen[0].auth.as_deref(), Some("Bearer primary-key"));
            assert_eq!(seen[1].auth.as_deref(), Some("Bearer default-key"));
        }
        // A model that is not an alias is refused with a typed error, not sent anywhere.
        let e = r
            .post("/chat/completions", Bytes::from_static(br#"{"model":"other"}"#))
            .await
            .unwrap_err();
        assert_eq!(e.class(), Class::Other);
        assert!(e.to_string().contains("alias"), "{e}");
        assert!(!r.routes("other") && r.routes("chat"));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn weights_spread_a_tier() {
    bounded(60, async {
        let up = Upstream::default();
        let cfg = RouteConfig::new().alias(
            "chat",
            vec![vec![
                Target::new("east", BASE, "accounts/fireworks/models/a").weight(3.0),
                Target::new("west", BASE, "accounts/fireworks/models/b").weight(1.0),
            ]],
        );
        let r = up.router(cfg, stack());
        for _ in 0..400 {
            call(&r).await;
        }
        let (a, b) = (
            up.count("accounts/fireworks/models/a"),
            up.count("accounts/fireworks/models/b"),
        );
        assert_eq!(a + b, 400);
        let ratio = a as f64 / b as f64;
        assert!((2.0..4.5).contains(&ratio), "3:1 expected, got {a}:{b}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_dedicated_target_at_capacity_carries_the_advice() {
    bounded(120, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Status(429, vec![]));
        let cfg = RouteConfig::new().alias("chat", vec![vec![primary()]]);
        let mut s = stack();
        s.retry.max_attempts = 1;
        let r = up.router(cfg, s);
        assert_eq!(TargetKind::of_model(PRIMARY), TargetKind::Dedicated);
        // Two refusals: not yet "keeps refusing".
        for _ in 0..2 {
            let resp = r
                .post(
                    "/chat/completions",
                    Bytes::from_static(br#"{"model":"chat"}"#),
                )
                .await
                .unwrap();
            assert!(resp.extensions().get::<CapacityAdvice>().is_none());
        }
        let resp = r
            .post(
                "/chat/completions",
                Bytes::from_static(br#"{"model":"chat"}"#),
            )
            .await
            .unwrap();
        let advice = resp
            .extensions()
            .get::<CapacityAdvice>()
            .expect("advice on the third");
        assert!(
            advice.0.contains("d1") && advice.0.contains("firectl deployment update"),
            "{}",
            advice.0
        );
        assert!(!advice.0.contains('\n'));
        // A quiet minute ends the episode.
        up.set(PRIMARY, Behave::Status(200, vec![]));
        tokio::time::sleep(Duration::from_secs(61)).await;
        let resp = r
            .post(
                "/chat/completions",
                Bytes::from_static(br#"{"model":"chat"}"#),
            )
            .await
            .unwrap();
        assert!(resp.extensions().get::<CapacityAdvice>().is_none());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opened_in_one_process_opens_in_the_others() {
    bounded(60, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Status(503, vec![]));
        let fleet = Arc::new(firebreak_testkit::MemoryFleet::linked());
        let mut s = stack();
        s.fleet = Some(fleet.clone());
        let a = up.router(two(primary(), fallback()), s.clone());
        let b = up.router(two(primary(), fallback()), s);
        for _ in 0..5 {
            call(&a).await;
        }
        assert!(
            fleet
                .events()
                .contains(&FleetEvent::BreakerOpen(Duration::from_secs(10)))
        );
        assert_eq!(state(&b, "primary"), BreakerState::Open);
        let before = up.count(PRIMARY);
        assert_eq!(&*call(&b).await.1.unwrap().target, "fallback");
        assert_eq!(
            up.count(PRIMARY),
            before,
            "b skipped the primary without trying it"
        );
        // b probes for itself after the cooldown.
        tokio::time::sleep(Duration::from_secs(10)).await;
        up.set(PRIMARY, Behave::Status(200, vec![]));
        assert_eq!(&*call(&b).await.1.unwrap().target, "primary");
        assert_eq!(state(&b, "primary"), BreakerState::Closed);
    })
    .await
}

#[test]
fn bad_configurations_are_refused_by_name() {
    let t = |name: &str, base: &str, w: f64| Target::new(name.to_owned(), base, FALLBACK).weight(w);
    let cases = [
        (
            RouteConfig::new().alias("a", vec![vec![t("x", BASE, 1.0)], vec![t("x", BASE, 1.0)]]),
            "loops",
        ),
        (
            RouteConfig::new().alias("a", vec![vec![t("x", BASE, 0.0)]]),
            "weight",
        ),
        (
            RouteConfig::new().alias("a", vec![vec![t("x", BASE, f64::NAN)]]),
            "weight",
        ),
        (
            RouteConfig::new().alias("a", vec![vec![t("x", "ftp://h/v1", 1.0)]]),
            "http",
        ),
        (RouteConfig::new().alias("a", vec![]), "empty"),
        (
            RouteConfig::new()
                .alias("a", vec![vec![t("x", BASE, 1.0)]])
                .alias("a", vec![vec![t("y", BASE, 1.0)]]),
            "twice",
        ),
        (
            RouteConfig::new().with_breaker(BreakerConfig::default().consecutive_failures(0)),
            "consecutive_failures",
        ),
    ];
    for (cfg, needle) in cases {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e} should mention {needle}");
    }
    // A target's key never shows in Debug.
    let t = Target::new("x", BASE, FALLBACK).key(ApiKey::new("sk-secret-123").unwrap());
    assert!(!format!("{t:?}").contains("sk-secret"));
}

#[tokio::test(start_paused = true)]
async fn per_target_metrics_name_only_configured_targets() {
    bounded(60, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Status(503, vec![]));
        let rec = firebreak_testkit::Recorded::new();
        let r = up.router_with(two(primary(), fallback()), stack(), &rec);
        for _ in 0..8 {
            call(&r).await;
        }
        let attempts = |t: &str, c: &str| {
            rec.counter(
                "firebreak_target_attempts_total",
                &[("target", t), ("class", c)],
            )
        };
        assert_eq!(attempts("primary", "overloaded"), 5);
        assert_eq!(attempts("fallback", "success"), 8);
        assert_eq!(
            rec.gauge("firebreak_breaker_state", &[("target", "primary")]),
            2.0
        );
        assert_eq!(
            rec.gauge("firebreak_breaker_state", &[("target", "fallback")]),
            0.0
        );
        assert_eq!(
            rec.counter(
                "firebreak_breaker_transitions_total",
                &[("target", "primary"), ("to", "open")]
            ),
            1
        );
        let fallbacks = |reason: &str| {
            rec.counter(
                "firebreak_fallbacks_total",
                &[("target", "primary"), ("reason", reason)],
            )
        };
        assert_eq!((fallbacks("capacity"), fallbacks("open")), (5, 3));
        tokio::time::sleep(Duration::from_secs(10)).await;
        up.set(PRIMARY, Behave::Status(200, vec![]));
        call(&r).await;
        assert_eq!(
            rec.counter(
                "firebreak_breaker_transitions_total",
                &[("target", "primary"), ("to", "half_open")]
            ),
            1
        );
        assert_eq!(
            rec.counter(
                "firebreak_breaker_transitions_total",
                &[("target", "primary"), ("to", "closed")]
            ),
            1
        );
        // Only the configured targets label a series: an alias or a model never does.
        for (name, labels) in rec.series() {
            if let Some((_, t)) = labels.iter().find(|(k, _)| k == "target") {
                assert!(t == "primary" || t == "fallback", "{name} {labels:?}");
            }
        }
    })
    .await
}

/// An open breaker concerns its target alone: the fallback's stays closed and answers every
/// call, a chain that does not name the dead target never waits for it, and the dead target's
/// breaker lets a probe through after its cooldown, by the clock alone.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_leaves_other_targets_and_chains_alone_and_probes_with_time() {
    bounded(60, async {
        let up = Upstream::default();
        up.set(PRIMARY, Behave::Status(503, vec![]));
        let cfg = two(primary(), fallback()).alias("small", vec![vec![fallback()]]);
        let r = up.router(cfg, stack());
        for _ in 0..5 {
            call(&r).await;
        }
        assert_eq!(state(&r, "primary"), BreakerState::Open);
        assert_eq!(state(&r, "fallback"), BreakerState::Closed);
        let t0 = Instant::now();
        for _ in 0..10 {
            let resp = r
                .post(
                    "/chat/completions",
                    Bytes::from_static(br#"{"model":"small"}"#),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "no call waited");
        let before = up.count(PRIMARY);
        tokio::time::sleep(Duration::from_secs(10)).await;
        call(&r).await;
        assert_eq!(
            up.count(PRIMARY),
            before + 1,
            "one probe after the cooldown"
        );
    })
    .await
}
