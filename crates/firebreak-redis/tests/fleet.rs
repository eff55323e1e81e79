//! Four separate runtimes, each with its own firebreak stack and gate, against firebreak-sim's
//! token bucket over loopback sockets, linked through a real `redis-server` the test starts
//! on a free port (issue #16's acceptance). Figures with and without Redis side by side are in
//! BENCHMARKS.md (`cargo bench --bench fleet`).

use firebreak::Stack;
use firebreak_redis::{RedisConfig, RedisFleet};
use firebreak_sim::{RateLimitConfig, RateUnit, Sim, SimConfig};
use firebreak_testkit::{FleetPlan, RedisServer, run_fleet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "fw_fleet_SECRET_key";

/// 20 requests a second, `Retry-After` and `x-ratelimit-*` (per second) on every answer. The
/// burst (40) holds the fleet's first round (4 × 8 sent before any answer states the limit:
/// no client can pace those); BENCHMARKS.md also shows a burst of 20, where that first round
/// alone earns 12 429s whoever sends it.
fn bucket() -> SimConfig {
    let rl = RateLimitConfig::new(20.0, 40.0).header_unit(RateUnit::PerSecond);
    SimConfig::default().api_key(KEY).rate_limit(rl)
}

fn sim_on(rt: &tokio::runtime::Runtime) -> Sim {
    rt.block_on(Sim::start(bucket())).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The fleet tests take the machine (2 cores) one at a time: their timings are the point.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PLAN: FleetPlan = FleetPlan {
    processes: 4,
    requests: 100,
    concurrency: 8,
    limit: Duration::from_secs(120),
};

#[test]
fn four_processes_share_one_limit_as_if_they_were_one_client() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let sim = sim_on(&rt);
    let redis = RedisServer::start();
    let url = redis.url();
    let run = run_fleet(
        &sim.base_url(),
        KEY,
        PLAN,
        |_| firebreak_redis::shared(Stack::interactive(), RedisConfig::new(&url)).unwrap(),
        |_| {},
    );
    let log = rt.block_on(async { sim.log() });
    let limited = log.iter().filter(|r| r.status == 429).count();
    let secs = run.makespan.as_secs_f64();
    eprintln!("shared: {limited} 429s, {secs:.1} s, {} ok", run.succeeded);
    assert_eq!(run.succeeded, 400, "{run:?}");
    assert!(limited <= 4, "at most 1% 429s: {limited}");
    // Ideal: 400 at 20 a second (the issue's 400 / 20 s; the burst makes the true floor 18 s).
    assert!(secs <= 1.10 * 20.0, "{secs:.1} s");
}

#[test]
fn redis_killed_mid_run_every_request_completes_and_sharing_resumes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let sim = sim_on(&rt);
    let mut redis = Some(RedisServer::start());
    let port = redis.as_ref().unwrap().port;
    let url = redis.as_ref().unwrap().url();
    let recorder = Arc::new(metrics_util::debugging::DebuggingRecorder::new());
    let snap = recorder.snapshotter();
    let fleets: Mutex<Vec<RedisFleet>> = Mutex::new(Vec::new());
    let (mut killed, mut restarted) = (false, false);
    let (mut down_seen, mut resumed) = (false, false);
    let run = run_fleet(
        &sim.base_url(),
        KEY,
        PLAN,
        |_| {
            let fleet = metrics::with_local_recorder(&*recorder, || {
                RedisFleet::start(RedisConfig::new(&url)).unwrap()
            });
            fleets.lock().unwrap().push(fleet.clone());
            Stack::interactive().fleet(Some(Arc::new(fleet)))
        },
        |t| {
            if t > Duration::from_secs(4) && !killed {
                redis.take().unwrap().stop();
                killed = true;
            }
            let connected = fleets
                .lock()
                .unwrap()
                .iter()
                .filter(|f| f.is_connected())
                .count();
            if killed && !restarted && connected == 0 {
                down_seen = true;
            }
            if t > Duration::from_secs(8) && !restarted {
                redis = Some(RedisServer::start_on(port));
                restarted = true;
            }
            if restarted && connected == 4 {
                resumed = true;
            }
        },
    );
    assert!(killed && restarted, "the run outlasted the outage");
    assert_eq!(
        run.succeeded, 400,
        "no request failed because Redis did: {run:?}"
    );
    // Nothing lost or duplicated: each of the 400 calls got exactly one 200 from the server.
    let mut ok: std::collections::HashMap<String, usize> = Default::default();
    for r in rt
        .block_on(async { sim.log() })
        .iter()
        .filter(|r| r.status == 200)
    {
        *ok.entry(r.request_id.clone().expect("a request id"))
            .or_default() += 1;
    }
    assert_eq!(ok.len(), 400);
    assert!(ok.values().all(|n| *n == 1), "a call answered twice");
    // The fallback was counted, once per process.
    let fallbacks: u64 = snap
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == firebreak_redis::names::FALLBACKS)
        .map(|(_, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(fallbacks, 4, "one fallback per process");
    // Every process fell back while Redis was down, and shared again once it was back, during
    // the run.
    assert!(down_seen, "the processes noticed the outage");
    assert!(resumed, "sharing resumed after the restart");
}

#[test]
fn a_rate_limit_429_in_one_process_holds_the_others_within_a_heartbeat() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).fault(
            firebreak_sim::Trigger::FirstAttemptsOfEvery {
                n: 1,
                every: 1000,
                offset: 7,
            },
            firebreak_testkit::status_fault(
                429,
                vec![firebreak_sim::DelayHeader::RetryAfterSecs { secs: 2.0 }],
            ),
        )))
        .unwrap();
    let redis = RedisServer::start();
    rt.block_on(async {
        let cfg = RedisConfig::new(redis.url());
        let client = |fleet: &RedisFleet| {
            firebreak::FireworksClient::new(
                &sim.base_url(),
                firebreak::client::ApiKey::new(KEY).unwrap(),
                Stack::interactive().fleet(Some(Arc::new(fleet.clone()))),
            )
            .unwrap()
        };
        let (fa, fb) = (
            RedisFleet::start(cfg.clone()).unwrap(),
            RedisFleet::start(cfg).unwrap(),
        );
        assert!(fa.connected_within(Duration::from_secs(5)).await);
        assert!(fb.connected_within(Duration::from_secs(5)).await);
        let (a, b) = (client(&fa), client(&fb));
        let chat = |user: &str| {
            bytes::Bytes::from(
                serde_json::json!({"model": "m", "messages": [], "max_tokens": 1, "user": user})
                    .to_string(),
            )
        };
        // B has used the key (so it has a gate for it) before A's 429.
        let r = b.post("/chat/completions", chat("b-1")).await.unwrap();
        http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
        let cooling = |c: &firebreak::FireworksClient| {
            c.layer()
                .gate()
                .snapshot()
                .iter()
                .any(|(_, s)| s.cooldown_remaining > Duration::ZERO)
        };
        // A's call gets the 429 (then succeeds after its 2 s): watch both gates meanwhile.
        let a_call = tokio::spawn({
            let a = a.clone();
            async move {
                a.post("/chat/completions", chat("a-7"))
                    .await
                    .map(|r| r.status())
            }
        });
        let t0 = tokio::time::Instant::now();
        let (mut at_a, mut at_b) = (None, None);
        // Bounded: 2 s of 1 ms polls.
        while t0.elapsed() < Duration::from_secs(2) && (at_a.is_none() || at_b.is_none()) {
            if at_a.is_none() && cooling(&a) {
                at_a = Some(t0.elapsed());
            }
            if at_b.is_none() && cooling(&b) {
                at_b = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (at_a, at_b) = (at_a.expect("A cooled down"), at_b.expect("B cooled down"));
        let lag = at_b.saturating_sub(at_a);
        eprintln!("propagation: A cooled at {at_a:?}, B at {at_b:?}: {lag:?}");
        assert!(
            lag <= Duration::from_millis(250),
            "within a heartbeat: {lag:?}"
        );
        // B's next call is held until the cooldown ends: it reaches the server ~2 s after A's 429.
        let sent = tokio::time::Instant::now();
        let r = b.post("/chat/completions", chat("b-2")).await.unwrap();
        assert_eq!(r.status(), 200);
        let held = sent.elapsed();
        assert!(held >= Duration::from_millis(1500), "B was held: {held:?}");
        assert_eq!(a_call.await.unwrap().unwrap(), 200);
        assert_eq!(
            sim.log().iter().filter(|r| r.status == 429).count(),
            1,
            "only A's one 429"
        );
        // Hygiene: every key under the prefix, expiring, holding hashes only.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(keys.iter().any(|k| k.contains(":members:")), "{keys:?}");
        for k in &keys {
            assert!(k.starts_with("firebreak:"), "{k}");
            assert!(!k.contains(KEY) && !k.contains("SECRET"), "{k}");
            let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
            assert!(ttl > 0, "{k} expires ({ttl})");
            let kind: String = redis::cmd("TYPE").arg(k).query_async(&mut c).await.unwrap();
            if kind == "string" {
                let v: String = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
                assert!(!v.contains("SECRET"), "{k} = {v}");
            }
        }
    });
}

#[test]
fn a_keys_share_counts_only_its_users_and_grows_back_when_one_leaves() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let redis = RedisServer::start();
    rt.block_on(async {
        let cfg = RedisConfig {
            heartbeat: Duration::from_millis(50),
            member_ttl: Duration::from_millis(200),
            active_for: Duration::from_millis(300),
            ..RedisConfig::new(redis.url())
        };
        let (a, b) = (
            RedisFleet::start(cfg.clone()).unwrap(),
            RedisFleet::start(cfg).unwrap(),
        );
        assert!(a.connected_within(Duration::from_secs(5)).await);
        assert!(b.connected_within(Duration::from_secs(5)).await);
        let (shared, own) = (SHARED, OWN);
        // A uses two keys, B one of them: the shared key is split, the other key is A's alone
        // once its membership has settled.
        let settled = until(&a, &b, true, || {
            a.current_share(shared) == Some(0.5) && a.current_share(own) == Some(1.0)
        })
        .await;
        assert!(
            settled,
            "{:?} {:?}",
            a.current_share(shared),
            a.current_share(own)
        );
        assert_eq!(b.current_share(shared), Some(0.5));
        // B stops using the key: A's share grows back with time.
        let t = tokio::time::Instant::now();
        let back = until(&a, &b, false, || a.current_share(shared) == Some(1.0)).await;
        assert!(back, "{:?}", a.current_share(shared));
        // active_for + member_ttl + a heartbeat or two.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    });
}

const SHARED: firebreak::gate::GateKey = firebreak::gate::GateKey::from_raw(1);
const OWN: firebreak::gate::GateKey = firebreak::gate::GateKey::from_raw(2);

/// Waits (bounded: 5 s of 20 ms steps) until `check` holds, with A using both keys and B the
/// shared one (or not) meanwhile.
async fn until(
    a: &RedisFleet,
    b: &RedisFleet,
    b_uses_shared: bool,
    check: impl Fn() -> bool,
) -> bool {
    use firebreak::gate::Fleet;
    let t = tokio::time::Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        a.share(SHARED);
        a.share(OWN);
        if b_uses_shared {
            b.share(SHARED);
        }
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A route target's breaker that opens in one process opens in another through Redis, and that
/// process skips the target without trying it (issue #17: breakers behind the fleet seam).
#[test]
fn a_breaker_opened_in_one_process_opens_in_another_through_redis() {
    use firebreak::route::{BreakerConfig, BreakerState, RouteConfig, Router};
    const PRIMARY: &str = "accounts/acme/deployedModels/down";
    const FALLBACK: &str = "accounts/fireworks/models/up";
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let sim = rt
        .block_on(Sim::start(SimConfig::default().api_key(KEY).deployment(
            firebreak_sim::DeploymentConfig::new(PRIMARY).fault(
                firebreak_sim::Trigger::Always,
                firebreak_testkit::status_fault(503, vec![]),
            ),
        )))
        .unwrap();
    let redis = RedisServer::start();
    rt.block_on(async {
        let cfg = RedisConfig::new(redis.url());
        let (fa, fb) = (
            RedisFleet::start(cfg.clone()).unwrap(),
            RedisFleet::start(cfg).unwrap(),
        );
        assert!(fa.connected_within(Duration::from_secs(5)).await);
        assert!(fb.connected_within(Duration::from_secs(5)).await);
        let router = |fleet: &RedisFleet| {
            let routes = RouteConfig::new()
                .fallbacks("chat", &sim.base_url(), &[PRIMARY, FALLBACK])
                .with_breaker(BreakerConfig::default().cooldown(Duration::from_secs(30)));
            let stack = Stack::interactive().fleet(Some(Arc::new(fleet.clone())));
            Router::new(
                routes,
                stack,
                Some(firebreak::client::ApiKey::new(KEY).unwrap()),
                &Default::default(),
            )
            .unwrap()
        };
        let (a, b) = (router(&fa), router(&fb));
        let body = || bytes::Bytes::from_static(br#"{"model":"chat","messages":[]}"#);
        for _ in 0..5 {
            let r = a.post("/chat/completions", body()).await.unwrap();
            assert_eq!(r.status(), 200);
        }
        assert_eq!(a.breakers()[0].1, BreakerState::Open);
        let t = tokio::time::Instant::now();
        while b.breakers()[0].1 != BreakerState::Open && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(b.breakers()[0].1, BreakerState::Open, "B heard within 5 s");
        let before = sim.log().len();
        let r = b.post("/chat/completions", body()).await.unwrap();
        assert_eq!(r.status(), 200);
        let log = sim.log();
        let sent: Vec<_> = log[before..].iter().map(|r| r.model.clone()).collect();
        assert_eq!(
            sent,
            [Some(FALLBACK.to_owned())],
            "B went straight to the fallback"
        );
    });
}
