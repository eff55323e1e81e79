//! How a wait ends badly: one variant per ending, each a line that says what to do.

use crate::{Outcome, Resource};
use std::time::Duration;

/// Why a wait failed. The `Display` is one line ending in what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// Deleted or archived: it cannot come back.
    #[error("{resource} is {state}, a tombstone: it cannot be resumed; create a new one")]
    Tombstone {
        /// The resource.
        resource: Resource,
        /// `JOB_STATE_DELETED`, `JOB_STATE_ARCHIVED` or `DELETED`.
        state: String,
    },
    /// The control plane says it failed.
    #[error(
        "{resource} failed: {message}; fix the cause in its logs, then resume it or start it again"
    )]
    Failed {
        /// The resource.
        resource: Resource,
        /// The control plane's status message (or the state, when it sent none).
        message: String,
    },
    /// A job ended in a state that is not success (cancelled, expired).
    #[error("{resource} ended in {state}; start it again if its work is still needed")]
    Ended {
        /// The resource.
        resource: Resource,
        /// The state.
        state: String,
    },
    /// A state that is neither running nor resumable did not change in time.
    #[error(
        "{resource} stuck in {state} for {waited:?}; check it in the Fireworks console, or allow longer (max_wait_for_resumable)"
    )]
    Stuck {
        /// The resource.
        resource: Resource,
        /// The state it stayed in.
        state: String,
        /// How long it was waited on.
        waited: Duration,
    },
    /// Waiting for capacity took longer than allowed.
    #[error(
        "{resource} still waiting for capacity (JOB_STATE_PENDING) after {waited:?}; allow longer (pending_timeout) or ask Fireworks for capacity"
    )]
    PendingTooLong {
        /// The resource.
        resource: Resource,
        /// How long it was pending.
        waited: Duration,
    },
    /// Not healthy (or ready) within the timeout.
    #[error(
        "{resource} not ready after {waited:?} (last state {state}); allow longer (timeout) or check it in the Fireworks console"
    )]
    TimedOut {
        /// The resource.
        resource: Resource,
        /// The last state seen.
        state: String,
        /// How long it was waited on.
        waited: Duration,
    },
    /// Every poll failed for longer than allowed.
    #[error(
        "{resource} unreachable for {waited:?} ({failures} failed polls; last: {last}); check the network and the control plane's status, then run again"
    )]
    Unreachable {
        /// The resource.
        resource: Resource,
        /// How long the failures lasted.
        waited: Duration,
        /// Failed polls in that streak.
        failures: u32,
        /// The last failure.
        #[source]
        last: firebreak::Error,
    },
    /// The control plane refused the call for good (unknown resource, bad key, no permission).
    #[error(
        "{resource}: the control plane refused: {error}; check the account, the id and the key"
    )]
    Refused {
        /// The resource.
        resource: Resource,
        /// The answer.
        #[source]
        error: firebreak::Error,
    },
    /// `:resume` failed.
    #[error(
        "{resource}: resume failed: {error}; resume it from the Fireworks console or run again"
    )]
    ResumeFailed {
        /// The resource.
        resource: Resource,
        /// The answer.
        #[source]
        error: firebreak::Error,
    },
    /// An invalid setting or name.
    #[error("invalid input: {0}")]
    Config(String),
}

/// A failed wait: why, and what was seen until then. Displays as its reason.
#[derive(Debug)]
pub struct WaitError {
    /// Why it failed.
    pub reason: JobsError,
    /// The polls, failures, resume and time until the failure.
    pub so_far: Box<Outcome>,
}

impl WaitError {
    /// A wait that ended before its first poll (bad input): nothing was seen.
    pub(crate) fn before_start(resource: Resource, reason: JobsError) -> WaitError {
        WaitError {
            reason,
            so_far: Box::new(Outcome {
                resource,
                state: String::new(),
                healthy: false,
                resumed: false,
                polls: 0,
                failed_polls: 0,
                elapsed: std::time::Duration::ZERO,
            }),
        }
    }
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reason.fmt(f)
    }
}

impl std::error::Error for WaitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.reason)
    }
}
