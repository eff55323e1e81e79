//! A fleet of processes against one simulator: `processes` threads, each with its own tokio
//! runtime and its own firebreak stack (so its own gate), sending `requests` chat calls at
//! `concurrency`, started together. Used by the multi-process tests and the bench table.

use bytes::Bytes;
use firebreak::{FireworksClient, Stack, client::ApiKey};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What a fleet run did.
#[derive(Debug, Clone)]
pub struct FleetRun {
    /// Calls that ended in a 200 with the whole body.
    pub succeeded: usize,
    /// Calls that ended otherwise.
    pub failed: usize,
    /// From the start (all processes together) to the last call's end.
    pub makespan: Duration,
}

/// The shape of a fleet run.
#[derive(Debug, Clone, Copy)]
pub struct FleetPlan {
    /// Processes (threads with a runtime and a stack each).
    pub processes: usize,
    /// Calls per process.
    pub requests: usize,
    /// Calls in flight per process.
    pub concurrency: usize,
    /// The longest a process may run.
    pub limit: Duration,
}

/// Runs the fleet. `make_stack(i)` builds process `i`'s stack inside its runtime (where a
/// Redis fleet can start); `during(elapsed)` is called from the main thread every 50 ms
/// while the run lasts (to kill or restart things mid-run). Bounded by `limit`.
pub fn run_fleet(
    base_url: &str,
    key: &str,
    plan: FleetPlan,
    make_stack: impl Fn(usize) -> Stack + Sync,
    mut during: impl FnMut(Duration),
) -> FleetRun {
    let FleetPlan {
        processes,
        requests,
        concurrency,
        limit,
    } = plan;
    let start = Arc::new(Barrier::new(processes + 1));
    let make_stack = &make_stack;
    let (results, t0) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..processes)
            .map(|i| {
                let start = start.clone();
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    rt.block_on(async {
                        let stack = make_stack(i);
                        let client =
                            FireworksClient::new(base_url, ApiKey::new(key).expect("a key"), stack)
                                .expect("a client");
                        // Let a fleet form before the start (a few of its heartbeats).
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        start.wait();
                        let client = &client;
                        let calls = futures_util::stream::iter(0..requests)
                            .map(|j| async move {
                                let body = serde_json::json!({
                                    "model": "accounts/fireworks/models/m",
                                    "messages": [],
                                    "max_tokens": 1,
                                    "user": format!("p{i}-r{j}"),
                                });
                                match client
                                    .post("/chat/completions", Bytes::from(body.to_string()))
                                    .await
                                {
                                    Ok(r) if r.status() == 200 => {
                                        r.into_body().collect().await.is_ok()
                                    }
                                    _ => false,
                                }
                            })
                            .buffer_unordered(concurrency)
                            .collect::<Vec<bool>>();
                        tokio::time::timeout(limit, calls).await.unwrap_or_default()
                    })
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        // Bounded: every 50 ms until every process is done (each is bounded by `limit`).
        while !handles.iter().all(|h| h.is_finished())
            && t0.elapsed() < limit + Duration::from_secs(5)
        {
            during(t0.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        let makespan = t0.elapsed();
        let results: Vec<Vec<bool>> = handles
            .into_iter()
            .map(|h| h.join().expect("a process"))
            .collect();
        (results, makespan)
    });
    let all: Vec<bool> = results.into_iter().flatten().collect();
    let succeeded = all.iter().filter(|b| **b).count();
    FleetRun {
        succeeded,
        failed: processes * requests - succeeded,
        makespan: t0,
    }
}

/// A fleet in memory, for tests of the gate's and the router's `Fleet` seam: a fixed share of
/// every key, a record of what was published, and, when `linked`, every event delivered to
/// every inbox attached (processes linked as Redis would link them).
#[derive(Debug)]
pub struct MemoryFleet {
    share: f64,
    linked: bool,
    /// The inboxes attached, in order.
    pub inboxes: std::sync::Mutex<Vec<firebreak::gate::FleetInbox>>,
    /// What was published, in order.
    pub published: std::sync::Mutex<Vec<(firebreak::gate::GateKey, firebreak::gate::FleetEvent)>>,
}

impl MemoryFleet {
    /// A fleet that gives every key `share` and only records what is published.
    pub fn recording(share: f64) -> MemoryFleet {
        MemoryFleet {
            share,
            linked: false,
            inboxes: Default::default(),
            published: Default::default(),
        }
    }

    /// A fleet of processes that all share (share 1) and hear every event.
    pub fn linked() -> MemoryFleet {
        MemoryFleet {
            linked: true,
            ..MemoryFleet::recording(1.0)
        }
    }

    /// The events published so far.
    pub fn events(&self) -> Vec<firebreak::gate::FleetEvent> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| *e)
            .collect()
    }
}

impl firebreak::gate::Fleet for MemoryFleet {
    fn attach(&self, inbox: firebreak::gate::FleetInbox) {
        self.inboxes.lock().unwrap().push(inbox);
    }
    fn share(&self, _key: firebreak::gate::GateKey) -> Option<f64> {
        Some(self.share)
    }
    fn publish(&self, key: firebreak::gate::GateKey, event: firebreak::gate::FleetEvent) {
        self.published.lock().unwrap().push((key, event));
        if self.linked {
            for i in self.inboxes.lock().unwrap().iter() {
                i.apply(key, event);
            }
        }
    }
}
