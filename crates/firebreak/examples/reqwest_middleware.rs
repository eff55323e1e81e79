//! A reqwest-middleware client with firebreak as its middleware.
//!
//! `cargo run -p firebreak --features reqwest --example reqwest_middleware` runs against an
//! embedded simulator whose first attempt of every call answers 503 with `Retry-After: 1`: the
//! call waits the second the server asked for and succeeds. With `FIREWORKS_API_KEY` set, it asks
//! Fireworks instead.

use firebreak::Stack;
use firebreak::client::FIREWORKS_BASE_URL;
use firebreak::reqwest::FirebreakMiddleware;
use firebreak_sim::{DelayHeader, Fault, Sim, SimConfig, Trigger};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (base, key, _sim) = match std::env::var("FIREWORKS_API_KEY") {
        Ok(key) => (FIREWORKS_BASE_URL.to_owned(), key, None),
        Err(_) => {
            let sim = Sim::start(SimConfig::default().fault(
                Trigger::FirstAttempts { n: 1 },
                Fault::status(503).delay(vec![DelayHeader::RetryAfterSecs { secs: 1.0 }]),
            ))
            .await?;
            (sim.base_url(), "sim-key".to_owned(), Some(sim))
        }
    };
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(FirebreakMiddleware::new(Stack::interactive())?)
        .build();
    let body = r#"{"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[{"role":"user","content":"Hello"}],"user":"example-1"}"#;
    let started = std::time::Instant::now();
    let resp = client
        .post(format!("{base}/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let info = resp.extensions().get::<firebreak::RetryInfo>().copied();
    println!(
        "{} after {:.1} s, {} attempt(s)",
        resp.status(),
        started.elapsed().as_secs_f64(),
        info.map_or(1, |i| i.attempts())
    );
    println!("{}", resp.text().await?);
    Ok(())
}
