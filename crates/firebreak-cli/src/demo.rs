//! `firebreak demo`: one workload, three clients, the same faults.

use crate::breakdown::{Seen, breakdown};
use bytes::Bytes;
use clap::Args;
use firebreak::{
    FireworksClient, Stack, client::ApiKey, timeout::TimeoutConfig, timeout::Workload,
};
use firebreak_sim::peers::{Attempt, docs_loop};
use firebreak_sim::{
    DelayHeader, Fault, Latency, RateLimitConfig, RateLimitDelay, Sim, SimConfig, Trigger,
};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "fw_demo_key";

/// Flags of `firebreak demo`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Requests per client.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// Requests in flight at once, per client.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// The simulated account's rate limit, in requests per second.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Scale of the fault mix (1.0 = the default mix; 0 = no injected faults beyond the rate limit).
    #[arg(long, default_value_t = 1.0)]
    faults: f64,
    /// Seed for the simulator's fault decisions.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Hide the progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bare,
    DocsLoop,
    Firebreak,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bare => "bare hyper client",
            Kind::DocsLoop => "Fireworks docs' retry loop",
            Kind::Firebreak => "firebreak (interactive preset)",
        }
    }
}

/// How one logical request ended.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    ok: bool,
    client_side: bool,
    latency: Duration,
}

fn scenario(args: &DemoArgs) -> SimConfig {
    let f = args.faults.clamp(0.0, 10.0);
    let p = |x: f64| Trigger::Probability {
        p: (x * f).clamp(0.0, 1.0),
    };
    let status = |s, delay: Vec<DelayHeader>| Fault::status(s).delay(delay);
    SimConfig::default()
        .api_key(KEY)
        .seed(args.seed)
        .latency(Latency {
            ttfb_ms: 20,
            token_delay_ms: 5,
            completion_tokens: 8,
        })
        // The account limit: over it, 429 with Retry-After.
        .rate_limit(RateLimitConfig::new(args.rate, 10.0).delay(RateLimitDelay::RetryAfterSecs))
        // A 429 storm without any delay header, transient 5xx, a hang, a reset, a stalled stream.
        .fault(p(0.04), status(429, vec![]))
        .fault(p(0.05), status(503, vec![]))
        .fault(p(0.03), status(502, vec![]))
        .fault(p(0.02), status(500, vec![]))
        .fault(p(0.02), Fault::Hang { for_ms: 4000 })
        .fault(p(0.02), Fault::ResetBeforeResponse)
        .fault(
            p(0.03),
            Fault::StallAfter {
                after_chunks: 2,
                for_ms: 4000,
            },
        )
}

fn body(i: u32) -> Bytes {
    // Every third request streams.
    Bytes::from(format!(
        r#"{{"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[{{"role":"user","content":"Say hello"}}],"max_tokens":8,"stream":{},"user":"req-{i:06}"}}"#,
        i % 3 == 0
    ))
}

type Plain = Client<HttpConnector, Full<Bytes>>;

fn plain() -> Plain {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

async fn bare_once(c: &Plain, url: &str, b: Bytes) -> Result<u16, bool> {
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(b))
        .map_err(|_| true)?;
    match c.request(req).await {
        Ok(r) => {
            let s = r.status().as_u16();
            r.into_body().collect().await.map_err(|_| false)?;
            Ok(s)
        }
        Err(e) => Err(e.is_connect()),
    }
}

async fn one(kind: Kind, plain: &Plain, fb: &FireworksClient, url: &str, i: u32) -> Outcome {
    let t = Instant::now();
    let (ok, client_side) = match kind {
        Kind::Bare => match bare_once(plain, url, body(i)).await {
            Ok(s) => (s == 200, false),
            Err(cs) => (false, cs),
        },
        Kind::DocsLoop => {
            let end = docs_loop(|| async {
                match bare_once(plain, url, body(i)).await {
                    Ok(s) => Attempt::Status(s),
                    Err(client_side) => Attempt::Failed { client_side },
                }
            })
            .await;
            match end {
                Attempt::Status(s) => (s == 200, false),
                Attempt::Failed { client_side } => (false, client_side),
            }
        }
        Kind::Firebreak => match fb.post("/chat/completions", body(i)).await {
            Ok(r) => {
                let s = r.status();
                match r.into_body().collect().await {
                    Ok(_) => (s == 200, false),
                    Err(e) => (false, e.is_client_side()),
                }
            }
            Err(e) => (false, e.is_client_side()),
        },
    };
    Outcome {
        ok,
        client_side,
        latency: t.elapsed(),
    }
}

struct Row {
    kind: Kind,
    ok: usize,
    n: usize,
    attempts: usize,
    r429: usize,
    client_side: usize,
    server_failures: usize,
    /// firebreak's own breakdown of failed attempts, from its metrics.
    breakdown: Option<String>,
    p50: f64,
    p99: f64,
    makespan: f64,
    /// For firebreak: the time its requests spent waiting in the 429 gate (pacing to the
    /// account limit, cooldowns), summed, in seconds.
    gate_wait: Option<f64>,
}

