//! Bodies through the proxy: the request body read under a size limit, a time limit and a
//! memory budget shared by all connections; and the response body, which ends a cut event
//! stream with an OpenAI-shaped SSE `error` event and logs the request when it is done.

use super::conn::InFlight;
use bytes::{Buf, Bytes, BytesMut};
use firebreak::FireworksBody;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Why a request body was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Over `--max-body` (by its `Content-Length`, or as it arrived).
    TooLarge(usize),
    /// The bodies in flight already hold the whole `--body-memory` budget.
    Busy,
    /// Not all of it arrived within `--body-timeout`.
    Timeout(Duration),
    /// Truncated, or bad chunked framing.
    Malformed(String),
}

/// Reads a request body: refused before it is read (so before `100 Continue`) when its
/// `Content-Length` is over `max` or over what the budget has left; otherwise read under
/// `timeout`, taking budget as it arrives. The permit returns the budget when dropped.
pub(crate) async fn read_request<B>(
    body: B,
    content_length: Option<u64>,
    max: usize,
    budget: &Arc<Semaphore>,
    timeout: Duration,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut held: Option<OwnedSemaphorePermit> = None;
    if let Some(n) = content_length {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > max {
            return Err(ReadError::TooLarge(max));
        }
        if n > 0 {
            held = Some(take(budget, n)?);
        }
    }
    let prepaid = content_length.is_some();
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut buf = BytesMut::new();
        // Bounded by `max`: every frame adds to `buf`, and an over-limit one ends the loop.
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.map_err(|e| ReadError::Malformed(e.to_string()))?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.remaining() > max {
                return Err(ReadError::TooLarge(max));
            }
            if !prepaid {
                let p = take(budget, data.remaining())?;
                match &mut held {
                    Some(h) => h.merge(p),
                    None => held = Some(p),
                }
            }
            while data.has_remaining() {
                let chunk = data.chunk();
                buf.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => Ok((b, held)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReadError::Timeout(timeout)),
    }
}

fn take(budget: &Arc<Semaphore>, n: usize) -> Result<OwnedSemaphorePermit, ReadError> {
    let n = u32::try_from(n).map_err(|_| ReadError::Busy)?;
    budget
        .clone()
        .try_acquire_many_owned(n)
        .map_err(|_| ReadError::Busy)
}

/// The SSE `error` event the proxy ends a cut stream with, in the OpenAI error shape.
pub(crate) fn sse_error_event(message: &str, code: &str) -> Bytes {
    let data = serde_json::json!({
        "error": {"message": message, "type": "firebreak_error", "code": code, "param": null}
    });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// What the request log line says, written when the response is done (or dropped). Its
/// `outcome`: `ok`, `refused` (by the proxy), `cut` (the upstream broke off, a timer fired, or
/// shutdown), or `caller_gone` (the caller disconnected or stopped reading first).
#[derive(Debug)]
pub(crate) struct CallLog {
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) request_id: String,
    pub(crate) status: u16,
    pub(crate) attempts: u32,
    pub(crate) started: Instant,
    pub(crate) outcome: &'static str,
}

impl Drop for CallLog {
    fn drop(&mut self) {
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status,
            attempts = self.attempts,
            duration_ms = self.started.elapsed().as_millis() as u64,
            request_id = %self.request_id,
            outcome = self.outcome,
            "request"
        );
    }
}

/// A non-streaming answer, read whole before its head is sent.
pub(crate) enum Buffered {
    /// All of it.
    Whole(Bytes),
    /// Longer than the limit: what was read, and the rest still to come.
    Prefix(Bytes, FireworksBody),
    /// It broke off (or timed out) before its end.
    Failed(firebreak::Error),
}

