//! Classifying transport errors by walking their `source()` chain.

use crate::class::{Class, ConnectKind, TimeoutPhase};
use crate::error::{Error, TimeoutError};
use std::any::Any;
use std::error::Error as StdError;
use std::fmt::Display;
use std::io;

/// A boxed error, as tower layers pass them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Where in the attempt an error happened; it decides between the two kinds of reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before the response head arrived.
    BeforeResponse,
    /// While the response body was being read.
    MidBody,
}

/// An error and its sources, at most 32 links: the one walk of a source chain. A custom
/// `io::Error`'s `source()` skips the error it wraps, so the walk descends into that instead.
pub(crate) fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut cur = Some(err);
    std::iter::from_fn(move || {
        let e = cur?;
        cur = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
        Some(e)
    })
    .take(32)
}

/// Classifies an error by walking its source chain ([`chain`]).
///
/// It recognises firebreak's own [`Error`] and [`TimeoutError`], hyper-util's client error
/// (`is_connect`), hyper's error kinds, rustls errors, `io::Error` kinds, and hyper-util's
/// `dns error` connect errors (by their message, the only stable signal it exposes).
pub(crate) fn classify_error(err: &(dyn StdError + 'static), stage: Stage) -> Class {
    let mut connect = false;
    let mut dns = false;
    let mut tls = false;
    let mut refused = false;
    let mut timed_out = false;
    let mut reset = false;
    let mut protocol = false;
    for e in chain(err) {
        if let Some(fe) = e.downcast_ref::<Error>() {
            return fe.class();
        }
        if let Some(t) = e.downcast_ref::<TimeoutError>() {
            return Class::Timeout(t.phase());
        }
        if let Some(he) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connect |= he.is_connect();
        }
        if let Some(he) = e.downcast_ref::<hyper::Error>() {
            if he.is_parse() || he.is_parse_status() || he.is_parse_too_large() {
                protocol = true;
            }
            if he.is_incomplete_message()
                || he.is_canceled()
                || he.is_closed()
                || he.is_body_write_aborted()
            {
                reset = true;
            }
            if he.is_timeout() {
                timed_out = true;
            }
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => refused = true,
                io::ErrorKind::TimedOut => timed_out = true,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => reset = true,
                _ => {}
            }
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                tls = true;
            }
        }
        if !dns && starts_with_dns(e) {
            dns = true;
        }
    }
    if connect || dns {
        return if dns {
            Class::Connect(ConnectKind::Dns)
        } else if tls {
            Class::Connect(ConnectKind::Tls)
        } else if refused {
            Class::Connect(ConnectKind::Refused)
        } else if timed_out {
            Class::Timeout(TimeoutPhase::Connect)
        } else {
            Class::Connect(ConnectKind::Other)
        };
    }
    if tls {
        return Class::Connect(ConnectKind::Tls);
    }
    if refused {
        return Class::Connect(ConnectKind::Refused);
    }
    if protocol {
        return Class::Protocol;
    }
    if reset {
        return match stage {
            Stage::BeforeResponse => Class::ResetBeforeResponse,
            Stage::MidBody => Class::ResetMidBody,
        };
    }
    if timed_out {
        return Class::Timeout(match stage {
            Stage::BeforeResponse => TimeoutPhase::Headers,
            Stage::MidBody => TimeoutPhase::Idle,
        });
    }
    Class::Other
}

fn starts_with_dns(e: &dyn StdError) -> bool {
    use std::fmt::Write;
    // Format at most the first few bytes: enough to see the prefix, no big allocation.
    struct Prefix(String);
    impl Write for Prefix {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = 16usize.saturating_sub(self.0.len());
            self.0.push_str(&s[..s.len().min(room)]);
            if self.0.len() >= 16 {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut p = Prefix(String::with_capacity(16));
    let _ = write!(p, "{e}");
    p.0.starts_with("dns error")
}

/// Classifies an error known only as `Display + 'static` (tower-http's `classify_error`
/// signature): it is downcast to the error types tower stacks carry, then classified as
/// [`classify_error`] does. Unknown types give [`Class::Other`].
#[cfg_attr(not(feature = "classify"), allow(dead_code))]
pub(crate) fn classify_display<E: Display + 'static>(e: &E) -> Class {
    let any = e as &dyn Any;
    if let Some(fe) = any.downcast_ref::<Error>() {
        return fe.class();
    }
    if let Some(b) = any.downcast_ref::<BoxError>() {
        return classify_error(&**b, Stage::BeforeResponse);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn StdError + Send + Sync + 'static>>() {
        return classify_error(&**b, Stage::BeforeResponse);
    }
    if let Some(he) = any.downcast_ref::<hyper_util::client::legacy::Error>() {
        return classify_error(he, Stage::BeforeResponse);
    }
    if let Some(he) = any.downcast_ref::<hyper::Error>() {
        return classify_error(he, Stage::BeforeResponse);
    }
    if let Some(io) = any.downcast_ref::<io::Error>() {
        return classify_error(io, Stage::BeforeResponse);
    }
    Class::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<BoxError>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn io_kinds() {
        let c = |k, stage| classify_error(&io::Error::new(k, "x"), stage);
        assert_eq!(
            c(io::ErrorKind::ConnectionRefused, Stage::BeforeResponse),
            Class::Connect(ConnectKind::Refused)
        );
        assert_eq!(
            c(io::ErrorKind::ConnectionReset, Stage::BeforeResponse),
            Class::ResetBeforeResponse
        );
        assert_eq!(
            c(io::ErrorKind::ConnectionReset, Stage::MidBody),
            Class::ResetMidBody
        );
        assert_eq!(
            c(io::ErrorKind::BrokenPipe, Stage::MidBody),
            Class::ResetMidBody
        );
        assert_eq!(c(io::ErrorKind::Other, Stage::BeforeResponse), Class::Other);
    }

    #[test]
    fn dns_and_tls_by_chain() {
        let dns = Wrap(
            "outer",
            Some(Box::new(Wrap(
                "dns error",
                Some(Box::new(io::Error::other("no such host"))),
            ))),
        );
        assert_eq!(
            classify_error(&dns, Stage::BeforeResponse),
            Class::Connect(ConnectKind::Dns)
        );
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("bad cert".into()),
        );
        assert_eq!(
            classify_error(&tls, Stage::BeforeResponse),
            Class::Connect(ConnectKind::Tls)
        );
    }

    #[test]
    fn our_own_errors_keep_their_class() {
        let t = Error::timeout(TimeoutPhase::Idle, Duration::from_secs(5));
        let wrapped = Wrap("layer", Some(Box::new(t)));
        assert_eq!(
            classify_error(&wrapped, Stage::BeforeResponse),
            Class::Timeout(TimeoutPhase::Idle)
        );
        let boxed: BoxError = Box::new(Error::timeout(TimeoutPhase::Ready, Duration::from_secs(1)));
        assert_eq!(
            classify_display(&boxed),
            Class::Timeout(TimeoutPhase::Ready)
        );
        assert_eq!(classify_display(&"a str"), Class::Other);
    }

    #[test]
    fn the_chain_walk_is_bounded() {
        // A 100-deep chain still ends (and finds nothing past the bound).
        let mut e: BoxError = Box::new(io::Error::new(io::ErrorKind::ConnectionRefused, "deep"));
        for _ in 0..100 {
            e = Box::new(Wrap("w", Some(e)));
        }
        assert_eq!(classify_error(&*e, Stage::BeforeResponse), Class::Other);
    }
}
