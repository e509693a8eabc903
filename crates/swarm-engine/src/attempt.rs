//! One agent attempt: the agent's future raced against the deadline, a
//! cancel and the end of the shutdown grace period, with panics caught; and
//! what the attempt tells the pool's limiter.
//!
//! Top-level runs (`run`) and child runs (`child`) both come here, so the
//! race and its classification exist once. Whichever branch wins, the
//! agent's future is dropped (its work stops at its next await) and its
//! context's token is fired (work it handed elsewhere stops too).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use swarm_agents::{Agent, AgentContext, AgentError, AgentInput};
use swarm_sched::limit::{Classify, Outcome as LimitOutcome, Sample};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What to run and what may stop it.
pub(crate) struct Attempt<'a> {
    /// The agent.
    pub(crate) agent: &'a Arc<dyn Agent>,
    /// Its context (its `cancel` token is fired when the attempt ends).
    pub(crate) ctx: AgentContext,
    /// Its input.
    pub(crate) input: AgentInput,
    /// When the task's time is up.
    pub(crate) deadline: Instant,
    /// A client's cancel (or the parent's, for a child).
    pub(crate) cancel: &'a CancellationToken,
    /// The end of the shutdown grace period, for runs that hand their task
    /// back when it comes; children have none (their parent's cancel reaches
    /// them).
    pub(crate) grace_over: Option<&'a CancellationToken>,
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The agent returned, or the deadline passed
    /// (`Err(AgentError::Timeout)` with `deadline_passed`).
    Returned(Result<Value, AgentError>),
    /// The agent panicked; the message is the panic's.
    Panicked(String),
    /// Cancelled by the client (or the parent).
    Cancelled,
    /// The shutdown grace period ended first.
    GraceOver,
}

/// An attempt's end and its own time (queue wait excluded).
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) ended: Ended,
    pub(crate) rtt: Duration,
    /// When it ended (the end of `run_ms`).
    pub(crate) at: Instant,
    /// The deadline, not the agent, ended it.
    pub(crate) deadline_passed: bool,
}

impl Attempt<'_> {
    /// Runs the attempt to its end.
    pub(crate) async fn run(self) -> Finished {
        let Attempt {
            agent,
            ctx,
            input,
            deadline,
            cancel,
            grace_over,
        } = self;
        let ctx_cancel = ctx.cancel.clone();
        let never = CancellationToken::new();
        let grace_over = grace_over.unwrap_or(&never);
        let started = Instant::now();
        let mut deadline_passed = false;
        let ended = tokio::select! {
            r = AssertUnwindSafe(agent.clone().run(ctx, input)).catch_unwind() => match r {
                Ok(r) => Ended::Returned(r),
                Err(panic) => Ended::Panicked(panic_message(&panic)),
            },
            _ = tokio::time::sleep_until(deadline) => {
                deadline_passed = true;
                Ended::Returned(Err(AgentError::Timeout {
                    message: "the deadline passed while the agent ran".into(),
                }))
            }
            _ = cancel.cancelled() => Ended::Cancelled,
            _ = grace_over.cancelled() => Ended::GraceOver,
        };
        // An agent that enforces the deadline itself (a worker process, an
        // HTTP call bounded by it) may answer a moment before the timer
        // here: its timeout at the deadline is the deadline's.
        if matches!(ended, Ended::Returned(Err(AgentError::Timeout { .. })))
            && Instant::now() >= deadline
        {
            deadline_passed = true;
        }
        // The agent's future is gone; stop whatever it started elsewhere.
        ctx_cancel.cancel();
        let at = Instant::now();
        Finished {
            ended,
            rtt: at - started,
            at,
            deadline_passed,
        }
    }
}

impl Finished {
    /// What this attempt tells the pool's limiter, through the engine's
    /// classifier. `typical` is the limiter's recent RTT.
    ///
    /// A run cut by the task's deadline is back-pressure only if the run
    /// itself was slow: when the deadline was spent waiting in a queue, the
    /// backend did nothing wrong, and counting it would let a queue collapse
    /// the limit that should drain it. Panics, cancels and hand-backs say
    /// nothing about load.
    pub(crate) fn sample(
        &self,
        classifier: &dyn Classify<Result<Value, AgentError>>,
        typical: Duration,
    ) -> Sample {
        match &self.ended {
            Ended::Returned(_) if self.deadline_passed && self.rtt < typical * 2 => {
                Sample::ignore()
            }
            Ended::Returned(result) => Sample {
                rtt: self.rtt,
                outcome: classifier.classify(result),
            },
            Ended::Panicked(_) | Ended::Cancelled | Ended::GraceOver => Sample::ignore(),
        }
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// The default classifier: a backend's refusal (`Overloaded`) and timeouts
/// (the backend's or the task's deadline) are back-pressure; successes are
/// latency samples; cancellations and other failures say nothing about
/// load (a fast failure would drag the latency baseline down) and are
/// ignored.
#[derive(Debug, Default, Clone, Copy)]
pub struct OverloadClassifier;

impl Classify<Result<Value, AgentError>> for OverloadClassifier {
    fn classify(&self, result: &Result<Value, AgentError>) -> LimitOutcome {
        match result {
            Ok(_) => LimitOutcome::Success,
            Err(AgentError::Overloaded { .. } | AgentError::Timeout { .. }) => {
                LimitOutcome::Dropped
            }
            Err(_) => LimitOutcome::Ignore,
        }
    }
}
