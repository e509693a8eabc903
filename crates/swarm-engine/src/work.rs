//! The two kinds of work a pool queues: stored tasks and child calls.
//!
//! Plain data. Whoever holds a [`Queued`] value owns that task on this node
//! (the pool's queue while it waits, then the run or the transition that
//! took it out), so two parts of the engine can never act on the same
//! queued task at once: taking it out of the queue is the claim.

use std::sync::Arc;

use serde_json::Value;
use swarm_agents::{AgentError, Progress};
use swarm_core::{Task, TaskId};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ledger::TenantSlot;

/// A stored task waiting in a pool's queue.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The task as stored.
    pub(crate) task: Task,
    /// When it entered this node's queue (its place in CoDel's view).
    pub(crate) enqueued_at: Instant,
    /// When this process received the request, if it did (not for tasks
    /// recovered or taken over): the start of `total_ms`.
    pub(crate) received_at: Option<Instant>,
    /// When its row was committed, if this process committed it: the start
    /// of `queue_ms`, so the stages never overlap.
    pub(crate) stored_at: Option<Instant>,
    /// The tenant's outstanding-task count, held until the outcome is
    /// stored (or the task leaves this node, a moment after).
    pub(crate) slot: TenantSlot,
    /// The submitting request's id, when this process accepted it.
    pub(crate) request_id: Option<String>,
    /// When this node stored its start: the end of `queue_ms`, the start
    /// of `run_ms`.
    pub(crate) started: Option<Instant>,
    /// The start time this node first tried to store for it: kept across
    /// retries of the start, it lets the store recognise a start it already
    /// committed (see `Store::start`).
    pub(crate) start_at: Option<i64>,
}

impl Queued {
    /// A task this node took from the store (start-up, takeover, sweep,
    /// a rerun): no request of its own to time from.
    pub(crate) fn taken(task: Task, slot: TenantSlot) -> Self {
        Self {
            task,
            enqueued_at: Instant::now(),
            received_at: None,
            stored_at: None,
            slot,
            request_id: None,
            started: None,
            start_at: None,
        }
    }
}

/// A child waiting in a pool's child queue, and where its parent waits for
/// the answer.
pub(crate) struct ChildJob {
    pub(crate) call: ChildCall,
    pub(crate) reply: oneshot::Sender<Result<Value, AgentError>>,
}

/// What a child needs to run.
pub(crate) struct ChildCall {
    /// The department asked.
    pub(crate) department: String,
    /// Its input.
    pub(crate) args: Value,
    /// The task whose run asked.
    pub(crate) parent: TaskId,
    /// The parent's tenant.
    pub(crate) tenant: String,
    /// The parent's deadline.
    pub(crate) deadline: Instant,
    /// A child of the parent's token: a parent that stops stops its children.
    pub(crate) cancel: CancellationToken,
    /// The parent's progress reporter.
    pub(crate) progress: Progress,
    /// The parent's request id.
    pub(crate) request_id: Option<String>,
    /// Pools the call chain above runs in, the parent's included.
    pub(crate) ancestors: Arc<[String]>,
}
