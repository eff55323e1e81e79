//! The scraper against firebreak-sim's exporter over real loopback sockets: the server view
//! equals the simulator's own log, firebreak's own counts (from its metrics, labelled by
//! deployment) agree with it, and scrapes are paced within the limit.

use bytes::Bytes;
use firebreak::client::ApiKey;
use firebreak::{FireworksClient, Stack};
use firebreak_reconcile::{ClientView, Exposition, Reading, Report, Scraper, ServerView};
use firebreak_sim::{Sim, SimConfig, Trigger};
use firebreak_testkit::{bounded, status_fault};
use http_body_util::BodyExt;
use std::time::Duration;

const KEY: &str = "fw_reconcile_SECRET";
const DEP: &str = "accounts/acct/deployments/dep1";
const MODEL: &str =
    "accounts/fireworks/models/llama-v3p1-8b-instruct#accounts/acct/deployments/dep1";

fn sim_config() -> SimConfig {
    SimConfig::default().api_key(KEY).fault(
        Trigger::FirstAttemptsOfEvery {
            n: 1,
            every: 2,
            offset: 0,
        },
        status_fault(503, vec![]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scraped_view_is_the_simulators_log_and_firebreaks_counts_agree_with_it() {
    bounded(60, async {
        let sim = Sim::start(sim_config()).await.unwrap();
        // firebreak's own counts, through a recorder that renders the Prometheus text format,
        // as `firebreak proxy` serves it.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _current = metrics::set_default_local_recorder(&recorder);
        let client = FireworksClient::new(
            &sim.base_url(),
            ApiKey::new(KEY).unwrap(),
            Stack::interactive().model_labels(64),
        )
        .unwrap();
        for i in 0..6 {
            let model = if i == 5 { "accounts/fireworks/models/serverless" } else { MODEL };
            let body = serde_json::json!({"model": model, "messages": [], "max_tokens": 2, "user": format!("u{i}")});
            let resp = client
                .post("/chat/completions", Bytes::from(body.to_string()))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        let scraper = Scraper::new(&format!("http://{}", sim.addr()), "acct", ApiKey::new(KEY).unwrap()).unwrap();
        let page = scraper.scrape().await.unwrap();
        let server = ServerView::from_exporter(&page, "acct");
        let served: Vec<_> = sim
            .log()
            .into_iter()
            .filter(|r| r.model.as_deref() == Some(MODEL) && r.status != 0)
            .collect();
        let errors = served.iter().filter(|r| r.status == 503).count() as u64;
        assert!(errors > 0, "the fault fired");
        let s = &server.deployments[DEP];
        assert_eq!(s.requests, served.len() as u64);
        assert_eq!(s.errors.get("503").copied().unwrap_or(0), errors);
        assert_eq!(server.deployments.len(), 1, "serverless is not exported");

        let mine = Exposition::parse(&handle.render()).unwrap();
        let client_view = ClientView::from_metrics(&mine);
        let c = &client_view.deployments[DEP];
        assert_eq!(c.calls, 5);
        assert_eq!(c.answered, served.len() as u64);
        assert_eq!(c.errors.get("503").copied().unwrap_or(0), errors);
        let report = Report::from_readings(
            &[Reading {
                client: client_view,
                server,
            }],
            0,
            None,
        );
        assert!(report.agrees(), "{}", report.render());
        assert!(report.verdict[1].starts_with("the counts agree"), "{:?}", report.verdict);
        assert!(!report.render().contains(KEY));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_wait_for_the_limit_instead_of_earning_429s() {
    bounded(30, async {
        let sim = Sim::start(sim_config()).await.unwrap();
        let per = Duration::from_millis(1500);
        let scraper = Scraper::new(
            &format!("http://{}", sim.addr()),
            "acct",
            ApiKey::new(KEY).unwrap(),
        )
        .unwrap()
        .with_limit(2, per);
        let t0 = tokio::time::Instant::now();
        let mut starts = Vec::new();
        for _ in 0..4 {
            scraper.scrape().await.unwrap();
            starts.push(t0.elapsed());
        }
        // Two fit in the first window; the third waits for the first to leave it, the fourth
        // for the second.
        assert!(starts[1] < per, "{starts:?}");
        assert!(starts[2] >= per, "{starts:?}");
        assert!(starts[3] >= per, "{starts:?}");
        let scrapes: Vec<_> = sim
            .log()
            .into_iter()
            .filter(|r| r.path.ends_with("/metrics"))
            .collect();
        assert_eq!(scrapes.len(), 4);
        assert!(scrapes.iter().all(|r| r.status == 200), "no 429");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_a_status_error_that_does_not_show_the_key() {
    bounded(30, async {
        let sim = Sim::start(sim_config()).await.unwrap();
        let scraper = Scraper::new(
            &format!("http://{}", sim.addr()),
            "acct",
            ApiKey::new("fw_WRONG_key").unwrap(),
        )
        .unwrap();
        let e = scraper.scrape().await.unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("401") && shown.contains("check the API key"),
            "{shown}"
        );
        assert!(!shown.contains("fw_WRONG_key"), "{shown}");
    })
    .await;
}

/// A one-route exporter stand-in: answers `answers` in turn (status, extra header line), then
/// 200s, each with a tiny page; records when each request arrived.
async fn scripted_exporter(
    answers: Vec<(u16, &'static str)>,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        // One request per connection (the answers close it); ends with the test's runtime.
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            log.lock().unwrap().push(tokio::time::Instant::now());
            let (status, extra) = answers.next().unwrap_or((200, ""));
            let body = "request_counter_total:sum_by_deployment{deployment=\"accounts/acct/deployments/d\",deployment_account=\"acct\"} 1\n";
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (base, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_out_by_the_stack_and_its_retry_counts_against_the_limit() {
    bounded(30, async {
        let (base, seen) = scripted_exporter(vec![(429, "retry-after: 1\r\n")]).await;
        let scraper = Scraper::new(&base, "acct", ApiKey::new(KEY).unwrap())
            .unwrap()
            .with_limit(2, Duration::from_secs(3));
        let page = scraper.scrape().await.unwrap();
        assert_eq!(
            page.sum("request_counter_total:sum_by_deployment", &[]),
            1.0
        );
        let t = seen.lock().unwrap().clone();
        assert_eq!(t.len(), 2, "the 429, then the retry");
        assert!(
            t[1] - t[0] >= Duration::from_millis(950),
            "waited the Retry-After: {:?}",
            t[1] - t[0]
        );
        // Both attempts counted: the next scrape waits for the first to leave the 3 s window.
        scraper.scrape().await.unwrap();
        let t = seen.lock().unwrap().clone();
        assert_eq!(t.len(), 3);
        assert!(
            t[2] - t[0] >= Duration::from_millis(2950),
            "{:?}",
            t[2] - t[0]
        );
    })
    .await;
}
