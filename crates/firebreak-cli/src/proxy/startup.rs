//! Startup: the flags checked and turned into the shared state, the stack built, the
//! listener bound.

use super::conn::ConnLimits;
use super::flags::ProxyArgs;
use super::{Shared, exporter, guard, metrics, serve};
use crate::args::{api_key, base_url};
use firebreak::{
    FireworksClient, Stack, client::ClientConfig, timeout::TimeoutConfig, timeout::Workload,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The caller tokens named by `--auth-token-env`.
fn tokens(names: &[String]) -> Result<Vec<guard::Token>, String> {
    let mut out = Vec::new();
    for n in names {
        let v = std::env::var(n).map_err(|_| {
            format!("--auth-token-env {n}: the environment variable {n} is not set")
        })?;
        let before = out.len();
        out.extend(
            v.split([',', ' ', '\n', '\t'])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(guard::Token::new),
        );
        if out.len() == before {
            return Err(format!("--auth-token-env {n}: the variable holds no token"));
        }
    }
    Ok(out)
}

fn secs_flag(name: &str, v: f64) -> Result<Duration, String> {
    crate::args::secs(name, Some(v)).map(|d| d.unwrap_or_default())
}

/// Every field the largest of the presets': the stack's own limits, which each request's
/// timers and deadline only ever shorten.
fn widest(presets: &[(Workload, TimeoutConfig)]) -> TimeoutConfig {
    let max =
        |f: fn(&TimeoutConfig) -> Option<Duration>| presets.iter().filter_map(|(_, t)| f(t)).max();
    TimeoutConfig::default()
        .connect(max(|t| t.connect))
        .ready(max(|t| t.ready))
        .write(max(|t| t.write))
        .headers(max(|t| t.headers))
        .first_event(max(|t| t.first_event))
        .idle(max(|t| t.idle))
        .attempt(max(|t| t.attempt))
        .deadline(max(|t| t.deadline))
}

async fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(s)
        .await
        .map_err(|e| format!("invalid --listen {s:?}: {e} (expected HOST:PORT)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("invalid --listen {s:?}: it names no address"))
}

pub(crate) async fn run(args: ProxyArgs) -> Result<(), Box<dyn std::error::Error>> {
    crate::logging::init();
    let key = api_key(args.api_key.as_deref())?;
    let upstream = base_url("--upstream", &args.upstream)?;
    let tokens = tokens(&args.auth_token_env)?;
    let listen = listen_addr(&args.listen).await?;
    if key.is_some() && tokens.is_empty() && !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {listen} with a configured key and no caller authentication: anyone who can reach it would use the key. Set --auth-token-env, or listen on loopback"
        )
        .into());
    }
    let limits = ConnLimits {
        keepalive: secs_flag("keepalive-timeout", args.keepalive_timeout)?,
        header: secs_flag("header-timeout", args.header_timeout)?,
        write_stall: secs_flag("write-stall-timeout", args.write_stall_timeout)?,
    };
    let grace = secs_flag("shutdown-grace", args.shutdown_grace)?;
    let default_t = args.timeouts.resolve()?;
    let default_preset = args.timeouts.preset.workload();
    let presets = presets(default_preset, default_t);
    let metrics = metrics::install()?;
    let stack = stack(&args, default_preset, default_t, &presets)?;
    let exporter = exporter(&args, key.as_ref())?;
    let router = match &args.config {
        None => None,
        Some(path) => Some(firebreak::route::Router::new(
            crate::routes::load(path, &upstream)?,
            stack.clone(),
            key.clone(),
            &ClientConfig::default(),
        )?),
    };
    let mode = auth_mode(key.is_some(), !tokens.is_empty());
    let auth = key.map(|k| firebreak::client::AuthLayer::new(k).if_missing());
    let client = FireworksClient::with_auth(&upstream, auth, stack, &ClientConfig::default())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    // One line on stdout (a supervisor may read just that line and close the pipe); the rest
    // goes to the log on stderr.
    println!("firebreak proxy listening on http://{addr} -> {upstream}; auth: {mode}");
    let shared = Arc::new(Shared {
        svc: client.service(),
        router,
        metrics: Some(metrics),
        scrub: scrubber(&upstream),
        upstream: upstream.into(),
        policy: guard::Policy {
            tokens,
            allowed_hosts: args
                .allowed_host
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        },
        default_preset,
        presets,
        max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        body_timeout: secs_flag("body-timeout", args.body_timeout)?,
        budget: Arc::new(Semaphore::new(
            usize::try_from(args.body_memory)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
        )),
        cut: CancellationToken::new(),
        warned: Mutex::new(HashSet::new()),
        exporter,
    });
    let settings = serve::Settings {
        limits,
        max_connections: args.max_connections as usize,
        grace,
    };
    serve::serve(listener, shared, settings, serve::shutdown_signal()).await;
    Ok(())
}

