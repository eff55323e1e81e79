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
    // The stack's own metrics count attempts, 429s and client-side failures; a recorder local
    // to this command receives them (the handles are bound when the client is built).
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (svc, url) = service(&args, &recorder)?;
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
    let results: Vec<Outcome> = futures_util::stream::iter(0..args.requests)
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
                let r = one_call(svc, &url, body).await;
                bar.inc(1);
                r
            }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    bar.finish_and_clear();
    let summary = summarize(&args, &results, t0.elapsed(), Seen::read(&snapshotter));
    if args.json {
        println!("{}", summary.json);
    } else {
        println!("{}", summary.text);
    }
    if summary.succeeded == 0 {
        return Err(format!("all {} calls failed", results.len()).into());
    }
    Ok(())
}

/// One call's end: its result, how long it took, and the model that answered (with fallbacks).
type Outcome = (CallResult, Duration, Option<String>);

/// The stack the calls go through, and the URL they are sent to. With fallbacks, calls name
/// the primary model and go through its chain; the path is then relative to the targets'
/// base URL.
fn service(
    args: &LoadArgs,
    recorder: &metrics_util::debugging::DebuggingRecorder,
) -> Result<(firebreak::BoxStack, String), Box<dyn std::error::Error>> {
    let key = api_key(args.api_key.as_deref())?.ok_or(
        "no API key: set FIREWORKS_API_KEY (or pass --api-key, which the process list shows)",
    )?;
    let base = base_url("--base-url", &args.base_url)?;
    let mut stack =
        (Stack::preset(args.timeouts.preset.workload())).timeouts(args.timeouts.resolve()?);
    if let Some(n) = args.max_attempts {
        stack.retry.max_attempts = n;
    }
    let stack = args.fleet.apply(stack)?;
    if args.fallback.is_empty() {
        let client =
            metrics::with_local_recorder(recorder, || FireworksClient::new(&base, key, stack))?;
        return Ok((client.service(), format!("{base}/chat/completions")));
    }
    let models: Vec<&str> = std::iter::once(args.model.as_str())
        .chain(args.fallback.iter().map(String::as_str))
        .collect();
    let cfg = firebreak::route::RouteConfig::new().fallbacks(args.model.as_str(), &base, &models);
    let router = metrics::with_local_recorder(recorder, || {
        firebreak::route::Router::new(cfg, stack, Some(key), &Default::default())
    })?;
    Ok((
        firebreak::BoxStack::new(router),
        "/chat/completions".to_owned(),
    ))
}

/// One call, its body read whole.
async fn one_call(svc: firebreak::BoxStack, url: &str, body: serde_json::Value) -> Outcome {
    let t = Instant::now();
    let req = Request::post(url)
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
    (r, t.elapsed(), by)
}

/// The run's summary, as JSON (`--json`) and as text.
struct Summary {
    json: serde_json::Value,
    text: String,
    succeeded: usize,
}

fn summarize(args: &LoadArgs, results: &[Outcome], elapsed: Duration, mut seen: Seen) -> Summary {
    let elapsed = elapsed.as_secs_f64();
    let mut lat: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mut by_class: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut answered_by: BTreeMap<&str, u64> = BTreeMap::new();
    for (r, _, by) in results {
        if let Some(m) = by {
            *answered_by.entry(m.as_str()).or_default() += 1;
        }
        if let Err(f) = r {
            *by_class.entry(f.class).or_default() += 1;
            if f.mid_body {
                *seen.server_failures.entry(f.class.to_owned()).or_default() += 1;
            }
        }
    }
    let succeeded = results.iter().filter(|r| r.0.is_ok()).count();
    let max = lat.last().copied().unwrap_or(0.0);
    let mut json = serde_json::json!({
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
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": max},
        "failures_by_class": by_class,
    });
    if !args.fallback.is_empty() {
        json["answered_by"] = serde_json::json!(answered_by);
    }
    let mut text = format!(
        "{} requests: {} succeeded, {} failed in {:.1} s; {} attempts, {} 429s received, {} client-side failures\n",
        results.len(),
        succeeded,
        results.len() - succeeded,
        elapsed,
        json["attempts"],
        json["rate_limited_responses"],
        json["client_side_failures"]
    );
    text += &format!(
        "latency p50 {:.0} ms, p99 {:.0} ms, max {max:.0} ms\n",
        pct(0.5),
        pct(0.99)
    );
    for (c, n) in &by_class {
        text += &format!("  {c}: {n}\n");
    }
    for (m, n) in &answered_by {
        text += &format!("  answered by {m}: {n}\n");
    }
    text += &breakdown(&seen);
    Summary {
        json,
        text,
        succeeded,
    }
}
