//! firebreak-sim over real loopback sockets, driven by a plain hyper client: every route and
//! every fault kind, checked against what the client received and what the server logged.

use bytes::Bytes;
use firebreak_sim::*;
use firebreak_testkit::*;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};

fn status(status: u16) -> Fault {
    Fault::status(status)
}

/// One chat completion through a plain client.
async fn chat(sim: &Sim, id: &str, stream: bool) -> Answer {
    send(
        &plain_client(),
        post(&sim.base_url(), CHAT, chat_body(id, stream)),
    )
    .await
    .unwrap()
}

fn cfg() -> SimConfig {
    SimConfig::default().api_key(KEY)
}

const CHAT: &str = "/chat/completions";

#[tokio::test]
async fn normal_routes_and_headers() {
    bounded(20, async {
        let sim = Sim::start(cfg()).await.unwrap();
        let c = plain_client();
        let base = sim.base_url();

        let a = send(&c, post(&base, CHAT, chat_body("req-1", false)))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        let v = a.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "tok0 tok1 tok2 tok3 "
        );
        for h in [
            "fireworks-prompt-tokens",
            "fireworks-cached-prompt-tokens",
            "fireworks-server-time-to-first-token",
            "fireworks-server-processing-time",
            "x-request-id",
        ] {
            assert!(a.header(h).is_some(), "missing {h}");
        }

        let a = send(
            &c,
            post(
                &base,
                "/completions",
                Bytes::from_static(br#"{"prompt":"x","max_tokens":2}"#),
            ),
        )
        .await
        .unwrap();
        assert_eq!(a.json()["object"], "text_completion");

        let a = send(
            &c,
            post(
                &base,
                "/embeddings",
                Bytes::from_static(br#"{"input":["a","b","c"]}"#),
            ),
        )
        .await
        .unwrap();
        assert_eq!(a.json()["data"].as_array().unwrap().len(), 3);

        let req = http::Request::get(format!("{base}/models"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(&c, req).await.unwrap();
        assert_eq!(a.json()["object"], "list");

        let a = send(&c, post(&base, "/nope", Bytes::new())).await.unwrap();
        assert_eq!(a.status, 404);
        let req = http::Request::get(format!("{base}{CHAT}"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&c, req).await.unwrap().status, 405);
        let a = send(&c, post(&base, CHAT, Bytes::from_static(b"{not json")))
            .await
            .unwrap();
        assert_eq!(a.status, 400);
        assert_eq!(sim.log().len(), 7);
    })
    .await
}

#[tokio::test]
async fn stream_has_role_delta_tokens_usage_last_and_done() {
    bounded(20, async {
        let sim = Sim::start(cfg()).await.unwrap();
        let a = chat(&sim, "s-1", true).await;
        assert_eq!(a.header("content-type"), Some("text/event-stream"));
        let events = sse_data(&a.body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks.len(), 4 + 2);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks[0]["choices"][0]["delta"]["content"].is_null());
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["usage"]["completion_tokens"], 4);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["usage"].is_null())
        );
        let rec = &sim.attempts_for("s-1")[0];
        assert!(rec.stream && rec.completed);
        assert_eq!(rec.bytes_sent, a.body.len() as u64);
    })
    .await
}

#[tokio::test]
async fn auth_is_checked() {
    bounded(20, async {
        let sim = Sim::start(cfg()).await.unwrap();
        let c = plain_client();
        let mut req = post(&sim.base_url(), CHAT, chat_body("a", false));
        req.headers_mut().remove("authorization");
        let a = send(&c, req).await.unwrap();
        assert_eq!(a.status, 401);
        assert_eq!(a.json()["error"]["code"], "UNAUTHORIZED");
        assert!(a.json()["request_id"].is_string());
        let mut req = post(&sim.base_url(), CHAT, chat_body("a", false));
        req.headers_mut()
            .insert("authorization", "Bearer fw_wrong".parse().unwrap());
        assert_eq!(send(&c, req).await.unwrap().status, 401);
        assert!(
            sim.log()
                .iter()
                .all(|r| r.status == 401 && r.fault.as_deref() == Some("auth"))
        );
    })
    .await
}

