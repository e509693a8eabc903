//! Nested calls: a running task asking another department for work.
//!
//! A child is not stored: its parent is the durable unit, and a parent re-run
//! after a crash re-runs its children. A child waits in the target pool's
//! child queue (served before new submissions) and runs under that pool's
//! limiter, with its parent's deadline and a cancellation token that is a
//! child of the parent's, so a parent that times out or is cancelled stops
//! its children, queued or running.
//!
//! # Why this cannot deadlock
//! A parent holds a permit of its own pool and of the global cap while it
//! waits. Its children never need either: they do not take global permits
//! (the parent's covers its whole tree), and a child addressed to a pool its
//! own ancestry already runs in is run inline, without a permit, so a chain
//! of calls that loops back cannot wait on itself. Any other wait is on a
//! different pool whose permits are released by runs that finish, and in
//! every case the wait is bounded by the inherited deadline.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use swarm_agents::{AgentContext, AgentError, AgentInput, Children, Progress};
use swarm_core::TaskId;
use swarm_sched::limit::Permit;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::Inner;
use crate::pool::Pool;
use crate::run::{classify_sample, panic_message};

/// A child waiting in a pool's child queue.
pub(crate) struct ChildJob {
    pub(crate) call: ChildCall,
    pub(crate) reply: oneshot::Sender<Result<Value, AgentError>>,
}

/// What a child needs to run.
pub(crate) struct ChildCall {
    pub(crate) department: String,
    pub(crate) args: Value,
    pub(crate) parent: TaskId,
    pub(crate) tenant: String,
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancellationToken,
    pub(crate) progress: Progress,
    pub(crate) request_id: Option<String>,
    /// Pools the call chain above runs in, the parent's included.
    pub(crate) ancestors: Arc<[String]>,
}

/// The engine's [`Children`]: one per run, knowing the run's ancestry.
pub(crate) struct ChildRunner {
    pub(crate) inner: Weak<Inner>,
    pub(crate) ancestors: Arc<[String]>,
}

impl ChildRunner {
    pub(crate) fn for_pool(inner: &Arc<Inner>, above: &[String], pool: &str) -> Arc<Self> {
        let mut ancestors = above.to_vec();
        ancestors.push(pool.to_string());
        Arc::new(Self {
            inner: Arc::downgrade(inner),
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
        let Some(inner) = self.inner.upgrade() else {
            return Box::pin(async {
                Err(AgentError::failed("shutting_down", "the engine stopped"))
            });
        };
        let Some(pool) = inner.pools.get(department).cloned() else {
            let msg = format!("no department `{department}` for a child task");
            return Box::pin(async move { Err(AgentError::failed("no_department", msg)) });
        };
        if let Err(e) = pool.agent.validate(&args) {
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
            return Box::pin(async move { run_call(&inner, &pool, call, None).await });
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
pub(crate) async fn run_child(inner: Arc<Inner>, pool: Arc<Pool>, job: ChildJob, permit: Permit) {
    let ChildJob { call, mut reply } = job;
    if reply.is_closed() || call.cancel.is_cancelled() {
        // The parent stopped waiting; nothing to do.
        return;
    }
    let result = tokio::select! {
        r = run_call(&inner, &pool, call, Some(permit)) => r,
        _ = reply.closed() => return,
    };
    let _ = reply.send(result);
}

/// One child run: the agent under the inherited deadline and token.
async fn run_call(
    inner: &Arc<Inner>,
    pool: &Arc<Pool>,
    call: ChildCall,
    permit: Option<Permit>,
) -> Result<Value, AgentError> {
    pool.counters
        .children
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if Instant::now() >= call.deadline {
        return Err(AgentError::Timeout {
            message: format!(
                "the parent's deadline passed before `{}` could start",
                call.department
            ),
        });
    }
    let ctx = AgentContext {
        task_id: call.parent,
        tenant: call.tenant,
        instance: pool.pick_instance().to_string(),
        deadline: call.deadline,
        cancel: call.cancel.clone(),
        progress: call.progress,
        children: Some(ChildRunner::for_pool(inner, &call.ancestors, &pool.name)),
        request_id: call.request_id,
        placed: Default::default(),
    };
    let input = AgentInput {
        task_type: call.department.clone(),
        title: None,
        description: None,
        args: call.args,
    };
    let started = Instant::now();
    let agent = pool.agent.clone();
    let result = tokio::select! {
        r = AssertUnwindSafe(agent.run(ctx, input)).catch_unwind() => match r {
            Ok(r) => r,
            Err(p) => Err(AgentError::failed("agent_panic", format!("the agent crashed: {}", panic_message(&p)))),
        },
        _ = tokio::time::sleep_until(call.deadline) => Err(AgentError::Timeout {
            message: format!("the deadline passed while `{}` ran", call.department),
        }),
        _ = call.cancel.cancelled() => Err(AgentError::cancelled()),
    };
    call.cancel.cancel();
    if let Some(p) = permit {
        p.record(classify_sample(inner, &result, started.elapsed()));
    }
    if result.is_ok() {
        pool.drain.completed();
    }
    result
}
