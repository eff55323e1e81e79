//! Clients side by side on the same seeded simulator faults, in one process and one run:
//! firebreak (retry layer alone, and with the 429 gate), reqwest-retry, tower::retry with a count
//! policy, the Fireworks docs' naive loop, and a faithful reimplementation of the openai SDK's
//! policy.
//!
//! `cargo bench --bench scenarios -- retry` prints the retry table (issue #5),
//! `cargo bench --bench scenarios -- ratelimit` the 429 table (issue #6),
//! `cargo bench --bench scenarios -- integrations` async-openai's default retry layer beside
//! async-openai over firebreak (issue #20); with none named, all. Without `--bench` (as under
//! `cargo test`) it runs a small transient scenario and checks every client completed.
//!
//! For investigating firebreak alone: `FIREBREAK_BENCH_ONLY_FIREBREAK=2000` (transient) or
//! `=overload:300` runs just that row; `FIREBREAK_BENCH_DEBUG=1` prints each failed call with its
//! `RetryInfo` (why the retry layer gave up).

use bytes::Bytes;
use firebreak::client::{ClientConfig, build};
use firebreak::retry::{ReplayBody, RetryConfig, RetryLayer};
use firebreak::{Error, classify::ClassifyLayer};
use firebreak_sim::{
    CapacityConfig, CapacityReject, Fault, Growth, Latency, RateLimitConfig, RateLimitDelay, Sim,
    SimConfig, Trigger,
};
use firebreak_testkit::baselines::{Attempt, docs_loop, openai_attempts, plain_attempt};
use firebreak_testkit::{KEY, PlainClient, chat_body, plain_client, post};

#[path = "scenarios/gate_rows.rs"]
mod gate_rows;
use firebreak::timeout::{AttemptTimeoutLayer, TimedRequestBody, TimeoutConfig, Workload};
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{ServiceBuilder, ServiceExt};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    Firebreak,
    FirebreakGate,
    ReqwestRetry,
    TowerCount,
    DocsLoop,
    OpenAi {
        max_retries: u32,
    },
    /// async-openai 0.43's `Client` as it comes (its `OpenAIRetryLayer`).
    AsyncOpenAi,
    /// async-openai's `Client` over firebreak (`firebreak::async_openai::client`, interactive stack).
    AsyncOpenAiFirebreak,
}

impl Peer {
    fn name(self) -> String {
        match self {
            Peer::Firebreak => "firebreak (retry layer, defaults)".into(),
            Peer::FirebreakGate => "firebreak (retry + 429 gate, defaults)".into(),
            Peer::ReqwestRetry => "reqwest-retry (4 retries, default backoff)".into(),
            Peer::TowerCount => "tower::retry, count policy (4 retries)".into(),
            Peer::DocsLoop => "Fireworks docs' loop (1 s·2ⁿ + U(0,1), 5 attempts)".into(),
            Peer::OpenAi { max_retries } => {
                format!("openai SDK policy (max_retries {max_retries})")
            }
            Peer::AsyncOpenAi => "async-openai 0.43, its default retry layer".into(),
            Peer::AsyncOpenAiFirebreak => {
                "async-openai 0.43 over firebreak (interactive stack)".into()
            }
        }
    }
}

/// Statuses every simple peer treats as retryable (the Fireworks guidance).
fn transient(s: u16) -> bool {
    firebreak_testkit::baselines::docs_retries(s)
}

type BoxFut = Pin<Box<dyn Future<Output = bool> + Send>>;

/// One call through a firebreak stack; with `FIREBREAK_BENCH_DEBUG` set, says why a call failed.
async fn via_firebreak<S, B>(svc: S, base: &str, id: &str) -> bool
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Error>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let debug = std::env::var_os("FIREBREAK_BENCH_DEBUG").is_some();
    match svc
        .oneshot(post(base, "/chat/completions", chat_body(id, false)))
        .await
    {
        Ok(r) => {
            if r.status() != 200 && debug {
                eprintln!(
                    "{id}: {} {:?}",
                    r.status(),
                    r.extensions().get::<firebreak::RetryInfo>()
                );
            }
            r.status() == 200 && r.into_body().collect().await.is_ok()
        }
        Err(e) => {
            if debug {
                eprintln!("{id}: {e}");
            }
            false
        }
    }
}

