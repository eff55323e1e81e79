//! Every phase under paused time, against tower-test mocks and channel bodies.

use bytes::Bytes;
use firebreak::timeout::*;
use firebreak::{Class, Deadline, Error, TimeoutError, TimeoutPhase};
use firebreak_testkit::bounded;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

type Chunk = Result<Frame<Bytes>, std::io::Error>;
type ChanBody = StreamBody<Pin<Box<dyn futures_util::Stream<Item = Chunk> + Send>>>;

/// A body fed by a channel: the test decides when each frame arrives and when it ends.
fn chan_body() -> (mpsc::Sender<Chunk>, ChanBody) {
    let (tx, rx) = mpsc::channel(16);
    let s =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, StreamBody::new(Box::pin(s)))
}

fn data(s: &'static str) -> Chunk {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

fn cfg() -> TimeoutConfig {
    TimeoutConfig::default()
        .connect(None)
        .ready(Some(Duration::from_secs(10)))
        .write(Some(Duration::from_secs(30)))
        .headers(Some(Duration::from_secs(20)))
        .first_event(Some(Duration::from_secs(15)))
        .idle(Some(Duration::from_secs(5)))
        .attempt(Some(Duration::from_secs(100)))
        .deadline(None)
}

fn phase_of(e: &Error) -> (TimeoutPhase, Duration) {
    let Class::Timeout(p) = e.class() else {
        panic!("not a timeout: {e:?}")
    };
    let t = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<TimeoutError>())
        .expect("TimeoutError source");
    assert_eq!(t.phase(), p);
    (p, t.after())
}

type Mock<B> = mock::Mock<Request<TimedRequestBody<B>>, Response<ChanBody>>;
type Handle<B> = mock::Handle<Request<TimedRequestBody<B>>, Response<ChanBody>>;

fn attempt_svc<B>(c: &TimeoutConfig) -> (AttemptTimeout<Mock<B>>, Handle<B>) {
    let (m, h) = mock::pair();
    (AttemptTimeoutLayer::new(c).unwrap().layer(m), h)
}

