//! The contract between the engine and an agent.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use swarm_core::{FieldError, TaskId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `args` check for agents that pass them on untouched (to a worker
/// process, an HTTP instance): only the shape, an object or nothing.
pub fn args_object(args: &Value) -> Result<(), FieldError> {
    match args {
        Value::Object(_) | Value::Null => Ok(()),
        _ => Err(FieldError::invalid("", "`args` must be an object")),
    }
}

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

    /// The model tokens a call with these (valid) `args` may spend at
    /// most, for token budgets: the prompt's estimated size plus the
    /// completion's ceiling. `None` for agents that call no model.
    fn token_estimate(&self, args: &Value) -> Option<u64> {
        let _ = args;
        None
    }

    /// Does the work.
    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>>;

    /// The instances behind this agent when it balances several (for
    /// status, metrics and `/api/pools/{pool}/instances`).
    fn balanced(&self) -> Option<&crate::balanced::BalancedAgent> {
        None
    }

    /// The worker processes behind this agent, if it runs any.
    fn workers(&self) -> Option<crate::process::ProcessStats> {
        None
    }
}

/// The tokens a result says it spent: its `usage`, as OpenAI
/// (`total_tokens`, or `prompt_tokens` + `completion_tokens`) and Anthropic
/// (`input_tokens` + `output_tokens`) report it.
pub fn reported_tokens(result: &Value) -> Option<u64> {
    let u = result.get("usage")?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    n("total_tokens")
        .or_else(|| Some(n("prompt_tokens")? + n("completion_tokens").unwrap_or(0)))
        .or_else(|| Some(n("input_tokens")? + n("output_tokens").unwrap_or(0)))
}

/// What an agent knows about the run it is part of.
#[derive(Clone)]
pub struct AgentContext {
    /// The task being run.
    pub task_id: TaskId,
    /// Its tenant.
    pub tenant: String,
    /// Which attempt of the task this is, from 1 (a retry, or a run after
    /// its node stopped, has a higher number).
    pub attempt: u32,
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
    /// Where an agent that picks among instances says which one ran the
    /// task (the last attempt's), for the task's `instance`.
    pub placed: Placement,
    /// Where an agent calling a rate-limited provider says "this provider
    /// is spent for a while" (from its rate-limit headers, on a success as
    /// well as on a 429), so whoever schedules calls can hold them back.
    pub provider: ProviderSignal,
}

/// Which instance ran a task, set by the agent that chose it; cheap to
/// clone (clones share the slot). The default tracks nothing and costs
/// nothing: the engine asks for [`Placement::tracked`] only for agents that
/// choose among instances.
#[derive(Clone, Default, Debug)]
pub struct Placement(Option<Arc<std::sync::Mutex<Option<String>>>>);

impl Placement {
    /// A slot that records what [`set`](Self::set) is given.
    pub fn tracked() -> Self {
        Self(Some(Arc::default()))
    }

    /// Records the instance now running the task (a no-op when untracked).
    pub fn set(&self, instance: &str) {
        if let Some(slot) = &self.0 {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(instance.to_string());
        }
    }

    /// The instance last recorded, if any.
    pub fn get(&self) -> Option<String> {
        let slot = self.0.as_ref()?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A sink for provider pauses ([`ProviderPause`]); cheap to clone, a
/// no-op by default (nobody listening).
///
/// [`ProviderPause`]: crate::ratelimit::ProviderPause
#[derive(Clone, Default)]
pub struct ProviderSignal(Option<Arc<dyn Fn(crate::ratelimit::ProviderPause) + Send + Sync>>);

impl ProviderSignal {
    /// A sink that calls `f` with each pause.
    pub fn new(f: impl Fn(crate::ratelimit::ProviderPause) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Says the provider is spent for `p.delay`.
    pub fn pause(&self, p: crate::ratelimit::ProviderPause) {
        if let Some(f) = &self.0 {
            f(p)
        }
    }
}

impl std::fmt::Debug for ProviderSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderSignal")
    }
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
        /// Whether trying again (on this or another instance) may succeed,
        /// e.g. a worker that died or a backend's 5xx; see
        /// [`AgentError::is_retryable`].
        retryable: bool,
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

impl AgentInput {
    /// The task as external agents receive it (`id`, `type`, `args`,
    /// `title`, `description`, `request_id`, `task_id`, `tenant`; the
    /// backend adds `deadline_ms` when it sends). Shared by the process and
    /// HTTP backends, the counterpart of [`AgentError::from_wire`].
    pub fn to_wire(&self, id: &str, ctx: &AgentContext) -> Value {
        serde_json::json!({
            "id": id,
            "type": self.task_type,
            "args": self.args,
            "title": self.title,
            "description": self.description,
            "request_id": ctx.request_id,
            "task_id": ctx.task_id.to_string(),
            "tenant": ctx.tenant,
        })
    }
}

impl AgentError {
    /// A `Failed` error that trying again would not fix.
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Failed {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// A `Failed` error that may go away when tried again (a crashed worker,
    /// a backend's 5xx, a refused connection).
    pub fn failed_retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Failed {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// Whether the same input may succeed when tried again, for whoever
    /// decides on retries (a balancer moving to another instance, a client).
    /// Back-pressure (`Overloaded`) and `Timeout` are transient by nature;
    /// bad input never is; a failure says so itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Invalid { .. } => false,
            Self::Failed { retryable, .. } => *retryable,
            Self::Overloaded { .. } | Self::Timeout { .. } => true,
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

    /// Reads the `error` object external agents answer with
    /// (`{"code", "message", "retryable"?}`): `code` a non-empty string,
    /// `message` a string (the code when absent), `retryable` a boolean
    /// (false when absent). Shared by the process and HTTP backends so
    /// both protocols mean the same thing.
    pub fn from_wire(e: &Value) -> Result<Self, String> {
        let code = match e.get("code") {
            Some(Value::String(c)) if !c.is_empty() => c.clone(),
            _ => return Err("`error.code` must be a non-empty string".into()),
        };
        let message = match e.get("message") {
            Some(Value::String(m)) => m.clone(),
            None | Some(Value::Null) => code.clone(),
            Some(_) => return Err("`error.message` must be a string".into()),
        };
        let retryable = match e.get("retryable") {
            Some(Value::Bool(b)) => *b,
            None | Some(Value::Null) => false,
            Some(_) => return Err("`error.retryable` must be a boolean".into()),
        };
        Ok(Self::Failed {
            code,
            message,
            retryable,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_the_variant_and_the_flag() {
        assert!(!AgentError::failed("x", "m").is_retryable());
        assert!(!AgentError::cancelled().is_retryable());
        assert!(AgentError::failed_retryable("worker_died", "m").is_retryable());
        assert_eq!(
            AgentError::failed_retryable("worker_died", "m").code(),
            "worker_died"
        );
        let invalid = AgentError::Invalid {
            message: "m".into(),
            field: None,
        };
        assert!(!invalid.is_retryable());
        let overloaded = AgentError::Overloaded {
            message: "m".into(),
            retry_after: None,
        };
        assert!(overloaded.is_retryable());
        let timeout = AgentError::Timeout {
            message: "m".into(),
        };
        assert!(timeout.is_retryable());
    }
}
