//! Issue #9, measurement 2: loopback throughput through the whole firebreak stack
//! (`FireworksClient`, interactive preset, observation on) against firebreak-sim, beside a bare
//! hyper client and reqwest + reqwest-retry, at concurrency 1, 16 and 64, in one run.
//!
//! `cargo bench --bench throughput` prints a table: for each client and concurrency, the median
//! of 5 runs of 2 s (clients interleaved run by run, so drift on the noisy machine hits all of
//! them alike). Without `--bench` (as under `cargo test`) it makes a short smoke run of each
//! client and checks every request succeeded.

use bytes::Bytes;
use firebreak::{FireworksClient, Stack, client::ApiKey};
use firebreak_sim::{Sim, SimConfig};
use firebreak_testkit::{KEY, chat_body, plain_client, post};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tower::ServiceExt;

type Boxed = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<Bytes>>,
    http::Response<firebreak::FireworksBody>,
    firebreak::Error,
>;

#[derive(Clone)]
enum Client {
    Bare(firebreak_testkit::PlainClient),
    /// The hyper client `FireworksClient` builds (its pool settings and connector), no layers.
    FbHyper(firebreak::client::HttpsClient<http_body_util::Full<Bytes>>),
    /// firebreak's layers (`Stack::layer`) over the bare hyper client
    /// (shared behind one `Arc`, as the facade does).
    Layers(Boxed),
    Firebreak(Box<FireworksClient>),
    Reqwest(reqwest_middleware::ClientWithMiddleware),
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Bare(_) => "bare hyper client",
            Client::FbHyper(_) => "firebreak's hyper client, no layers",
            Client::Layers(_) => "firebreak layers over bare hyper",
            Client::Firebreak(_) => "firebreak full stack",
            Client::Reqwest(_) => "reqwest + reqwest-retry",
        }
    }

    async fn call(&self, base: &str, body: Bytes) {
        match self {
            Client::Bare(c) => ok(c.request(post(base, "/chat/completions", body)).await).await,
            Client::FbHyper(c) => {
                ok(c.request(post(base, "/chat/completions", body)).await).await;
            }
            Client::Layers(c) => {
                ok(c.clone()
                    .oneshot(post(base, "/chat/completions", body))
                    .await)
                .await;
            }
            Client::Firebreak(c) => ok(c.post("/chat/completions", body).await).await,
            Client::Reqwest(c) => {
                let resp = c
                    .post(format!("{base}/chat/completions"))
                    .header("authorization", format!("Bearer {KEY}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(resp.status(), 200);
                resp.bytes().await.expect("body");
            }
        }
    }
}

/// Checks a 200 and reads its body to the end.
async fn ok<B, E>(resp: Result<http::Response<B>, E>)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
    E: std::fmt::Debug,
{
    let resp = resp.expect("request");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
}

/// Requests per second with `concurrency` workers for `dur` (and at most `max` requests).
async fn run(client: &Client, base: Arc<str>, concurrency: usize, dur: Duration, max: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (client, base, done) = (client.clone(), base.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let body = chat_body(&format!("w{w}"), false);
            // Bounded by time and by count.
            while start.elapsed() < dur && done.load(Ordering::Relaxed) < max {
                client.call(&base, body.clone()).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = Sim::start(SimConfig::default().api_key(KEY))
            .await
            .expect("sim");
        let base: Arc<str> = sim.base_url().into();
        let firebreak =
            FireworksClient::new(&base, ApiKey::new(KEY).expect("key"), Stack::interactive())
                .expect("client");
        let reqwest = reqwest_middleware::ClientBuilder::new(
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest"),
        )
        .with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
            reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(4),
        ))
        .build();
        let hyper_bare =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build({
                    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
                    c.set_nodelay(true);
                    c
                });
        let layers: Boxed = Boxed::new(
            tower::ServiceBuilder::new()
                .map_response(|r: http::Response<_>| r.map(BodyExt::boxed))
                .layer(Stack::interactive().layer().expect("stack"))
                .service(firebreak::client::SharedClient::new(hyper_bare)),
        );
        let clients = [
            Client::Bare(plain_client()),
            Client::FbHyper(
                firebreak::client::build(&firebreak::client::ClientConfig::default())
                    .expect("client"),
            ),
            Client::Layers(layers),
            Client::Firebreak(Box::new(firebreak)),
            Client::Reqwest(reqwest),
        ];
        // For profiling: FIREBREAK_THROUGHPUT_CLIENT=<index> runs that client alone.
        let clients: Vec<Client> = match std::env::var("FIREBREAK_THROUGHPUT_CLIENT")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(i) => vec![clients[i].clone()],
            None => clients.to_vec(),
        };
        if !bench {
            for c in &clients {
                let rps = run(c, base.clone(), 4, Duration::from_secs(5), 100).await;
                assert!(rps > 0.0);
            }
            let ok = sim.log().iter().filter(|r| r.status == 200).count();
            assert!(ok >= 300, "smoke run: {ok} requests");
            println!("throughput smoke: {ok} requests ok");
            return;
        }
        println!("| concurrency | client | req/s (median of 5 × 2 s) | vs bare hyper |");
        println!("|---:|---|---:|---:|");
        // For profiling: FIREBREAK_THROUGHPUT_ONLY=16 runs only that concurrency.
        let only: Option<usize> = std::env::var("FIREBREAK_THROUGHPUT_ONLY")
            .ok()
            .and_then(|v| v.parse().ok());
        for concurrency in [1, 16, 64] {
            if only.is_some_and(|o| o != concurrency) {
                continue;
            }
            let mut runs: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
            for _ in 0..5 {
                for (i, c) in clients.iter().enumerate() {
                    sim.clear_log();
                    runs[i].push(
                        run(
                            c,
                            base.clone(),
                            concurrency,
                            Duration::from_secs(2),
                            1_000_000,
                        )
                        .await,
                    );
                }
            }
            let medians: Vec<f64> = runs.into_iter().map(median).collect();
            for (c, m) in clients.iter().zip(&medians) {
                println!(
                    "| {concurrency} | {} | {m:.0} | {:.1}% |",
                    c.name(),
                    m / medians[0] * 100.0
                );
            }
        }
    });
}
