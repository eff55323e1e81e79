//! The `firebreak` command.
//!
//! `firebreak load` drives a workload through the stack against any OpenAI-compatible endpoint.
//!
//! `firebreak demo` starts the embedded simulator with a realistic fault mix and runs the same
//! workload through a bare hyper client, the Fireworks docs' retry loop, and firebreak, then
//! prints them side by side. It needs no API key and no network.

mod args;
mod breakdown;
mod chat;
mod demo;
mod jobs;
mod load;
mod logging;
mod proxy;
mod reconcile;
mod routes;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "firebreak",
    version,
    about = "Reliable calls to the Fireworks AI inference API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the side-by-side demo against the embedded simulator (no API key, no network).
    Demo(demo::DemoArgs),
    /// Drive a workload through firebreak against any OpenAI-compatible endpoint.
    Load(load::LoadArgs),
    /// Serve a reliability sidecar in front of an OpenAI-compatible endpoint.
    Proxy(proxy::ProxyArgs),
    /// Ask one question and stream the answer to the terminal.
    Chat(chat::ChatArgs),
    /// Wait on long-running resources: reconnect a trainer job, wait for a deployment or a job.
    Jobs(jobs::JobsArgs),
    /// Put Fireworks' exported deployment metrics beside firebreak's own counts, per deployment
    /// and minute, and say where each failure happened.
    Reconcile(reconcile::ReconcileArgs),
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("firebreak: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::Jobs(args) => jobs::run(args).await,
            Command::Reconcile(args) => reconcile::run(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("firebreak: {e}");
        std::process::exit(1);
    }
}
