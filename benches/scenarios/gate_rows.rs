//! The #13 rows of the scenario bench: workloads where a gate that reacts to things that are
//! not evidence would cost time. firebreak is the product path (`FireworksClient`, interactive
//! preset); the peers are the openai SDK's policy, reqwest-retry and a client with no retries,
//! all on the same seeded simulator in the same run.

use super::{KEY, PlainClient, chat_body, plain_client, post};
use firebreak::{FireworksClient, Stack, client::ApiKey, client::ClientConfig, gate::KeyBy};
use firebreak_sim::{DelayHeader, ErrorShape, Fault, Latency, Sim, SimConfig, Trigger};
use firebreak_testkit::baselines::openai_attempts;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum GPeer {
    Firebreak,
    OpenAi,
    ReqwestRetry,
    NoRetry,
}

impl GPeer {
    pub(crate) const ALL: [GPeer; 4] = [
        GPeer::Firebreak,
        GPeer::OpenAi,
        GPeer::ReqwestRetry,
        GPeer::NoRetry,
    ];
    fn name(self) -> &'static str {
        match self {
            GPeer::Firebreak => "firebreak (FireworksClient, defaults)",
            GPeer::OpenAi => "openai SDK policy (max_retries 2)",
            GPeer::ReqwestRetry => "reqwest-retry (4 retries)",
            GPeer::NoRetry => "no retries",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum GScenario {
    /// 64 requests, 2 s each, concurrency 32, no fault.
    Healthy,
    /// 10 requests whose first attempt hangs; first-byte timeout 3 s.
    FirstHang,
    /// 12 requests, each first answered 429 or 503 with its own delay (2 s, 1.5 s, an
    /// HTTP-date 3 s ahead, garbage, negative, 86400).
    OwnDelays,
    /// 20 requests answered 429 `insufficient_quota`.
    Quota,
}

const T_FIRST_BYTE: Duration = Duration::from_secs(3);

impl GScenario {
    pub(crate) const ALL: [GScenario; 4] = [
        GScenario::Healthy,
        GScenario::FirstHang,
        GScenario::OwnDelays,
        GScenario::Quota,
    ];
    fn label(self) -> &'static str {
        match self {
            GScenario::Healthy => "healthy, 2 s latency, 64 at concurrency 32",
            GScenario::FirstHang => "first attempts hang, first-byte timeout 3 s (10)",
            GScenario::OwnDelays => "per-request 429/503 delays incl. 86400 (12)",
            GScenario::Quota => "quota exhausted, 429 insufficient_quota (20)",
        }
    }
    fn n_conc(self) -> (usize, usize) {
        match self {
            GScenario::Healthy => (64, 32),
            GScenario::FirstHang => (10, 10),
            GScenario::OwnDelays => (12, 12),
            GScenario::Quota => (20, 20),
        }
    }
    /// The per-attempt timeout every client gets (the same for all).
    fn timeout(self) -> Option<Duration> {
        (self == GScenario::FirstHang).then_some(T_FIRST_BYTE)
    }
    fn sim(self) -> SimConfig {
        let base = SimConfig::default().api_key(KEY).seed(13);
        match self {
            GScenario::Healthy => base.latency(Latency {
                ttfb_ms: 2000,
                ..Latency::default()
            }),
            GScenario::FirstHang => base
                .latency(Latency {
                    ttfb_ms: 20,
                    ..Latency::default()
                })
                .fault(
                    Trigger::FirstAttempts { n: 1 },
                    Fault::Hang { for_ms: 30_000 },
                ),
            GScenario::OwnDelays => {
                let mut c = base.latency(Latency {
                    ttfb_ms: 20,
                    ..Latency::default()
                });
                for (k, (status, delay)) in own_delays().into_iter().enumerate() {
                    c = c.fault(
                        Trigger::FirstAttemptsOfEvery {
                            n: 1,
                            every: 6,
                            offset: k as u32,
                        },
                        Fault::status(status).delay(vec![delay]),
                    );
                }
                c
            }
            GScenario::Quota => base.fault(
                Trigger::Always,
                Fault::status(429)
                    .shape(Some(ErrorShape::InsufficientQuota))
                    .message(Some("You exceeded your current quota".into())),
            ),
        }
    }
}

/// The first answer of request `k` (by `k % 6`), and the shortest wait that honours it (`None`
/// when the delay is not legitimate).
fn own_delays() -> [(u16, DelayHeader); 6] {
    [
        (429, DelayHeader::RetryAfterSecs { secs: 2.0 }),
        (503, DelayHeader::RetryAfterSecs { secs: 1.5 }),
        (429, DelayHeader::RetryAfterDate { secs_from_now: 3 }),
        (
            503,
            DelayHeader::Raw {
                name: "retry-after".into(),
                value: "soon".into(),
            },
        ),
        (
            429,
            DelayHeader::Raw {
                name: "retry-after".into(),
                value: "-5".into(),
            },
        ),
        (429, DelayHeader::RetryAfterSecs { secs: 86_400.0 }),
    ]
}

/// The least wait that honours request `k`'s first answer; the date is second-precise, so at
/// least 2 s of its 3.
fn legit_wait(k: usize) -> Option<f64> {
    match k % 6 {
        0 => Some(2.0),
        1 => Some(1.5),
        2 => Some(2.0),
        _ => None,
    }
}

pub(crate) struct GRow {
    pub(crate) scenario: &'static str,
    pub(crate) peer: &'static str,
    pub(crate) success: f64,
    pub(crate) attempts: f64,
    pub(crate) rejected: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) makespan: f64,
    /// Retries sent before the delay their request was legitimately asked to wait.
    pub(crate) early: usize,
    /// Time firebreak's requests spent waiting in the gate, summed, in seconds.
    pub(crate) gate_wait: Option<f64>,
}

