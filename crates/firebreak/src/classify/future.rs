//! The classify layer's response future.

use super::body::ClassifiedBody;
use super::layer::Config;
use crate::error::{Classification, Error};
use crate::parse::body::parse_error_body;
use crate::parse::sse::SseScanner;
use crate::transport::BoxError;
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Waiting { #[pin] fut: F },
        Reading {
            parts: Option<http::response::Parts>,
            body: Option<Pin<Box<B>>>,
            buf: VecDeque<Bytes>,
            len: usize,
            trailers: Option<HeaderMap>,
        },
        // An SSE success: read up to the first event, so that a stream whose first event is an
        // error (nothing reached the caller yet) is classified, and retried, like an error answer.
        Peeking {
            parts: Option<http::response::Parts>,
            body: Option<Pin<Box<B>>>,
            buf: VecDeque<Bytes>,
            len: usize,
            scanner: Option<Box<SseScanner>>,
        },
        Done,
    }
}

pin_project! {
    /// The future of [`Classify`](crate::classify::Classify).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        cfg: Config,
        host: Option<crate::error::HostLabel>,
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// Calls `svc` with `req` and classifies its answer: [`Classify`](crate::classify::Classify)'s
    /// step per call.
    pub(crate) fn call<S, R>(svc: &mut S, req: http::Request<R>, cfg: Config) -> Self
    where
        S: tower::Service<http::Request<R>, Future = F>,
    {
        let host = crate::error::HostLabel::of(req.uri());
        ResponseFuture {
            state: State::Waiting { fut: svc.call(req) },
            cfg,
            host,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ClassifiedBody<B>>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = std::task::ready!(self.as_mut().poll_classified(cx));
        let this = self.project();
        Poll::Ready(match out {
            // `errors_for_status`: the classified answer becomes the error, body parsed.
            Ok(resp)
                if this.cfg.errors_for_status && !Classification::class_of(&resp).is_success() =>
            {
                let e = Error::from_classification(&Classification::of(&resp));
                Err(match this.host {
                    Some(h) => e.with_host(h.as_str()),
                    None => e,
                })
            }
            out => out,
        })
    }
}

impl<F, B, E> ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_classified(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ClassifiedBody<B>>, Error>> {
        let mut this = self.project();
        // Bounded: each turn either changes state or reads one more frame of a bounded prefix.
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { fut } => {
                    let resp = ready!(fut.poll(cx)).map_err(|e| {
                        let err = Error::transport(e);
                        match this.host.take() {
                            Some(h) => err.with_host(h.as_str()),
                            None => err,
                        }
                    });
                    let resp = match resp {
                        Ok(r) => r,
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    match head(resp, this.cfg) {
                        Head::Ready(resp) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(resp));
                        }
                        Head::Then(next) => this.state.set(next),
                    }
                }
                StateProj::Reading {
                    parts,
                    body,
                    buf,
                    len,
                    trailers,
                } => {
                    let b = body.as_mut().expect("body present while reading");
                    let (ended, pending) = ready!(read_prefix(
                        b.as_mut(),
                        buf,
                        len,
                        trailers,
                        this.cfg.max_error_body,
                        cx,
                        |_| false
                    ));
                    let resp = error_answer(
                        parts.take().expect("parts present while reading"),
                        body.take().expect("body present while reading"),
                        (std::mem::take(buf), trailers.take()),
                        (ended, pending),
                        this.cfg.max_error_body,
                    );
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Peeking {
                    parts,
                    body,
                    buf,
                    len,
                    scanner,
                } => {
                    let b = body.as_mut().expect("body present while peeking");
                    let sc = scanner.as_mut().expect("scanner present while peeking");
                    let mut peek = Peek::new(this.cfg.sse_errors);
                    let mut trailers = None;
                    // Bounded by the error-body limit: a stream that sends no complete event
                    // within it is handed on as it is.
                    let (ended, body_error) = ready!(read_prefix(
                        b.as_mut(),
                        buf,
                        len,
                        &mut trailers,
                        this.cfg.max_error_body,
                        cx,
                        |d| peek.feed(sc, d),
                    ));
                    let resp = peeked(
                        parts.take().expect("parts present while peeking"),
                        body.take().expect("body present while peeking"),
                        (std::mem::take(buf), trailers),
                        (ended, body_error.or(peek.stream_error), peek.first_error),
                        scanner.take().filter(|_| this.cfg.sse_errors),
                    );
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// What peeking at an SSE success found.
struct Peek {
    sse_errors: bool,
    /// An error event before any content.
    first_error: Option<crate::ApiError>,
    /// An error event after content, when SSE errors end the body.
    stream_error: Option<Error>,
}

impl Peek {
    fn new(sse_errors: bool) -> Self {
        Peek {
            sse_errors,
            first_error: None,
            stream_error: None,
        }
    }

    /// Feeds one data frame to the scanner; true once the first event was seen.
    fn feed(&mut self, sc: &mut SseScanner, d: &[u8]) -> bool {
        match sc.feed(d) {
            Some(api) if sc.events() == sc.errors() => {
                self.first_error = Some(api);
                true
            }
            Some(api) => {
                if self.sse_errors {
                    self.stream_error = Some(Error::stream_error(api));
                }
                true
            }
            None => sc.events() > 0,
        }
    }
}

/// What an answer's head leads to.
enum Head<F, B> {
    /// The answer, at once.
    Ready(Response<ClassifiedBody<B>>),
    /// The state to go on in: an error answer's body is read first, an SSE success is peeked
    /// at first.
    Then(State<F, B>),
}

/// An answer's head: a plain success goes on at once.
fn head<F, B>(resp: Response<B>, cfg: &Config) -> Head<F, B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let status = resp.status();
    let (mut parts, body) = resp.into_parts();
    if status.as_u16() >= 400 {
        return Head::Then(State::Reading {
            parts: Some(parts),
            body: Some(Box::pin(body)),
            buf: VecDeque::new(),
            len: 0,
            trailers: None,
        });
    }
    let is_sse = crate::parse::is_event_stream(&parts.headers);
    if is_sse && status.as_u16() < 300 {
        return Head::Then(State::Peeking {
            parts: Some(parts),
            body: Some(Box::pin(body)),
            buf: VecDeque::new(),
            len: 0,
            scanner: Some(Box::new(SseScanner::new())),
        });
    }
    let sse = cfg.sse_errors && is_sse;
    // A gRPC failure answered "trailers-only" carries its status in the headers: classify it
    // like an HTTP error, so retry and the 429 gate see it. A plain success carries no
    // `Classification`: its absence means `Classification::success(status)`, and inserting one
    // would allocate the extensions map on every call (see `Classification::of`).
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        if let Some(c) =
            Classification::from_grpc_headers(status, &parts.headers, SystemTime::now())
        {
            parts.extensions.insert(c);
        }
    }
    let body = ClassifiedBody::direct(body, sse, cfg.sse_errors);
    Head::Ready(Response::from_parts(parts, body))
}

/// An error answer whose body's prefix was read: classified from it, the prefix replayed.
fn error_answer<B: Body>(
    mut parts: http::response::Parts,
    body: Pin<Box<B>>,
    (buf, trailers): (VecDeque<Bytes>, Option<HeaderMap>),
    (ended, pending): (bool, Option<Error>),
    max: usize,
) -> Response<ClassifiedBody<B>> {
    let prefix = contiguous_prefix(&buf, max);
    let api = parse_error_body(&prefix, !ended);
    let c =
        Classification::from_response(parts.status, &parts.headers, Some(api), SystemTime::now());
    parts.extensions.insert(c);
    let body = ClassifiedBody::replay(body, buf, trailers, ended, pending, None);
    Response::from_parts(parts, body)
}

/// An SSE success peeked at up to its first event: an error before any content classifies it
/// like an error answer; the scanner goes on (when SSE errors end the body) while nothing
/// failed yet.
fn peeked<B: Body>(
    mut parts: http::response::Parts,
    body: Pin<Box<B>>,
    (buf, trailers): (VecDeque<Bytes>, Option<HeaderMap>),
    (ended, mut pending, first_error): (bool, Option<Error>, Option<crate::ApiError>),
    scanner: Option<Box<SseScanner>>,
) -> Response<ClassifiedBody<B>> {
    let sse_errors = scanner.is_some();
    let keep_scanning = if let Some(api) = first_error {
        if sse_errors {
            pending = Some(Error::stream_error(api.clone()));
        }
        let c = Classification::success(parts.status).with_stream_error_before_content(api);
        parts.extensions.insert(c);
        None
    } else if pending.is_none() {
        scanner
    } else {
        None
    };
    let body = ClassifiedBody::replay(body, buf, trailers, ended, pending, keep_scanning);
    Response::from_parts(parts, body)
}

/// Reads `b`'s frames into `buf` (counting `len`) until `max` bytes, its end, its trailers, a body
/// error, or `stop` says so after a data frame. Ready with whether the body ended and the body
/// error, if any; the state it fills lives in the caller's, so a `Pending` resumes where it was.
fn read_prefix<B>(
    mut b: Pin<&mut B>,
    buf: &mut VecDeque<Bytes>,
    len: &mut usize,
    trailers: &mut Option<HeaderMap>,
    max: usize,
    cx: &mut Context<'_>,
    mut stop: impl FnMut(&Bytes) -> bool,
) -> Poll<(bool, Option<Error>)>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    while *len < max {
        match ready!(b.as_mut().poll_frame(cx)) {
            None => return Poll::Ready((true, None)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    *len += d.len();
                    let done = stop(&d);
                    buf.push_back(d);
                    if done {
                        break;
                    }
                }
                Err(f) => {
                    *trailers = f.into_trailers().ok();
                    return Poll::Ready((true, None));
                }
            },
            Some(Err(e)) => return Poll::Ready((true, Some(Error::body(e)))),
        }
    }
    Poll::Ready((false, None))
}

/// The first `max` bytes of `frames`, copied only when they span several frames.
fn contiguous_prefix(frames: &VecDeque<Bytes>, max: usize) -> Bytes {
    match frames.len() {
        0 => Bytes::new(),
        1 => frames[0].slice(..frames[0].len().min(max)),
        _ => {
            let mut v = Vec::with_capacity(max.min(frames.iter().map(Bytes::len).sum()));
            for f in frames {
                let room = max - v.len();
                v.extend_from_slice(&f[..f.len().min(room)]);
                if v.len() >= max {
                    break;
                }
            }
            Bytes::from(v)
        }
    }
}
