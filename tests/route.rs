//! The router over real loopback sockets against firebreak-sim hosting a dedicated deployment
//! and a serverless model: a primary that goes fully down (503s, then resets) and comes back,
//! and a dedicated deployment at capacity. Assertions are on outcomes and on the simulator's
//! log, never on wall-clock speed.

use firebreak::client::ApiKey;
use firebreak::route::{BreakerConfig, BreakerState, RouteConfig, Router, Target};
use firebreak_sim::{CapacityReject, DeploymentConfig, Fault, Latency, Sim, SimConfig};
use firebreak_testkit::*;
use std::time::{Duration, Instant};

const PRIMARY: &str =
    "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acme/deployments/d1";
const SERVERLESS: &str = "accounts/fireworks/models/llama-v3p1-8b-instruct";
const COOLDOWN: Duration = Duration::from_millis(500);

async fn sim(deployment: DeploymentConfig) -> Sim {
    Sim::start(
        SimConfig::default()
            .api_key(KEY)
            .latency(Latency {
                ttfb_ms: 5,
                ..Latency::default()
            })
            .deployment(deployment),
    )
    .await
    .expect("the simulator starts")
}

fn router(sim: &Sim, tiers: Vec<Vec<Target>>) -> Router {
    router_with(sim, tiers, fast_interactive())
}

fn router_with(sim: &Sim, tiers: Vec<Vec<Target>>, stack: firebreak::Stack) -> Router {
    let cfg = RouteConfig::new().alias("chat", tiers).with_breaker(
        BreakerConfig::default()
            .consecutive_failures(5)
            .cooldown(COOLDOWN)
            .probes(1),
    );
    let _ = sim;
    Router::new(
        cfg,
        stack,
        Some(ApiKey::new(KEY).unwrap()),
        &Default::default(),
    )
    .unwrap()
}

fn chain(sim: &Sim) -> Vec<Vec<Target>> {
    vec![
        vec![Target::new("primary", sim.base_url(), PRIMARY)],
        vec![Target::new("serverless", sim.base_url(), SERVERLESS)],
    ]
}

/// The primary's attempts in the simulator's log: (arrival ms, status).
fn primary_log(sim: &Sim) -> Vec<(f64, u16)> {
    sim.log()
        .iter()
        .filter(|r| r.model.as_deref() == Some(PRIMARY))
        .map(|r| (r.t_ms, r.status))
        .collect()
}

/// Drives `calls` calls for "chat" at `concurrency` while sampling the deployment's requests
/// in flight every 2 ms: the calls, the peak, and the median over the run's second half.
async fn drive_sampling(
    sim: &std::sync::Arc<Sim>,
    r: &Router,
    calls: usize,
    concurrency: usize,
) -> (Vec<Routed>, usize, usize) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (sim, stop) = (sim.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && samples.len() < 50_000 {
                samples.push(sim.deployment_in_flight(PRIMARY));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        })
    };
    let done = drive_router(r, "chat", "sampled", calls, concurrency).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut samples = sampler.await.unwrap();
    let peak = samples.iter().copied().max().unwrap_or(0);
    let mut late = samples.split_off(samples.len() / 2);
    late.sort_unstable();
    (done, peak, late.get(late.len() / 2).copied().unwrap_or(0))
}

