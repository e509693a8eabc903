//! # swarm-store
//!
//! The durable record of every task, on an embedded SQLite file or a shared
//! PostgreSQL database, through sqlx's connection pools.
//!
//! Writes go through one group-commit writer ([`writer`]), so a burst of
//! submissions shares a few commits; a write is answered only after its
//! commit, which is what lets the server acknowledge a task only once it is
//! durable. Reads use the pool directly.
//!
//! Ownership: each unfinished task names the node that runs it. On SQLite one
//! process owns the file (enforced with a lock file) and takes every
//! unfinished task at start. On PostgreSQL each node registers in `nodes` and
//! heartbeats; a node takes its own leftovers at start and, periodically, the
//! tasks of nodes whose heartbeat is older than the lease
//! ([`Store::rescue`]). Delivery is therefore at-least-once.
//!
//! # Layout
//! - [`model`]: the types that cross this crate's boundary.
//! - `db`: connections, migrations (`migrations/<backend>/`), all SQL.
//! - `writer`: the group-commit writer.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod db;
pub mod model;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{QueryBuilder, Row};
use swarm_core::config::DatabaseConfig;
use swarm_core::{Task, TaskId};
use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, TASK_COLS, task_from_row, with_db};
pub use crate::model::{
    Backend, Expect, Finish, InsertOutcome, ListQuery, NewTask, OutboxRow, PoolStats,
};
use crate::writer::Op;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot work (bad URL).
    #[error("{0}")]
    Config(String),
    /// Connecting or migrating failed at start.
    #[error("{0}")]
    Connect(String),
    /// The database is busy or unreachable now (pool timeout, network);
    /// callers answer 503 and clients retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed.
    #[error("database error: {0}")]
    Database(String),
    /// A stored row cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    writes: mpsc::Sender<Op>,
    writer: Arc<writer::WriterStats>,
    max_connections: u32,
    // Held for the life of the store: while it is locked, no other swarmd
    // process opens the same SQLite file.
    _lock: Option<File>,
}

/// Outbound write queue depth; beyond it, writers wait (back-pressure on
/// submitters rather than unbounded memory).
const WRITE_QUEUE: usize = 16_384;

impl Store {
    /// Connects, migrates, and starts the group-commit writer.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, StoreError> {
        let lock = lock_sqlite_file(&cfg.url)?;
        let db = db::connect(cfg).await?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let stats = Arc::new(writer::WriterStats::default());
        tokio::spawn(writer::run(db.clone(), rx, cfg.batch_max, stats.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                writes: tx,
                writer: stats,
                max_connections: cfg.max_connections,
                _lock: lock,
            }),
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.inner.db.backend()
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writes
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a new task; returns only after it is committed. With an
    /// idempotency key already used by the tenant, returns the stored task.
    pub async fn insert(&self, new: NewTask) -> Result<InsertOutcome, StoreError> {
        self.write(|r| Op::Insert(Box::new(new), r)).await
    }

    /// Marks a queued task owned by `owner` as running on `instance`. Returns
    /// the attempt number, or `None` if the task is no longer queued or no
    /// longer ours (cancelled, or taken over by another node).
    pub async fn start(
        &self,
        id: TaskId,
        instance: &str,
        at: i64,
        owner: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (id, instance, owner) = (id.to_string(), instance.to_string(), owner.to_string());
        self.write(|reply| Op::Start {
            id,
            instance,
            at,
            owner,
            reply,
        })
        .await
    }

    /// Records a terminal outcome if the task is in the expected state;
    /// `false` means it was not (someone else finished it first).
    pub async fn finish(&self, finish: Finish) -> Result<bool, StoreError> {
        self.write(|r| Op::Finish(Box::new(finish), r)).await
    }

