//! Nested calls: a running task asking another department for work.
//!
//! A child is not stored: its parent is the durable unit, and a parent re-run
//! after a crash re-runs its children. A child waits in the target pool's
//! child queue (served before new submissions) and runs under that pool's
//! limiter, with its parent's deadline and a cancellation token that is a
//! child of the parent's, so a parent that times out or is cancelled stops
//! its children, queued or running. Its outcome counts in its department's
//! figures (as a child).
//!
//! # Why this cannot deadlock
//! A parent holds a permit of its own pool and of the global cap while it
//! waits. Its children never need either: they do not take global permits
//! (the parent's covers its whole tree), and a child addressed to a pool its
//! own ancestry already runs in is run inline, without a permit, so a chain
//! of calls that loops back cannot wait on itself. Any other wait is on a
//! different pool whose permits are released by runs that finish, and in
//! every case the wait is bounded by the inherited deadline.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use swarm_agents::{AgentContext, AgentError, AgentInput, Children};
use swarm_core::TaskStatus;
use swarm_sched::limit::Permit;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::attempt::{Attempt, Ended};
use crate::env::RunEnv;
use crate::pool::Pool;
use crate::work::{ChildCall, ChildJob};

/// The engine's [`Children`]: one per run, knowing the run's ancestry.
pub(crate) struct ChildRunner {
    /// Weak: agents hold their context (and this) only while they run, but
    /// nothing they keep may hold the engine alive.
    env: Weak<RunEnv>,
    ancestors: Arc<[String]>,
}

impl ChildRunner {
    pub(crate) fn for_pool(env: &Arc<RunEnv>, above: &[String], pool: &str) -> Arc<Self> {
        let mut ancestors = above.to_vec();
        ancestors.push(pool.to_string());
        Arc::new(Self {
            env: Arc::downgrade(env),
            ancestors: ancestors.into(),
        })
    }
}

impl Children for ChildRunner {
    fn run(
        &self,
        parent: &AgentContext,
        department: &str,
        args: Value,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        let Some(env) = self.env.upgrade() else {
            return Box::pin(async {
                Err(AgentError::failed("shutting_down", "the engine stopped"))
            });
        };
        let Some(pool) = env.pools().get(department).cloned() else {
            let msg = format!("no department `{department}` for a child task");
            return Box::pin(async move { Err(AgentError::failed("no_department", msg)) });
        };
        if let Err(e) = pool.agent().validate(&args) {
            return Box::pin(async move {
                Err(AgentError::Invalid {
                    message: e.message,
                    field: e.field,
                })
            });
        }
        let call = ChildCall {
            department: department.to_string(),
            args,
            parent: parent.task_id,
            tenant: parent.tenant.clone(),
            deadline: parent.deadline,
            cancel: parent.cancel.child_token(),
            progress: parent.progress.clone(),
            request_id: parent.request_id.clone(),
            ancestors: self.ancestors.clone(),
        };
        if self.ancestors.iter().any(|a| a == department) {
            // Its own ancestry holds this pool's permits: run inline.
            return Box::pin(async move { run_call(&env, &pool, call, None).await });
        }
        let (tx, rx) = oneshot::channel();
        let cancel = call.cancel.clone();
        pool.push_child(ChildJob { call, reply: tx });
        Box::pin(async move {
            // Dropping this future drops `rx`; the dispatcher then skips or
            // stops the child. The guard cancels a child already running.
            let _stop = cancel.drop_guard();
            rx.await.unwrap_or_else(|_| {
                Err(AgentError::failed(
                    "shutting_down",
                    "the child task was dropped at shutdown",
                ))
            })
        })
    }
}

/// Runs a queued child under `permit` and answers its parent.
pub(crate) async fn run_queued(env: Arc<RunEnv>, pool: Arc<Pool>, job: ChildJob, permit: Permit) {
    let ChildJob { call, mut reply } = job;
    if reply.is_closed() || call.cancel.is_cancelled() {
        // The parent stopped waiting; nothing to do.
        return;
    }
    let result = tokio::select! {
        r = run_call(&env, &pool, call, Some(permit)) => r,
        _ = reply.closed() => return,
    };
    let _ = reply.send(result);
}

/// One child run: an attempt under the inherited deadline and token.
async fn run_call(
    env: &Arc<RunEnv>,
    pool: &Arc<Pool>,
    call: ChildCall,
    permit: Option<Permit>,
) -> Result<Value, AgentError> {
    let result = if Instant::now() >= call.deadline {
        Err(AgentError::Timeout {
            message: format!(
                "the parent's deadline passed before `{}` could start",
                call.department
            ),
        })
    } else {
        // Kept for the token charge, only when a budget counts this call.
        let charged = env
            .charges_tokens(pool, &call.tenant)
            .then(|| (call.tenant.clone(), call.args.clone()));
        let ctx = AgentContext {
            task_id: call.parent,
            tenant: call.tenant,
            attempt: 1,
            instance: pool.pick_instance().to_string(),
            deadline: call.deadline,
            cancel: call.cancel.clone(),
            progress: call.progress,
            children: Some(ChildRunner::for_pool(env, &call.ancestors, pool.name())),
            request_id: call.request_id,
            placed: Default::default(),
            provider: pool.provider_signal(),
        };
        let input = AgentInput {
            task_type: call.department.clone(),
            title: None,
            description: None,
            args: call.args,
        };
        let _running = pool.begin_run();
        let finished = Attempt {
            agent: pool.agent(),
            ctx,
            input,
            deadline: call.deadline,
            cancel: &call.cancel,
            grace_over: None,
        }
        .run()
        .await;
        if let Some((tenant, args)) = &charged {
            env.spend_tokens(pool, tenant, args, &finished.ended);
        }
        if let Some(p) = permit {
            let typical = Duration::from_micros(pool.limiter().snapshot().rtt_us);
            p.record(finished.sample(env.classifier(), typical));
        }
        match finished.ended {
            Ended::Returned(Err(AgentError::Timeout { .. })) if finished.deadline_passed => {
                Err(AgentError::Timeout {
                    message: format!("the deadline passed while `{}` ran", call.department),
                })
            }
            Ended::Returned(r) => r,
            Ended::Panicked(m) => Err(AgentError::failed(
                "agent_panic",
                format!("the agent crashed: {m}"),
            )),
            Ended::Cancelled | Ended::GraceOver => Err(AgentError::cancelled()),
        }
    };
    pool.count_child_outcome(child_status(&result));
    result
}

/// The status a child's result would have as a task of its own.
fn child_status(r: &Result<Value, AgentError>) -> TaskStatus {
    match r {
        Ok(_) => TaskStatus::Succeeded,
        Err(AgentError::Timeout { .. }) => TaskStatus::TimedOut,
        Err(AgentError::Failed { code, .. }) if code == "cancelled" => TaskStatus::Cancelled,
        Err(_) => TaskStatus::Failed,
    }
}