fn sse_response(body: ChanBody) -> Response<ChanBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn ready_wait_times_out_as_a_client_side_pool_timeout() {
    bounded(3600, async {
        let (mut svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        h.allow(0);
        let t0 = Instant::now();
        let e = futures_util::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .unwrap_err();
        assert_eq!(phase_of(&e), (TimeoutPhase::Ready, Duration::from_secs(10)));
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert!(e.is_client_side() && e.is_retryable());
        // Once capacity appears, readiness is immediate and the timer starts afresh.
        h.allow(1);
        futures_util::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn headers_timeout_fires_when_no_head_arrives() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        let t0 = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::from_static(b"{}")))));
        let (_req, _send) = h.next_request().await.unwrap();
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(
            phase_of(&e),
            (TimeoutPhase::Headers, Duration::from_secs(20))
        );
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(20),
            "small bodies: headers timed from the call"
        );
        assert!(!e.is_client_side() && e.is_retryable());
        assert_eq!(e.to_string(), "response headers timeout after 20s");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_finishes_sending_is_a_write_timeout() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<ChanBody>(&cfg());
        let (tx, body) = chan_body();
        let t0 = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(body)));
        let (req, _send) = h.next_request().await.unwrap();
        // The "connection" reads what it is given; the caller sends one frame and then stalls.
        tokio::spawn(async move { req.into_body().collect().await });
        tx.send(data("part")).await.unwrap();
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(phase_of(&e), (TimeoutPhase::Write, Duration::from_secs(30)));
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        drop(tx);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn headers_are_timed_from_the_end_of_the_write() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<ChanBody>(&cfg());
        let (tx, body) = chan_body();
        let t0 = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(body)));
        let (req, _send) = h.next_request().await.unwrap();
        tokio::spawn(async move { req.into_body().collect().await });
        tokio::time::sleep(Duration::from_secs(25)).await;
        tx.send(data("last")).await.unwrap();
        drop(tx); // the body ends at t = 25 s
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(phase_of(&e).0, TimeoutPhase::Headers);
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(45),
            "25 s writing + 20 s for the head"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_head_is_timed_from_the_end_of_the_write_not_from_the_write_timer() {
    // The body ends at 5 s, long before the 30 s write timer: the 20 s head timer starts then,
    // so the attempt fails at 25 s, not when the write timer would have looked again.
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<ChanBody>(&cfg());
        let (tx, body) = chan_body();
        let t0 = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(body)));
        let (req, _send) = h.next_request().await.unwrap();
        tokio::spawn(async move { req.into_body().collect().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send(data("all")).await.unwrap();
        drop(tx);
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(phase_of(&e).0, TimeoutPhase::Headers);
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(25),
            "5 s writing + 20 s for the head"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn large_request_bodies_are_handed_over_in_zero_copy_pieces() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        let big = Bytes::from(vec![9u8; 200 * 1024]);
        let ptr = big.as_ptr();
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(big))));
        let (req, send) = h.next_request().await.unwrap();
        let mut body = req.into_body();
        let mut sizes = Vec::new();
        let mut first_ptr = None;
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            first_ptr.get_or_insert(d.as_ptr());
            sizes.push(d.len());
        }
        assert_eq!(sizes, [65536, 65536, 65536, 8192]);
        assert_eq!(
            first_ptr,
            Some(ptr),
            "slices of the caller's buffer, not copies"
        );
        let (_tx, rb) = chan_body();
        send.send_response(Response::new(rb));
        call.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn idle_resets_with_each_frame_and_fires_on_a_stall() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
        let (_req, send) = h.next_request().await.unwrap();
        let (tx, body) = chan_body();
        send.send_response(sse_response(body));
        let mut body = call.await.unwrap().unwrap().into_body();
        let t0 = Instant::now();
        // Ten frames 4 s apart: 40 s in all, far past the 5 s idle timeout, yet never idle 5 s.
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(data("data: {\"choices\":[]}\n\n")).await.unwrap();
            }
            tx // keep the channel open: then the stream stalls
        });
        let mut got = 0;
        let err = loop {
            match body.frame().await.unwrap() {
                Ok(f) => {
                    assert_eq!(f.into_data().unwrap(), "data: {\"choices\":[]}\n\n");
                    got += 1;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(
            got, 10,
            "every frame before the stall reached the caller intact"
        );
        assert_eq!(phase_of(&err), (TimeoutPhase::Idle, Duration::from_secs(5)));
        assert_eq!(t0.elapsed(), Duration::from_secs(45));
        assert!(
            !err.is_retryable(),
            "never retried once body bytes reached the caller"
        );
        drop(feeder);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn keepalives_do_not_count_as_the_first_event() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
        let (_req, send) = h.next_request().await.unwrap();
        let (tx, body) = chan_body();
        send.send_response(sse_response(body));
        let mut body = call.await.unwrap().unwrap().into_body();
        let t0 = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if tx.send(data(": keep-alive\n\n")).await.is_err() {
                    break;
                }
            }
        });
        let err = loop {
            if let Err(e) = body.frame().await.unwrap() {
                break e;
            }
        };
        assert_eq!(
            phase_of(&err),
            (TimeoutPhase::FirstEvent, Duration::from_secs(15))
        );
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(15),
            "idle never fired: keep-alives kept coming"
        );
        feeder.abort();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_first_event_timer_applies_only_to_sse() {
    bounded(3600, async {
        let mut c = cfg();
        c.idle = Some(Duration::from_secs(50));
        let (svc, mut h) = attempt_svc::<Full<Bytes>>(&c);
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
        let (_req, send) = h.next_request().await.unwrap();
        let (tx, body) = chan_body();
        send.send_response(Response::new(body)); // not text/event-stream
        let mut body = call.await.unwrap().unwrap().into_body();
        let t0 = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(phase_of(&err).0, TimeoutPhase::Idle);
        assert_eq!(t0.elapsed(), Duration::from_secs(50));
        drop(tx);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_attempt_total_cuts_a_stream_that_never_ends() {
    bounded(3600, async {
        let (svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        let t0 = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
        let (_req, send) = h.next_request().await.unwrap();
        let (tx, body) = chan_body();
        send.send_response(sse_response(body));
        let mut body = call.await.unwrap().unwrap().into_body();
        let feeder = tokio::spawn(async move {
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.send(data("data: {}\n\n")).await.is_err() {
                    break;
                }
            }
        });
        let err = loop {
            if let Err(e) = body.frame().await.unwrap() {
                break e;
            }
        };
        assert_eq!(
            phase_of(&err),
            (TimeoutPhase::Attempt, Duration::from_secs(100))
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(100));
        feeder.abort();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_bounds_the_attempt_and_is_visible_below() {
    bounded(3600, async {
        let (m, mut h) = mock::pair::<Request<TimedRequestBody<Full<Bytes>>>, Response<ChanBody>>();
        let svc = DeadlineLayer::new(Duration::from_secs(8))
            .unwrap()
            .layer(AttemptTimeoutLayer::new(&cfg()).unwrap().layer(m));
        let t0 = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(Full::new(Bytes::new()))));
        let (req, _send) = h.next_request().await.unwrap();
        let dl = Deadline::of(&req).expect("the deadline travels with the request");
        assert_eq!(dl.remaining(), Duration::from_secs(8));
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(
            phase_of(&e),
            (TimeoutPhase::Deadline, Duration::from_secs(8))
        );
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(8),
            "the 8 s deadline beat the 20 s headers timeout"
        );
        assert!(!e.is_retryable());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_fails_fast_without_calling_the_inner_service() {
    bounded(3600, async {
        let (mut svc, mut h) = attempt_svc::<Full<Bytes>>(&cfg());
        let mut req = Request::new(Full::new(Bytes::new()));
        Deadline::after(Duration::from_secs(1)).apply(&mut req);
        tokio::time::sleep(Duration::from_secs(2)).await;
        h.allow(1);
        futures_util::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .unwrap();
        let e = svc.call(req).await.unwrap_err();
        assert_eq!(phase_of(&e).0, TimeoutPhase::Deadline);
        assert!(e.to_string().contains("the attempt was not started"), "{e}");
        assert!(
            tokio::time::timeout(Duration::from_millis(1), h.next_request())
                .await
                .is_err(),
            "no attempt was made"
        );
    })
    .await
}

/// What the retry layer does before a backoff sleep: check it fits, then sleep.
async fn backoff_sleep(req: &Request<()>, wait: Duration) -> Result<(), Error> {
    if let Some(dl) = Deadline::of(req) {
        dl.check_wait(wait, Duration::ZERO)?;
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cuts_short_a_backoff_that_cannot_finish_in_time() {
    bounded(3600, async {
        let mut req = Request::new(());
        Deadline::after(Duration::from_secs(10)).apply(&mut req);
        let t0 = Instant::now();
        backoff_sleep(&req, Duration::from_secs(4)).await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(4),
            "a wait that fits is taken in full"
        );
        let e = backoff_sleep(&req, Duration::from_secs(8))
            .await
            .unwrap_err();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(4),
            "a wait that cannot fit fails at once, not after 8 s"
        );
        assert_eq!(phase_of(&e).0, TimeoutPhase::Deadline);
        assert!(
            e.to_string()
                .contains("not waiting 8s: only 6s of the 10s deadline is left"),
            "{e}"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn deadlines_only_get_shorter() {
    let mut req = Request::new(());
    Deadline::after(Duration::from_secs(5)).apply(&mut req);
    let kept = Deadline::after(Duration::from_secs(50)).apply(&mut req);
    assert_eq!(kept.total(), Duration::from_secs(5));
    let shorter = Deadline::after(Duration::from_secs(2)).apply(&mut req);
    assert_eq!(Deadline::of(&req), Some(shorter));
}