async fn run_client(
    kind: Kind,
    args: &DemoArgs,
    bar: ProgressBar,
) -> Result<Row, Box<dyn std::error::Error>> {
    let sim = Sim::start(scenario(args)).await?;
    let url = format!("{}/chat/completions", sim.base_url());
    let plain = plain();
    // The interactive preset, with the read-side timeouts scaled to the demo's 20 ms answers, so
    // a hang or a stalled stream is cut in about a second instead of a minute.
    let timeouts = TimeoutConfig::preset(Workload::Interactive)
        .headers(Some(Duration::from_secs(1)))
        .first_event(Some(Duration::from_secs(1)))
        .idle(Some(Duration::from_secs(1)));
    // The stack's metrics go to a recorder local to this run, for the breakdown at the end.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let key = ApiKey::new(KEY)?;
    let fb = metrics::with_local_recorder(&recorder, || {
        FireworksClient::new(
            &sim.base_url(),
            key,
            Stack::interactive().timeouts(timeouts),
        )
    })?;
    let (plain, fb, url) = (Arc::new(plain), Arc::new(fb), Arc::new(url));
    let t0 = Instant::now();
    let outcomes: Vec<Outcome> = futures_util::stream::iter(0..args.requests)
        .map(|i| {
            let (plain, fb, url, bar) = (plain.clone(), fb.clone(), url.clone(), bar.clone());
            async move {
                let o = one(kind, &plain, &fb, &url, i).await;
                bar.inc(1);
                o
            }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    let makespan = t0.elapsed().as_secs_f64();
    bar.finish_with_message(format!("{} done", kind.name()));
    // Hung and stalled attempts are logged when the simulator lets go of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = sim.log();
    let mut lat: Vec<f64> = outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let ok = outcomes.iter().filter(|o| o.ok).count();
    let client_side = outcomes.iter().filter(|o| !o.ok && o.client_side).count();
    Ok(Row {
        kind,
        ok,
        n: outcomes.len(),
        attempts: log.len(),
        r429: log.iter().filter(|r| r.status == 429).count(),
        client_side,
        server_failures: outcomes.len() - ok - client_side,
        p50: pct(0.5),
        p99: pct(0.99),
        makespan,
        breakdown: (kind == Kind::Firebreak).then(|| breakdown(&Seen::read(&snapshotter))),
        gate_wait: (kind == Kind::Firebreak).then(|| {
            fb.layer()
                .gate()
                .snapshot()
                .iter()
                .map(|(_, g)| g.waited.as_secs_f64())
                .sum()
        }),
    })
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 100_000.0) {
        return Err(format!("--rate must be a number in (0, 100000], got {}", args.rate).into());
    }
    if !(args.faults.is_finite() && args.faults >= 0.0) {
        return Err(format!(
            "--faults must be a non-negative number, got {}",
            args.faults
        )
        .into());
    }
    println!(
        "firebreak demo: {} requests per client, {} at a time, against the embedded simulator on 127.0.0.1",
        args.requests, args.concurrency
    );
    println!(
        "faults: a {:.0} req/s account limit (429 with Retry-After), 429s without any delay header, transient 500/502/503,",
        args.rate
    );
    println!(
        "        hangs before the headers, connection resets, and streams that stall after two chunks\n"
    );
    let multi = if args.quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let style = ProgressStyle::with_template("{prefix:32} [{bar:30}] {pos}/{len} {elapsed}")
        .map_err(|e| e.to_string())?
        .progress_chars("=> ");
    let mut rows = Vec::new();
    for kind in [Kind::Bare, Kind::DocsLoop, Kind::Firebreak] {
        let bar = multi.add(ProgressBar::new(u64::from(args.requests)));
        bar.set_style(style.clone());
        bar.set_prefix(kind.name());
        rows.push(run_client(kind, &args, bar).await?);
    }
    println!("\n{}", table(&rows));
    let fb = rows.iter().find(|r| r.kind == Kind::Firebreak);
    let docs = rows.iter().find(|r| r.kind == Kind::DocsLoop);
    if let (Some(f), Some(d)) = (fb, docs) {
        println!(
            "firebreak: {:.1}% success in {:.1} s with {} 429s; the docs' loop: {:.1}% in {:.1} s with {} 429s.",
            f.ok as f64 * 100.0 / f.n as f64,
            f.makespan,
            f.r429,
            d.ok as f64 * 100.0 / d.n as f64,
            d.makespan,
            d.r429
        );
    }
    println!(
        "firebreak never retries a stream once tokens reached the caller (a retry would duplicate them and bill twice):"
    );
    println!(
        "a stream that stalls mid-way is cut by the idle timeout and reported, where the docs' loop re-sends the whole request."
    );
    println!(
        "Client-side failures never reached the server, so a provider's dashboard would not show them."
    );
    if let Some(w) = fb.and_then(|r| r.gate_wait) {
        println!(
            "\"gate wait\" is time firebreak held a request back on purpose (pacing to the account limit, or a cooldown the server asked for): {w:.1} s in all, not a slow answer."
        );
    }
    if let Some(b) = fb.and_then(|r| r.breakdown.as_deref()) {
        println!("\nfirebreak's metrics, attempt by attempt:\n{b}");
    }
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>8} {:>9} {:>6} {:>12} {:>12} {:>8} {:>8} {:>9} {:>14}",
        "client",
        "success",
        "attempts",
        "429s",
        "client-side",
        "server-side",
        "p50 ms",
        "p99 ms",
        "makespan",
        "gate wait/req"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<32} {:>7.1}% {:>9} {:>6} {:>12} {:>12} {:>8.0} {:>8.0} {:>8.1}s {:>14}",
            r.kind.name(),
            r.ok as f64 * 100.0 / r.n.max(1) as f64,
            r.attempts,
            r.r429,
            r.client_side,
            r.server_failures,
            r.p50,
            r.p99,
            r.makespan,
            r.gate_wait.map_or("–".to_owned(), |w| format!(
                "{:.0} ms",
                w * 1000.0 / r.n.max(1) as f64
            ))
        );
    }
    out
}