#[tokio::test]
async fn transient_5xx_are_seeded_and_reproducible() {
    bounded(30, async {
        let mut failing = Vec::new();
        for _run in 0..2 {
            let mut c = cfg().seed(42);
            for s in [500, 502, 503, 504] {
                c = c.fault(Trigger::Probability { p: 0.1 }, status(s));
            }
            let sim = Sim::start(c).await.unwrap();
            let client = plain_client();
            let mut statuses = Vec::new();
            for i in 0..200 {
                let a = send(
                    &client,
                    post(&sim.base_url(), CHAT, chat_body(&format!("r{i}"), false)),
                )
                .await
                .unwrap();
                statuses.push(a.status.as_u16());
            }
            let logged: Vec<u16> = sim.log().iter().map(|r| r.status).collect();
            assert_eq!(logged, statuses, "the log matches what the client saw");
            let n5 = statuses.iter().filter(|s| **s >= 500).count();
            // Four rules of 10% each: about 34% of attempts fail.
            assert!((40..100).contains(&n5), "{n5} failures of 200");
            for s in [500, 502, 503, 504] {
                assert!(statuses.contains(&s), "status {s} never injected");
            }
            failing.push(statuses);
        }
        assert_eq!(failing[0], failing[1], "same seed, same faults");
    })
    .await
}

#[tokio::test]
async fn first_attempts_trigger_recovers() {
    bounded(20, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 2 }, status(502)).await;
        let c = plain_client();
        let got: Vec<u16> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(
                    send(&c, post(&sim.base_url(), CHAT, chat_body("same", false)))
                        .await
                        .unwrap()
                        .status
                        .as_u16(),
                );
            }
            v
        };
        assert_eq!(got, [502, 502, 200]);
        let log = sim.attempts_for("same");
        assert_eq!(log.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(log.windows(2).all(|w| w[0].body_hash == w[1].body_hash));
    })
    .await
}

#[tokio::test]
async fn rate_limit_with_and_without_retry_after() {
    bounded(20, async {
        for (delay, header) in [
            (RateLimitDelay::RetryAfterSecs, Some("retry-after")),
            (RateLimitDelay::RetryAfterMs, Some("retry-after-ms")),
            (RateLimitDelay::RetryAfterFractional, Some("retry-after")),
            (RateLimitDelay::None, None),
        ] {
            // A slow refill so the test cannot race it: 1 token per 10 s, burst 3.
            let sim = Sim::start(cfg().rate_limit(RateLimitConfig::new(0.1, 3.0).delay(delay)))
                .await
                .unwrap();
            let c = plain_client();
            let mut answers = Vec::new();
            for i in 0..5 {
                answers.push(
                    send(
                        &c,
                        post(&sim.base_url(), CHAT, chat_body(&format!("q{i}"), false)),
                    )
                    .await
                    .unwrap(),
                );
            }
            let st: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
            assert_eq!(st, [200, 200, 200, 429, 429], "{delay:?}");
            assert_eq!(answers[0].header("x-ratelimit-limit-requests"), Some("6"));
            assert_eq!(
                answers[0].header("x-ratelimit-remaining-requests"),
                Some("2")
            );
            let r = &answers[3];
            assert_eq!(r.json()["error"]["code"], "RATE_LIMIT_EXCEEDED");
            assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
            match header {
                None => {
                    assert!(
                        r.header("retry-after").is_none() && r.header("retry-after-ms").is_none()
                    )
                }
                Some(h) => {
                    let v: f64 = r.header(h).unwrap().parse().unwrap();
                    // The next token frees in just under 10 s.
                    let secs = if h == "retry-after-ms" { v / 1000.0 } else { v };
                    assert!((9.0..=10.0).contains(&secs), "{delay:?}: {h} = {v}");
                }
            }
            assert_eq!(
                sim.log()
                    .iter()
                    .filter(|r| r.fault.as_deref() == Some("rate_limit"))
                    .count(),
                2
            );
        }
    })
    .await
}

