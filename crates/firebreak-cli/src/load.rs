//! `firebreak load`: drive a workload through the stack against any OpenAI-compatible endpoint.

use crate::args::{FleetArgs, TimeoutArgs, api_key, base_url};
use crate::breakdown::{Seen, breakdown};
use bytes::Bytes;
use clap::Args;
use firebreak::Classification;
use firebreak::{FireworksClient, Stack};
use futures_util::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Flags of `firebreak load`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    /// Base URL of an OpenAI-compatible API, e.g. https://api.fireworks.ai/inference/v1.
    #[arg(long)]
    base_url: String,
    /// API key (default: the FIREWORKS_API_KEY environment variable). Never printed.
    #[arg(long)]
    api_key: Option<String>,
    /// Model to call.
    #[arg(long)]
    model: String,
    /// Requests to send.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Ask for streamed (SSE) answers.
    #[arg(long)]
    stream: bool,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_tokens: u32,
    /// Print exactly one JSON object on stdout: `model`, `requests`, `succeeded`, `failed`,
    /// `attempts`, `attempts_reached_server`, `attempts_by_class`, `rate_limited_responses`,
    /// `client_side_failures`, `client_side_by_kind`, `server_acknowledged_failures_by_class`,
    /// `elapsed_s`, `latency_ms` (`p50`, `p99`, `max`), `failures_by_class`, and, with
    /// `--fallback`, `answered_by` (calls per model that answered them).
    #[arg(long)]
    json: bool,
    /// Attempts per call, the first included.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: Option<u32>,
    /// A model to fall back to, in order, when --model (and the fallbacks before) are open,
    /// cooling down or failing; repeat for more. Each model gets a circuit breaker; kinds are
    /// read from the ids (see `firebreak::route`).
    #[arg(long = "fallback", value_name = "MODEL")]
    fallback: Vec<String>,
}

/// What one call ended with: success, or the class of its failure.
/// A failure after a successful response head (a stream error event, a stalled body) is marked
/// `mid_body`: the stack's attempt counter saw a success there, so the breakdown adds it.
type CallResult = Result<(), Failure>;

#[derive(Debug, Clone, Copy)]
struct Failure {
    class: &'static str,
    mid_body: bool,
}

fn failed(class: &'static str) -> CallResult {
    Err(Failure {
        class,
        mid_body: false,
    })
}

pub(crate) async fn run(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = api_key(args.api_key.as_deref())?.ok_or(
        "no API key: set FIREWORKS_API_KEY (or pass --api-key, which the process list shows)",
    )?;
    let base = base_url("--base-url", &args.base_url)?;
    let t = args.timeouts.resolve()?;
    let mut stack = Stack {
        timeouts: t,
        ..Stack::preset(args.timeouts.preset.workload())
    };
    if let Some(n) = args.max_attempts {
        stack.retry.max_attempts = n;
    }
    let stack = args.fleet.apply(stack)?;
    // The stack's own metrics count attempts, 429s and client-side failures; a recorder local
    // to this command receives them (the handles are bound when the client is built).
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // With fallbacks, calls name the primary model and go through its chain; the path is then
    // relative to the targets' base URL.
    let (svc, url) = if args.fallback.is_empty() {
        let client =
            metrics::with_local_recorder(&recorder, || FireworksClient::new(&base, key, stack))?;
        (client.service(), format!("{base}/chat/completions"))
    } else {
        let models: Vec<&str> = std::iter::once(args.model.as_str())
            .chain(args.fallback.iter().map(String::as_str))
            .collect();
        let cfg =
            firebreak::route::RouteConfig::new().fallbacks(args.model.as_str(), &base, &models);
        let router = metrics::with_local_recorder(&recorder, || {
            firebreak::route::Router::new(cfg, stack, Some(key), &Default::default())
        })?;
        (
            firebreak::BoxStack::new(router),
            "/chat/completions".to_owned(),
        )
    };
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(args.requests))
    };
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} {elapsed}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let url = Arc::new(url);
    let t0 = Instant::now();
    let results: Vec<(CallResult, Duration, Option<String>)> = futures_util::stream::iter(
        0..args.requests,
    )
    .map(|i| {
        let (svc, url, bar) = (svc.clone(), url.clone(), bar.clone());
        let body = serde_json::json!({
            "model": args.model,
            "messages": [{"role": "user", "content": "Write one sentence about reliability."}],
            "max_tokens": args.max_tokens,
            "stream": args.stream,
            "user": format!("req-{i:06}"),
        });
        async move {
            let t = Instant::now();
            let req = Request::post(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())));
            let mut by = None;
            let r: CallResult = match req {
                Err(_) => failed("other"),
                Ok(req) => match svc.oneshot(req).await {
                    Ok(resp) => {
                        by = resp
                            .extensions()
                            .get::<firebreak::route::AnsweredBy>()
                            .map(|a| a.model.to_string());
                        let class = Classification::class_of(&resp);
                        let status = resp.status();
                        match resp.into_body().collect().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(_) => failed(class.label()),
                            Err(e) => Err(Failure {
                                class: e.class().label(),
                                mid_body: status.is_success(),
                            }),
                        }
                    }
                    Err(e) => failed(e.class().label()),
                },
            };
            bar.inc(1);
            (r, t.elapsed(), by)
        }
    })
    .buffer_unordered(args.concurrency as usize)
    .collect()
    .await;
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mut by_class: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut answered_by: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, by) in &results {
        if let Some(m) = by {
            *answered_by.entry(m.as_str()).or_default() += 1;
        }
    }
    for (r, _, _) in &results {
        if let Err(f) = r {
            *by_class.entry(f.class).or_default() += 1;
        }
    }
    let succeeded = results.iter().filter(|r| r.0.is_ok()).count();
    let mut seen = Seen::read(&snapshotter);
    for (r, _, _) in &results {
        if let Err(Failure {
            class,
            mid_body: true,
        }) = r
        {
            *seen.server_failures.entry(class.to_string()).or_default() += 1;
        }
    }
    let summary = serde_json::json!({
        "model": args.model,
        "requests": results.len(),
        "succeeded": succeeded,
        "failed": results.len() - succeeded,
        "attempts": seen.attempts,
        "attempts_reached_server": seen.reached_server,
        "attempts_by_class": seen.attempts_by_class,
        "rate_limited_responses": seen.rate_limited,
        "client_side_failures": seen.client_side.values().sum::<u64>(),
        "client_side_by_kind": seen.client_side,
        "server_acknowledged_failures_by_class": seen.server_failures,
        "elapsed_s": elapsed,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0.0)},
        "failures_by_class": by_class,
    });
    let mut summary = summary;
    if !args.fallback.is_empty() {
        summary["answered_by"] = serde_json::json!(answered_by);
    }
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{} requests: {} succeeded, {} failed in {:.1} s; {} attempts, {} 429s received, {} client-side failures",
            results.len(),
            succeeded,
            results.len() - succeeded,
            elapsed,
            summary["attempts"],
            summary["rate_limited_responses"],
            summary["client_side_failures"]
        );
        println!(
            "latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or(0.0)
        );
        for (c, n) in &by_class {
            println!("  {c}: {n}");
        }
        for (m, n) in &answered_by {
            println!("  answered by {m}: {n}");
        }
        println!("{}", breakdown(&seen));
    }
    if succeeded == 0 {
        return Err(format!("all {} calls failed", results.len()).into());
    }
    Ok(())
}
