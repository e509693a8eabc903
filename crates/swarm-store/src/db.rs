//! Connections, migrations and every SQL statement.
//!
//! One set of statements serves both databases: both accept `$N`
//! placeholders, `RETURNING`, `ON CONFLICT … DO NOTHING`, and the schemas
//! store times as integers and JSON as text. Where a statement must differ
//! (row locking for multi-node claims) the PostgreSQL variant is separate.
//! [`with_db!`] expands a body once per backend, so each copy is checked
//! against its own driver's types.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Row, SqlSafeStr, Type};
use swarm_core::config::{DatabaseConfig, SqliteSync};
use swarm_core::{Task, TaskError, TaskStatus, Timings};

use crate::error::{StoreError, describe};
use crate::model::{Backend, priority_from_db};

/// A pool on one of the two backends.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// Expands `$body` once per backend with `$p` bound to that backend's pool.
macro_rules! with_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($p) => $body,
            $crate::db::Db::Pg($p) => $body,
        }
    };
}
pub(crate) use with_db;

impl Db {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Pg(_) => Backend::Postgres,
        }
    }
}

/// The columns every task read selects, in [`task_from_row`]'s order.
pub(crate) const TASK_COLS: &str = "id, tenant, type, status, priority, department, agent, instance, \
     title, description, args, result, error, idempotency_key, timeout_ms, deadline_at, \
     created_at, started_at, finished_at, attempts, timings, nodes, retry, run_after, history, callback_url, callback_state";