/// One logical request through a peer; true on success.
fn one(peer: Peer, ctx: Arc<Ctx>, i: usize) -> BoxFut {
    let id = format!("req-{i:06}");
    Box::pin(async move {
        match peer {
            Peer::Firebreak => via_firebreak(ctx.firebreak.clone(), &ctx.base, &id).await,
            Peer::FirebreakGate => via_firebreak(ctx.firebreak_gate.clone(), &ctx.base, &id).await,
            Peer::ReqwestRetry => {
                let r = ctx
                    .reqwest
                    .post(format!("{}/chat/completions", ctx.base))
                    .header("authorization", format!("Bearer {KEY}"))
                    .header("content-type", "application/json")
                    .body(chat_body(&id, false))
                    .send()
                    .await;
                match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
            Peer::TowerCount => {
                let svc = tower::retry::Retry::new(TransientCount(4), ctx.plain.clone());
                match svc
                    .oneshot(post(&ctx.base, "/chat/completions", chat_body(&id, false)))
                    .await
                {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
            Peer::DocsLoop => {
                let end = docs_loop(|| plain_attempt(&ctx.plain, &ctx.base, &id, false)).await;
                end == Attempt::Status(200)
            }
            Peer::OpenAi { max_retries } => openai(&ctx, &id, max_retries).await,
            Peer::AsyncOpenAi => async_openai_call(&ctx.aoa_default, &id).await,
            Peer::AsyncOpenAiFirebreak => async_openai_call(&ctx.aoa_firebreak, &id).await,
        }
    })
}

/// One chat completion through an async-openai `Client`; the simulator's logical id is `user`.
async fn async_openai_call(
    c: &async_openai::Client<async_openai::config::OpenAIConfig>,
    id: &str,
) -> bool {
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    #[allow(deprecated)]
    let req = CreateChatCompletionRequestArgs::default()
        .model("accounts/fireworks/models/llama-v3p1-8b-instruct")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hello")
            .build()
            .expect("message")
            .into()])
        .user(id)
        .build()
        .expect("request");
    c.chat().create(req).await.is_ok()
}

async fn openai(ctx: &Ctx, id: &str, max_retries: u32) -> bool {
    openai_attempts(&ctx.plain, &ctx.base, id, max_retries, None).await
}

/// tower::retry's simplest useful policy against a server: retry transient statuses and
/// errors, a fixed number of times, at once. (`firebreak_testkit::CountPolicy`, used by the
/// in-process benches, retries errors only.)
#[derive(Clone)]
struct TransientCount(u32);

impl
    tower::retry::Policy<
        Request<Full<Bytes>>,
        Response<hyper::body::Incoming>,
        hyper_util::client::legacy::Error,
    > for TransientCount
{
    type Future = std::future::Ready<()>;
    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    ) -> Option<Self::Future> {
        let again = match result {
            Ok(r) => transient(r.status().as_u16()),
            Err(_) => true,
        };
        (again && self.0 > 0).then(|| {
            self.0 -= 1;
            std::future::ready(())
        })
    }
    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

type FbSvc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<
        firebreak::timeout::TimedResponseBody<
            firebreak::classify::ClassifiedBody<hyper::body::Incoming>,
        >,
    >,
    Error,
>;

struct Ctx {
    base: String,
    plain: PlainClient,
    reqwest: reqwest_middleware::ClientWithMiddleware,
    firebreak: FbSvc,
    firebreak_gate: FbGateSvc,
    aoa_default: async_openai::Client<async_openai::config::OpenAIConfig>,
    aoa_firebreak: async_openai::Client<async_openai::config::OpenAIConfig>,
}

type FbGateSvc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<
        firebreak::gate::PermitBody<
            firebreak::timeout::TimedResponseBody<
                firebreak::classify::ClassifiedBody<hyper::body::Incoming>,
            >,
        >,
    >,
    Error,
>;

fn ctx(base: String) -> Arc<Ctx> {
    let client = build::<TimedRequestBody<ReplayBody<Full<Bytes>>>>(&ClientConfig::default())
        .expect("client");
    let retry = RetryConfig::default().seed(Some(11));
    let fb = ServiceBuilder::new()
        .layer(RetryLayer::new(retry).expect("retry"))
        .layer(
            AttemptTimeoutLayer::new(&TimeoutConfig::preset(Workload::Interactive))
                .expect("timeouts"),
        )
        .layer(ClassifyLayer::new())
        .service(client);
    let policy = reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(4);
    let rq = reqwest_middleware::ClientBuilder::new(
        reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("reqwest"),
    )
    .with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
        policy,
    ))
    .build();
    let client = build::<TimedRequestBody<ReplayBody<Full<Bytes>>>>(&ClientConfig::default())
        .expect("client");
    let gate = firebreak::gate::GateLayer::new(
        firebreak::gate::GateConfig::default(),
        firebreak::gate::KeyBy::Client,
    )
    .expect("gate");
    let fbg = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryConfig::default().seed(Some(11))).expect("retry"))
        .layer(gate)
        .layer(
            AttemptTimeoutLayer::new(&TimeoutConfig::preset(Workload::Interactive))
                .expect("timeouts"),
        )
        .layer(ClassifyLayer::new())
        .service(client);
    let aoa_default = async_openai::Client::with_config(
        async_openai::config::OpenAIConfig::new()
            .with_api_base(base.clone())
            .with_api_key(KEY),
    );
    let aoa_firebreak = firebreak::async_openai::client(
        &base,
        firebreak::client::ApiKey::new(KEY).expect("key"),
        firebreak::Stack::interactive(),
    )
    .expect("async-openai over firebreak");
    Arc::new(Ctx {
        aoa_default,
        aoa_firebreak,
        firebreak_gate: tower::util::BoxCloneSyncService::new(fbg),
        base,
        plain: plain_client(),
        reqwest: rq,
        firebreak: tower::util::BoxCloneSyncService::new(fb),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Transient,
    Overload,
    /// Token bucket R = 50/s, burst 10; 429s carry `Retry-After` (whole seconds).
    BucketRetryAfter,
    /// The same bucket; 429s carry no delay header at all.
    BucketNoDelay,
    /// The same bucket, doubling to 100/s after 5 s of sustained use.
    BucketDoubling,
    /// At most 8 in flight at 100 ms each; 503 "overloaded" without a delay header.
    Capacity503,
    /// The same, answered with 429 "capacity exceeded" (a dedicated deployment).
    Capacity429,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Transient => "independent transient faults (30%)",
            Scenario::Overload => "overloaded (capacity 4, 64 callers)",
            Scenario::BucketRetryAfter => "bucket 50/s, with Retry-After",
            Scenario::BucketNoDelay => "bucket 50/s, no delay header",
            Scenario::BucketDoubling => "bucket 50/s doubling to 100/s",
            Scenario::Capacity503 => "capacity 8 × 100 ms, 503",
            Scenario::Capacity429 => "capacity 8 × 100 ms, 429",
        }
    }

    /// The ideal makespan for `n` requests, in seconds.
    fn ideal(self, n: usize) -> Option<f64> {
        match self {
            Scenario::BucketRetryAfter | Scenario::BucketNoDelay => Some(n as f64 / 50.0),
            Scenario::Capacity503 | Scenario::Capacity429 => Some(n as f64 * 0.1 / 8.0),
            _ => None,
        }
    }
}

