//! The `firebreak` command.
//!
//! The subcommands (`demo`, `load`, `proxy`, `chat`) arrive with the stack; until then each
//! one says so and exits with status 2 rather than pretending to work.

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
    Demo,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            eprintln!(
                "firebreak demo: not implemented yet; it needs the composed stack (see ARCHITECTURE.md). \
                 The simulator runs today: cargo run --release -p firebreak-sim"
            );
            std::process::exit(2);
        }
    }
}
