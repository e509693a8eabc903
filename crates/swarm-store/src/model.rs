//! The shapes that cross the store's boundary.

use serde_json::Value;
use swarm_core::{Attempt, Priority, Task, TaskError, TaskId, TaskStatus, Timings};

/// A task to store: everything the row holds when it is first written.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The task as it will read back (status `queued`).
    pub task: Task,
    /// Hash of the submitted request, to tell an idempotent replay from a
    /// different request reusing the key.
    pub request_hash: Option<String>,
    /// The node that accepted it and will run it.
    pub owner: String,
}

/// What an insert did.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    /// The task is new and now durable.
    Created(Task),
    /// A task with the same idempotency key already existed; here it is.
    /// `same_request` is false when the stored request differs.
    Existing {
        /// The task stored first.
        task: Task,
        /// Whether the stored request hash equals the new one.
        same_request: bool,
    },
}

/// Which current state a state change requires; the update is a no-op (and
/// reports `false`) otherwise, so concurrent cancels and completions never
/// overwrite each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Only a queued task.
    Queued,
    /// Only a running task.
    Running,
    /// Queued or running.
    Unfinished,
}

/// A terminal outcome to record.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The task.
    pub id: TaskId,
    /// The state it must be in now.
    pub expect: Expect,
    /// Its terminal status.
    pub status: TaskStatus,
    /// Agent output (succeeded).
    pub result: Option<Value>,
    /// Why it did not succeed.
    pub error: Option<TaskError>,
    /// When, epoch ms.
    pub finished_at: i64,
    /// Stage latencies.
    pub timings: Timings,
    /// The instance that ran it, when known only at the end (a balanced
    /// department picks inside the run); `None` keeps the one recorded at
    /// start.
    pub instance: Option<String>,
    /// The node ending it: only the task's owner can (a node whose tasks
    /// were taken over can no longer end them).
    pub owner: String,
}

/// A running task's attempt ended retryably: back to queued until
/// `run_after`.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The task.
    pub id: TaskId,
    /// The node that ran the attempt (only the owner can).
    pub owner: String,
    /// The earliest start of the next attempt, epoch ms.
    pub run_after: i64,
    /// Every ended attempt, the one ending now included.
    pub history: Vec<Attempt>,
    /// The ended attempt's error.
    pub error: Option<TaskError>,
    /// Stage latencies so far.
    pub timings: Timings,
}

/// What one retention batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished tasks.
    pub tasks: u64,
    /// Outbox messages.
    pub outbox: u64,
}

/// A filter for listing tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this tenant's tasks (None: all, for admins).
    pub tenant: Option<String>,
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this department.
    pub department: Option<String>,
    /// Only tasks older than this id (the previous page's last id).
    pub before: Option<TaskId>,
    /// Page size.
    pub limit: u32,
    /// Leave `args` out (read back as `null`): a list that will not show
    /// it need not read it.
    pub skip_args: bool,
    /// Leave `result` out (read back as none).
    pub skip_result: bool,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Outbox id.
    pub id: String,
    /// The task that wrote it.
    pub task_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Sender.
    pub sender: String,
    /// Recipients.
    pub recipients: Vec<String>,
    /// Copy recipients.
    pub cc: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Stored at, epoch ms.
    pub created_at: i64,
}

/// Connection-pool figures for `/api/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections.
    pub size: u32,
    /// Open and idle.
    pub idle: u32,
    /// Configured ceiling.
    pub max: u32,
    /// Writes waiting for the group-commit writer.
    pub write_queue: usize,
    /// Transactions the writer has begun (each waited for a connection).
    pub acquires: u64,
    /// Their total wait for a connection plus `BEGIN`, microseconds.
    pub acquire_us: u64,
    /// Batches the writer has committed, and the ops in them.
    pub batches: u64,
    /// Ops applied.
    pub ops: u64,
    /// Batches run again after a transient failure.
    pub retries: u64,
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

pub(crate) fn priority_from_db(p: i64) -> Priority {
    Priority::from_index(p)
}
