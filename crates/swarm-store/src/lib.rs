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
//! Database failures are classified once ([`error`]): the database's
//! weather (a refused or broken connection, a restart, a pool timeout, a
//! busy or read-only file) is [`StoreError::Unavailable`], which callers
//! answer with `503` and retry; the writer tracks it as [`Health`].
//!
//! # Layout
//! - [`model`]: the types that cross this crate's boundary.
//! - [`error`]: [`StoreError`] and which failures are transient.
//! - [`health`]: whether writes commit now; the outage logged once.
//! - `db`: connections, migrations (`migrations/<backend>/`), all SQL.
//! - `writer`: the group-commit writer and its lanes.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod batch;
pub mod cluster;
mod db;
pub mod error;
pub mod health;
pub mod model;
mod writer;

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{QueryBuilder, Row};
use swarm_core::config::DatabaseConfig;
use swarm_core::{Task, TaskId};
use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, TASK_COLS, task_from_row, with_db};
pub use crate::error::StoreError;
pub use crate::health::{Health, HealthSnapshot};
pub use crate::model::{
    Backend, Expect, Finish, InsertOutcome, ListQuery, NewTask, OutboxRow, PoolStats, Pruned, Retry,
};
use crate::writer::{Lane, Lanes, Op, Writer};

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    /// The writer's lanes (see `writer`): transitions of accepted work,
    /// new tasks, background deletes.
    urgent: mpsc::Sender<Op>,
    admit: mpsc::Sender<Op>,
    background: mpsc::Sender<Op>,
    writer: Arc<writer::WriterStats>,
    health: Health,
    max_connections: u32,
    // Held for the life of the store: while it is locked, no other swarmd
    // process opens the same SQLite file.
    _lock: Option<File>,
}

/// Depth of each of the writer's busy lanes; beyond it, writers wait
/// (back-pressure on submitters rather than unbounded memory).
const WRITE_QUEUE: usize = 16_384;

