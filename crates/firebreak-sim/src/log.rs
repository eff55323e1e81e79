//! The attempt log: one record per request the simulator received.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One attempt, as the server saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Arrival order (0-based) across the whole simulator.
    pub seq: u64,
    /// Arrival time, in milliseconds since the simulator started (monotonic clock).
    pub t_ms: f64,
    /// When the response ended (finished, cut or dropped), in milliseconds since start.
    pub end_ms: f64,
    /// The logical request id: the JSON body's `user` field, else the `x-request-id` header.
    pub request_id: Option<String>,
    /// 1-based attempt number of this logical request, as counted by the simulator.
    pub attempt: u32,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// HTTP version, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Status sent, or 0 when no response head was sent (hang, reset, client gone).
    pub status: u16,
    /// The fault applied, if any (its `kind`), or `rate_limit` / `capacity` / `auth`.
    pub fault: Option<String>,
    /// xxh3-64 of the request body.
    pub body_hash: u64,
    /// Request body length in bytes.
    pub body_len: u64,
    /// Whether the request asked for a stream.
    pub stream: bool,
    /// Response body bytes handed to the connection.
    pub bytes_sent: u64,
    /// Whether the response body was sent to its end.
    pub completed: bool,
    /// The request's header names, lower case, in order (never their values, which may hold
    /// keys).
    #[serde(default)]
    pub header_names: Vec<String>,
    /// The `model` the JSON body named, if any.
    #[serde(default)]
    pub model: Option<String>,
}

/// The shared log. Bounded by `capacity`; overflow is counted, not silently lost.
#[derive(Debug)]
pub(crate) struct AttemptLog {
    records: Mutex<Vec<AttemptRecord>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl AttemptLog {
    pub(crate) fn new(capacity: usize) -> Self {
        AttemptLog {
            records: Mutex::new(Vec::with_capacity(capacity.min(4096))),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn push(&self, r: AttemptRecord) {
        let mut g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() < self.capacity {
            g.push(r);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records from index `from` (in completion order), sorted by arrival.
    pub(crate) fn snapshot_from(&self, from: usize) -> Vec<AttemptRecord> {
        let g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = g.get(from..).map(<[_]>::to_vec).unwrap_or_default();
        drop(g);
        v.sort_by_key(|r| r.seq);
        v
    }

    pub(crate) fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
