//! An axum handler that calls Fireworks through the firebreak stack: a tiny gateway.
//!
//! `cargo run -p firebreak --example axum_gateway` serves `POST /chat` on 127.0.0.1 and forwards
//! each body to `/chat/completions` of an embedded simulator (set `FIREWORKS_API_KEY` and
//! `UPSTREAM=https://api.fireworks.ai/inference/v1` to call the real API instead). It then sends
//! itself one request, prints the answer and exits.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use firebreak::{FireworksClient, Stack, client::ApiKey};
use http_body_util::BodyExt;

/// The handler: the upstream's answer (status, body) on success, a 502/504 with the error's
/// one-line message otherwise.
pub(crate) async fn chat(State(client): State<FireworksClient>, body: Bytes) -> Response {
    match client.post("/chat/completions", body).await {
        Ok(resp) => {
            let status = resp.status();
            match resp.into_body().collect().await {
                Ok(b) => (status, b.to_bytes()).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
        Err(e) if e.is_timeout() => (StatusCode::GATEWAY_TIMEOUT, e.to_string()).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// The gateway's router around a client.
pub(crate) fn app(client: FireworksClient) -> Router {
    Router::new().route("/chat", post(chat)).with_state(client)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sim;
    let client = match std::env::var("UPSTREAM") {
        Ok(url) => FireworksClient::new(&url, ApiKey::from_env()?, Stack::interactive())?,
        Err(_) => {
            sim = firebreak_sim::Sim::start(firebreak_sim::SimConfig::default()).await?;
            FireworksClient::new(
                &sim.base_url(),
                ApiKey::new("fw_example")?,
                Stack::interactive(),
            )?
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app(client)).await });
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let req = http::Request::post(format!("http://{addr}/chat"))
        .body(Body::from(r#"{"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[{"role":"user","content":"Hello"}]}"#))?;
    let resp = hyper.request(req).await?;
    println!("{}", resp.status());
    println!(
        "{}",
        String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes())
    );
    server.abort();
    Ok(())
}
