//! The response body: whole, or a paced sequence of chunks that may be cut by a fault.
//!
//! Every body owns the attempt's [`LogGuard`], so the attempt is logged exactly once, when the
//! body ends or is dropped (a client that hangs up mid-stream still leaves a record).

use crate::log::AttemptRecord;
use crate::server::Shared;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Writes the attempt record when dropped, and releases the capacity slot it holds.
#[derive(Debug)]
pub(crate) struct LogGuard {
    pub(crate) shared: Arc<Shared>,
    pub(crate) record: AttemptRecord,
    /// The capacity slot it holds, if any.
    pub(crate) holds_capacity: Option<Slot>,
}

/// A capacity slot: the scenario's, or one of its deployments' (by index).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    Scenario,
    Deployment(usize),
}

impl Slot {
    /// The slot of `deployment` (`None`: the scenario's).
    pub(crate) fn of(deployment: Option<usize>) -> Slot {
        deployment.map_or(Slot::Scenario, Slot::Deployment)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.record.end_ms = self.shared.elapsed_ms(Instant::now());
        match self.holds_capacity {
            Some(Slot::Scenario) => {
                self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            Some(Slot::Deployment(i)) => {
                if let Some(n) = self.shared.deployment_in_flight.get(i) {
                    n.fetch_sub(1, Ordering::AcqRel);
                }
            }
            None => {}
        }
        let rec = std::mem::replace(&mut self.record, AttemptRecord::empty());
        self.shared.log.push(rec);
    }
}

impl AttemptRecord {
    fn empty() -> Self {
        AttemptRecord {
            seq: 0,
            t_ms: 0.0,
            end_ms: 0.0,
            request_id: None,
            attempt: 0,
            method: String::new(),
            path: String::new(),
            version: String::new(),
            status: 0,
            fault: None,
            body_hash: 0,
            body_len: 0,
            stream: false,
            bytes_sent: 0,
            completed: false,
            header_names: Vec::new(),
            model: None,
        }
    }
}

/// How a chunked body ends early.
#[derive(Debug, Clone)]
pub(crate) enum Cut {
    /// Stop sending for this long, then abort the connection.
    Stall(Duration),
    /// Reset the TCP connection.
    Reset,
    /// Send this event, then end the body.
    ErrorEvent(Bytes),
}

/// What happens when the body's timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSleep {
    /// Send the next chunk (token pacing).
    Send,
    /// End the stall by aborting the connection.
    Abort,
    /// Reset the connection.
    Reset,
}

const RESET_GRACE: Duration = Duration::from_millis(30);

/// The simulator's response body.
#[derive(Debug)]
pub struct SimBody {
    chunks: VecDeque<Bytes>,
    delay: Duration,
    sent: u32,
    cut: Option<(u32, Cut)>,
    sleep: Option<Pin<Box<Sleep>>>,
    after_sleep: AfterSleep,
    paced: bool,
    errored: bool,
    reset_flag: Option<Arc<AtomicBool>>,
    guard: Option<LogGuard>,
}

/// The error that aborts a body (and with it the connection).
#[derive(Debug, thiserror::Error)]
#[error("simulated connection fault")]
pub struct BodyAbort;

impl SimBody {
    pub(crate) fn full(bytes: Bytes, guard: LogGuard) -> Self {
        let mut chunks = VecDeque::with_capacity(1);
        if !bytes.is_empty() {
            chunks.push_back(bytes);
        }
        Self::chunked(chunks, Duration::ZERO, None, None, guard)
    }

    pub(crate) fn chunked(
        chunks: VecDeque<Bytes>,
        delay: Duration,
        cut: Option<(u32, Cut)>,
        reset_flag: Option<Arc<AtomicBool>>,
        guard: LogGuard,
    ) -> Self {
        SimBody {
            chunks,
            delay,
            sent: 0,
            cut,
            sleep: None,
            after_sleep: AfterSleep::Send,
            paced: false,
            errored: false,
            reset_flag,
            guard: Some(guard),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(g) = &mut self.guard {
            g.record.completed |= completed;
        }
        self.guard = None;
    }
}

impl http_body::Body for SimBody {
    type Data = Bytes;
    type Error = BodyAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAbort>>> {
        let this = self.get_mut();
        // Bounded: each turn sends a chunk, waits on a timer, applies the cut once, or ends.
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
                match std::mem::replace(&mut this.after_sleep, AfterSleep::Send) {
                    AfterSleep::Send => this.paced = true,
                    AfterSleep::Abort => {
                        this.finish(false);
                        return Poll::Ready(Some(Err(BodyAbort)));
                    }
                    AfterSleep::Reset => {
                        if let Some(f) = &this.reset_flag {
                            f.store(true, Ordering::Release);
                        }
                        this.chunks.clear();
                        this.finish(false);
                        return Poll::Ready(Some(Err(BodyAbort)));
                    }
                }
            }
            if this
                .cut
                .as_ref()
                .is_some_and(|(after, _)| this.sent >= *after)
            {
                let (_, cut) = this.cut.take().expect("checked above");
                match cut {
                    Cut::Stall(d) => {
                        this.after_sleep = AfterSleep::Abort;
                        this.sleep = Some(Box::pin(tokio::time::sleep(d)));
                        continue;
                    }
                    Cut::Reset => {
                        // A RST discards data the peer has not read yet: give the chunks
                        // already sent a moment to arrive, so the reset lands mid-body.
                        this.after_sleep = AfterSleep::Reset;
                        this.sleep = Some(Box::pin(tokio::time::sleep(RESET_GRACE)));
                        continue;
                    }
                    Cut::ErrorEvent(ev) => {
                        // The error event ends the stream: nothing follows it.
                        this.chunks.clear();
                        this.chunks.push_back(ev);
                        this.errored = true;
                    }
                }
            }
            if this.chunks.is_empty() {
                this.finish(!this.errored);
                return Poll::Ready(None);
            }
            if this.sent > 0 && !this.delay.is_zero() && !this.paced {
                this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
                continue;
            }
            this.paced = false;
            let chunk = this.chunks.pop_front().expect("checked non-empty");
            this.sent += 1;
            if let Some(g) = &mut this.guard {
                g.record.bytes_sent += chunk.len() as u64;
                // hyper may stop polling once `is_end_stream` is true, so the last chunk is
                // where a complete body is recorded.
                if this.chunks.is_empty() && this.cut.is_none() {
                    g.record.completed = !this.errored;
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.cut.is_none() && self.sleep.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.cut.is_none() && self.delay.is_zero() && self.chunks.len() <= 1 {
            SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

/// Splits a whole body into pieces of `size` bytes (for faults that cut a non-streamed body).
pub(crate) fn pieces(b: Bytes, size: usize) -> VecDeque<Bytes> {
    let mut out = VecDeque::new();
    let mut off = 0;
    while off < b.len() {
        let end = (off + size).min(b.len());
        out.push_back(b.slice(off..end));
        off = end;
    }
    out
}

impl From<BodyAbort> for io::Error {
    fn from(e: BodyAbort) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}