/// Every preset, the default one as the flags resolved it.
fn presets(default: Workload, resolved: TimeoutConfig) -> [(Workload, TimeoutConfig); 4] {
    [
        Workload::Interactive,
        Workload::Agentic,
        Workload::LongContext,
        Workload::BatchSubmit,
    ]
    .map(|w| {
        let t = if w == default {
            resolved
        } else {
            TimeoutConfig::preset(w)
        };
        (w, t)
    })
}

/// The one stack every preset runs through: one gate per (caller's key, model), so tenants are
/// isolated (the configured key, filled in below the gate, is used for callers that send none).
fn stack(
    args: &ProxyArgs,
    default_preset: Workload,
    default_t: TimeoutConfig,
    presets: &[(Workload, TimeoutConfig)],
) -> Result<Stack, Box<dyn std::error::Error>> {
    let mut stack = Stack::preset(default_preset)
        // Connecting is the upstream's matter, not the workload's: the connect timer lives in
        // the shared connector, so it is the resolved one (an explicit --connect-timeout
        // included), not the widest preset's.
        .timeouts(widest(presets).connect(default_t.connect))
        .key_by(firebreak::gate::KeyBy::ApiKeyAndModel)
        .model_labels(usize::from(args.model_labels));
    // SSE error events reach the caller as the upstream sent them.
    stack.sse_errors_as_failures = false;
    Ok(args.fleet.apply(stack)?)
}

/// The scraper of Fireworks' exporter, with `--scrape-account`.
fn exporter(
    args: &ProxyArgs,
    key: Option<&firebreak::client::ApiKey>,
) -> Result<Option<Arc<exporter::ExporterPage>>, Box<dyn std::error::Error>> {
    let Some(account) = &args.scrape_account else {
        return Ok(None);
    };
    let k = key
        .cloned()
        .ok_or("--scrape-account needs the Fireworks key: set FIREWORKS_API_KEY (or --api-key)")?;
    let base = base_url("--scrape-base-url", &args.scrape_base_url)?;
    let every = secs_flag("scrape-every", args.scrape_every)?;
    let scraper = firebreak_reconcile::Scraper::new(&base, account, k)?;
    Ok(Some(exporter::start(
        scraper,
        every.max(Duration::from_secs(1)),
    )))
}

/// How callers are authenticated, in words for the startup line.
fn auth_mode(key: bool, tokens: bool) -> &'static str {
    match (key, tokens) {
        (true, true) => {
            "callers must present a token (--auth-token-env); the configured key is sent in its place"
        }
        (true, false) => {
            "no caller authentication: the configured key is sent for any local caller that sends none (loopback only)"
        }
        (false, true) => {
            "callers must present a token (--auth-token-env); no key is configured, so the upstream sees none"
        }
        (false, false) => "no key configured: each caller's own key is passed through",
    }
}

/// Turns an error into words safe to show a caller: the upstream's address becomes `upstream`.
fn scrubber(upstream: &str) -> Arc<dyn Fn(&str) -> String + Send + Sync> {
    let authority = url::Url::parse(upstream)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some((format!("{host}:{}", u.port_or_known_default()?), host))
        })
        .unwrap_or_default();
    Arc::new(move |s: &str| {
        let s = s.replace(&authority.0, "upstream");
        if authority.1.is_empty() {
            s
        } else {
            s.replace(&authority.1, "upstream")
        }
    })
}