impl Store {
    /// Connects, migrates, and starts the group-commit writer.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, StoreError> {
        let lock = lock_sqlite_file(&cfg.url)?;
        let db = db::connect(cfg).await?;
        let (urgent, urgent_rx) = mpsc::channel(WRITE_QUEUE);
        let (admit, admit_rx) = mpsc::channel(WRITE_QUEUE);
        let (background, background_rx) = mpsc::channel(16);
        let stats = Arc::new(writer::WriterStats::default());
        let health = Health::new();
        tokio::spawn(
            Writer {
                db: db.clone(),
                kept: Arc::new(writer::Kept::new(std::time::Duration::from_millis(
                    cfg.max_lifetime_ms,
                ))),
                lanes: Lanes {
                    urgent: urgent_rx,
                    admit: admit_rx,
                    background: background_rx,
                },
                batch_max: cfg.batch_max,
                pipeline: cfg.write_pipeline.max(1),
                stats: stats.clone(),
                health: health.clone(),
            }
            .run(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                urgent,
                admit,
                background,
                writer: stats,
                health,
                max_connections: cfg.max_connections,
                _lock: lock,
            }),
        })
    }

    /// Whether writes commit now, as the writer last found.
    pub fn health(&self) -> &Health {
        &self.inner.health
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
        let op = make(tx);
        let lane = match op.lane() {
            Lane::Urgent => &self.inner.urgent,
            Lane::Admit => &self.inner.admit,
            Lane::Background => &self.inner.background,
        };
        lane.send(op).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a new task; returns only after it is committed. With an
    /// idempotency key already used by the tenant, returns the stored task.
    ///
    /// While the database is down this fails at once with
    /// [`StoreError::Unavailable`] instead of waiting for a connection.
    /// [`StoreError::InDoubt`] means the row may have been stored.
    pub async fn insert(&self, new: NewTask) -> Result<InsertOutcome, StoreError> {
        self.refuse_while_down()?;
        self.write(|r| Op::Insert(Box::new(new), r)).await
    }

    /// New tasks fail at once while the database is down, instead of each
    /// waiting for a connection.
    fn refuse_while_down(&self) -> Result<(), StoreError> {
        if self.inner.health.is_up() {
            return Ok(());
        }
        Err(StoreError::Unavailable(
            self.inner
                .health
                .snapshot()
                .reason
                .unwrap_or_else(|| "the database is down".into()),
        ))
    }

    /// Stores new tasks in one transaction (a batch submit): each gets its
    /// own answer, in order, after the one commit. Idempotency keys repeated
    /// within `news` replay the first, as across requests.
    pub async fn insert_many(
        &self,
        news: Vec<NewTask>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
        self.refuse_while_down()?;
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let mut ops = Vec::with_capacity(news.len());
        let mut replies = Vec::with_capacity(news.len());
        for new in news {
            let (tx, rx) = oneshot::channel();
            ops.push(Op::Insert(Box::new(new), tx));
            replies.push(rx);
        }
        self.inner
            .admit
            .send(Op::Group(ops))
            .await
            .map_err(|_| StoreError::Closed)?;
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(rx.await.unwrap_or(Err(StoreError::Closed)));
        }
        Ok(out)
    }

    /// Marks a queued task owned by `owner` as running on `instance`. Returns
    /// the attempt number, or `None` if the task is no longer queued or no
    /// longer ours (cancelled, or taken over by another node).
    ///
    /// `at` is the start's token: calling again with the same `at` after an
    /// error finds the start already stored and answers as the first call
    /// would have.
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

    /// A running task's attempt ended retryably: back to queued, not to
    /// start before `retry.run_after`. False when it is no longer this
    /// owner's running task.
    pub async fn retry(&self, retry: Retry) -> Result<bool, StoreError> {
        self.write(|reply| Op::Retry(Box::new(retry), reply)).await
    }

    /// Runs an ended task (failed, timed out or cancelled) again on
    /// `owner`, as queued with a new deadline and `history` (every ended
    /// attempt). `None` when it is not in such a state (or not there).
    pub async fn rerun(
        &self,
        id: TaskId,
        owner: &str,
        deadline_at: i64,
        history: &[swarm_core::Attempt],
    ) -> Result<Option<Task>, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        let history = db::to_json(&history);
        self.write(|reply| Op::Rerun {
            id,
            owner,
            deadline_at,
            history,
            reply,
        })
        .await
    }

    /// Whether any delivery is due at `now` (a read of the pending rows'
    /// index only, so an idle loop never writes).
    pub async fn callbacks_pending(&self, now: i64) -> Result<bool, StoreError> {
        Ok(with_db!(&self.inner.db, p => {
            sqlx::query(db::SQL_CALLBACKS_ANY)
                .bind(now)
                .fetch_optional(p)
                .await?
                .is_some()
        }))
    }

    /// Leases up to `limit` deliveries due at `now` (epoch ms) until
    /// `lease_until`: the finished tasks and the tries each has had.
    pub async fn callbacks_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<(Task, i64)>, StoreError> {
        static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
            [
                format!("{}{TASK_COLS}, callback_attempts", db::SQL_CALLBACKS_DUE),
                format!("{}{TASK_COLS}, callback_attempts", db::SQL_CALLBACKS_DUE_PG),
            ]
        });
        let sql = &SQL[usize::from(self.backend() == Backend::Postgres)];
        Ok(with_db!(&self.inner.db, p => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push((task_from_row(r)?, r.try_get::<i64, _>("callback_attempts")?));
            }
            out
        }))
    }

    /// Records one try of a delivery and the delivery's new state
    /// (`pending` with the next try's time, `delivered` or `failed`).
    pub async fn delivery_tried(
        &self,
        task: TaskId,
        d: &swarm_core::Delivery,
        at_ms: i64,
        state: &str,
        next_at: Option<i64>,
    ) -> Result<(), StoreError> {
        with_db!(&self.inner.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query(db::SQL_DELIVERY_INSERT)
                .bind(d.id.clone())
                .bind(task.to_string())
                .bind(d.message_id.clone())
                .bind(i64::from(d.attempt))
                .bind(d.url.clone())
                .bind(d.node.clone())
                .bind(at_ms)
                .bind(d.duration_ms)
                .bind(d.status.map(i64::from))
                .bind(d.error.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query(db::SQL_CALLBACK_TRIED)
                .bind(task.to_string())
                .bind(state.to_string())
                .bind(i64::from(d.attempt))
                .bind(next_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Every try of `task`'s deliveries, oldest first.
    pub async fn deliveries(&self, task: TaskId) -> Result<Vec<swarm_core::Delivery>, StoreError> {
        Ok(with_db!(&self.inner.db, p => {
            let rows = sqlx::query(db::SQL_DELIVERIES)
                .bind(task.to_string())
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(swarm_core::Delivery {
                    id: r.try_get(0)?,
                    message_id: r.try_get(1)?,
                    attempt: r.try_get::<i64, _>(2)? as i32,
                    url: r.try_get(3)?,
                    node: r.try_get(4)?,
                    at: swarm_core::clock::rfc3339(r.try_get::<i64, _>(5)?),
                    duration_ms: r.try_get(6)?,
                    status: r.try_get::<Option<i64>, _>(7)?.map(|s| s as i32),
                    error: r.try_get(8)?,
                });
            }
            out
        }))
    }

    /// Records that schedule `name` submitted its tick `tick` (epoch ms) as
    /// task `task` (kept only if later than the one recorded).
    pub async fn schedule_ran(
        &self,
        name: &str,
        tick: i64,
        task: TaskId,
    ) -> Result<(), StoreError> {
        let (name, task) = (name.to_string(), task.to_string());
        self.write(|reply| Op::ScheduleRan {
            name,
            tick,
            task,
            reply,
        })
        .await
    }

    /// Every schedule's last recorded tick and its task, by name.
    pub async fn schedule_runs(
        &self,
    ) -> Result<std::collections::HashMap<String, (i64, Option<String>)>, StoreError> {
        let rows = with_db!(&self.inner.db, p => {
            let rows = sqlx::query(db::SQL_SCHEDULES).fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>(0)?,
                        (r.try_get::<i64, _>(1)?, r.try_get::<Option<String>, _>(2)?),
                    ))
                })
                .collect::<Result<std::collections::HashMap<_, _>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Flags an unfinished task for cancellation by whichever node owns it.
    pub async fn request_cancel(&self, id: TaskId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(|reply| Op::CancelRequest { id, reply }).await
    }

    /// Deletes up to `limit` finished tasks, and up to `limit` outbox
    /// messages, from before `before` (epoch ms), oldest first.
    pub async fn prune(&self, before: i64, limit: i64) -> Result<Pruned, StoreError> {
        self.write(|reply| Op::Prune {
            before,
            limit,
            reply,
        })
        .await
    }

    /// Stores an outbox message.
    pub async fn outbox_insert(&self, row: OutboxRow) -> Result<(), StoreError> {
        self.write(|r| Op::Outbox(Box::new(row), r)).await
    }

    /// Registers this node (or refreshes its registration after a restart);
    /// `address` is where it serves HTTP, for `GET /api/nodes`.
    pub async fn register_node(
        &self,
        node: &str,
        at: i64,
        address: &str,
    ) -> Result<(), StoreError> {
        with_db!(&self.inner.db, p => sqlx::query(db::SQL_NODE_REGISTER)
            .bind(node.to_string())
            .bind(at)
            .bind(std::process::id() as i64)
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(address.to_string())
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Renews this node's heartbeat and publishes its load (JSON).
    pub async fn heartbeat(&self, node: &str, at: i64, load: String) -> Result<(), StoreError> {
        let node = node.to_string();
        self.write(|reply| Op::Heartbeat {
            node,
            at,
            load,
            reply,
        })
        .await
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
        let backend = self.backend();
        let read = match backend {
            Backend::Sqlite => db::SQL_CLAIM_ALL_READ,
            Backend::Postgres => db::SQL_CLAIM_OWN,
        };
        Ok(with_db!(&self.inner.db, p => {
            let mut tx = p.begin().await?;
            match backend {
                Backend::Sqlite => {
                    sqlx::query(db::SQL_CLAIM_ALL_FIX)
                        .bind(node)
                        .execute(&mut *tx)
                        .await?;
                }
                // However deep the backlog, the take-back must finish: past
                // `statement_timeout` the node could not start at all (a
                // million leftovers took 43 to 59 s here with the earlier
                // statement, against the 30 s default).
                Backend::Postgres => {
                    sqlx::raw_sql(db::SQL_NO_STATEMENT_TIMEOUT)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let rows = sqlx::query(read)
                .bind(node)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(task_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            rows
        }))
    }

    /// Takes up to `limit` unfinished tasks of nodes whose last heartbeat is
    /// older than `stale_before` (PostgreSQL; on SQLite there are no other
    /// nodes and this returns nothing). The stale nodes are found first in
    /// the small `nodes` table, so a deep backlog is never scanned for them.
    pub async fn rescue(
        &self,
        node: &str,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<Task>, StoreError> {
        match &self.inner.db {
            Db::Sqlite(_) => Ok(Vec::new()),
            Db::Pg(p) => {
                let stale: Vec<String> = sqlx::query_scalar(db::SQL_STALE_NODES_PG)
                    .bind(node.to_string())
                    .bind(stale_before)
                    .fetch_all(p)
                    .await?;
                if stale.is_empty() {
                    return Ok(Vec::new());
                }
                self.rescue_from(node, &stale, limit).await
            }
        }
    }

    /// Ids of every unfinished task `node` owns.
    pub async fn own_unfinished(&self, node: &str) -> Result<Vec<TaskId>, StoreError> {
        let ids: Vec<String> = once_more(|| async move {
            Ok(with_db!(&self.inner.db, p => {
                let rows = sqlx::query(db::SQL_OWN_UNFINISHED).bind(node.to_string()).fetch_all(p).await?;
                rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?
            }))
        })
        .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Takes back, as queued, those of `ids` that `node` still owns
    /// unfinished; returns them.
    pub async fn reclaim(&self, node: &str, ids: &[TaskId]) -> Result<Vec<Task>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let tasks = with_db!(&self.inner.db, p => {
                let mut qb = QueryBuilder::new(db::SQL_RECLAIM_HEAD);
                qb.push_bind(node.to_string());
                qb.push(db::SQL_RECLAIM_MID);
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(id.to_string());
                }
                qb.push(")").push(db::SQL_RECLAIM_TAIL);
                let rows = qb.build().fetch_all(p).await?;
                rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?
            });
            out.extend(tasks);
        }
        Ok(out)
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
        once_more(|| async move {
            Ok(with_db!(&self.inner.db, p => {
                match sqlx::query(db::SQL_GET).bind(id.to_string()).fetch_optional(p).await? {
                    Some(r) => Some(task_from_row(&r)?),
                    None => None,
                }
            }))
        })
        .await
    }

    /// The tasks of `ids` that exist, in no particular order (one statement;
    /// the shared poller of watches of tasks held elsewhere).
    pub async fn get_many(&self, ids: &[TaskId]) -> Result<Vec<Task>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        once_more(|| async move {
            Ok(with_db!(&self.inner.db, p => {
                let mut qb = QueryBuilder::new(format!("SELECT {TASK_COLS} FROM tasks WHERE id IN ("));
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(id.to_string());
                }
                qb.push(")");
                let rows = qb.build().fetch_all(p).await?;
                rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?
            }))
        })
        .await
    }

    /// One task by id, and the node that owns it while it is unfinished.
    pub async fn get_owned(
        &self,
        id: TaskId,
    ) -> Result<Option<(Task, Option<String>)>, StoreError> {
        once_more(|| async move {
            Ok(with_db!(&self.inner.db, p => {
                match sqlx::query(db::SQL_GET_OWNED).bind(id.to_string()).fetch_optional(p).await? {
                    Some(r) => Some((task_from_row(&r)?, r.try_get::<Option<String>, _>(21)?)),
                    None => None,
                }
            }))
        })
        .await
    }

    /// Tasks matching `q`, newest first.
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Task>, StoreError> {
        once_more(|| self.list_once(q)).await
    }

    async fn list_once(&self, q: &ListQuery) -> Result<Vec<Task>, StoreError> {
        let tasks = with_db!(&self.inner.db, p => {
            let mut cols = std::borrow::Cow::Borrowed(TASK_COLS);
            if q.skip_args {
                cols = cols.replace(" args,", " 'null' AS args,").into();
            }
            if q.skip_result {
                cols = cols.replace(" result,", " CAST(NULL AS TEXT) AS result,").into();
            }
            let mut qb = QueryBuilder::new(format!("SELECT {cols} FROM tasks WHERE 1 = 1"));
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

    /// New tasks waiting for the writer (its admit lane).
    pub fn admissions_waiting(&self) -> usize {
        WRITE_QUEUE - self.inner.admit.capacity()
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
            write_queue: [&self.inner.urgent, &self.inner.admit]
                .iter()
                .map(|lane| WRITE_QUEUE - lane.capacity())
                .sum(),
            acquires: load(&w.acquires),
            acquire_us: load(&w.acquire_us),
            batches: load(&w.batches),
            ops: load(&w.ops),
            retries: load(&w.retries),
        }
    }

    /// Closes the pool; outstanding writes already queued are still applied
    /// as long as the writer can reach the database.
    pub async fn close(&self) {
        with_db!(&self.inner.db, p => p.close().await)
    }
}

/// Runs a read once more if it failed quickly for a transient reason: a
/// connection broken under a pooled handle (a failover, a DBA's
/// `pg_terminate_backend`) is replaced by then. A read that already waited
/// out the pool's acquire timeout is not repeated.
async fn once_more<T, F, Fut>(read: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    match read().await {
        Err(StoreError::Unavailable(_))
            if started.elapsed() < std::time::Duration::from_millis(500) =>
        {
            read().await
        }
        other => other,
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
