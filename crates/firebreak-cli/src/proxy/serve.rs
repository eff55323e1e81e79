//! The accept loop: a cap on connections, the connection timers, and graceful shutdown.

use super::conn::{ConnLimits, ConnState, GuardedIo, Shedder};
use super::steps::Peer;
use super::{MAX_HEAD, Shared};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// SIGTERM (what containers send) or SIGINT.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How the accept loop runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// The connection timers.
    pub(crate) limits: ConnLimits,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// How long shutdown lets in-flight streams finish.
    pub(crate) grace: Duration,
}

/// The accept loop: a connection cap, the connection timers, graceful shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let stack = super::stack(&shared);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let shedder = Shedder::default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_warn: Option<Instant> = None;
    // Runs until the shutdown signal; each turn accepts one connection or backs off.
    loop {
        let slot = tokio::select! {
            s = slot(&slots, &shedder) => s,
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                back_off(&e, &mut last_warn).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = ConnState::new();
        let io = GuardedIo::new(stream, state.clone(), settings.limits, shedder.clone());
        let svc = per_connection(stack.clone(), state, peer);
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(io), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    drain(graceful, &shared, settings.grace).await;
}

/// A connection slot. At the cap, closes the idle connections to make room (again every
/// 100 ms while waiting, for the ones that turn idle), and stops accepting: further
/// connections wait in the kernel's backlog until a slot is free.
async fn slot(slots: &Arc<Semaphore>, shedder: &Shedder) -> OwnedSemaphorePermit {
    if let Ok(s) = slots.clone().try_acquire_owned() {
        return s;
    }
    let mut wait = std::pin::pin!(slots.clone().acquire_owned());
    // Bounded by the connections in flight: each one that ends frees a slot.
    loop {
        shedder.shed();
        tokio::select! {
            s = &mut wait => match s {
                Ok(s) => return s,
                // The semaphore is never closed: wait for the shutdown signal instead.
                Err(_) => std::future::pending::<()>().await,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// After a failed accept: out of file descriptors or memory, say so (once a second at most)
/// and give connections in flight time to finish, instead of spinning or dying.
async fn back_off(e: &std::io::Error, last_warn: &mut Option<Instant>) {
    if matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
        tracing::warn!(error = %e, "cannot accept a connection; backing off");
        *last_warn = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Graceful shutdown: in-flight requests get `grace` to finish; then streams are cut (with
/// an SSE error event) and the process waits 5 s more at most.
async fn drain(
    graceful: hyper_util::server::graceful::GracefulShutdown,
    shared: &Shared,
    grace: Duration,
) {
    tracing::info!(
        connections = graceful.count(),
        grace_s = grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    let drained = graceful.shutdown();
    let mut drained = std::pin::pin!(drained);
    tokio::select! {
        () = &mut drained => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over: cutting the remaining streams");
            shared.cut.cancel();
            if tokio::time::timeout(Duration::from_secs(5), &mut drained).await.is_err() {
                tracing::warn!("connections still open after the cut; exiting anyway");
            }
        }
    }
    tracing::info!("shut down");
}

/// The proxy's stack for one connection: each request carries the connection's state and
/// peer to the steps.
fn per_connection(
    stack: super::ProxyService,
    state: Arc<ConnState>,
    peer: std::net::SocketAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = super::step::Answer,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<super::step::Answer, std::convert::Infallible>>
             + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(state.clone());
        req.extensions_mut().insert(Peer(peer));
        tower::ServiceExt::oneshot(stack.clone(), req)
    })
}
