//! [`BaseUrl`]: the one check of an endpoint's base URL, for the client, the router's targets
//! and the CLI's flags.

use std::fmt;
use std::sync::Arc;

/// An endpoint's base URL (e.g. [`FIREWORKS_BASE_URL`](crate::client::FIREWORKS_BASE_URL)),
/// checked once: `http` or `https`, a host, a valid port, no credentials, no query or
/// fragment. Kept without a trailing slash.
///
/// ```
/// use firebreak::client::BaseUrl;
///
/// let u = BaseUrl::parse("http://127.0.0.1:8080/inference/v1/").unwrap();
/// assert_eq!(u.as_str(), "http://127.0.0.1:8080/inference/v1");
/// assert!(BaseUrl::parse("http://127.0.0.1:99999/v1").is_err());
/// assert!(BaseUrl::parse("https://user:secret@host/v1").unwrap_err().is_credentials());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(Arc<str>);

impl BaseUrl {
    /// Parses and checks `raw`.
    ///
    /// # Errors
    /// [`BaseUrlError`], saying what is wrong; it never repeats a URL that may hold
    /// credentials.
    pub fn parse(raw: &str) -> Result<BaseUrl, BaseUrlError> {
        // A URL that may hold credentials is never echoed back.
        let shown = if raw.contains('@') { "<redacted>" } else { raw };
        let err = |why: String| BaseUrlError {
            shown: shown.to_owned(),
            why,
            credentials: false,
        };
        let u = url::Url::parse(raw).map_err(|e| err(e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(err("the scheme must be http or https".into()));
        }
        // WHATWG parsing reads `http:///v1` as host `v1`; a user who wrote that meant no host.
        let after_scheme = raw.split_once("://").map_or("", |(_, r)| r);
        if u.host_str().is_none_or(str::is_empty) || after_scheme.starts_with('/') {
            return Err(err("no host".into()));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(BaseUrlError {
                credentials: true,
                ..err("it carries credentials".into())
            });
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(err("a base URL has no query or fragment".into()));
        }
        Ok(BaseUrl(u.as_str().trim_end_matches('/').into()))
    }

    /// The URL, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BaseUrl").field(&&*self.0).finish()
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A base URL that [`BaseUrl::parse`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrlError {
    shown: String,
    why: String,
    credentials: bool,
}

impl BaseUrlError {
    /// The URL as it may be shown (`<redacted>` when it may hold credentials).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.why
    }

    /// Whether it carries credentials (the key belongs in `FIREWORKS_API_KEY`).
    pub fn is_credentials(&self) -> bool {
        self.credentials
    }
}

impl fmt::Display for BaseUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.credentials {
            f.write_str("a base URL must not carry credentials; pass the key in FIREWORKS_API_KEY")
        } else {
            write!(f, "invalid base URL {:?}: {}", self.shown, self.why)
        }
    }
}

impl std::error::Error for BaseUrlError {}