fn sim_config(s: Scenario) -> SimConfig {
    let status = Fault::status;
    let bucket = |delay| {
        SimConfig::default()
            .api_key(KEY)
            .seed(42)
            .latency(Latency {
                ttfb_ms: 5,
                ..Latency::default()
            })
            .rate_limit(RateLimitConfig::new(50.0, 10.0).delay(delay))
    };
    let capacity = |reject_with| {
        SimConfig::default()
            .api_key(KEY)
            .seed(42)
            .latency(Latency {
                ttfb_ms: 100,
                ..Latency::default()
            })
            .capacity(CapacityConfig {
                max_in_flight: 8,
                reject_with,
            })
    };
    match s {
        // 30% of attempts fail, 7.5% each of 500/502/503/504 (rules are tried in order).
        Scenario::Transient => SimConfig::default()
            .api_key(KEY)
            .seed(42)
            .latency(Latency {
                ttfb_ms: 5,
                ..Latency::default()
            })
            .fault(Trigger::Probability { p: 0.075 }, status(500))
            .fault(Trigger::Probability { p: 0.075 / 0.925 }, status(502))
            .fault(Trigger::Probability { p: 0.075 / 0.85 }, status(503))
            .fault(Trigger::Probability { p: 0.075 / 0.775 }, status(504)),
        // Four requests in flight at most, 50 ms each: 80 req/s, against 64 concurrent callers.
        Scenario::Overload => SimConfig::default()
            .api_key(KEY)
            .seed(42)
            .latency(Latency {
                ttfb_ms: 50,
                ..Latency::default()
            })
            .capacity(CapacityConfig {
                max_in_flight: 4,
                reject_with: CapacityReject::Overloaded503,
            }),
        Scenario::BucketRetryAfter => bucket(RateLimitDelay::RetryAfterSecs),
        Scenario::BucketNoDelay => bucket(RateLimitDelay::None),
        Scenario::BucketDoubling => {
            let mut c = bucket(RateLimitDelay::RetryAfterSecs);
            if let Some(rl) = c.rate_limit.as_mut() {
                rl.growth = Some(Growth {
                    after_ms: 5000,
                    factor: 2.0,
                    max_rate_per_sec: 100.0,
                });
            }
            c
        }
        Scenario::Capacity503 => capacity(CapacityReject::Overloaded503),
        Scenario::Capacity429 => capacity(CapacityReject::CapacityExceeded429),
    }
}

