//! `firebreak reconcile`: Fireworks' exported deployment metrics beside firebreak's own counts,
//! per deployment and per window (see `firebreak_reconcile`).

use crate::args::{api_key, base_url};
use clap::Args;
use firebreak::{FireworksClient, Stack, client::ClientConfig};
use firebreak_reconcile::{
    ClientView, Exposition, FIREWORKS_API_URL, Reading, Report, Scraper, ServerView, fetch,
};
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `firebreak reconcile`. Exit status: 0 when the counts agree, 2 when they differ
/// (the report says where), 1 when the comparison could not be made.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReconcileArgs {
    /// The Fireworks account whose dedicated deployments to compare.
    #[arg(long)]
    account: String,
    /// Only this deployment: its id, or `accounts/{a}/deployments/{id}`.
    #[arg(long)]
    deployment: Option<String>,
    /// How long to watch, e.g. `15m`: a reading of both sides now and every `--every`, and a
    /// row per window. `0` compares the totals once, which is what both sides have counted
    /// since they started (right when firebreak is the deployment's only client, or with
    /// `--from` files). Default: 15m live, 0 with `--from` or `--client-json`.
    #[arg(long, value_parser = humantime::parse_duration)]
    window: Option<Duration>,
    /// Time between readings. The exporter refreshes every 30 s and allows 6 requests a
    /// minute, so 60 s (the default) is right against Fireworks.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// The exporter's page from a file (one reading) instead of scraping it.
    #[arg(long, value_name = "FILE.prom")]
    from: Option<PathBuf>,
    /// firebreak's counts: a running `firebreak proxy`'s /metrics URL, or a file holding such a
    /// page. Repeat for several proxies in front of the same deployments.
    #[arg(long = "client-metrics", value_name = "URL|FILE")]
    client_metrics: Vec<String>,
    /// firebreak's counts from a `firebreak load --json` output file (one reading). Repeatable.
    #[arg(long = "client-json", value_name = "FILE")]
    client_json: Vec<PathBuf>,
    /// Where the exporter lives.
    #[arg(long, default_value = FIREWORKS_API_URL)]
    base_url: String,
    /// API key for the exporter (default: the FIREWORKS_API_KEY environment variable). Never
    /// printed.
    #[arg(long)]
    api_key: Option<String>,
    /// Print exactly one JSON object on stdout (`rows`, `totals`, `agrees`, `verdict`).
    #[arg(long)]
    json: bool,
}

/// Where firebreak's counts come from.
struct ClientSources {
    urls: Vec<(FireworksClient, String)>,
    files: Vec<PathBuf>,
    load_json: Vec<ClientView>,
}

impl ClientSources {
    fn new(args: &ReconcileArgs) -> Result<ClientSources, String> {
        let mut urls = Vec::new();
        let mut files = Vec::new();
        for src in &args.client_metrics {
            if src.starts_with("http://") || src.starts_with("https://") {
                let url = base_url("--client-metrics", src)?;
                let mut stack = Stack::interactive();
                stack.model_labels = 0;
                stack.retry.max_attempts = 2;
                let client =
                    FireworksClient::with_auth(&url, None, stack, &ClientConfig::default())
                        .map_err(|e| format!("--client-metrics {url}: {e}"))?;
                urls.push((client, url));
            } else {
                files.push(PathBuf::from(src));
            }
        }
        let mut load_json = Vec::new();
        for f in &args.client_json {
            let text = read(f)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", f.display()))?;
            load_json
                .push(ClientView::from_load_json(&v).map_err(|e| format!("{}: {e}", f.display()))?);
        }
        Ok(ClientSources {
            urls,
            files,
            load_json,
        })
    }

    fn is_snapshot(&self) -> bool {
        !self.files.is_empty() || !self.load_json.is_empty()
    }

    async fn read(&self) -> Result<ClientView, String> {
        let mut view = ClientView::default();
        for (client, url) in &self.urls {
            let (text, _) = fetch(client, url).await.map_err(|e| e.to_string())?;
            let page = Exposition::parse(&text).map_err(|e| format!("{url}: {e}"))?;
            view.add(&ClientView::from_metrics(&page));
        }
        for f in &self.files {
            let page = Exposition::parse(&read(f)?).map_err(|e| format!("{}: {e}", f.display()))?;
            view.add(&ClientView::from_metrics(&page));
        }
        for v in &self.load_json {
            view.add(v);
        }
        Ok(view)
    }
}

fn read(f: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))
}

/// Where the exporter's counts come from.
enum ServerSource {
    File(PathBuf),
    Scrape(Box<Scraper>),
}

impl ServerSource {
    async fn read(&self, account: &str) -> Result<ServerView, String> {
        let page = match self {
            ServerSource::File(f) => {
                Exposition::parse(&read(f)?).map_err(|e| format!("{}: {e}", f.display()))?
            }
            ServerSource::Scrape(s) => s.scrape().await.map_err(|e| e.to_string())?,
        };
        Ok(ServerView::from_exporter(&page, account))
    }
}

pub(crate) async fn run(args: ReconcileArgs) -> Result<(), Box<dyn std::error::Error>> {
    let clients = ClientSources::new(&args)?;
    if args.client_metrics.is_empty() && args.client_json.is_empty() {
        return Err("no client side: pass --client-metrics URL (a running proxy's /metrics) or --client-json FILE (`firebreak load --json`)".into());
    }
    let server = match &args.from {
        Some(f) => ServerSource::File(f.clone()),
        None => {
            let key = api_key(args.api_key.as_deref())?.ok_or(
                "no API key for the exporter: set FIREWORKS_API_KEY (or pass --from FILE.prom)",
            )?;
            let base = base_url("--base-url", &args.base_url)?;
            ServerSource::Scrape(Box::new(Scraper::new(&base, &args.account, key)?))
        }
    };
    let snapshot = args.from.is_some() || clients.is_snapshot();
    let window = match args.window {
        Some(w) if snapshot && !w.is_zero() => {
            return Err("--from and --client-json are one reading each: use --window 0 (the default with them)".into());
        }
        Some(w) => w,
        None if snapshot => Duration::ZERO,
        None => Duration::from_secs(15 * 60),
    };
    if !window.is_zero() && (args.every.is_zero() || args.every > window) {
        return Err(format!(
            "--every must be more than 0 and at most --window ({})",
            humantime::format_duration(window)
        )
        .into());
    }
    let windows = if window.is_zero() {
        0
    } else {
        (window.as_secs_f64() / args.every.as_secs_f64()).floor() as usize
    };
    if windows > 10_000 {
        return Err(
            "--window / --every gives more than 10000 windows: choose a longer --every".into(),
        );
    }
    let mut readings = Vec::with_capacity(windows + 1);
    let start = tokio::time::Instant::now();
    for i in 0..=windows {
        if i > 0 {
            tokio::time::sleep_until(start + args.every * i as u32).await;
            if !args.json {
                eprintln!("firebreak reconcile: reading {i} of {windows}");
            }
        }
        let (client, server) = tokio::join!(clients.read(), server.read(&args.account));
        readings.push(Reading {
            client: client?,
            server: server?,
        });
    }
    let report = Report::from_readings(
        &readings,
        if windows == 0 {
            0
        } else {
            args.every.as_secs()
        },
        args.deployment.as_deref(),
    );
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    if !report.agrees() {
        std::process::exit(2);
    }
    Ok(())
}
