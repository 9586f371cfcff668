//! An error with the exit code it deserves.

use thiserror::Error;

/// Why a command stopped. The message is printed as is after
/// `sonde: error: `.
#[derive(Debug, Error)]
pub enum Failure {
    /// A usage or configuration error (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A runtime or environment error: missing privileges, a kernel
    /// without a hook, a port in use (exit code 1).
    #[error("{0}")]
    Runtime(String),
    /// A supervised task panicked more often than its restart budget
    /// allows (exit code 3, `tasks::EXIT_GAVE_UP`): a fresh process may
    /// fare better, so the orchestrator should restart it.
    #[error("{0}")]
    GaveUp(String),
}

impl Failure {
    pub(crate) fn usage(message: impl ToString) -> Self {
        Self::Usage(message.to_string())
    }

    pub(crate) fn runtime(message: impl ToString) -> Self {
        Self::Runtime(message.to_string())
    }
}