async fn outage_and_recovery(fault: Fault) {
    let sim = sim(DeploymentConfig::new(PRIMARY)).await;
    let r = router(&sim, chain(&sim));
    let healthy = drive_router(&r, "chat", "before", 100, 8).await;
    assert!(
        healthy
            .iter()
            .all(|c| c.status == 200 && c.target.as_deref() == Some("primary"))
    );

    sim.take_down(PRIMARY, fault.clone());
    let down_at = Instant::now();
    // At least 2.5 s down (five cooldowns), in batches, bounded.
    let mut during = Vec::new();
    for b in 0..200 {
        if down_at.elapsed() >= Duration::from_millis(2500) {
            break;
        }
        during.extend(drive_router(&r, "chat", &format!("during{b}"), 50, 8).await);
    }
    let outage = down_at.elapsed();
    assert_eq!(
        r.breakers()[0],
        ("primary".to_owned(), BreakerState::Open),
        "{fault:?}"
    );
    sim.bring_up(PRIMARY);
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let after = drive_router(&r, "chat", "after", 100, 8).await;

    let all: Vec<_> = healthy.iter().chain(&during).chain(&after).collect();
    let ok = all.iter().filter(|c| c.status == 200).count();
    assert!(
        ok * 1000 >= all.len() * 995,
        "{fault:?}: {ok}/{} succeeded",
        all.len()
    );

    // The breaker opened within its window: five failures in a row, plus what was already in
    // flight (7 others at concurrency 8); after that, one probe per cooldown at most.
    let failed: Vec<f64> = primary_log(&sim)
        .into_iter()
        .filter(|(_, s)| *s != 200)
        .map(|(t, _)| t)
        .collect();
    let probes_allowed = (outage.as_secs_f64() / COOLDOWN.as_secs_f64()).ceil() as usize + 1;
    eprintln!(
        "{fault:?}: {} failed primary attempts in a {outage:?} outage; {ok}/{} ok",
        failed.len(),
        all.len()
    );
    assert!(
        failed.len() <= 5 + 7 + probes_allowed,
        "{fault:?}: {} failed attempts on the primary in a {outage:?} outage",
        failed.len()
    );
    // Five to open it, and a probe per cooldown after.
    assert!(
        failed.len() >= 5 + 3,
        "{fault:?}: the outage was seen and probed"
    );
    // Only probes while open: after the first 12, attempts come a cooldown apart.
    let probes = &failed[failed.len().min(12)..];
    for w in probes.windows(2) {
        assert!(
            w[1] - w[0] >= COOLDOWN.as_secs_f64() * 1000.0 * 0.9,
            "{fault:?}: probes {w:?} ms closer than the cooldown"
        );
    }
    // Traffic came back to the primary.
    let back = after[after.len() - 50..]
        .iter()
        .filter(|c| c.target.as_deref() == Some("primary"))
        .count();
    assert_eq!(back, 50, "{fault:?}: the last 50 calls after recovery");
    assert_eq!(r.breakers()[0].1, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_answering_503_fails_over_and_comes_back() {
    bounded(60, outage_and_recovery(status_fault(503, vec![]))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_resetting_connections_fails_over_and_comes_back() {
    bounded(60, outage_and_recovery(Fault::ResetBeforeResponse)).await
}

#[test]
fn a_dedicated_deployment_at_capacity_settles_near_it_and_advises_once() {
    let capacity = 8;
    let calls = 600;
    let ((attempts, median), log) = logged(
        tracing::Level::WARN,
        bounded(60, async {
            let sim = std::sync::Arc::new(
                Sim::start(
                    SimConfig::default()
                        .api_key(KEY)
                        .latency(Latency {
                            ttfb_ms: 20,
                            ..Latency::default()
                        })
                        .deployment(
                            DeploymentConfig::new(PRIMARY)
                                .capacity(capacity, CapacityReject::CapacityExceeded429),
                        ),
                )
                .await
                .unwrap(),
            );
            let r = router(
                &sim,
                vec![vec![Target::new("mine", sim.base_url(), PRIMARY)]],
            );
            let (done, _, median) = drive_sampling(&sim, &r, calls, 32).await;
            assert!(done.iter().all(|c| c.status == 200), "every call answered");
            (sim.log().len(), median)
        }),
    );
    let amplification = attempts as f64 / calls as f64;
    eprintln!("amplification {amplification:.3}; median in flight {median}");
    assert!(
        amplification <= 1.10,
        "amplification {amplification:.3} ({attempts} attempts)"
    );
    // In flight over the second half of the run: near the capacity, not far under it.
    assert!(
        median * 2 >= capacity && median <= capacity,
        "median in flight {median} for a capacity of {capacity}"
    );
    let advice = log.matches("keeps refusing for capacity").count();
    assert_eq!(advice, 1, "the advice once, not per request:\n{log}");
    assert!(log.contains("d1") && log.contains("firectl deployment update"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_deployment_that_queues_is_held_near_its_queue_target() {
    bounded(60, async {
        // Two slots, 40 ms each: 64 callers would queue (64 - 2) / 2 × 40 ms ≈ 1.24 s. The
        // gate's queue target (500 ms) is met at 2 + 2 × 500 / 40 = 27 in flight.
        let sim = std::sync::Arc::new(
            Sim::start(
                SimConfig::default()
                    .api_key(KEY)
                    .latency(Latency {
                        ttfb_ms: 40,
                        ..Latency::default()
                    })
                    .deployment(DeploymentConfig::new(PRIMARY).queue_after(2)),
            )
            .await
            .unwrap(),
        );
        // The interactive preset's timers: a 1.2 s queue is slow, not a hang.
        let r = router_with(
            &sim,
            vec![vec![Target::new("mine", sim.base_url(), PRIMARY)]],
            firebreak::Stack::interactive(),
        );
        let (done, peak, median) = drive_sampling(&sim, &r, 300, 64).await;
        assert!(done.iter().all(|c| c.status == 200), "every call answered");
        eprintln!("in flight: peak {peak}, late median {median}");
        assert!(
            peak > 27,
            "the first round queued past the target ({peak} in flight)"
        );
        assert!(
            (8..=30).contains(&median),
            "settled near the queue target (27 in flight), not at 64 and not starved: {median}"
        );
        assert_eq!(
            sim.log().len(),
            300,
            "queueing refuses nothing: one attempt per call"
        );
    })
    .await
}