/// Reads a non-streaming answer (a JSON completion: small) whole, up to `max` bytes, so that
/// one that breaks off mid-way becomes an OpenAI-shaped error instead of a truncated 200.
pub(crate) async fn buffer(mut body: FireworksBody, max: usize) -> Buffered {
    let mut buf = BytesMut::new();
    // Bounded by `max`: past it, the rest is streamed.
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => return Buffered::Whole(buf.freeze()),
            Some(Err(e)) => return Buffered::Failed(e),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
                if buf.len() > max {
                    return Buffered::Prefix(buf.freeze(), body);
                }
            }
        }
    }
}

/// A longer partial event is passed on as it is rather than held.
const MAX_PARTIAL: usize = 1 << 20;

enum Source {
    Full(Option<Bytes>),
    /// The upstream's body, after a prefix already read from it.
    Upstream(Option<Bytes>, FireworksBody),
}

/// What ends a response body early besides its upstream: shutdown, and the call's deadline.
pub(crate) struct Stop {
    /// Resolves when shutdown's grace is over.
    pub(crate) shutdown: WaitForCancellationFutureOwned,
    /// When the call must be over.
    pub(crate) deadline: Option<tokio::time::Instant>,
}

/// What one poll of a [`ProxyBody`] gives.
type Polled = Poll<Option<Result<Frame<Bytes>, std::io::Error>>>;

/// The response body the caller gets.
pub(crate) struct ProxyBody {
    source: Source,
    /// For an event stream: the part of an event not yet complete.
    sse: Option<BytesMut>,
    /// Resolves when shutdown's grace is over.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The call's deadline, checked on every poll: a caller that reads slowly (never stalling
    /// long enough for the write-stall timeout) still cannot hold the upstream past it.
    deadline: Option<tokio::time::Instant>,
    /// Turns an error into words safe to show (no upstream address).
    scrub: Arc<dyn Fn(&str) -> String + Send + Sync>,
    done: bool,
    /// The log line's outcome until the body says otherwise.
    outcome: &'static str,
    log: Option<CallLog>,
    _inflight: Option<InFlight>,
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("sse", &self.sse.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ProxyBody {
    /// A body the proxy wrote itself: an answer (`/healthz`, `/metrics`, a whole upstream
    /// answer), logged `ok` once it is sent.
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        Self::made(b.into(), "caller_gone")
    }

    /// A refusal the proxy wrote itself, logged `refused`.
    pub(crate) fn refusal(b: impl Into<Bytes>) -> Self {
        Self::made(b.into(), "refused")
    }

    fn made(b: Bytes, outcome: &'static str) -> Self {
        ProxyBody {
            source: Source::Full(Some(b)),
            sse: None,
            cut: None,
            deadline: None,
            scrub: Arc::new(|s: &str| s.to_owned()),
            done: false,
            outcome,
            log: None,
            _inflight: None,
        }
    }

    /// The upstream's body, after `prefix` (read from it already); `sse` when it is an event
    /// stream.
    pub(crate) fn upstream(
        prefix: Option<Bytes>,
        b: FireworksBody,
        sse: bool,
        stop: Stop,
        scrub: Arc<dyn Fn(&str) -> String + Send + Sync>,
    ) -> Self {
        ProxyBody {
            source: Source::Upstream(prefix, b),
            sse: sse.then(BytesMut::new),
            cut: Some(Box::pin(stop.shutdown)),
            deadline: stop.deadline,
            scrub,
            done: false,
            outcome: "caller_gone",
            log: None,
            _inflight: None,
        }
    }

    /// Gives the body the call's log line, written when it ends, and the connection's
    /// in-flight mark, held as long (a stream's deadline goes with it).
    pub(crate) fn attach(&mut self, mut log: CallLog, inflight: Option<InFlight>) {
        log.outcome = self.outcome;
        if let (Some(i), Some(d)) = (&inflight, self.deadline) {
            i.set_deadline(d);
        }
        self.log = Some(log);
        self._inflight = inflight;
    }

    /// The end of the body when the call's deadline passed or shutdown's grace is over: an
    /// SSE `error` event for a stream, an error for anything else.
    fn stopped(&mut self, cx: &mut Context<'_>) -> Option<Polled> {
        let (message, code, short) = if self
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            (
                "the call's deadline passed before the stream ended",
                "timeout_deadline",
                "deadline passed",
            )
        } else if self
            .cut
            .as_mut()
            .is_some_and(|cut| cut.as_mut().poll(cx).is_ready())
        {
            (
                "the proxy is shutting down and cut this stream after its grace period",
                "proxy_shutdown",
                "proxy shutting down",
            )
        } else {
            return None;
        };
        if self.sse.is_some() {
            return Some(self.end_with_error(message, code));
        }
        self.done = true;
        Some(Poll::Ready(Some(Err(std::io::Error::other(short)))))
    }

