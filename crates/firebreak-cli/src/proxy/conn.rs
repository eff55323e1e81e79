//! One accepted connection's timers, enforced on its socket.
//!
//! A connection is in one of three phases:
//! - **idle**: no request in flight and no byte of the next one yet. It is closed after the
//!   keep-alive timeout.
//! - **head**: bytes of a request head have arrived, and the request is not dispatched yet. It
//!   is closed after the header timeout, counted from the first byte (a slow-header client
//!   cannot stretch it by dribbling).
//! - **busy**: a request is in flight. Reads are the request body's, timed by the handler.
//!
//! When the proxy is at its connection cap, idle connections are closed at once to make room
//! ([`Shedder::shed`]): otherwise a thousand idle keep-alives would lock everyone out until
//! their keep-alive timeout.
//!
//! In every phase, a write that makes no progress for the write-stall timeout (the caller
//! stopped reading) fails the connection. hyper then drops the response body, which releases
//! the upstream call and its 429-gate slot.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The connection timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) keepalive: Duration,
    pub(crate) header: Duration,
    pub(crate) write_stall: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle { since: Instant },
    Head { since: Instant },
    Busy { requests: usize },
}

/// The phase of one connection, shared by its socket and its in-flight requests.
#[derive(Debug)]
pub(crate) struct ConnState {
    phase: Mutex<Phase>,
    /// The deadline of the call whose response is being written, if it has one.
    deadline: Mutex<Option<Instant>>,
}

impl ConnState {
    pub(crate) fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
            }),
            deadline: Mutex::new(None),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Phase) -> R) -> R {
        let mut g = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A request was dispatched; the guard marks its end when dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.with(|p| {
            *p = match *p {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests + 1,
                },
                _ => Phase::Busy { requests: 1 },
            }
        });
        InFlight(self.clone())
    }

    fn bytes_read(&self) {
        self.with(|p| {
            if let Phase::Idle { .. } = p {
                *p = Phase::Head {
                    since: Instant::now(),
                };
            }
        });
    }

    /// When reading must have made progress by, what it is called, and whether the connection
    /// is idle, if the phase has a limit.
    fn read_limit(&self, l: &ConnLimits) -> Option<(Instant, &'static str, bool)> {
        self.with(|p| match *p {
            Phase::Idle { since } => Some((since + l.keepalive, "idle keep-alive timeout", true)),
            Phase::Head { since } => Some((since + l.header, "request header timeout", false)),
            Phase::Busy { .. } => None,
        })
    }
}

/// Asks every idle connection to close (at the connection cap).
#[derive(Debug, Clone, Default)]
pub(crate) struct Shedder(Arc<tokio::sync::Notify>);

impl Shedder {
    /// Closes the connections idle right now.
    pub(crate) fn shed(&self) {
        self.0.notify_waiters();
    }
}