#[tokio::test]
async fn capacity_limit_rejects_with_503_or_429() {
    bounded(20, async {
        for (reject, code) in [
            (CapacityReject::Overloaded503, 503),
            (CapacityReject::CapacityExceeded429, 429),
        ] {
            let sim = Sim::start(
                cfg()
                    .capacity(CapacityConfig {
                        max_in_flight: 2,
                        reject_with: reject,
                    })
                    .latency(Latency {
                        ttfb_ms: 300,
                        ..Latency::default()
                    }),
            )
            .await
            .unwrap();
            let c = plain_client();
            let base = sim.base_url();
            let tasks: Vec<_> = (0..5)
                .map(|i| {
                    let c = c.clone();
                    let req = post(&base, CHAT, chat_body(&format!("c{i}"), false));
                    tokio::spawn(async move { send(&c, req).await.unwrap() })
                })
                .collect();
            let mut ok = 0;
            let mut rejected = 0;
            for t in tasks {
                let a = t.await.unwrap();
                if a.status == 200 {
                    ok += 1;
                } else {
                    assert_eq!(a.status.as_u16(), code);
                    assert!(a.header("retry-after").is_none());
                    rejected += 1;
                }
            }
            assert_eq!((ok, rejected), (2, 3));
            assert_eq!(sim.in_flight(), 0, "capacity slots are released");
        }
    })
    .await
}

#[tokio::test]
async fn delay_headers_in_every_form_and_garbage() {
    bounded(20, async {
        let delay = vec![
            DelayHeader::RetryAfterMs { ms: 1500.5 },
            DelayHeader::RetryAfterSecs { secs: 2.0 },
            DelayHeader::RetryAfterDate { secs_from_now: 30 },
            DelayHeader::Raw {
                name: "x-ratelimit-reset-requests".into(),
                value: "6m0s".into(),
            },
            DelayHeader::Raw {
                name: "retry-after".into(),
                value: "-5".into(),
            },
            DelayHeader::Raw {
                name: "retry-after".into(),
                value: "soon, maybe".into(),
            },
            DelayHeader::Raw {
                name: "retry-after".into(),
                value: "99999999999999999999".into(),
            },
        ];
        let sim = sim_with(
            Trigger::Always,
            Fault::status(503).delay(delay).should_retry(Some(true)),
        )
        .await;
        let a = chat(&sim, "d", false).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.header("retry-after-ms"), Some("1500.5"));
        assert_eq!(a.header("x-should-retry"), Some("true"));
        assert_eq!(a.header("x-ratelimit-reset-requests"), Some("6m0s"));
        let ra: Vec<&str> = a
            .headers
            .get_all("retry-after")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(ra[0], "2");
        let date = httpdate::parse_http_date(ra[1]).expect("an HTTP-date");
        let ahead = date
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!((25..=31).contains(&ahead.as_secs()), "{ahead:?}");
        assert_eq!(&ra[2..], ["-5", "soon, maybe", "99999999999999999999"]);
    })
    .await
}

#[tokio::test]
async fn should_retry_false_is_sent() {
    bounded(20, async {
        let sim = sim_with(
            Trigger::Always,
            Fault::status(500).should_retry(Some(false)),
        )
        .await;
        let a = chat(&sim, "n", false).await;
        assert_eq!(a.header("x-should-retry"), Some("false"));
    })
    .await
}

#[tokio::test]
async fn non_retryable_statuses_with_their_codes() {
    bounded(20, async {
        for (s, code) in [
            (400, "INVALID_ARGUMENT"),
            (401, "UNAUTHORIZED"),
            (402, "PAYMENT_REQUIRED"),
            (403, "FORBIDDEN"),
            (404, "NOT_FOUND"),
            (412, "PRECONDITION_FAILED"),
            (413, "PAYLOAD_TOO_LARGE"),
        ] {
            let sim = sim_with(Trigger::Always, status(s)).await;
            let a = chat(&sim, "x", false).await;
            assert_eq!(a.status.as_u16(), s);
            let v = a.json();
            assert_eq!(v["error"]["code"], code, "{s}");
            assert_eq!(v["error"]["type"], "error");
            assert_eq!(
                v["error"]["param"],
                if s == 404 {
                    serde_json::json!("model")
                } else {
                    serde_json::Value::Null
                }
            );
        }
        let sim = sim_with(Trigger::Always, status(422)).await;
        let a = chat(&sim, "x", false).await;
        assert_eq!(a.status, 422);
        assert!(a.json()["detail"][0]["msg"].is_string(), "FastAPI shape");
    })
    .await
}

