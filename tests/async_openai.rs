//! firebreak inside async-openai's real `Client`, against firebreak-sim on 127.0.0.1: the
//! simulator's log is the witness of every attempt.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use firebreak::client::ApiKey;
use firebreak::{Class, Stack};
use firebreak_sim::{ErrorShape, Fault, Sim, SimConfig, Trigger};
use firebreak_testkit::{KEY, bounded, error_fault, status_fault};
use futures_util::StreamExt;
use std::time::Duration;

fn stack() -> Stack {
    firebreak_testkit::fast_interactive()
}

fn client(sim: &Sim) -> Client<OpenAIConfig> {
    firebreak::async_openai::client(&sim.base_url(), ApiKey::new(KEY).unwrap(), stack()).unwrap()
}

fn chat(id: &str, stream: bool) -> CreateChatCompletionRequest {
    #[allow(deprecated)]
    CreateChatCompletionRequestArgs::default()
        .model("accounts/fireworks/models/llama-v3p1-8b-instruct")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hello")
            .build()
            .unwrap()
            .into()])
        .max_completion_tokens(4u32)
        .stream(stream)
        .user(id)
        .build()
        .unwrap()
}

fn statuses(sim: &Sim, id: &str) -> Vec<u16> {
    sim.attempts_for(id).iter().map(|r| r.status).collect()
}

/// A 503, then a 429, then the answer, for every logical request.
async fn flaky() -> Sim {
    Sim::start(
        SimConfig::default()
            .api_key(KEY)
            .fault(Trigger::FirstAttempts { n: 1 }, status_fault(503, vec![]))
            .fault(Trigger::FirstAttempts { n: 2 }, status_fault(429, vec![])),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_chat_completion_succeeds_after_a_503_and_a_429() {
    let sim = flaky().await;
    let c = client(&sim);
    let resp = bounded(20, c.chat().create(chat("aoa-1", false)))
        .await
        .unwrap();
    assert!(!resp.choices.is_empty());
    assert_eq!(statuses(&sim, "aoa-1"), [503, 429, 200]);
}

#[tokio::test]
async fn a_streamed_completion_succeeds_after_a_503_and_a_429() {
    let sim = flaky().await;
    let c = client(&sim);
    let mut stream = bounded(20, c.chat().create_stream(chat("aoa-2", true)))
        .await
        .unwrap();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = bounded(20, stream.next()).await {
        let chunk = chunk.unwrap();
        chunks += 1;
        assert!(chunks < 1000, "a bounded stream");
        for choice in chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    // Every token once, in order: no duplicate or lost chunk across the retried attempts.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 4, "{text:?}");
    for (i, w) in words.iter().enumerate() {
        assert_eq!(*w, format!("tok{i}"), "{text:?}");
    }
    assert_eq!(statuses(&sim, "aoa-2"), [503, 429, 200]);
}

#[tokio::test]
async fn a_400_is_sent_once_and_is_async_openais_api_error() {
    let fault = error_fault(400, None, Some("messages must not be empty"));
    let sim = Sim::start(
        SimConfig::default()
            .api_key(KEY)
            .fault(Trigger::Always, fault),
    )
    .await
    .unwrap();
    let e = bounded(20, client(&sim).chat().create(chat("aoa-3", false)))
        .await
        .unwrap_err();
    match &e {
        OpenAIError::ApiError(api) => {
            assert_eq!(api.status_code.as_u16(), 400);
            assert!(
                api.api_error.message.contains("messages must not be empty"),
                "{e}"
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(statuses(&sim, "aoa-3"), [400]);
}

#[tokio::test]
async fn a_quota_429_is_sent_once() {
    let fault = error_fault(429, Some(ErrorShape::InsufficientQuota), None);
    let sim = Sim::start(
        SimConfig::default()
            .api_key(KEY)
            .fault(Trigger::Always, fault),
    )
    .await
    .unwrap();
    let e = bounded(20, client(&sim).chat().create(chat("aoa-4", false)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OpenAIError::ApiError(api) if api.status_code.as_u16() == 429),
        "{e:?}"
    );
    assert_eq!(statuses(&sim, "aoa-4"), [429]);
}

#[tokio::test]
async fn a_hang_is_cut_at_the_first_byte_timeout_and_retried() {
    let sim = Sim::start(SimConfig::default().api_key(KEY).fault(
        Trigger::FirstAttempts { n: 1 },
        Fault::Hang { for_ms: 30_000 },
    ))
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let resp = bounded(20, client(&sim).chat().create(chat("aoa-5", false)))
        .await
        .unwrap();
    assert!(!resp.choices.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let log = sim.attempts_for("aoa-5");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].status, 200);
}

#[tokio::test]
async fn firebreaks_own_errors_are_reachable_through_openai_error() {
    // Nothing listens there: a refused connect, retried, then firebreak's error, boxed.
    let addr = firebreak_testkit::refused_addr();
    let c = firebreak::async_openai::client(
        &format!("http://{addr}/v1"),
        ApiKey::new(KEY).unwrap(),
        stack(),
    )
    .unwrap();
    let e = bounded(20, c.chat().create(chat("aoa-6", false)))
        .await
        .unwrap_err();
    let fe = firebreak::async_openai::firebreak_error(&e).expect("firebreak's error inside");
    assert!(fe.is_client_side() && fe.is_connect(), "{fe}");
    assert!(matches!(fe.class(), Class::Connect(_)), "{fe}");
    assert!(fe.attempts().is_some_and(|n| n > 1), "{fe}");
    assert!(!e.to_string().contains(KEY));
}