struct Row {
    scenario: &'static str,
    peer: String,
    n: usize,
    success: f64,
    amplification: f64,
    rejected: usize,
    p50: f64,
    p99: f64,
    makespan: f64,
    ideal: Option<f64>,
    /// For the doubling bucket: admitted per second over the last 3 s, and the limit then.
    tail_rate: Option<(f64, f64)>,
}

async fn run(s: Scenario, peer: Peer, n: usize, concurrency: usize) -> Row {
    let sim = Sim::start(sim_config(s)).await.expect("sim");
    let c = ctx(sim.base_url());
    let t0 = Instant::now();
    let results: Vec<(bool, Duration)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            async move {
                let t = Instant::now();
                let ok = one(peer, c, i).await;
                (ok, t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let makespan = t0.elapsed().as_secs_f64();
    // Let the last attempts' log records land.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = sim.log();
    let attempts = log.len();
    let rejected = log
        .iter()
        .filter(|r| r.status == 429 || r.status == 503)
        .count();
    let tail_rate = (s == Scenario::BucketDoubling).then(|| {
        let end = log
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.t_ms)
            .fold(0.0, f64::max);
        let tail = log
            .iter()
            .filter(|r| r.status == 200 && r.t_ms > end - 3000.0)
            .count();
        (tail as f64 / 3.0, sim.current_rate().unwrap_or(0.0))
    });
    let mut lat: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    Row {
        scenario: s.label(),
        peer: peer.name(),
        n,
        success: results.iter().filter(|r| r.0).count() as f64 * 100.0 / n as f64,
        amplification: attempts as f64 / n as f64,
        rejected,
        p50: pct(0.5),
        p99: pct(0.99),
        makespan,
        ideal: s.ideal(n),
        tail_rate,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let want = |section: &str| {
        let named = args
            .iter()
            .any(|a| a == "retry" || a == "ratelimit" || a == "gate" || a == "integrations");
        !named || args.iter().any(|a| a == section)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let retry_peers = [
        Peer::Firebreak,
        Peer::ReqwestRetry,
        Peer::TowerCount,
        Peer::DocsLoop,
        Peer::OpenAi { max_retries: 4 },
        Peer::OpenAi { max_retries: 2 },
    ];
    let gate_peers = [
        Peer::FirebreakGate,
        Peer::Firebreak,
        Peer::ReqwestRetry,
        Peer::DocsLoop,
        Peer::OpenAi { max_retries: 2 },
    ];
    rt.block_on(async {
        if let Ok(n) = std::env::var("FIREBREAK_BENCH_ONLY_FIREBREAK") {
            let (sc, n) = match n.strip_prefix("overload:") {
                Some(n) => (Scenario::Overload, n),
                None => (Scenario::Transient, n.as_str()),
            };
            let r = run(sc, Peer::Firebreak, n.parse().unwrap_or(2000), 64).await;
            println!("success {:.1} amp {:.3} p99 {:.0}", r.success, r.amplification, r.p99);
            return;
        }
        if !bench {
            for p in retry_peers {
                let r = tokio::time::timeout(Duration::from_secs(120), run(Scenario::Transient, p, 40, 16)).await.expect("bounded");
                assert!(r.amplification >= 1.0, "{}: every request reached the server", r.peer);
                if p == Peer::Firebreak {
                    assert!(r.success >= 90.0, "firebreak success {}", r.success);
                }
                println!("scenarios smoke: {} ok ({:.0}% success)", r.peer, r.success);
            }
            let r = tokio::time::timeout(Duration::from_secs(120), run(Scenario::BucketRetryAfter, Peer::FirebreakGate, 60, 16))
                .await
                .expect("bounded");
            assert_eq!(r.success, 100.0, "the gate completes every request");
            println!("scenarios smoke: {} ok ({} rejected)", r.peer, r.rejected);
            let q = tokio::time::timeout(Duration::from_secs(60), gate_rows::run(gate_rows::GScenario::Quota, gate_rows::GPeer::Firebreak))
                .await
                .expect("bounded");
            assert!(q.attempts <= 1.0, "quota: at most one attempt per request, got {}", q.attempts);
            let d = tokio::time::timeout(Duration::from_secs(60), gate_rows::run(gate_rows::GScenario::OwnDelays, gate_rows::GPeer::Firebreak))
                .await
                .expect("bounded");
            assert_eq!(d.early, 0, "no retry before its legitimate delay");
            println!("scenarios smoke: gate rows ok (quota {:.2} attempts/request, own delays {:.1}% in {:.1} s)", q.attempts, d.success, d.makespan);
            for p in [Peer::AsyncOpenAi, Peer::AsyncOpenAiFirebreak] {
                let r = tokio::time::timeout(Duration::from_secs(120), run(Scenario::Transient, p, 40, 16)).await.expect("bounded");
                assert!(r.amplification >= 1.0, "{}: every request reached the server", r.peer);
                if p == Peer::AsyncOpenAiFirebreak {
                    assert!(r.success >= 90.0, "async-openai over firebreak: success {}", r.success);
                }
                println!("scenarios smoke: {} ok ({:.0}% success)", r.peer, r.success);
            }
            return;
        }
        if want("gate") {
            println!("| scenario | client | success % | attempts / request | 429/503 received | p50 ms | p99 ms | makespan s | retries before their delay | firebreak's gate wait, s (sum) |");
            println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
            for s in gate_rows::GScenario::ALL {
                for p in gate_rows::GPeer::ALL {
                    let r = tokio::time::timeout(Duration::from_secs(300), gate_rows::run(s, p)).await.expect("bounded");
                    println!(
                        "| {} | {} | {:.1} | {:.2} | {} | {:.0} | {:.0} | {:.2} | {} | {} |",
                        r.scenario, r.peer, r.success, r.attempts, r.rejected, r.p50, r.p99, r.makespan, r.early,
                        r.gate_wait.map_or("–".to_owned(), |w| format!("{w:.2}"))
                    );
                }
            }
            let (alone, beside, a_makespan) = tokio::time::timeout(Duration::from_secs(300), gate_rows::tenants()).await.expect("bounded");
            println!();
            println!("| two tenants, proxy's stack (KeyBy::ApiKeyAndModel) | tenant B p99 ms |");
            println!("|---|---:|");
            println!("| B alone (A healthy) | {alone:.0} |");
            println!("| B beside A, one in ten of A's requests first answered 429 + Retry-After 5 s (A done in {a_makespan:.1} s) | {beside:.0} |");
            println!("| ratio | {:.2} |", beside / alone);
        }
        if want("retry") {
            println!("| scenario | client | success % | attempts / request (amplification) | p50 ms | p99 ms | makespan s |");
            println!("|---|---|---:|---:|---:|---:|---:|");
            for (s, n) in [(Scenario::Transient, 2000), (Scenario::Overload, 300)] {
                for p in retry_peers {
                    let r = tokio::time::timeout(Duration::from_secs(600), run(s, p, n, 64)).await.expect("bounded");
                    println!(
                        "| {} | {} | {:.1} | {:.3} | {:.0} | {:.0} | {:.1} |",
                        r.scenario, r.peer, r.success, r.amplification, r.p50, r.p99, r.makespan
                    );
                }
            }
        }
        if want("integrations") {
            println!();
            println!("| scenario | client | success % | attempts / request | 429/503 received | p50 ms | p99 ms | makespan s | ÷ ideal |");
            println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
            for (s, n) in [(Scenario::Transient, 2000), (Scenario::BucketRetryAfter, 1000)] {
                for p in [Peer::AsyncOpenAi, Peer::AsyncOpenAiFirebreak] {
                    let r = tokio::time::timeout(Duration::from_secs(600), run(s, p, n, 64)).await.expect("bounded");
                    let ratio = r.ideal.map_or("–".to_owned(), |i| format!("{:.2}", r.makespan / i));
                    println!(
                        "| {} | {} | {:.1} | {:.3} | {} | {:.0} | {:.0} | {:.1} | {} |",
                        r.scenario, r.peer, r.success, r.amplification, r.rejected, r.p50, r.p99, r.makespan, ratio
                    );
                }
            }
        }
        if want("ratelimit") {
            println!();
            println!("| scenario | client | success % | makespan s | ÷ ideal | 429/503 received (% of requests) | attempts / request | tail rate / limit |");
            println!("|---|---|---:|---:|---:|---:|---:|---:|");
            for s in [
                Scenario::BucketRetryAfter,
                Scenario::BucketNoDelay,
                Scenario::BucketDoubling,
                Scenario::Capacity503,
                Scenario::Capacity429,
            ] {
                let n = if s == Scenario::BucketDoubling { 1500 } else { 1000 };
                for p in gate_peers {
                    let r = tokio::time::timeout(Duration::from_secs(600), run(s, p, n, 64)).await.expect("bounded");
                    let ratio = r.ideal.map_or("–".to_owned(), |i| format!("{:.2}", r.makespan / i));
                    let tail = r.tail_rate.map_or("–".to_owned(), |(got, limit)| format!("{got:.0} / {limit:.0} = {:.2}", got / limit));
                    println!(
                        "| {} | {} | {:.1} | {:.1} | {} | {} ({:.1}%) | {:.3} | {} |",
                        r.scenario,
                        r.peer,
                        r.success,
                        r.makespan,
                        ratio,
                        r.rejected,
                        r.rejected as f64 * 100.0 / r.n as f64,
                        r.amplification,
                        tail
                    );
                }
            }
        }
    });
}