fn firebreak(base: &str, s: GScenario) -> FireworksClient {
    let mut stack = Stack::interactive();
    if let Some(t) = s.timeout() {
        stack.timeouts.headers = Some(t);
    }
    FireworksClient::new(base, ApiKey::new(KEY).expect("key"), stack).expect("client")
}

struct Clients {
    fb: FireworksClient,
    rq: reqwest_middleware::ClientWithMiddleware,
    plain: PlainClient,
    base: String,
}

async fn once(peer: GPeer, s: GScenario, c: &Clients, id: &str) -> bool {
    let (fb, rq, base) = (&c.fb, &c.rq, c.base.as_str());
    let body = chat_body(id, false);
    match peer {
        GPeer::Firebreak => match fb.post("/chat/completions", body).await {
            Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        },
        GPeer::OpenAi => openai_attempts(&c.plain, base, id, 2, s.timeout()).await,
        GPeer::ReqwestRetry => {
            let r = rq
                .post(format!("{base}/chat/completions"))
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
        GPeer::NoRetry => {
            let call = c.plain.request(post(base, "/chat/completions", body));
            let r = match s.timeout() {
                Some(t) => tokio::time::timeout(t, call).await.ok(),
                None => Some(call.await),
            };
            match r {
                Some(Ok(r)) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                _ => false,
            }
        }
    }
}

fn reqwest_client(timeout: Option<Duration>) -> reqwest_middleware::ClientWithMiddleware {
    let policy = reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(4);
    let mut b = reqwest::Client::builder().tcp_nodelay(true);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    reqwest_middleware::ClientBuilder::new(b.build().expect("reqwest"))
        .with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
            policy,
        ))
        .build()
}

fn pct(lat: &mut [f64], q: f64) -> f64 {
    lat.sort_by(f64::total_cmp);
    lat[((lat.len() as f64 - 1.0) * q).round() as usize]
}

