//! The states of long-running resources, as the control plane spells them.
//!
//! Unknown states are kept as strings ([`JobState::Other`], [`DeploymentState::Other`]) and
//! treated as transitional: never a panic, never a silent success.

use std::fmt;

/// Generates a state enum with its wire spellings from one list, and `Other(String)` for the rest.
macro_rules! states {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $v,)*
            /// A state this version does not know, kept as sent; treated as transitional.
            Other(String),
        }

        impl $name {
            /// Every known state.
            pub const KNOWN: &'static [$name] = &[$($name::$v,)*];

            /// Reads a state as the control plane sends it; an unknown one becomes `Other`.
            pub fn parse(s: &str) -> $name {
                match s {
                    $($s => $name::$v,)*
                    other => $name::Other(other.to_string()),
                }
            }

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$v => $s,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

states! {
    /// The state every Fireworks job shares (`JOB_STATE_*`), and the two tombstones.
    JobState {
        /// Not set.
        Unspecified = "JOB_STATE_UNSPECIFIED",
        /// Being created.
        Creating = "JOB_STATE_CREATING",
        /// Running.
        Running = "JOB_STATE_RUNNING",
        /// Finished successfully.
        Completed = "JOB_STATE_COMPLETED",
        /// Failed.
        Failed = "JOB_STATE_FAILED",
        /// Cancelled.
        Cancelled = "JOB_STATE_CANCELLED",
        /// Being deleted.
        Deleting = "JOB_STATE_DELETING",
        /// Writing its results.
        WritingResults = "JOB_STATE_WRITING_RESULTS",
        /// Validating its input.
        Validating = "JOB_STATE_VALIDATING",
        /// Being deleted, cleaning up.
        DeletingCleaningUp = "JOB_STATE_DELETING_CLEANING_UP",
        /// Waiting for capacity.
        Pending = "JOB_STATE_PENDING",
        /// Expired.
        Expired = "JOB_STATE_EXPIRED",
        /// Being queued again.
        ReQueueing = "JOB_STATE_RE_QUEUEING",
        /// Creating its input dataset.
        CreatingInputDataset = "JOB_STATE_CREATING_INPUT_DATASET",
        /// Idle.
        Idle = "JOB_STATE_IDLE",
        /// Being cancelled.
        Cancelling = "JOB_STATE_CANCELLING",
        /// Stopped early (a normal end for some fine-tuning jobs).
        EarlyStopped = "JOB_STATE_EARLY_STOPPED",
        /// Paused.
        Paused = "JOB_STATE_PAUSED",
        /// A tombstone: deleted.
        Deleted = "JOB_STATE_DELETED",
        /// A tombstone: archived.
        Archived = "JOB_STATE_ARCHIVED",
    }
}

impl JobState {
    /// Deleted or archived: nothing can bring it back.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, JobState::Deleted | JobState::Archived)
    }

    /// A state a job stays in once reached (tombstones included).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Expired
                | JobState::EarlyStopped
        ) || self.is_tombstone()
    }

    /// A terminal state that counts as success.
    pub fn is_success(&self) -> bool {
        matches!(self, JobState::Completed | JobState::EarlyStopped)
    }

    /// The states a trainer job is resumed from by `reconnect_and_wait`.
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Cancelled | JobState::Paused | JobState::Completed
        )
    }
}

states! {
    /// A deployment's state.
    DeploymentState {
        /// Being created.
        Creating = "CREATING",
        /// Serving.
        Ready = "READY",
        /// Being deleted.
        Deleting = "DELETING",
        /// Failed.
        Failed = "FAILED",
        /// Being updated.
        Updating = "UPDATING",
        /// A tombstone: deleted.
        Deleted = "DELETED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_known_state_reads_back_as_itself() {
        for s in JobState::KNOWN {
            assert_eq!(&JobState::parse(s.as_str()), s);
        }
        for s in DeploymentState::KNOWN {
            assert_eq!(&DeploymentState::parse(s.as_str()), s);
        }
        assert_eq!(JobState::KNOWN.len(), 20);
        assert!(JobState::Deleted.is_tombstone() && JobState::Archived.is_terminal());
        assert!(!JobState::Pending.is_terminal() && JobState::Paused.is_resumable());
    }

    proptest! {
        #[test]
        fn any_string_is_kept_as_sent(s in ".{0,40}") {
            let j = JobState::parse(&s);
            prop_assert_eq!(j.as_str(), s.as_str());
            let d = DeploymentState::parse(&s);
            prop_assert_eq!(d.as_str(), s.as_str());
            // An unknown state is never terminal: it is waited on, not taken as an ending.
            if matches!(j, JobState::Other(_)) {
                prop_assert!(!j.is_terminal() && !j.is_resumable());
            }
        }
    }
}
