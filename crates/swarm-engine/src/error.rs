//! The engine's errors, each mapping to one HTTP status at the edge.

use swarm_core::FieldError;
use swarm_store::StoreError;

/// Why an engine call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input (422).
    #[error("{0}")]
    Invalid(FieldError),
    /// No such task for this caller (404). Another tenant's task is also
    /// "not found", so ids leak nothing.
    #[error("task not found")]
    NotFound,
    /// No such pool or instance (404).
    #[error("{message}")]
    Missing {
        /// Stable code: `pool_not_found`, `instance_not_found`.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// The request conflicts with the task's state or an earlier request (409).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// The target pool or the process cannot take more work now (503 +
    /// `Retry-After`).
    #[error("{message}")]
    Overloaded {
        /// Stable code: `queue_full`, `queue_delay`, `deadline_unmeetable`,
        /// `process_overloaded`.
        code: &'static str,
        /// Explanation.
        message: String,
        /// Suggested wait before retrying, seconds.
        retry_after_s: u64,
    },
    /// The tenant has as many tasks outstanding as its quota allows, or a
    /// token budget has no room for the task (429 + `Retry-After`).
    #[error("{message}")]
    QuotaExceeded {
        /// `tenant_quota` or `token_budget`.
        code: &'static str,
        /// Explanation.
        message: String,
        /// Suggested wait before retrying, seconds.
        retry_after_s: u64,
    },
    /// The database is unreachable or saturated (503).
    #[error("{0}")]
    Unavailable(String),
    /// The engine is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A bug or corrupt data (500).
    #[error("{0}")]
    Internal(String),
}

impl From<FieldError> for EngineError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(e)
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            // An unknown outcome is the database's fault as much as a
            // refusal: the client retries (the sweep takes care of a row
            // that was stored after all).
            StoreError::Unavailable(m) | StoreError::InDoubt(m) => Self::Unavailable(m),
            StoreError::Closed => Self::ShuttingDown,
            other => Self::Internal(other.to_string()),
        }
    }
}
