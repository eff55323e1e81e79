//! The overall deadline of a call: a contract every layer reads, whoever set it.

use crate::{Error, TimeoutPhase};
use http::Request;
use std::time::Duration;
use tokio::time::Instant;

/// When the whole call must be over, across attempts, backoff sleeps and rate-limit waits.
///
/// The timeout module's `DeadlineLayer` puts it in the request extensions; the retry and 429 layers read it with [`Deadline::of`] and never start an
/// attempt or a wait that cannot finish in time ([`Deadline::check_wait`]): they fail at once
/// instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// A deadline `total` from now.
    pub fn after(total: Duration) -> Self {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// The deadline a request carries in its extensions, if any.
    pub fn of<B>(req: &Request<B>) -> Option<Deadline> {
        req.extensions().get::<Deadline>().copied()
    }

    /// Sets this deadline on `req`, unless it already carries an earlier one (a deadline is only
    /// ever shortened). Returns the one now in force.
    pub fn apply<B>(self, req: &mut Request<B>) -> Deadline {
        let d = self.shortened_by(Deadline::of(req));
        req.extensions_mut().insert(d);
        d
    }

    /// The one in force of this deadline and an `outer` one: a deadline is only ever shortened,
    /// so an outer one that ends first stays.
    pub(crate) fn shortened_by(self, outer: Option<Deadline>) -> Deadline {
        match outer {
            Some(o) if o.at <= self.at => o,
            _ => self,
        }
    }

    /// The instant it passes.
    #[cfg_attr(not(feature = "timeout"), allow(dead_code))]
    pub(crate) fn instant(&self) -> Instant {
        self.at
    }

    /// The configured total.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    #[cfg_attr(not(feature = "timeout"), allow(dead_code))]
    pub(crate) fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The error for a call that ran out of time.
    pub(crate) fn error(&self) -> Error {
        Error::timeout(TimeoutPhase::Deadline, self.total)
    }

    /// Checks that a wait of `wait` (a backoff sleep, a rate-limit wait) ends before the
    /// deadline, with `margin` left for the attempt that follows it.
    ///
    /// # Errors
    /// A deadline [`Error`] saying how long the wait was and how much time was left, so that
    /// the caller fails now instead of sleeping into a certain timeout.
    pub fn check_wait(&self, wait: Duration, margin: Duration) -> Result<(), Error> {
        let left = self.remaining();
        if wait.saturating_add(margin) < left {
            Ok(())
        } else {
            Err(self.error().with_detail(format!(
                "not waiting {wait:?}: only {left:?} of the {:?} deadline is left",
                self.total
            )))
        }
    }
}
