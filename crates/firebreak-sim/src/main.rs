//! The `firebreak-sim` binary: serve a scenario on an address until Ctrl-C.
//!
//! ```text
//! firebreak-sim --listen 127.0.0.1:8080 --scenario faults.json --log attempts.jsonl
//! ```
//! The scenario file is a JSON [`firebreak_sim::SimConfig`]; without one the server answers
//! every valid request normally. The attempt log is appended to `--log` as JSON lines once a
//! second and at shutdown.

use clap::Parser;
use firebreak_sim::{Sim, SimConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "firebreak-sim",
    version,
    about = "Fireworks-compatible fault-injecting server"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// JSON scenario file (a SimConfig).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Append every attempt to this file as JSON lines.
    #[arg(long)]
    log: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("firebreak-sim: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config: SimConfig = match &args.scenario {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read scenario {}: {e}", p.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("invalid scenario {}: {e}", p.display()))?
        }
        None => SimConfig::default(),
    };
    let sim = Sim::start_on(args.listen, config).await?;
    println!("firebreak-sim listening on {}", sim.base_url());
    let mut written = 0usize;
    let mut out = match &args.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stop = tokio::select! {
            _ = tokio::signal::ctrl_c() => true,
            _ = tick.tick() => false,
        };
        if let Some(f) = out.as_mut() {
            let new = sim.log_since(written);
            written += new.len();
            Sim::write_jsonl(&new, &mut *f)?;
        }
        if stop {
            break;
        }
    }
    if sim.log_dropped() > 0 {
        eprintln!(
            "firebreak-sim: {} attempts did not fit in the log",
            sim.log_dropped()
        );
    }
    sim.shutdown().await;
    Ok(())
}