    fn end_with_error(
        &mut self,
        message: &str,
        code: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.done = true;
        if let Some(l) = &mut self.log {
            l.outcome = "cut";
        }
        tracing::warn!(
            code,
            error = message,
            "stream cut; ending it with an SSE error event"
        );
        Poll::Ready(Some(Ok(Frame::data(sse_error_event(message, code)))))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match &mut this.source {
            Source::Full(b) => {
                this.done = true;
                if let Some(l) = &mut this.log {
                    if l.outcome == "caller_gone" {
                        l.outcome = "ok";
                    }
                }
                return Poll::Ready(b.take().map(|b| Ok(Frame::data(b))));
            }
            Source::Upstream(prefix, _) => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
            }
        }
        if let Some(stop) = this.stopped(cx) {
            return stop;
        }
        let Source::Upstream(_, inner) = &mut this.source else {
            return Poll::Ready(None);
        };
        // Bounded: each turn consumes one upstream frame; it returns at the first complete event.
        loop {
            match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(l) = &mut this.log {
                        l.outcome = "ok";
                    }
                    let rest = this.sse.as_mut().map(|p| p.split().freeze());
                    return Poll::Ready(rest.filter(|r| !r.is_empty()).map(|r| Ok(Frame::data(r))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = format!(
                        "the upstream response broke off: {}",
                        (this.scrub)(&e.to_string())
                    );
                    if this.sse.is_some() {
                        let code = e.class().label();
                        return this.end_with_error(&msg, code);
                    }
                    this.done = true;
                    if let Some(l) = &mut this.log {
                        l.outcome = "cut";
                    }
                    return Poll::Ready(Some(Err(std::io::Error::other(msg))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(partial) = &mut this.sse else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    partial.extend_from_slice(&data);
                    let end = last_event_end(partial);
                    if end > 0 {
                        return Poll::Ready(Some(Ok(Frame::data(partial.split_to(end).freeze()))));
                    }
                    if partial.len() > MAX_PARTIAL {
                        return Poll::Ready(Some(Ok(Frame::data(partial.split().freeze()))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            // An event stream may gain an error event, so it gives no exact size.
            Source::Upstream(None, b) if self.sse.is_none() => b.size_hint(),
            Source::Upstream(..) => SizeHint::default(),
        }
    }
}

/// The end of the last complete event in `b` (after its blank line), or 0.
fn last_event_end(b: &[u8]) -> usize {
    let lf = b.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = b.windows(4).rposition(|w| w == b"\r\n\r\n").map(|i| i + 4);
    lf.max(crlf).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn log() -> CallLog {
        CallLog {
            method: http::Method::POST,
            path: "/v1/chat/completions".into(),
            request_id: "r".into(),
            status: 200,
            attempts: 1,
            started: Instant::now(),
            outcome: "ok",
        }
    }

    fn upstream(
        chunks: Vec<Result<&'static str, firebreak::Error>>,
        sse: bool,
    ) -> (ProxyBody, tokio_util::sync::CancellationToken) {
        let frames = chunks
            .into_iter()
            .map(|c| c.map(|s| Frame::data(Bytes::from_static(s.as_bytes()))));
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let token = tokio_util::sync::CancellationToken::new();
        let scrub: Arc<dyn Fn(&str) -> String + Send + Sync> =
            Arc::new(|s: &str| s.replace("10.1.2.3:443", "upstream"));
        let mut b = ProxyBody::upstream(
            None,
            body,
            sse,
            Stop {
                shutdown: token.clone().cancelled_owned(),
                deadline: None,
            },
            scrub,
        );
        b.attach(log(), None);
        (b, token)
    }

    async fn collect(b: ProxyBody) -> (String, bool) {
        let mut b = std::pin::pin!(b);
        let mut out = String::new();
        let mut failed = false;
        for _ in 0..100 {
            match b.frame().await {
                Some(Ok(f)) => out.push_str(std::str::from_utf8(f.data_ref().unwrap()).unwrap()),
                Some(Err(_)) => failed = true,
                None => break,
            }
        }
        (out, failed)
    }

    #[tokio::test]
    async fn a_cut_stream_ends_with_an_error_event_and_no_half_event() {
        let err = firebreak::Error::new(firebreak::Class::ResetMidBody).with_host("10.1.2.3:443");
        let (b, _t) = upstream(vec![Ok("data: {\"a\":1}\n\ndata: {\"b\""), Err(err)], true);
        let (out, failed) = collect(b).await;
        assert!(!failed, "the caller sees a clean end and an error event");
        assert!(
            out.starts_with("data: {\"a\":1}\n\nevent: error\ndata: "),
            "{out}"
        );
        assert!(!out.contains("{\"b\""), "the half event is not sent: {out}");
        assert!(!out.contains("10.1.2.3"), "no upstream address: {out}");
        assert!(out.contains("upstream"), "{out}");
        let data = out
            .lines()
            .find(|l| l.starts_with("data: {\"error"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&data[6..]).unwrap();
        assert_eq!(v["error"]["code"], "reset_mid_body");
    }

    #[tokio::test]
    async fn events_split_across_frames_are_joined_and_passed_on_whole() {
        let (b, _t) = upstream(
            vec![Ok("data: {\"a\""), Ok(":1}\n"), Ok("\ndata: [DONE]\n\n")],
            true,
        );
        let (out, failed) = collect(b).await;
        assert!(!failed);
        assert_eq!(out, "data: {\"a\":1}\n\ndata: [DONE]\n\n");
    }

    #[tokio::test]
    async fn a_non_stream_error_fails_the_body() {
        let (b, _t) = upstream(
            vec![
                Ok("{\"x\""),
                Err(firebreak::Error::new(firebreak::Class::ResetMidBody)),
            ],
            false,
        );
        let (out, failed) = collect(b).await;
        assert_eq!(out, "{\"x\"");
        assert!(failed);
    }

    #[tokio::test]
    async fn shutdown_cuts_a_stream_with_an_error_event() {
        let (b, t) = upstream(vec![Ok("data: {}\n\n")], true);
        t.cancel();
        let (out, _) = collect(b).await;
        assert!(out.contains("proxy_shutdown"), "{out}");
    }

    #[tokio::test]
    async fn the_budget_is_taken_as_bytes_arrive_and_given_back() {
        let budget = Arc::new(Semaphore::new(10));
        let body = http_body_util::Full::new(Bytes::from_static(b"0123456789AB"));
        let e = read_request(body, None, 100, &budget, Duration::from_secs(5)).await;
        assert!(matches!(e, Err(ReadError::Busy)));
        let body = http_body_util::Full::new(Bytes::from_static(b"01234"));
        let (b, permit) = read_request(body, Some(5), 100, &budget, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&b[..], b"01234");
        assert_eq!(budget.available_permits(), 5);
        drop(permit);
        assert_eq!(budget.available_permits(), 10);
        let body = http_body_util::Full::new(Bytes::from_static(b"x"));
        let e = read_request(body, Some(101), 100, &budget, Duration::from_secs(5)).await;
        assert!(matches!(e, Err(ReadError::TooLarge(100))));
    }
}
