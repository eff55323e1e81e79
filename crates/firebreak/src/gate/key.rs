//! Which gate a request belongs to: [`KeyBy`], the [`RequestHead`] it reads, and the
//! [`GateKey`] it gives.

use crate::Model;
use http::{Extensions, HeaderMap, Method, Uri};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Which gate a request belongs to: a hash, so that no API key is ever kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GateKey(u64);

impl GateKey {
    /// The key of anything hashable (a tenant name, a header value): what a
    /// [`KeyBy::Custom`] function returns.
    pub fn of(value: impl Hash) -> GateKey {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        value.hash(&mut h);
        GateKey(h.finish())
    }

    /// The key whose [`raw`](GateKey::raw) value is `raw`: for a [`Fleet`](crate::gate::Fleet)
    /// that names keys across processes (all processes derive the same key for the same
    /// credential and model).
    pub const fn from_raw(raw: u64) -> GateKey {
        GateKey(raw)
    }

    /// The hash, for a fleet to name the key by.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

// Already a hash: maps keyed by it skip hashing it again.
impl nohash_hasher::IsEnabled for GateKey {}

/// The parts of a request a key function may look at.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a Method,
    /// URI.
    pub uri: &'a Uri,
    /// Headers (the `Authorization` value must only ever be hashed, never kept).
    pub headers: &'a HeaderMap,
    /// Extensions.
    pub extensions: &'a Extensions,
}

/// How requests are grouped into gates.
#[derive(Clone, Default)]
pub enum KeyBy {
    /// One gate for the whole client (the default).
    #[default]
    Client,
    /// One gate per (API key, model): Fireworks serverless limits are per account and model.
    /// The key is the request's `Authorization` header or, when it has none (the auth layer
    /// adds it below the gate), the key given to [`GateLayer::fallback_credential`](crate::gate::GateLayer::fallback_credential); it is
    /// hashed, never stored. The model comes from the [`Model`] extension.
    ApiKeyAndModel,
    /// Any function of the request head.
    Custom(Arc<dyn Fn(&RequestHead<'_>) -> GateKey + Send + Sync>),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBy::Client => f.write_str("Client"),
            KeyBy::ApiKeyAndModel => f.write_str("ApiKeyAndModel"),
            KeyBy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl KeyBy {
    pub(crate) fn key(&self, head: &RequestHead<'_>, fallback: u64) -> GateKey {
        match self {
            KeyBy::Client => GateKey(0),
            KeyBy::ApiKeyAndModel => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                match head.headers.get(http::header::AUTHORIZATION) {
                    Some(a) => xxhash_rust::xxh3::xxh3_64(a.as_bytes()).hash(&mut h),
                    None => fallback.hash(&mut h),
                }
                if let Some(m) = head.extensions.get::<Model>() {
                    m.0.hash(&mut h);
                }
                GateKey(h.finish())
            }
            KeyBy::Custom(f) => f(head),
        }
    }
}
