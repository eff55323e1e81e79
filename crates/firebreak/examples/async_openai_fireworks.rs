//! async-openai's `Client` with firebreak underneath.
//!
//! `cargo run -p firebreak --features async-openai --example async_openai_fireworks` runs against
//! an embedded simulator whose first attempt of every call answers 503 and second 429: the
//! answer comes on the third, and async-openai never sees the failures. With
//! `FIREWORKS_API_KEY` set, it asks Fireworks instead.

use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use firebreak::Stack;
use firebreak::client::ApiKey;
use firebreak_sim::{Fault, Sim, SimConfig, Trigger};

fn status(status: u16) -> Fault {
    Fault::status(status)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, _sim) = match ApiKey::from_env() {
        Ok(key) => (
            firebreak::async_openai::fireworks_client(key, Stack::interactive())?,
            None,
        ),
        Err(_) => {
            let sim = Sim::start(
                SimConfig::default()
                    .fault(Trigger::FirstAttempts { n: 1 }, status(503))
                    .fault(Trigger::FirstAttempts { n: 2 }, status(429)),
            )
            .await?;
            let client = firebreak::async_openai::client(
                &sim.base_url(),
                ApiKey::new("sim-key")?,
                Stack::interactive(),
            )?;
            (client, Some(sim))
        }
    };
    #[allow(deprecated)]
    let request = CreateChatCompletionRequestArgs::default()
        .model("accounts/fireworks/models/llama-v3p1-8b-instruct")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Write a haiku about retries")
            .build()?
            .into()])
        .user("example-1")
        .build()?;
    match client.chat().create(request).await {
        Ok(resp) => {
            for choice in resp.choices {
                println!("{}", choice.message.content.unwrap_or_default());
            }
        }
        Err(e) => match firebreak::async_openai::firebreak_error(&e) {
            Some(fe) => eprintln!(
                "firebreak gave up ({:?} attempts, client-side: {}): {fe}",
                fe.attempts(),
                fe.is_client_side()
            ),
            None => eprintln!("{e}"),
        },
    }
    if let Some(sim) = _sim {
        let statuses: Vec<u16> = sim
            .attempts_for("example-1")
            .iter()
            .map(|r| r.status)
            .collect();
        println!("attempts the simulator saw: {statuses:?}");
    }
    Ok(())
}
