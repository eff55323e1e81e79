//! [`Exposition`]: one page of the Prometheus text format, read into plain samples.
//!
//! The format is read by `prom_text_format_parser`, which keeps metric names with colons
//! (every series of Fireworks' exporter has one, `request_counter_total:sum_by_deployment`) and
//! reports a malformed page instead of dropping its lines. This module only turns its metrics
//! into `(name, labels, value)` samples.

use prom_text_format_parser::{Scrape, ScrapeParseError, Type, ValueType};
use std::collections::BTreeMap;

/// One sample: a series' full name (a histogram's `_bucket`, `_sum` and `_count` included), its
/// labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, as written on the page.
    pub name: String,
    /// Its labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Its value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A page that is not the Prometheus text format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not the Prometheus text format: {0}")]
pub struct ParseError(String);

/// One page of the Prometheus text format, as samples.
///
/// ```
/// use firebreak_reconcile::Exposition;
///
/// let page = Exposition::parse(
///     "# TYPE request_counter_total:sum_by_deployment counter\n\
///      request_counter_total:sum_by_deployment{deployment=\"accounts/a/deployments/d1\"} 12\n",
/// )
/// .unwrap();
/// assert_eq!(page.sum("request_counter_total:sum_by_deployment", &[]), 12.0);
/// assert!(Exposition::parse("not { a page").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    /// Reads a page. An empty page has no samples.
    ///
    /// # Errors
    /// [`ParseError`] naming the first problem (with its line when the parser knows it).
    pub fn parse(text: &str) -> Result<Exposition, ParseError> {
        let text = without_empty_families(text);
        if text.lines().all(|l| l.trim().is_empty()) {
            return Ok(Exposition::default());
        }
        let scrape = Scrape::parse(&text).map_err(|e| {
            ParseError(match e {
                ScrapeParseError::Parse(m) => m,
                ScrapeParseError::Collect(errs) => errs
                    .iter()
                    .map(|e| format!("lines {:?}: {}", e.line_no, e.error))
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        })?;
        let mut samples = Vec::new();
        for m in scrape.metrics {
            for s in m.samples {
                let suffix = match (m.kind, s.value.value_type) {
                    (Type::Histogram, ValueType::Sample) => "_bucket",
                    (_, ValueType::Sum) => "_sum",
                    (_, ValueType::Count) => "_count",
                    _ => "",
                };
                let raw: &str = &s.value.value;
                let value = raw
                    .parse::<f64>()
                    .map_err(|_| ParseError(format!("{}: bad value {raw:?}", m.name)))?;
                samples.push(Sample {
                    name: format!("{}{suffix}", m.name),
                    labels: s
                        .labels
                        .iter()
                        .map(|l| (l.key.clone(), unescape(&l.value)))
                        .collect(),
                    value,
                });
            }
        }
        Ok(Exposition { samples })
    }

    /// Every sample, in page order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sum of the samples named `name` whose labels include every `(key, value)` of
    /// `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.named(name)
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    /// The samples named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

/// The page without the `# TYPE` and `# HELP` lines of families that have no sample: the
/// format allows them (an exporter with nothing to report yet writes them), the parser does not.
fn without_empty_families(text: &str) -> std::borrow::Cow<'_, str> {
    let sample_names: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ', '\t']).next().unwrap_or(""))
        .collect();
    let empty = |line: &str| {
        let mut words = line.split_whitespace();
        let (Some("#"), Some("TYPE" | "HELP"), Some(name)) =
            (words.next(), words.next(), words.next())
        else {
            return false;
        };
        !sample_names.iter().any(|s| s.starts_with(name))
    };
    if !text.lines().any(empty) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines().filter(|l| !empty(l)) {
        out.push_str(line);
        out.push('\n');
    }
    std::borrow::Cow::Owned(out)
}

/// A label value as the text format escapes it (`\\`, `\"`, `\n`), unescaped.
fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A captured page in the documented format of Fireworks' exporter: the
    /// `:sum_by_deployment` counters, an error counter with `http_code`, pre-aggregated
    /// latency buckets (untyped, as recording rules are) and an `:avg_by_deployment` gauge.
    pub(crate) const SAMPLE: &str = r#"# HELP request_counter_total:sum_by_deployment Requests served, per deployment.
# TYPE request_counter_total:sum_by_deployment counter
request_counter_total:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1"} 120
request_counter_total:sum_by_deployment{base_model="qwen3-8b",deployment="accounts/acme/deployments/d2",deployment_account="acme",deployment_id="d2"} 7
# TYPE requests_error_total:sum_by_deployment counter
requests_error_total:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1",http_code="503"} 9
requests_error_total:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1",http_code="429"} 4
latency_overall_ms_bucket:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1",le="100"} 80
latency_overall_ms_bucket:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1",le="+Inf"} 120
latency_overall_ms_sum:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1"} 15234.5
latency_overall_ms_count:sum_by_deployment{base_model="llama-v3p1-8b-instruct",deployment="accounts/acme/deployments/d1",deployment_account="acme",deployment_id="d1"} 120
# TYPE requests_coordinator_concurrent_count:avg_by_deployment gauge
requests_coordinator_concurrent_count:avg_by_deployment{base_model="qwen3-8b",deployment="accounts/acme/deployments/d2",deployment_account="acme",deployment_id="d2"} 2.5
"#;

    #[test]
    fn reads_the_exporters_colon_names_labels_and_buckets() {
        let p = Exposition::parse(SAMPLE).unwrap();
        assert_eq!(p.samples().len(), 9);
        let d1 = [("deployment", "accounts/acme/deployments/d1")];
        assert_eq!(p.sum("request_counter_total:sum_by_deployment", &d1), 120.0);
        assert_eq!(p.sum("request_counter_total:sum_by_deployment", &[]), 127.0);
        assert_eq!(
            p.sum(
                "requests_error_total:sum_by_deployment",
                &[("http_code", "503")]
            ),
            9.0
        );
        let inf = p
            .named("latency_overall_ms_bucket:sum_by_deployment")
            .find(|s| s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.value, 120.0);
        assert_eq!(inf.label("deployment_id"), Some("d1"));
        assert_eq!(
            p.sum("latency_overall_ms_sum:sum_by_deployment", &d1),
            15234.5
        );
        assert_eq!(
            p.sum(
                "requests_coordinator_concurrent_count:avg_by_deployment",
                &[]
            ),
            2.5
        );
    }

    #[test]
    fn reads_a_typed_histogram_as_its_three_series() {
        let page = "# TYPE firebreak_latency_overall_ms histogram\n\
            firebreak_latency_overall_ms_bucket{outcome=\"success\",le=\"5\"} 1\n\
            firebreak_latency_overall_ms_bucket{outcome=\"success\",le=\"+Inf\"} 3\n\
            firebreak_latency_overall_ms_sum{outcome=\"success\"} 42.5\n\
            firebreak_latency_overall_ms_count{outcome=\"success\"} 3\n";
        let p = Exposition::parse(page).unwrap();
        assert_eq!(
            p.sum("firebreak_latency_overall_ms_bucket", &[("le", "+Inf")]),
            3.0
        );
        assert_eq!(p.sum("firebreak_latency_overall_ms_sum", &[]), 42.5);
        assert_eq!(p.sum("firebreak_latency_overall_ms_count", &[]), 3.0);
    }

    #[test]
    fn escaped_label_values_are_unescaped() {
        let p = Exposition::parse("x{model=\"a\\\"b\\\\c\\nd\"} 1\n").unwrap();
        assert_eq!(p.samples()[0].label("model"), Some("a\"b\\c\nd"));
    }

    #[test]
    fn a_broken_page_is_an_error_not_a_silent_drop() {
        for bad in ["x{a=\"1\" 1\n", "x 1 2 3 4\n", "x{a=1} 1\n"] {
            assert!(Exposition::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Exposition::parse("\n").unwrap().samples().len(), 0);
    }

    #[test]
    fn a_family_with_no_samples_yet_is_no_error() {
        let page =
            "# TYPE a counter\n# HELP b nothing yet\n# TYPE b counter\n# TYPE c counter\nc 2\n";
        let p = Exposition::parse(page).unwrap();
        assert_eq!(p.samples().len(), 1);
        assert_eq!(p.sum("c", &[]), 2.0);
        assert_eq!(
            Exposition::parse("# TYPE a counter\n")
                .unwrap()
                .samples()
                .len(),
            0
        );
    }

    proptest::proptest! {
        #[test]
        fn any_counter_value_and_label_round_trips(v in 0u64..1u64 << 52, model in "[a-zA-Z0-9#/_ .\"\\\\-]{0,40}") {
            let esc = model.replace('\\', "\\\\").replace('"', "\\\"");
            let page = format!("# TYPE c counter\nc{{model=\"{esc}\"}} {v}\n");
            let p = Exposition::parse(&page).unwrap();
            proptest::prop_assert_eq!(p.samples().len(), 1);
            proptest::prop_assert_eq!(p.samples()[0].value, v as f64);
            proptest::prop_assert_eq!(p.samples()[0].label("model"), Some(model.as_str()));
        }
    }
}
