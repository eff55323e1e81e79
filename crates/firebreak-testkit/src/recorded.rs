//! Reading what a `metrics` recorder saw, for tests: [`Recorded`] wraps metrics-util's
//! `DebuggingRecorder`, whose snapshots are destructive (they reset counters and gauges and
//! drain histograms), and keeps running totals so a test can look as often as it likes.

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::BTreeMap;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
struct Totals {
    counter: u64,
    gauge: f64,
    samples: Vec<f64>,
}

/// A recorder and the totals of everything it recorded.
#[derive(Debug)]
pub struct Recorded {
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
    totals: Mutex<BTreeMap<(String, Labels), Totals>>,
}

impl Default for Recorded {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorded {
    /// A fresh recorder.
    pub fn new() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Recorded {
            recorder,
            snapshotter,
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `f` with this recorder as the current one: metric handles created inside (a
    /// firebreak stack registers its handles when it is built) record here.
    pub fn build<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Makes this recorder the current one on this thread until the guard drops: series a
    /// stack registers while it runs (a model's, when the model is first seen) record here.
    /// In a current-thread runtime that covers every poll.
    pub fn install(&self) -> metrics::LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(&self.recorder)
    }

    fn refresh(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, Labels), Totals>> {
        let mut totals = self.totals.lock().expect("totals lock");
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let mut labels: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let t = totals.entry((key.name().to_owned(), labels)).or_default();
            match value {
                DebugValue::Counter(c) => t.counter += c,
                DebugValue::Gauge(g) => t.gauge += g.into_inner(),
                DebugValue::Histogram(h) => t.samples.extend(h.into_iter().map(|x| x.into_inner())),
            }
        }
        totals
    }

    fn fold<R>(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        mut f: impl FnMut(&Totals) -> R,
    ) -> Vec<R> {
        self.refresh()
            .iter()
            .filter(|((n, ls), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, t)| f(t))
            .collect()
    }

    /// The sum of the counters `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.fold(name, labels, |t| t.counter).into_iter().sum()
    }

    /// The sum of the gauges `name` whose labels include `labels`.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.fold(name, labels, |t| t.gauge).into_iter().sum()
    }

    /// Every sample of the histograms `name` whose labels include `labels`.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.fold(name, labels, |t| t.samples.clone())
            .into_iter()
            .flatten()
            .collect()
    }

    /// Every series seen so far, as (name, sorted labels).
    pub fn series(&self) -> Vec<(String, Labels)> {
        self.refresh().keys().cloned().collect()
    }

    /// The value of every series whose name is `name`, by its value of label `label`.
    pub fn counters_by(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((n, ls), t) in self.refresh().iter() {
            if n != name {
                continue;
            }
            if let Some((_, v)) = ls.iter().find(|(k, _)| k == label) {
                *out.entry(v.clone()).or_default() += t.counter;
            }
        }
        out
    }
}