pub(crate) async fn run(s: GScenario, peer: GPeer) -> GRow {
    let sim = Sim::start(s.sim()).await.expect("sim");
    let base = sim.base_url();
    let c = Arc::new(Clients {
        fb: firebreak(&base, s),
        rq: reqwest_client(s.timeout()),
        plain: plain_client(),
        base,
    });
    let (n, conc) = s.n_conc();
    let t0 = Instant::now();
    let results: Vec<(bool, f64)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            async move {
                let t = Instant::now();
                let ok = once(peer, s, &c, &format!("req-{i:06}")).await;
                (ok, t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let makespan = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = sim.log();
    let early = if s == GScenario::OwnDelays {
        (0..n)
            .filter(|k| {
                let id = format!("req-{k:06}");
                let first = log
                    .iter()
                    .find(|r| r.request_id.as_deref() == Some(&id) && r.attempt == 1);
                let second = log
                    .iter()
                    .find(|r| r.request_id.as_deref() == Some(&id) && r.attempt == 2);
                match (first, second, legit_wait(*k)) {
                    (Some(f), Some(s2), Some(w)) => (s2.t_ms - f.end_ms) / 1000.0 < w - 0.01,
                    _ => false,
                }
            })
            .count()
    } else {
        0
    };
    let gate_wait = (peer == GPeer::Firebreak).then(|| {
        c.fb.layer()
            .gate()
            .snapshot()
            .iter()
            .map(|(_, g)| g.waited.as_secs_f64())
            .sum()
    });
    let mut lat: Vec<f64> = results.iter().map(|r| r.1).collect();
    GRow {
        scenario: s.label(),
        peer: peer.name(),
        success: results.iter().filter(|r| r.0).count() as f64 * 100.0 / n as f64,
        attempts: log.len() as f64 / n as f64,
        rejected: log
            .iter()
            .filter(|r| r.status == 429 || r.status == 503)
            .count(),
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        makespan,
        early,
        gate_wait,
    }
}

/// Two tenants (two callers' keys, one model) through the proxy's stack (`KeyBy::ApiKeyAndModel`,
/// callers' keys passed through): tenant B's p99 when one in ten of tenant A's requests is first
/// answered 429 with a 5 s delay (A's key cools down, again and again), and when A is healthy.
/// Returns (B's p99 alone, B's p99 beside A, A's makespan).
pub(crate) async fn tenants() -> (f64, f64, f64) {
    let mut out = [0.0f64; 2];
    let mut a_makespan = 0.0;
    for (i, faulty) in [false, true].into_iter().enumerate() {
        let mut cfg = SimConfig::default().seed(13).latency(Latency {
            ttfb_ms: 50,
            ..Latency::default()
        });
        if faulty {
            cfg = cfg.fault(
                Trigger::FirstAttemptsOfEvery {
                    n: 1,
                    every: 20,
                    offset: 0,
                },
                Fault::status(429).delay(vec![DelayHeader::RetryAfterSecs { secs: 5.0 }]),
            );
        }
        let sim = Sim::start(cfg).await.expect("sim");
        let base = sim.base_url();
        let stack = Stack::interactive().key_by(KeyBy::ApiKeyAndModel);
        let client = Arc::new(
            FireworksClient::with_auth(&base, None, stack, &ClientConfig::default())
                .expect("client"),
        );
        // Even ids are tenant A's, odd ones tenant B's; 100 of each, each tenant driving 16 at a
        // time on its own (so A's waits never hold B's driver).
        let t0 = Instant::now();
        let drive = |tenant_a: bool| {
            let (client, base) = (client.clone(), base.clone());
            futures_util::stream::iter((0..100usize).map(move |j| 2 * j + usize::from(!tenant_a)))
                .map(move |k| {
                    let (client, base) = (client.clone(), base.clone());
                    async move {
                        let key = if tenant_a {
                            "fw_tenant_a"
                        } else {
                            "fw_tenant_b"
                        };
                        let mut req = http::Request::post(format!("{base}/chat/completions"))
                            .header("authorization", format!("Bearer {key}"))
                            .header("content-type", "application/json")
                            .body(Full::new(chat_body(&format!("req-{k:06}"), false)))
                            .expect("request");
                        req.extensions_mut()
                            .insert(firebreak::Model(Arc::from("llama")));
                        let t = Instant::now();
                        let ok = match client.service().oneshot(req).await {
                            Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                            Err(_) => false,
                        };
                        (tenant_a, ok, t.elapsed().as_secs_f64() * 1000.0)
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
        };
        let (ra, rb) = tokio::join!(drive(true), drive(false));
        let results: Vec<(bool, bool, f64)> = ra.into_iter().chain(rb).collect();
        let mut b: Vec<f64> = results.iter().filter(|r| !r.0).map(|r| r.2).collect();
        assert!(
            results.iter().filter(|r| !r.0).all(|r| r.1),
            "every request of tenant B succeeds"
        );
        out[i] = pct(&mut b, 0.99);
        if faulty {
            a_makespan = t0.elapsed().as_secs_f64();
        }
    }
    (out[0], out[1], a_makespan)
}
