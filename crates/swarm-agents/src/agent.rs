//! The contract between the engine and an agent.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use swarm_core::{FieldError, TaskId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Something that does a task's work.
///
/// `run` takes `Arc<Self>` so the future it returns owns what it needs and can
/// be spawned. The engine races it against the deadline and the cancellation
/// token and drops it when either wins; agents that spawn work of their own
/// (threads, subprocesses, child requests) must stop it when
/// [`AgentContext::cancel`] fires.
pub trait Agent: Send + Sync + 'static {
    /// The agent kind (`echo`, `sim`, …), as named in `pools.*.agent`.
    fn kind(&self) -> &'static str;

    /// Checks `args` at admission, so bad input is a 422 before anything is
    /// stored. Errors name the field relative to `args` (`to`, not `args.to`).
    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        let _ = args;
        Ok(())
    }

    /// Does the work.
    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>>;
}

/// What an agent knows about the run it is part of.
#[derive(Clone)]
pub struct AgentContext {
    /// The task being run.
    pub task_id: TaskId,
    /// Its tenant.
    pub tenant: String,
    /// The instance name running it (`communications-0`).
    pub instance: String,
    /// When the task's time is up; the engine enforces it, agents may use it
    /// to bound their own calls.
    pub deadline: Instant,
    /// Fired on cancel, deadline and shutdown.
    pub cancel: CancellationToken,
    /// Where to report intermediate steps (shown as SSE `progress` events).
    pub progress: Progress,
    /// Runs child tasks through the scheduler (nested calls); `None` when
    /// the agent runs outside an engine, and agents then do the work inline.
    pub children: Option<Arc<dyn Children>>,
    /// The `X-Request-Id` of the request that submitted the task (absent
    /// for tasks recovered after a restart); agents calling other services
    /// pass it on.
    pub request_id: Option<String>,
}

/// Nested calls: a task asking another department for work.
///
/// The engine's implementation queues the child in that department's pool,
/// under its limit, with the parent's deadline (or an earlier one) and a
/// cancellation token that is a child of the parent's, so cancelling or
/// timing out the parent stops its children. Children are not stored: the
/// parent is the durable unit, and a parent re-run after a crash re-runs its
/// children.
pub trait Children: Send + Sync {
    /// Runs `args` in `department` as a child of `parent`, returning the
    /// child agent's result.
    fn run(
        &self,
        parent: &AgentContext,
        department: &str,
        args: Value,
    ) -> BoxFuture<'static, Result<Value, AgentError>>;
}

impl AgentContext {
    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// A sink for progress reports; cheap to clone, a no-op when nobody listens.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Fn(Value) + Send + Sync>>);

impl Progress {
    /// A sink that calls `f` with each report.
    pub fn new(f: impl Fn(Value) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Reports one step.
    pub fn report(&self, value: Value) {
        if let Some(f) = &self.0 {
            f(value)
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// A task's input as an agent sees it.
#[derive(Debug, Clone)]
pub struct AgentInput {
    /// The submitted `type`.
    pub task_type: String,
    /// The submitted title.
    pub title: Option<String>,
    /// The submitted description.
    pub description: Option<String>,
    /// The submitted `args` (always an object).
    pub args: Value,
}

/// Why an agent did not produce a result.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AgentError {
    /// The input cannot be worked on (found at run time, not at admission).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The field under `args`, if one is to blame.
        field: Option<String>,
    },
    /// The work failed.
    #[error("{message}")]
    Failed {
        /// Stable code, e.g. `smtp_error`, `simulated_failure`.
        code: String,
        /// What happened.
        message: String,
    },
    /// A backend refused for lack of capacity (back-pressure for the limiter).
    #[error("{message}")]
    Overloaded {
        /// What refused.
        message: String,
        /// How long the backend asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// A backend did not answer in time.
    #[error("{message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
}

impl AgentError {
    /// A `Failed` error.
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Failed {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The `Invalid` error for `args` found bad at run time.
    pub(crate) fn invalid_args(e: FieldError) -> Self {
        Self::Invalid {
            message: e.message,
            field: e.field,
        }
    }

    /// The error of a run stopped by its cancellation token.
    pub fn cancelled() -> Self {
        Self::failed("cancelled", "the task was cancelled")
    }

    /// The stable code stored in the task's `error.code`.
    pub fn code(&self) -> &str {
        match self {
            Self::Invalid { .. } => "invalid_input",
            Self::Failed { code, .. } => code,
            Self::Overloaded { .. } => "backend_overloaded",
            Self::Timeout { .. } => "backend_timeout",
        }
    }
}
