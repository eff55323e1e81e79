//! Logs: a tracing subscriber on stderr that honours `RUST_LOG` (default `info`). Request
//! headers are never logged.

/// Installs the subscriber once; later calls do nothing.
pub(crate) fn init() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
