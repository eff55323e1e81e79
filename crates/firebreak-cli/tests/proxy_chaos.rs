//! Chaos: the upstream is killed and restarted twice during a 200-request mixed JSON and SSE run
//! through `firebreak proxy`. Every request ends with exactly one outcome (a success, an
//! OpenAI-shaped error, or an SSE error event), none outlives its deadline, and the proxy's
//! open file descriptors and memory come back to where they were.

use firebreak_sim::{Latency, Sim, SimConfig};
use firebreak_testkit::fds_and_rss;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;

const KEY: &str = "fw_chaos_SECRET";
const REQUESTS: usize = 200;
const DEADLINE_S: u64 = 8;

fn cfg() -> SimConfig {
    SimConfig::default().api_key(KEY).latency(Latency {
        ttfb_ms: 20,
        token_delay_ms: 25,
        completion_tokens: 16,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Success,
    Error(u16, String),
    StreamErrorEvent(String),
}

/// What one raw response ended as, or why it is not a valid outcome.
fn outcome(resp: &str, stream: bool) -> Result<Outcome, String> {
    let status = status_of(resp);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    match status {
        200 if stream => {
            let done = body.contains("data: [DONE]");
            let err = body.contains("event: error");
            match (done, err) {
                (true, false) => Ok(Outcome::Success),
                (false, true) => {
                    let line = body
                        .lines()
                        .find(|l| l.starts_with("data: {\"error\""))
                        .ok_or("an error event without an error body")?;
                    let v: serde_json::Value =
                        serde_json::from_str(&line[6..]).map_err(|e| e.to_string())?;
                    let code = v["error"]["code"].as_str().ok_or("no code")?;
                    Ok(Outcome::StreamErrorEvent(code.to_owned()))
                }
                (d, e) => Err(format!(
                    "stream ended with [DONE]={d}, error event={e}: {body:?}"
                )),
            }
        }
        200 => body
            .contains("\"chat.completion\"")
            .then_some(Outcome::Success)
            .ok_or_else(|| format!("a 200 that is not a completion: {body:?}")),
        s if s >= 400 => {
            let v: serde_json::Value = serde_json::from_str(body.trim())
                .map_err(|e| format!("status {s} without a JSON body ({e}): {body:?}"))?;
            let code = v["error"]["code"]
                .as_str()
                .ok_or_else(|| format!("not OpenAI-shaped: {body}"))?;
            Ok(Outcome::Error(s, code.to_owned()))
        }
        s => Err(format!("no valid answer (status {s}): {resp:?}")),
    }
}

#[test]
fn killing_the_upstream_twice_leaves_every_request_one_clear_outcome() {
    let rt = common::runtime();
    let sim = rt.block_on(Sim::start(cfg())).unwrap();
    let addr = sim.addr();
    let p = proxy_env(
        &sim.base_url(),
        &[
            "--deadline",
            &DEADLINE_S.to_string(),
            "--first-byte-timeout",
            "3",
        ],
        &[("FIREWORKS_API_KEY", KEY)],
    );
    // Warm up at the run's concurrency (so the upstream connection pool is as full as it will
    // be), then take the baseline.
    let warm: Vec<_> = (0..20)
        .map(|w| {
            let addr = p.addr.clone();
            std::thread::spawn(move || {
                for i in 0..3 {
                    let body = chat(&format!("warm-{w}-{i}"), i % 2 == 0, 16);
                    let (s, _, _) = request(&addr, "POST", "/v1/chat/completions", &[], &body);
                    assert_eq!(s, 200);
                }
            })
        })
        .collect();
    for w in warm {
        w.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (fds0, rss0) = fds_and_rss(p.pid());

    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..20)
        .map(|_| {
            let (next, results, addr) = (next.clone(), results.clone(), p.addr.clone());
            std::thread::spawn(move || {
                // Bounded by REQUESTS: each turn takes one request number.
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= REQUESTS {
                        break;
                    }
                    let stream = i % 2 == 1;
                    let body = chat(&format!("chaos-{i}"), stream, 16);
                    let raw = format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let t = Instant::now();
                    let resp = exchange(&addr, raw.as_bytes(), Duration::from_secs(DEADLINE_S + 7));
                    results.lock().unwrap().push((i, stream, t.elapsed(), resp));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    // Kill and restart the upstream twice while the run goes on.
    let mut sim = Some(sim);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        drop(sim.take());
        std::thread::sleep(Duration::from_millis(700));
        sim = Some(rt.block_on(Sim::start_on(addr, cfg())).unwrap());
    }
    for w in workers {
        w.join().unwrap();
    }
    let results = results.lock().unwrap();
    assert_eq!(results.len(), REQUESTS, "every request ended");
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (i, stream, took, resp) in results.iter() {
        let o = outcome(resp, *stream).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(
            *took < Duration::from_secs(DEADLINE_S + 2),
            "request {i} took {took:?}, past its {DEADLINE_S} s deadline"
        );
        let key = match o {
            Outcome::Success => "success".to_owned(),
            Outcome::Error(s, c) => format!("error {s} {c}"),
            Outcome::StreamErrorEvent(c) => format!("sse error {c}"),
        };
        *tally.entry(key).or_default() += 1;
    }
    println!("outcomes: {tally:?}");
    assert!(
        tally.get("success").copied().unwrap_or(0) >= REQUESTS / 2,
        "{tally:?}"
    );
    assert!(tally.len() > 1, "the kills were felt: {tally:?}");
    // Back to baseline once the run is over.
    let t = Instant::now();
    let (mut fds1, mut rss1) = fds_and_rss(p.pid());
    // Bounded: up to 10 s for idle upstream connections to be closed.
    while fds1 > fds0 + 4 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        (fds1, rss1) = fds_and_rss(p.pid());
    }
    println!("fds {fds0} -> {fds1}, rss {rss0} KiB -> {rss1} KiB");
    assert!(
        fds1 <= fds0 + 4,
        "open descriptors: {fds0} before, {fds1} after"
    );
    assert!(
        rss1 <= rss0 + 16 * 1024,
        "resident memory: {rss0} KiB before, {rss1} KiB after"
    );
    let (s, _, _) = request(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat("after", false, 2),
    );
    assert_eq!(s, 200, "serves normally after");
    drop(sim);
}
