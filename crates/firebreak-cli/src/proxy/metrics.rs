//! `/metrics`: the Prometheus text of every firebreak series (see `firebreak::observe`), and
//! of Fireworks' exporter when `--scrape-account` is set.

use super::Shared;
use super::body::ProxyBody;
use super::respond::refusal;
use super::step::Answer;
use http::{HeaderValue, Response, StatusCode};

/// Histogram buckets for the millisecond metrics: 5 ms to 30 min, roughly ×2.5 apart, so the
/// same series serve a chat call and a long-context one.
const MS_BUCKETS: [f64; 16] = [
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
];

/// Installs the Prometheus recorder for this process. It must come before the stack is built:
/// the stack registers its series with the recorder current at that moment.
pub(crate) fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_ms".into()),
            &MS_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot set up /metrics: {e}"))
}

/// The page.
pub(crate) fn page(p: &Shared) -> Answer {
    let Some(h) = &p.metrics else {
        return refusal(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
            "not_found",
            None,
        );
    };
    h.run_upkeep();
    let mut text = h.render();
    if let Some(e) = &p.exporter {
        text.push_str(&e.text());
    }
    let mut r = Response::new(ProxyBody::full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
