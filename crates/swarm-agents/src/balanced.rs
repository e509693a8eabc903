//! A department of several agent instances behind one [`Agent`]: each run
//! goes to the instance `swarm_sched::balance::Balancer` picks (p2c over
//! peak-EWMA by default, or sticky by an `args` field), its outcome feeds
//! the balancer's load estimate and outlier ejection, and a retryable
//! failure is tried once more on another pick while the retry budget and
//! the task's deadline allow.
//!
//! Retries happen inside the run, under the permit the pool's limiter gave
//! it, so they never pile up outside the pool's concurrency limit; the
//! budget (tower's `TpsBudget`: at most ~10% extra calls plus a small
//! floor) keeps a failing backend from doubling its own load.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use swarm_core::FieldError;
use swarm_sched::balance::{
    BalanceConfig, Balancer, CallError, Outcome, RetryBudget, RetryConfig, RetryPolicy,
};
use tokio::time::Instant;

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};

/// Several instances of one kind, balanced.
pub struct BalancedAgent {
    kind: &'static str,
    balancer: Balancer,
    instances: HashMap<String, Arc<dyn Agent>>,
    hash_key: Option<String>,
    retry: RetryPolicy,
    budget: RetryBudget,
}

impl BalancedAgent {
    /// Instances by id, in the order given (ids must be unique).
    pub fn new(
        kind: &'static str,
        instances: Vec<(String, Arc<dyn Agent>)>,
        balance: BalanceConfig,
        hash_key: Option<String>,
    ) -> Self {
        let balancer = Balancer::new(balance);
        for (id, _) in &instances {
            balancer.add(id.as_str(), 1);
        }
        let retry = RetryConfig::default();
        Self {
            kind,
            budget: RetryBudget::new(&retry),
            retry: RetryPolicy::new(retry),
            balancer,
            instances: instances.into_iter().collect(),
            hash_key,
        }
    }

    /// The balancer (for status: per-instance state and shares).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    fn key(&self, args: &Value) -> Option<String> {
        let v = args.get(self.hash_key.as_deref()?)?;
        Some(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// An agent's error in the retry policy's terms. Tasks are delivered at
/// least once anyway, so every call counts as idempotent; a failure the
/// backend marked retryable reads as a 5xx, any other as a 4xx.
fn call_error(e: &AgentError) -> CallError {
    match e {
        AgentError::Overloaded { retry_after, .. } => CallError::Status {
            code: 503,
            retry_after: *retry_after,
        },
        AgentError::Timeout { .. } => CallError::Timeout,
        e if e.is_retryable() => CallError::Status {
            code: 502,
            retry_after: None,
        },
        _ => CallError::Status {
            code: 400,
            retry_after: None,
        },
    }
}

/// How a result counts for the instance's health: only failures that
/// another try might fix (a worker that died, a 5xx, a refused connection)
/// are the instance's fault; a bad request is the caller's.
fn outcome(r: &Result<Value, AgentError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(AgentError::Overloaded { .. }) => Outcome::Overloaded,
        Err(AgentError::Timeout { .. }) => Outcome::Timeout,
        Err(e) if e.is_retryable() => Outcome::Failure,
        Err(_) => Outcome::Success,
    }
}

impl Agent for BalancedAgent {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        crate::agent::args_object(args)
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let key = self.key(&input.args);
            self.budget.deposit();
            let mut rng = fastrand::Rng::new();
            let mut retries = 0;
            loop {
                let Some(pick) = self.balancer.pick(key.as_deref()) else {
                    return Err(AgentError::Overloaded {
                        message: "the department has no instance".into(),
                        retry_after: None,
                    });
                };
                let agent = self.instances[pick.id()].clone();
                let mut c = ctx.clone();
                c.instance = pick.id().to_string();
                let started = Instant::now();
                let r = agent.run(c, input.clone()).await;
                pick.complete(started.elapsed(), outcome(&r));
                let Err(e) = &r else { return r };
                if ctx.cancel.is_cancelled() {
                    return r;
                }
                let Some(wait) =
                    self.retry
                        .decide(retries, &call_error(e), true, &self.budget, &mut rng)
                else {
                    return r;
                };
                if Instant::now() + wait >= ctx.deadline {
                    return r;
                }
                retries += 1;
                tracing::debug!(task = %ctx.task_id, error = %e, retries, "retrying on another pick");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.cancel.cancelled() => return r,
                }
            }
        })
    }
}
