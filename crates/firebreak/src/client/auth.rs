//! The API key and the layer that sends it.

use crate::client::{API_KEY_ENV, ClientError};
use http::Request;
use http::header::{AUTHORIZATION, HeaderValue};
use std::fmt;
use std::task::{Context, Poll};
use tower::Layer;

/// An API key. Its `Debug` shows only that a key is present, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    header: HeaderValue,
}

impl ApiKey {
    /// Wraps a key.
    ///
    /// # Errors
    /// [`ClientError::InvalidApiKey`] when the key is empty, has surrounding whitespace, or holds
    /// characters not allowed in a header. The key is not echoed in the error.
    pub fn new(key: impl AsRef<str>) -> Result<ApiKey, ClientError> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(ClientError::InvalidApiKey("it is empty"));
        }
        if key.trim() != key {
            return Err(ClientError::InvalidApiKey(
                "it has leading or trailing whitespace",
            ));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| ClientError::InvalidApiKey("it has characters not allowed in a header"))?;
        header.set_sensitive(true);
        Ok(ApiKey { header })
    }

    /// Reads `FIREWORKS_API_KEY`.
    ///
    /// # Errors
    /// [`ClientError::MissingApiKey`] when unset or empty; as [`ApiKey::new`] otherwise.
    pub fn from_env() -> Result<ApiKey, ClientError> {
        match std::env::var(API_KEY_ENV) {
            Ok(k) if !k.is_empty() => ApiKey::new(k),
            _ => Err(ClientError::MissingApiKey),
        }
    }

    /// The `Authorization` header value, already marked sensitive.
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Adds `Authorization: Bearer <key>` (marked sensitive) to every request.
///
/// By default it replaces any `Authorization` the request already has; with
/// [`AuthLayer::if_missing`] it only fills one in (what a proxy that passes the caller's key
/// through wants).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    key: ApiKey,
    only_if_missing: bool,
}

impl AuthLayer {
    /// Always sets this key.
    pub fn new(key: ApiKey) -> Self {
        AuthLayer {
            key,
            only_if_missing: false,
        }
    }

    /// Sets the key only on requests that have no `Authorization` header.
    pub fn if_missing(mut self) -> Self {
        self.only_if_missing = true;
        self
    }

    /// The key this layer sends (its `Debug` is redacted).
    #[cfg_attr(not(feature = "stack"), allow(dead_code))]
    pub(crate) fn key(&self) -> &ApiKey {
        &self.key
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            key: self.key.clone(),
            only_if_missing: self.only_if_missing,
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    key: ApiKey,
    only_if_missing: bool,
}

impl<S> Auth<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, key: ApiKey) -> Self {
        AuthLayer::new(key).layer(inner)
    }

    /// A layer that makes this service.
    pub fn layer(key: ApiKey) -> AuthLayer {
        AuthLayer::new(key)
    }

    crate::inner_service_accessors!();
}

impl<S, B> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let h = req.headers_mut();
        if !self.only_if_missing || !h.contains_key(AUTHORIZATION) {
            h.insert(AUTHORIZATION, self.key.header.clone());
        }
        // Any caller-supplied key is marked sensitive too, in either header.
        if let Some(v) = h.get_mut(AUTHORIZATION) {
            v.set_sensitive(true);
        }
        if let Some(v) = h.get_mut("x-api-key") {
            v.set_sensitive(true);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    const SECRET: &str = "fw_live_SECRET123";

    #[test]
    fn debug_and_errors_never_show_the_key() {
        let k = ApiKey::new(SECRET).unwrap();
        assert!(!format!("{k:?}").contains("SECRET"));
        let layer = AuthLayer::new(k);
        assert!(!format!("{layer:?}").contains("SECRET"), "{layer:?}");
        let e = ApiKey::new("fw_SECRET\n").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        assert!(matches!(
            ApiKey::new(""),
            Err(ClientError::InvalidApiKey(_))
        ));
        assert!(matches!(
            ApiKey::new(" fw_x"),
            Err(ClientError::InvalidApiKey(_))
        ));
    }

    #[test]
    fn the_keys_own_header_value_is_already_sensitive() {
        // #21 mutant 6: `header_value()` is documented as already sensitive; the gate hashes
        // it and it may be inserted by callers other than `Auth::call`.
        let k = ApiKey::new(SECRET).unwrap();
        assert!(k.header_value().is_sensitive());
        assert_eq!(k.header_value(), &format!("Bearer {SECRET}"));
        assert!(!format!("{:?}", k.header_value()).contains(SECRET));
    }

    /// The `Authorization` header the service below sees for a caller that sent its own.
    async fn seen_below(layer: AuthLayer) -> http::HeaderValue {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, ()>();
        let svc = layer.layer(mock);
        let req = Request::builder()
            .header(AUTHORIZATION, "Bearer caller")
            .body(())
            .unwrap();
        let call = tokio::spawn(svc.oneshot(req));
        let (seen, send) = handle.next_request().await.expect("a request");
        assert!(
            !format!("{seen:?}").contains(SECRET),
            "no Debug shows the key"
        );
        let v = seen.headers().get(AUTHORIZATION).unwrap().clone();
        send.send_response(());
        call.await.unwrap().unwrap();
        v
    }

    #[tokio::test]
    async fn sets_a_sensitive_bearer_header() {
        let v = seen_below(AuthLayer::new(ApiKey::new(SECRET).unwrap())).await;
        assert_eq!(v, &format!("Bearer {SECRET}"));
        assert!(v.is_sensitive());
    }

    #[tokio::test]
    async fn if_missing_keeps_the_callers_key_but_marks_it_sensitive() {
        let v = seen_below(AuthLayer::new(ApiKey::new(SECRET).unwrap()).if_missing()).await;
        assert_eq!(v, "Bearer caller");
        assert!(v.is_sensitive());
    }

    #[tokio::test]
    async fn poll_ready_is_forwarded() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, ()>();
        let mut svc =
            tower_test::mock::Spawn::new(AuthLayer::new(ApiKey::new(SECRET).unwrap()).layer(mock));
        handle.allow(0);
        assert!(svc.poll_ready().is_pending());
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
    }
}