    /// Puts a running task of ours back to queued (graceful shutdown).
    pub async fn requeue(&self, id: TaskId, owner: &str) -> Result<bool, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.write(|reply| Op::Requeue { id, owner, reply }).await
    }

    /// Flags an unfinished task for cancellation by whichever node owns it.
    pub async fn request_cancel(&self, id: TaskId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(|reply| Op::CancelRequest { id, reply }).await
    }

    /// Stores an outbox message.
    pub async fn outbox_insert(&self, row: OutboxRow) -> Result<(), StoreError> {
        self.write(|r| Op::Outbox(Box::new(row), r)).await
    }

    /// Registers this node (or refreshes its registration after a restart).
    pub async fn register_node(&self, node: &str, at: i64) -> Result<(), StoreError> {
        with_db!(&self.inner.db, p => sqlx::query(db::SQL_NODE_REGISTER)
            .bind(node.to_string())
            .bind(at)
            .bind(std::process::id() as i64)
            .bind(env!("CARGO_PKG_VERSION"))
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Renews this node's heartbeat.
    pub async fn heartbeat(&self, node: &str, at: i64) -> Result<(), StoreError> {
        let node = node.to_string();
        self.write(|reply| Op::Heartbeat { node, at, reply }).await
    }

    /// Marks this node as gone, so others may take its queued tasks at once.
    pub async fn leave(&self, node: &str) -> Result<(), StoreError> {
        with_db!(&self.inner.db, p => sqlx::query(db::SQL_NODE_LEAVE)
            .bind(node.to_string())
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// At start: takes the unfinished tasks this node should run, setting any
    /// left `running` (by a process that died) back to `queued`.
    pub async fn claim_at_start(&self, node: &str) -> Result<Vec<Task>, StoreError> {
        let rows = match &self.inner.db {
            Db::Sqlite(p) => sqlx::query(db::SQL_CLAIM_ALL)
                .bind(node.to_string())
                .fetch_all(p)
                .await?
                .iter()
                .map(task_from_row)
                .collect::<Result<Vec<_>, _>>()?,
            Db::Pg(p) => sqlx::query(db::SQL_CLAIM_OWN)
                .bind(node.to_string())
                .fetch_all(p)
                .await?
                .iter()
                .map(task_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(rows)
    }

    /// Takes up to `limit` unfinished tasks of nodes whose last heartbeat is
    /// older than `stale_before` (PostgreSQL; on SQLite there are no other
    /// nodes and this returns nothing).
    pub async fn rescue(
        &self,
        node: &str,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<Task>, StoreError> {
        match &self.inner.db {
            Db::Sqlite(_) => Ok(Vec::new()),
            Db::Pg(p) => sqlx::query(db::SQL_RESCUE_PG)
                .bind(node.to_string())
                .bind(stale_before)
                .bind(limit)
                .fetch_all(p)
                .await?
                .iter()
                .map(task_from_row)
                .collect(),
        }
    }

    /// Ids of this node's unfinished tasks that another node asked to cancel.
    pub async fn cancel_requests(&self, node: &str) -> Result<Vec<TaskId>, StoreError> {
        let ids: Vec<String> = with_db!(&self.inner.db, p => {
            let rows = sqlx::query(db::SQL_CANCEL_POLL).bind(node.to_string()).fetch_all(p).await?;
            rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?
        });
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// One task by id.
    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = with_db!(&self.inner.db, p => {
            match sqlx::query(db::SQL_GET).bind(id.to_string()).fetch_optional(p).await? {
                Some(r) => Some(task_from_row(&r)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// Tasks matching `q`, newest first.
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Task>, StoreError> {
        let tasks = with_db!(&self.inner.db, p => {
            let mut qb = QueryBuilder::new(format!("SELECT {TASK_COLS} FROM tasks WHERE 1 = 1"));
            if let Some(t) = &q.tenant {
                qb.push(" AND tenant = ").push_bind(t.clone());
            }
            if let Some(s) = q.status {
                qb.push(" AND status = ").push_bind(s.as_str());
            }
            if let Some(d) = &q.department {
                qb.push(" AND department = ").push_bind(d.clone());
            }
            if let Some(b) = q.before {
                qb.push(" AND id < ").push_bind(b.to_string());
            }
            qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(q.limit));
            let rows = qb.build().fetch_all(p).await?;
            rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(tasks)
    }

    /// Outbox messages, newest first (all tenants when `tenant` is None).
    pub async fn outbox_list(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = with_db!(&self.inner.db, p => {
            let mut qb = QueryBuilder::new(
                "SELECT id, task_id, tenant, sender, recipients, cc, subject, body, created_at FROM outbox WHERE 1 = 1",
            );
            if let Some(t) = tenant {
                qb.push(" AND tenant = ").push_bind(t.to_string());
            }
            qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
            let rows = qb.build().fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let recipients: String = r.try_get(4)?;
                let cc: String = r.try_get(5)?;
                out.push(OutboxRow {
                    id: r.try_get(0)?,
                    task_id: r.try_get(1)?,
                    tenant: r.try_get(2)?,
                    sender: r.try_get(3)?,
                    recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                    cc: serde_json::from_str(&cc).unwrap_or_default(),
                    subject: r.try_get(6)?,
                    body: r.try_get(7)?,
                    created_at: r.try_get(8)?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// A round trip to the database (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_db!(&self.inner.db, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Connection-pool figures.
    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle) = with_db!(&self.inner.db, p => (p.size(), p.num_idle() as u32));
        let w = &self.inner.writer;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        PoolStats {
            size,
            idle,
            max: self.inner.max_connections,
            write_queue: WRITE_QUEUE - self.inner.writes.capacity(),
            acquires: load(&w.acquires),
            acquire_us: load(&w.acquire_us),
            batches: load(&w.batches),
            ops: load(&w.ops),
        }
    }

    /// Closes the pool; outstanding writes already queued are still applied
    /// as long as the writer can reach the database.
    pub async fn close(&self) {
        with_db!(&self.inner.db, p => p.close().await)
    }
}

/// On SQLite, takes an exclusive lock on `<file>.lock` so a second swarmd on
/// the same file fails at start instead of both claiming the same tasks.
fn lock_sqlite_file(url: &str) -> Result<Option<File>, StoreError> {
    let Some(rest) = url.trim().strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let lock_path = PathBuf::from(format!("{path}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Connect(format!(
                "cannot create lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Connect(format!(
            "database `{path}` is in use by another swarmd process (lock held on {})",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Connect(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}