#[tokio::test]
async fn every_error_body_shape() {
    bounded(30, async {
        type Check = Box<dyn Fn(&Answer)>;
        let check: Vec<(ErrorShape, Check)> = vec![
            (
                ErrorShape::Gateway,
                Box::new(|a| assert_eq!(a.json()["error"]["code"], "SERVICE_UNAVAILABLE")),
            ),
            (
                ErrorShape::OldInference,
                Box::new(|a| {
                    assert_eq!(a.json()["error"]["object"], "error");
                    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
                }),
            ),
            (
                ErrorShape::OldInferenceRawOutput,
                Box::new(|a| {
                    let v = a.json();
                    assert!(
                        v.as_object().unwrap().contains_key("raw_output")
                            && v["raw_output"].is_null()
                    );
                }),
            ),
            (
                ErrorShape::StringError,
                Box::new(|a| {
                    assert_eq!(a.json()["error"], "Service Unavailable");
                    assert!(a.json()["message"].is_string());
                }),
            ),
            (
                ErrorShape::FastApi,
                Box::new(|a| assert!(a.json()["detail"].is_array())),
            ),
            (
                ErrorShape::GrpcGateway,
                Box::new(|a| {
                    assert_eq!(a.json()["code"], 14);
                    assert_eq!(
                        a.json()["details"][0]["@type"],
                        "type.googleapis.com/google.rpc.ErrorInfo"
                    );
                }),
            ),
            (
                ErrorShape::GrpcGatewayWrapped,
                Box::new(|a| assert_eq!(a.json()["error"]["code"], 14)),
            ),
            (
                ErrorShape::LegacyFault,
                Box::new(|a| assert!(a.json()["fault"]["faultstring"].is_string())),
            ),
            (
                ErrorShape::Html,
                Box::new(|a| {
                    assert_eq!(a.header("content-type"), Some("text/html"));
                    assert!(
                        String::from_utf8_lossy(&a.body)
                            .contains("<h1>503 Service Unavailable</h1>")
                    );
                }),
            ),
            (
                ErrorShape::PlainText,
                Box::new(|a| {
                    assert_eq!(a.header("content-type"), Some("text/plain"));
                    assert!(a.body.starts_with(b"503 Service Unavailable"));
                }),
            ),
            (ErrorShape::Empty, Box::new(|a| assert!(a.body.is_empty()))),
            (
                ErrorShape::Huge { bytes: 5 << 20 },
                Box::new(|a| {
                    assert_eq!(a.body.len(), 5 << 20);
                    assert_eq!(a.json()["error"]["code"], "SERVICE_UNAVAILABLE");
                }),
            ),
        ];
        for (shape, assert_fn) in check {
            let sim = sim_with(Trigger::Always, Fault::status(503).shape(Some(shape))).await;
            let a = chat(&sim, "e", false).await;
            assert_eq!(a.status, 503, "{shape:?}");
            assert_fn(&a);
            assert_eq!(sim.log()[0].bytes_sent, a.body.len() as u64, "{shape:?}");
        }
    })
    .await
}

#[tokio::test]
async fn latency_ttfb_and_token_pacing() {
    bounded(20, async {
        let sim = Sim::start(cfg().latency(Latency {
            ttfb_ms: 150,
            token_delay_ms: 40,
            completion_tokens: 8,
        }))
        .await
        .unwrap();
        let c = plain_client();
        let t = Instant::now();
        let resp = c
            .request(post(&sim.base_url(), CHAT, chat_body("l", true)))
            .await
            .unwrap();
        let ttfb = t.elapsed();
        assert!(ttfb >= Duration::from_millis(150), "{ttfb:?}");
        resp.into_body().collect().await.unwrap();
        // 4 tokens + final chunk + [DONE] after the first chunk: 5 paced gaps.
        assert!(
            t.elapsed() >= Duration::from_millis(150 + 5 * 40),
            "{:?}",
            t.elapsed()
        );

        let sim = sim_with(Trigger::Always, Fault::SlowTtfb { delay_ms: 200 }).await;
        let t = Instant::now();
        let a = send(&c, post(&sim.base_url(), CHAT, chat_body("slow", false)))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(sim.log()[0].fault.as_deref(), Some("slow_ttfb"));
    })
    .await
}

#[tokio::test]
async fn hang_before_headers() {
    bounded(20, async {
        let sim = sim_with(Trigger::Always, Fault::Hang { for_ms: 400 }).await;
        let c = plain_client();
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            c.request(post(&sim.base_url(), CHAT, chat_body("h", false))),
        )
        .await;
        assert!(r.is_err(), "no headers within 200 ms");
        // After the hold the server closes without a response and logs status 0.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = sim.log();
        assert_eq!(log.len(), 1);
        assert_eq!((log[0].status, log[0].fault.as_deref()), (0, Some("hang")));
    })
    .await
}