/// A request in flight on a connection; dropped when its response is done.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl InFlight {
    /// The call's deadline: writing its response stops there, even to a caller that keeps
    /// reading slowly (never stalled long enough for the write-stall timeout).
    pub(crate) fn set_deadline(&self, at: Instant) {
        *self.0.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.0.with(|p| {
            if let Phase::Busy { requests } = p {
                *p = if *requests > 1 {
                    Phase::Busy {
                        requests: *requests - 1,
                    }
                } else {
                    Phase::Idle {
                        since: Instant::now(),
                    }
                };
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// A socket with the connection timers.
    pub(crate) struct GuardedIo<T> {
        #[pin]
        io: T,
        state: Arc<ConnState>,
        limits: ConnLimits,
        read_sleep: Option<(Instant, Pin<Box<Sleep>>)>,
        write_sleep: Option<Pin<Box<Sleep>>>,
        shedder: Shedder,
        shed: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    }
}

impl<T> GuardedIo<T> {
    pub(crate) fn new(io: T, state: Arc<ConnState>, limits: ConnLimits, shedder: Shedder) -> Self {
        GuardedIo {
            io,
            state,
            limits,
            read_sleep: None,
            write_sleep: None,
            shedder,
            shed: None,
        }
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// Polls the write timer after a write that made no progress: it fires at the write-stall
/// timeout from the start of the stall, or at the call's deadline if that comes first.
fn stalled(
    sleep: &mut Option<Pin<Box<Sleep>>>,
    after: Duration,
    state: &ConnState,
    cx: &mut Context<'_>,
) -> Poll<io::Error> {
    let deadline = *state.deadline.lock().unwrap_or_else(|e| e.into_inner());
    let s = sleep.get_or_insert_with(|| {
        let stall = Instant::now() + after;
        Box::pin(tokio::time::sleep_until(
            deadline.map_or(stall, |d| d.min(stall)),
        ))
    });
    match s.as_mut().poll(cx) {
        Poll::Ready(()) => {
            *sleep = None;
            let why = if deadline.is_some_and(|d| Instant::now() >= d) {
                "the call's deadline passed while its response was being written"
            } else {
                "write stalled: the caller stopped reading"
            };
            Poll::Ready(timed_out(why))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<T: AsyncRead> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.bytes_read();
                }
                *this.read_sleep = None;
                *this.shed = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((at, what, idle)) = this.state.read_limit(this.limits) else {
                    *this.read_sleep = None;
                    *this.shed = None;
                    return Poll::Pending;
                };
                if idle {
                    let shedder = &this.shedder;
                    let shed = this
                        .shed
                        .get_or_insert_with(|| Box::pin(shedder.0.clone().notified_owned()));
                    if shed.as_mut().poll(cx).is_ready() {
                        *this.shed = None;
                        return Poll::Ready(Err(timed_out(
                            "closed while idle: the proxy is at its connection cap",
                        )));
                    }
                } else {
                    *this.shed = None;
                }
                let (armed, sleep) = this
                    .read_sleep
                    .get_or_insert_with(|| (at, Box::pin(tokio::time::sleep_until(at))));
                if *armed != at {
                    *armed = at;
                    sleep.as_mut().reset(at);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out(what))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.io.poll_write(cx, buf) {
            Poll::Pending => {
                stalled(this.write_sleep, this.limits.write_stall, this.state, cx).map(Err)
            }
            ready => {
                *this.write_sleep = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.io.poll_write_vectored(cx, bufs) {
            Poll::Pending => {
                stalled(this.write_sleep, this.limits.write_stall, this.state, cx).map(Err)
            }
            ready => {
                *this.write_sleep = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.io.poll_flush(cx) {
            Poll::Pending => {
                stalled(this.write_sleep, this.limits.write_stall, this.state, cx).map(Err)
            }
            ready => {
                *this.write_sleep = None;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.io.poll_shutdown(cx) {
            Poll::Pending => {
                stalled(this.write_sleep, this.limits.write_stall, this.state, cx).map(Err)
            }
            ready => {
                *this.write_sleep = None;
                ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> ConnLimits {
        ConnLimits {
            keepalive: Duration::from_secs(60),
            header: Duration::from_secs(10),
            write_stall: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_keepalive_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, ConnState::new(), limits(), Shedder::default());
        let t = Instant::now();
        let e = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dribbled_head_is_cut_at_the_header_timeout_from_its_first_byte() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, ConnState::new(), limits(), Shedder::default());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                b.write_all(b"G").await.unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            b
        });
        let mut got = 0;
        let e = loop {
            match io.read(&mut [0u8; 8]).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(got >= 3, "bytes kept arriving: {got}");
        assert_eq!(e.to_string(), "request header timeout");
        assert_eq!(t.elapsed(), Duration::from_secs(10), "from the first byte");
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_read_limit_and_becomes_idle_after() {
        let (a, _b) = tokio::io::duplex(64);
        let state = ConnState::new();
        let mut io = GuardedIo::new(a, state.clone(), limits(), Shedder::default());
        let inflight = state.begin();
        let r = tokio::time::timeout(Duration::from_secs(600), io.read(&mut [0u8; 8])).await;
        assert!(r.is_err(), "no read timer while a request is in flight");
        drop(inflight);
        let t = Instant::now();
        let e = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(e.to_string(), "idle keep-alive timeout");
        assert_eq!(t.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn shedding_closes_idle_connections_only() {
        let shedder = Shedder::default();
        let (a, _a2) = tokio::io::duplex(64);
        let (b, _b2) = tokio::io::duplex(64);
        let busy_state = ConnState::new();
        let mut idle = GuardedIo::new(a, ConnState::new(), limits(), shedder.clone());
        let mut busy = GuardedIo::new(b, busy_state.clone(), limits(), shedder.clone());
        let _inflight = busy_state.begin();
        let t = Instant::now();
        let idle_read = tokio::spawn(async move { idle.read(&mut [0u8; 8]).await });
        let busy_read = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), busy.read(&mut [0u8; 8])).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        shedder.shed();
        let e = idle_read.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("connection cap"), "{e}");
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(1),
            "closed at once, not at 60 s"
        );
        assert!(
            busy_read.await.unwrap().is_err(),
            "a busy connection is left alone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_stops_at_the_calls_deadline_even_before_the_stall_timeout() {
        let (a, _b) = tokio::io::duplex(16);
        let state = ConnState::new();
        let mut io = GuardedIo::new(a, state.clone(), limits(), Shedder::default());
        let inflight = state.begin();
        inflight.set_deadline(Instant::now() + Duration::from_secs(2));
        let t = Instant::now();
        let e = loop {
            if let Err(e) = io.write_all(&[1u8; 16]).await {
                break e;
            }
        };
        assert!(e.to_string().contains("deadline"), "{e}");
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(2),
            "not the 30 s stall timeout"
        );
        drop(inflight);
        assert!(
            state.deadline.lock().unwrap().is_none(),
            "cleared with the request"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_reading_fails_the_write_after_the_stall_timeout() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut io = GuardedIo::new(a, ConnState::new(), limits(), Shedder::default());
        // A reader that takes 16 bytes every 20 s is slow but never stalled for 30 s.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                b.read_exact(&mut buf).await.unwrap();
            }
            b
        });
        let t = Instant::now();
        let e = loop {
            if let Err(e) = io.write_all(&[1u8; 16]).await {
                break e;
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // Written at 0, 20, 40, 60 s (the reader took three); the fifth write waits 30 s more.
        assert_eq!(t.elapsed(), Duration::from_secs(90));
        drop(reader.await.unwrap());
    }
}