fn migrations(backend: Backend) -> Migrator {
    let files: [(i64, &str, &str); 7] = match backend {
        Backend::Sqlite => [
            (
                1,
                "init",
                include_str!("../migrations/sqlite/0001_init.sql"),
            ),
            (
                2,
                "retention",
                include_str!("../migrations/sqlite/0002_retention.sql"),
            ),
            (
                3,
                "cluster",
                include_str!("../migrations/sqlite/0003_cluster.sql"),
            ),
            (
                4,
                "retries",
                include_str!("../migrations/sqlite/0004_retries.sql"),
            ),
            (
                5,
                "schedules",
                include_str!("../migrations/sqlite/0005_schedules.sql"),
            ),
            (
                6,
                "webhooks",
                include_str!("../migrations/sqlite/0006_webhooks.sql"),
            ),
            (
                7,
                "tokens",
                include_str!("../migrations/sqlite/0007_tokens.sql"),
            ),
        ],
        Backend::Postgres => [
            (
                1,
                "init",
                include_str!("../migrations/postgres/0001_init.sql"),
            ),
            (
                2,
                "retention",
                include_str!("../migrations/postgres/0002_retention.sql"),
            ),
            (
                3,
                "cluster",
                include_str!("../migrations/postgres/0003_cluster.sql"),
            ),
            (
                4,
                "retries",
                include_str!("../migrations/postgres/0004_retries.sql"),
            ),
            (
                5,
                "schedules",
                include_str!("../migrations/postgres/0005_schedules.sql"),
            ),
            (
                6,
                "webhooks",
                include_str!("../migrations/postgres/0006_webhooks.sql"),
            ),
            (
                7,
                "tokens",
                include_str!("../migrations/postgres/0007_tokens.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        files
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Session settings for PostgreSQL connections: a statement, a lock wait or
/// an idle transaction of ours that runs long fails (and is retried)
/// instead of holding a connection or stalling the writer.
fn pg_session_options(cfg: &DatabaseConfig) -> Vec<(&'static str, String)> {
    [
        ("statement_timeout", cfg.statement_timeout_ms),
        ("lock_timeout", cfg.lock_timeout_ms),
        (
            "idle_in_transaction_session_timeout",
            cfg.idle_in_transaction_timeout_ms,
        ),
    ]
    .into_iter()
    .map(|(k, ms)| (k, format!("{ms}ms")))
    .collect()
}

/// Opens the pool the configuration names and brings its schema up to date.
pub(crate) async fn connect(cfg: &DatabaseConfig) -> Result<Db, StoreError> {
    let url = cfg.url.trim();
    let acquire = Duration::from_millis(cfg.acquire_timeout_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let life = Duration::from_millis(cfg.max_lifetime_ms);
    let db = if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad SQLite URL `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match cfg.sqlite_synchronous {
                SqliteSync::Normal => SqliteSynchronous::Normal,
                SqliteSync::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(cfg.max_connections)
            .min_connections(cfg.min_connections)
            .acquire_timeout(acquire)
            .idle_timeout(idle)
            .max_lifetime(life)
            .connect_with(opts)
            .await
            .map_err(|e| {
                StoreError::Connect(format!(
                    "cannot open SQLite database `{url}`: {}",
                    describe(&e)
                ))
            })?;
        Db::Sqlite(pool)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?
            .application_name("swarmd")
            .options(pg_session_options(cfg));
        let server = format!(
            "PostgreSQL at {}:{} (database `{}`)",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        // One direct connection first: the pool would retry a refused
        // connection until its acquire timeout and then report only that it
        // timed out, hiding the reason.
        match tokio::time::timeout(
            acquire,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => {
                return Err(StoreError::Connect(format!(
                    "cannot connect to {server}: {}",
                    describe(&e)
                )));
            }
            Err(_) => {
                return Err(StoreError::Connect(format!(
                    "cannot connect to {server}: no answer within {} ms (database.acquire_timeout_ms)",
                    acquire.as_millis()
                )));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .min_connections(cfg.min_connections)
            .acquire_timeout(acquire)
            .idle_timeout(idle)
            .max_lifetime(life)
            .connect_with(opts)
            .await
            .map_err(|e| {
                StoreError::Connect(format!("cannot connect to {server}: {}", describe(&e)))
            })?;
        Db::Pg(pool)
    } else {
        return Err(StoreError::Config(format!(
            "database URL must start with `sqlite:` or `postgres:`, got `{url}`"
        )));
    };
    let migrator = migrations(db.backend());
    with_db!(&db, p => migrator.run(p).await)
        .map_err(|e| StoreError::Connect(format!("migrating the schema failed: {e}")))?;
    Ok(db)
}

/// Reads a task from a row selected with [`TASK_COLS`].
pub(crate) fn task_from_row<'r, R>(row: &'r R) -> Result<Task, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get(0)?;
    let status: String = row.try_get(3)?;
    let args: String = row.try_get(10)?;
    let result: Option<String> = row.try_get(11)?;
    let error: Option<String> = row.try_get(12)?;
    let timings: String = row.try_get(20)?;
    let attempts: i64 = row.try_get(19)?;
    Ok(Task {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("task id `{id}` is not a UUID")))?,
        tenant: row.try_get(1)?,
        task_type: row.try_get(2)?,
        status: TaskStatus::from_str(&status)
            .map_err(|_| StoreError::Corrupt(format!("task {id}: unknown status `{status}`")))?,
        priority: priority_from_db(row.try_get(4)?),
        department: row.try_get(5)?,
        agent: row.try_get(6)?,
        instance: row.try_get(7)?,
        title: row.try_get(8)?,
        description: row.try_get(9)?,
        args: parse_json(&id, "args", &args)?,
        result: result.map(|r| parse_json(&id, "result", &r)).transpose()?,
        error: error
            .map(|e| {
                serde_json::from_str::<TaskError>(&e)
                    .map_err(|err| StoreError::Corrupt(format!("task {id}: error: {err}")))
            })
            .transpose()?,
        idempotency_key: row.try_get(13)?,
        timeout_ms: row.try_get(14)?,
        deadline_at: row.try_get(15)?,
        created_at: row.try_get(16)?,
        started_at: row.try_get(17)?,
        finished_at: row.try_get(18)?,
        attempts: attempts as i32,
        // Read by name: statements that do not select it (older column
        // lists) leave it empty rather than failing the read.
        nodes: row
            .try_get::<String, _>("nodes")
            .map(|n| split_nodes(&n))
            .unwrap_or_default(),
        timings: serde_json::from_str::<Timings>(&timings).unwrap_or_default(),
        waiting_for: None,
        retry: row
            .try_get::<Option<String>, _>("retry")
            .ok()
            .flatten()
            .and_then(|r| serde_json::from_str(&r).ok()),
        run_after: row.try_get::<Option<i64>, _>("run_after").ok().flatten(),
        history: row
            .try_get::<String, _>("history")
            .ok()
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        callback_url: row
            .try_get::<Option<String>, _>("callback_url")
            .ok()
            .flatten(),
        callback_state: row
            .try_get::<Option<String>, _>("callback_state")
            .ok()
            .flatten(),
    })
}

/// The `nodes` column: node ids, comma-separated (node ids cannot hold a
/// comma; the configuration refuses one).
fn split_nodes(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_json(id: &str, what: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("task {id}: {what}: {e}")))
}

/// Serialises a value the store writes as JSON text.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Values written here are our own types and `serde_json::Value`, whose
    // serialisation cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

/// Marks a queued task of `owner` running. Idempotent: a run of the same
/// start again (same `started_at`, after a commit whose answer was lost)
/// finds its own row and does not count a second attempt.
pub(crate) const SQL_START: &str = "UPDATE tasks SET status = 'running', instance = $2, started_at = $3, \
     attempts = attempts + CASE WHEN status = 'queued' THEN 1 ELSE 0 END, \
     nodes = CASE WHEN status = 'queued' THEN (CASE WHEN nodes = '' THEN $4 ELSE nodes || ',' || $4 END) ELSE nodes END \
     WHERE id = $1 AND owner = $4 AND (status = 'queued' OR (status = 'running' AND started_at = $3)) \
     RETURNING attempts";
/// [`SQL_START`] for many tasks: `(id, instance, started_at, owner)` rows.
pub(crate) const SQL_START_MANY_HEAD: &str = "UPDATE tasks SET status = 'running', instance = v.column2, \
     started_at = v.column3, attempts = tasks.attempts + CASE WHEN tasks.status = 'queued' THEN 1 ELSE 0 END, \
     nodes = CASE WHEN tasks.status = 'queued' THEN (CASE WHEN tasks.nodes = '' THEN v.column4 \
       ELSE tasks.nodes || ',' || v.column4 END) ELSE tasks.nodes END FROM (";
pub(crate) const SQL_START_MANY_TAIL: &str = ") AS v WHERE tasks.id = v.column1 AND tasks.owner = v.column4 \
     AND (tasks.status = 'queued' OR (tasks.status = 'running' AND tasks.started_at = v.column3)) \
     RETURNING tasks.id, tasks.attempts";

/// Finishing is guarded by the state the caller saw *and* by ownership: a
/// node whose tasks were taken over (its lease lapsed) can never overwrite
/// what the new owner stores, and a stored outcome is never replaced.
pub(crate) const SQL_FINISH_QUEUED: &str = "UPDATE tasks SET status = $2, result = $3, error = $4, \
     finished_at = $5, timings = $6, instance = COALESCE($7, instance), callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, callback_next_at = $5, owner = NULL, \
     cancel_requested = FALSE WHERE id = $1 AND owner = $8 AND status = 'queued'";
pub(crate) const SQL_FINISH_RUNNING: &str = "UPDATE tasks SET status = $2, result = $3, error = $4, \
     finished_at = $5, timings = $6, instance = COALESCE($7, instance), callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, callback_next_at = $5, owner = NULL, \
     cancel_requested = FALSE WHERE id = $1 AND owner = $8 AND status = 'running'";
pub(crate) const SQL_FINISH_UNFINISHED: &str = "UPDATE tasks SET status = $2, result = $3, error = $4, \
     finished_at = $5, timings = $6, instance = COALESCE($7, instance), callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, callback_next_at = $5, owner = NULL, \
     cancel_requested = FALSE WHERE id = $1 AND owner = $8 AND status IN ('queued', 'running')";
/// [`SQL_FINISH_RUNNING`] for many tasks.
pub(crate) const SQL_FINISH_MANY_HEAD: &str = "UPDATE tasks SET status = v.column2, result = v.column3, \
     error = v.column4, finished_at = v.column5, timings = v.column6, \
     instance = COALESCE(v.column7, tasks.instance), callback_state = CASE WHEN tasks.callback_url IS NULL THEN NULL ELSE 'pending' END, \
     callback_next_at = v.column5, owner = NULL, cancel_requested = FALSE FROM (";
pub(crate) const SQL_FINISH_MANY_TAIL: &str = ") AS v WHERE tasks.id = v.column1 AND tasks.owner = v.column8 \
     AND tasks.status = 'running' RETURNING tasks.id";

/// A retry: back to queued, not before `run_after`, with the ended
/// attempt appended to `history` (the whole array, built by the caller),
/// its error kept (a waiting retry says why it waits).
pub(crate) const SQL_RETRY: &str = "UPDATE tasks SET status = 'queued', run_after = $3, history = $4, \
     error = $5, timings = $6 WHERE id = $1 AND status = 'running' AND owner = $2";

/// `POST /api/tasks/{id}/retry`: an ended task (not a success) runs again
/// on this node as a new attempt, with a new deadline.
pub(crate) const SQL_RERUN: &str = "UPDATE tasks SET status = 'queued', owner = $2, deadline_at = $3, \
     history = $4, result = NULL, error = NULL, finished_at = NULL, run_after = NULL, \
     cancel_requested = FALSE, timings = '{}', callback_state = NULL, callback_attempts = 0, \
     callback_next_at = NULL WHERE id = $1 AND status IN ('failed', 'timed_out', 'cancelled') RETURNING ";

/// Deliveries due (`callback_next_at` passed), leased to the caller until
/// `$2` so no other node sends them meanwhile; `$3` at most. The
/// PostgreSQL variant skips rows another node is claiming.
pub(crate) const SQL_CALLBACKS_DUE: &str = "UPDATE tasks SET callback_next_at = $2 WHERE id IN \
     (SELECT id FROM tasks WHERE callback_state = 'pending' AND callback_next_at <= $1 \
      ORDER BY callback_next_at LIMIT $3) AND callback_state = 'pending' RETURNING ";
pub(crate) const SQL_CALLBACKS_DUE_PG: &str = "UPDATE tasks SET callback_next_at = $2 WHERE id IN \
     (SELECT id FROM tasks WHERE callback_state = 'pending' AND callback_next_at <= $1 \
      ORDER BY callback_next_at LIMIT $3 FOR UPDATE SKIP LOCKED) AND callback_state = 'pending' RETURNING ";

pub(crate) const SQL_CALLBACKS_ANY: &str =
    "SELECT 1 FROM tasks WHERE callback_state = 'pending' AND callback_next_at <= $1 LIMIT 1";

/// A delivery's try ended: its state and next time.
pub(crate) const SQL_CALLBACK_TRIED: &str = "UPDATE tasks SET callback_state = $2, \
     callback_attempts = $3, callback_next_at = $4 WHERE id = $1 AND callback_state = 'pending'";

pub(crate) const SQL_DELIVERY_INSERT: &str = "INSERT INTO deliveries (id, task_id, message_id, attempt, \
     url, node, at, duration_ms, status, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (id) DO NOTHING";

pub(crate) const SQL_DELIVERIES: &str = "SELECT id, message_id, attempt, url, node, at, duration_ms, \
     status, error FROM deliveries WHERE task_id = $1 ORDER BY at, attempt";

/// A schedule's tick was submitted; only a later tick replaces the record.
pub(crate) const SQL_SCHEDULE_RAN: &str = "INSERT INTO schedules (name, last_tick, last_task, updated_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, \
     last_task = excluded.last_task, updated_at = excluded.updated_at \
     WHERE schedules.last_tick < excluded.last_tick";

pub(crate) const SQL_SCHEDULES: &str = "SELECT name, last_tick, last_task FROM schedules";

pub(crate) const SQL_REQUEUE: &str =
    "UPDATE tasks SET status = 'queued' WHERE id = $1 AND status = 'running' AND owner = $2";

pub(crate) const SQL_CANCEL_REQUEST: &str = "UPDATE tasks SET cancel_requested = TRUE \
     WHERE id = $1 AND status IN ('queued', 'running')";

pub(crate) const SQL_NODE_REGISTER: &str = "INSERT INTO nodes (node_id, started_at, heartbeat_at, pid, version, address) \
     VALUES ($1, $2, $2, $3, $4, $5) ON CONFLICT (node_id) DO UPDATE SET started_at = excluded.started_at, \
     heartbeat_at = excluded.heartbeat_at, pid = excluded.pid, version = excluded.version, \
     address = excluded.address";

pub(crate) const SQL_HEARTBEAT: &str =
    "UPDATE nodes SET heartbeat_at = $2, load = $3 WHERE node_id = $1";

pub(crate) const SQL_NODE_LEAVE: &str = "UPDATE nodes SET heartbeat_at = 0 WHERE node_id = $1";

/// The writer's probe of a database it found down: a row written and
/// deleted in one transaction, so it succeeds only where writes commit.
pub(crate) const SQL_PROBE_WRITE: &str = "INSERT INTO writer_probe (at) VALUES ($1) RETURNING id";
pub(crate) const SQL_PROBE_CLEAR: &str = "DELETE FROM writer_probe WHERE id = $1";

/// Idempotent by id: a message stored by a run whose answer was lost is not
/// stored twice.
pub(crate) const SQL_OUTBOX_INSERT: &str = "INSERT INTO outbox \
     (id, task_id, tenant, sender, recipients, cc, subject, body, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING";

pub(crate) const SQL_INSERT_HEAD: &str = "INSERT INTO tasks (id, tenant, type, status, priority, \
     department, agent, title, description, args, idempotency_key, request_hash, timeout_ms, \
     deadline_at, created_at, owner, timings, retry, run_after, callback_url) ";
/// Any unique conflict (the idempotency key, or the id of a row an earlier
/// run of the same batch stored) inserts nothing; the writer then tells
/// which one it was.
pub(crate) const SQL_INSERT_TAIL: &str = " ON CONFLICT DO NOTHING RETURNING id";

pub(crate) const SQL_EXISTS: &str = "SELECT 1 FROM tasks WHERE id = $1";

pub(crate) const SQL_EXISTING: &str = "SELECT id, tenant, type, status, priority, department, agent, \
     instance, title, description, args, result, error, idempotency_key, timeout_ms, deadline_at, \
     created_at, started_at, finished_at, attempts, timings, request_hash, nodes, retry, run_after, history, callback_url, callback_state \
     FROM tasks WHERE tenant = $1 AND idempotency_key = $2";

pub(crate) const SQL_GET: &str = "SELECT id, tenant, type, status, priority, department, agent, \
     instance, title, description, args, result, error, idempotency_key, timeout_ms, deadline_at, \
     created_at, started_at, finished_at, attempts, timings, nodes, retry, run_after, history, callback_url, callback_state FROM tasks WHERE id = $1";

/// [`SQL_GET`] and the owning node (column 21).
pub(crate) const SQL_GET_OWNED: &str = "SELECT id, tenant, type, status, priority, department, agent, \
     instance, title, description, args, result, error, idempotency_key, timeout_ms, deadline_at, \
     created_at, started_at, finished_at, attempts, timings, owner, nodes, retry, run_after, history, callback_url, callback_state FROM tasks WHERE id = $1";

/// Startup claim on SQLite, first step: one process owns the file (see the
/// lock file), so everything unfinished is ours. Only rows that change are
/// written (a task left `running`, or queued under another node id): the
/// rest of a backlog is read, not rewritten.
pub(crate) const SQL_CLAIM_ALL_FIX: &str = "UPDATE tasks SET status = 'queued', owner = $1 \
     WHERE status IN ('queued', 'running') AND (status = 'running' OR owner IS NOT $1)";

/// Startup claim on SQLite, second step: everything unfinished, now queued
/// and ours (`$1`, as on PostgreSQL). The `IN` lets SQLite use the partial
/// `tasks_unfinished`.
pub(crate) const SQL_CLAIM_ALL_READ: &str = "SELECT id, tenant, type, status, priority, \
     department, agent, instance, title, description, args, result, error, idempotency_key, \
     timeout_ms, deadline_at, created_at, started_at, finished_at, attempts, timings, nodes, retry, \
     run_after, history, callback_url, callback_state FROM tasks \
     WHERE owner = $1 AND status IN ('queued', 'running')";

/// Startup claim on PostgreSQL: this node's own leftovers (it restarted),
/// in one statement. Only the tasks left `running` are updated; the queued
/// ones are read as they are. An `UPDATE` of a row to the values it holds
/// still writes a new row version in PostgreSQL, so setting every leftover
/// `queued` made a 1M-task take-back write 1M rows before the first start.
/// The `SELECT` arm sees the statement's snapshot, from before the update,
/// so a task the update requeues comes back once, from `back`.
pub(crate) const SQL_CLAIM_OWN: &str = "WITH back AS (UPDATE tasks SET status = 'queued' \
     WHERE owner = $1 AND status = 'running' RETURNING id, tenant, type, status, \
     priority, department, agent, instance, title, description, args, result, error, \
     idempotency_key, timeout_ms, deadline_at, created_at, started_at, finished_at, attempts, timings, nodes, retry, run_after, history, callback_url, callback_state) \
     SELECT * FROM back UNION ALL SELECT id, tenant, type, status, \
     priority, department, agent, instance, title, description, args, result, error, \
     idempotency_key, timeout_ms, deadline_at, created_at, started_at, finished_at, attempts, timings, nodes, retry, run_after, history, callback_url, callback_state \
     FROM tasks WHERE owner = $1 AND status = 'queued'";

/// Lifts `statement_timeout` for the rest of a transaction.
pub(crate) const SQL_NO_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = 0";

/// The ids of this node's unfinished tasks (the sweep compares them with
/// what the node holds in memory).
pub(crate) const SQL_OWN_UNFINISHED: &str =
    "SELECT id FROM tasks WHERE owner = $1 AND status IN ('queued', 'running')";

/// Takes back some of this node's own unfinished tasks by id (the list is
/// appended with `QueryBuilder`), as queued.
pub(crate) const SQL_RECLAIM_HEAD: &str = "UPDATE tasks SET status = 'queued' WHERE owner = ";
pub(crate) const SQL_RECLAIM_MID: &str = " AND status IN ('queued', 'running') AND id IN (";
pub(crate) const SQL_RECLAIM_TAIL: &str = " RETURNING id, tenant, type, status, \
     priority, department, agent, instance, title, description, args, result, error, \
     idempotency_key, timeout_ms, deadline_at, created_at, started_at, finished_at, attempts, timings, nodes, retry, run_after, history, callback_url, callback_state";

/// Rescue on PostgreSQL, first step: other nodes whose heartbeat stopped
/// and that still own unfinished tasks (the owned-rows index answers the
/// `EXISTS`). Their tasks are then taken with `SKIP LOCKED`, so several
/// live nodes can rescue at once without taking a task twice.
pub(crate) const SQL_STALE_NODES_PG: &str = "SELECT n.node_id FROM nodes n \
     WHERE n.node_id <> $1 AND n.heartbeat_at < $2 \
       AND EXISTS (SELECT 1 FROM tasks t WHERE t.owner = n.node_id AND t.status IN ('queued', 'running'))";

/// Uses the partial index of flagged rows only (migration 0002), so the
/// heartbeat's poll stays small however many tasks there are.
pub(crate) const SQL_CANCEL_POLL: &str = "SELECT id FROM tasks WHERE owner = $1 \
     AND cancel_requested = TRUE AND status IN ('queued', 'running')";

/// Retention: the oldest finished tasks first, a bounded batch per
/// statement so no lock is held for long.
pub(crate) const SQL_PRUNE_TASKS: &str = "DELETE FROM tasks WHERE id IN \
     (SELECT id FROM tasks WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)";
pub(crate) const SQL_PRUNE_OUTBOX: &str = "DELETE FROM outbox WHERE id IN \
     (SELECT id FROM outbox WHERE created_at < $1 ORDER BY created_at LIMIT $2)";