async fn read_frames(
    resp: http::Response<hyper::body::Incoming>,
    idle: Duration,
) -> (Vec<Bytes>, Result<(), String>) {
    let mut body = resp.into_body();
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return (got, Err("idle".into())),
            Ok(None) => return (got, Ok(())),
            Ok(Some(Err(e))) => return (got, Err(format!("error: {e}"))),
            Ok(Some(Ok(f))) => got.extend(f.into_data().ok()),
        }
    }
    (got, Err("too many frames".into()))
}

#[tokio::test]
async fn stream_stalls_after_n_chunks() {
    bounded(20, async {
        let sim = sim_with(
            Trigger::Always,
            Fault::StallAfter {
                after_chunks: 3,
                for_ms: 500,
            },
        )
        .await;
        let resp = plain_client()
            .request(post(&sim.base_url(), CHAT, chat_body("st", true)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (got, end) = read_frames(resp, Duration::from_millis(250)).await;
        assert_eq!(end, Err("idle".into()));
        let events = sse_data(&got.concat());
        assert_eq!(events.len(), 3, "exactly the chunks before the stall");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rec = &sim.log()[0];
        assert!(!rec.completed);
        assert_eq!(rec.bytes_sent, got.concat().len() as u64);
    })
    .await
}

#[tokio::test]
async fn reset_before_response() {
    bounded(20, async {
        let sim = sim_with(Trigger::FirstAttempts { n: 1 }, Fault::ResetBeforeResponse).await;
        let c = plain_client();
        let err = c
            .request(post(&sim.base_url(), CHAT, chat_body("rb", false)))
            .await
            .unwrap_err();
        let text = format!("{err:?}");
        assert!(
            text.contains("ConnectionReset") || text.contains("IncompleteMessage"),
            "{text}"
        );
        // The second attempt on a fresh connection succeeds.
        let a = send(&c, post(&sim.base_url(), CHAT, chat_body("rb", false)))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        let log = sim.attempts_for("rb");
        assert_eq!(
            (log[0].status, log[0].fault.as_deref()),
            (0, Some("reset_before_response"))
        );
        assert_eq!(log[1].status, 200);
    })
    .await
}

#[tokio::test]
async fn reset_mid_stream_and_mid_body() {
    bounded(20, async {
        for stream in [true, false] {
            let sim = sim_with(Trigger::Always, Fault::ResetMidStream { after_chunks: 2 }).await;
            let resp = plain_client()
                .request(post(&sim.base_url(), CHAT, chat_body("rm", stream)))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let (got, end) = read_frames(resp, Duration::from_secs(5)).await;
            assert!(
                matches!(&end, Err(e) if e.starts_with("error")),
                "stream={stream}: {end:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let rec = &sim.log()[0];
            assert!(!rec.completed);
            assert_eq!(rec.fault.as_deref(), Some("reset_mid_stream"));
            assert!(rec.bytes_sent >= got.concat().len() as u64);
            if stream {
                assert_eq!(sse_data(&got.concat()).len(), 2);
            }
        }
    })
    .await
}

#[tokio::test]
async fn error_event_inside_stream() {
    bounded(20, async {
        let sim = sim_with(
            Trigger::Always,
            Fault::SseError {
                after_chunks: 2,
                message: None,
            },
        )
        .await;
        let a = chat(&sim, "se", true).await;
        let events = sse_data(&a.body);
        assert_eq!(events.len(), 3);
        let last: serde_json::Value = serde_json::from_str(&events[2]).unwrap();
        assert!(last["error"]["message"].is_string());
        assert!(!events.iter().any(|e| e == "[DONE]"));
        assert!(!sim.log()[0].completed);
    })
    .await
}

#[tokio::test]
async fn slow_upload_delays_reading_the_body() {
    bounded(20, async {
        let sim = sim_with(Trigger::Always, Fault::SlowUpload { delay_ms: 200 }).await;
        let t = Instant::now();
        let a = chat(&sim, "up", false).await;
        assert_eq!(a.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(200));
    })
    .await
}

#[tokio::test]
async fn oversized_request_body_gets_413() {
    bounded(20, async {
        let mut c = cfg();
        c.max_request_body = 1024;
        let sim = Sim::start(c).await.unwrap();
        let a = send(
            &plain_client(),
            post(&sim.base_url(), CHAT, Bytes::from(vec![b'x'; 4096])),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 413);
        assert_eq!(a.json()["error"]["code"], "PAYLOAD_TOO_LARGE");
    })
    .await
}

#[tokio::test]
async fn log_ids_hashes_and_h2c() {
    bounded(20, async {
        let sim = Sim::start(cfg()).await.unwrap();
        let base = sim.base_url();
        let c = h2c_client();
        let body = Bytes::from_static(br#"{"messages":[]}"#);
        let mut req = post(&base, CHAT, body.clone());
        req.headers_mut()
            .insert("x-request-id", "hdr-7".parse().unwrap());
        assert_eq!(send(&c, req).await.unwrap().status, 200);
        assert_eq!(
            send(&c, post(&base, CHAT, chat_body("u-1", false)))
                .await
                .unwrap()
                .status,
            200
        );
        let log = sim.log();
        assert_eq!(log[0].request_id.as_deref(), Some("hdr-7"));
        assert_eq!(log[0].body_hash, xxhash_rust::xxh3::xxh3_64(&body));
        assert_eq!(log[0].body_len, body.len() as u64);
        assert_eq!(log[0].version, "HTTP/2.0");
        assert_eq!(log[1].request_id.as_deref(), Some("u-1"));
        assert!(log[0].t_ms <= log[1].t_ms && log[0].t_ms <= log[0].end_ms);
        let mut out = Vec::new();
        Sim::write_jsonl(&log, &mut out).unwrap();
        let back: Vec<AttemptRecord> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, log);
    })
    .await
}

#[tokio::test]
async fn invalid_config_is_a_typed_error() {
    let bad = cfg().rate_limit(RateLimitConfig::new(-1.0, 10.0));
    assert!(matches!(Sim::start(bad).await, Err(SimError::Config(_))));
    let bad = cfg().fault(Trigger::Probability { p: 1.5 }, status(500));
    assert!(matches!(Sim::start(bad).await, Err(SimError::Config(m)) if m.contains("1.5")));
    let _ = Full::new(Bytes::new());
}

/// The exporter counts exactly what the simulator served to the account's deployments, per
/// status, and answers at most 6 scrapes a minute.
#[tokio::test]
async fn the_exporter_counts_what_was_served_and_limits_scrapes() {
    bounded(30, async {
        let sim = Sim::start(cfg().fault(Trigger::FirstAttempts { n: 1 }, status(503)))
            .await
            .unwrap();
        let c = plain_client();
        let model =
            "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acct/deployments/dep1";
        for i in 0..4 {
            for _ in 0..2 {
                let body =
                    serde_json::json!({"model": model, "user": format!("exp-{i}"), "messages": []});
                send(
                    &c,
                    post(&sim.base_url(), CHAT, Bytes::from(body.to_string())),
                )
                .await
                .unwrap();
            }
        }
        // A serverless request: not exported.
        chat(&sim, "serverless-1", false).await;
        let base = format!("http://{}", sim.addr());
        let scrape = || {
            let c = c.clone();
            let base = base.clone();
            async move {
                let req = http::Request::get(format!("{base}/v1/accounts/acct/metrics"))
                    .header("authorization", format!("Bearer {KEY}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                send(&c, req).await.unwrap()
            }
        };
        let a = scrape().await;
        assert_eq!(a.status, 200);
        let text = String::from_utf8_lossy(&a.body).to_string();
        // The simulator's own log is the truth the exporter must match.
        let served: Vec<_> = sim
            .log()
            .into_iter()
            .filter(|r| r.model.as_deref() == Some(model) && r.status != 0)
            .collect();
        let errors = served.iter().filter(|r| r.status == 503).count();
        assert_eq!((served.len(), errors), (8, 4));
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(
            line("request_counter_total:sum_by_deployment{"),
            Some(served.len() as f64),
            "{text}"
        );
        assert_eq!(
            line("requests_error_total:sum_by_deployment{"),
            Some(errors as f64),
            "{text}"
        );
        assert!(
            text.contains("deployment_id=\"dep1\"") && text.contains("http_code=\"503\""),
            "{text}"
        );
        assert!(!text.contains("serverless"), "{text}");
        // Five more are allowed this minute, the seventh is a 429 with a delay.
        for _ in 0..5 {
            assert_eq!(scrape().await.status, 200);
        }
        let refused = scrape().await;
        assert_eq!(refused.status, 429);
        assert!(
            refused
                .header("retry-after")
                .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| (1..=60).contains(&n)))
        );
    })
    .await;
}
