//! Group commit: every write goes through one writer task that folds whatever
//! is waiting into a single transaction.
//!
//! Callers send an [`Op`] with a reply channel and wait. The writer takes the
//! first op, then everything else already queued (up to `batch_max`), runs
//! them in one transaction and answers each caller only after the commit.
//! Under light load a batch is one op and costs one commit; under heavy load
//! hundreds of acknowledgements share one commit, so durability stops
//! costing a transaction per request (the technique databases use for their
//! own logs: "group commit", Gawlick & Kinkade 1985; PostgreSQL's
//! `commit_delay`). On SQLite a single writer is also what the database
//! wants: it admits one writer at a time.
//!
//! # Lanes: completions before admissions
//! Ops arrive in three lanes and a batch is filled in their order:
//! - **urgent**: the transitions of work already accepted (start, finish,
//!   hand back, cancel requests, heartbeats, an agent's outbox message). They
//!   free capacity, so they never wait behind new work;
//! - **admit**: new tasks. A flood of submissions fills this lane, not the
//!   first one, so tasks already accepted keep starting and finishing;
//! - **background**: retention deletes, at most one per batch.
//!
//! # Failures
//! Every op is idempotent (an insert finds its own row, a start carries its
//! start time as a token, a finish is guarded by state and owner), so a
//! batch whose connection broke, even during the commit, is simply run
//! again on a fresh connection. A batch that still fails for a transient
//! reason marks the database down ([`Health`]) and fails its ops with
//! [`StoreError::Unavailable`] (or [`StoreError::InDoubt`] when a commit
//! was in flight); new submissions waiting in the admit lane are failed at
//! once rather than each waiting out the pool's acquire timeout. While the
//! database is down the writer probes it with a tiny write transaction and
//! marks it up on the first that commits. A batch that fails for any other
//! reason is retried op by op, so one bad write cannot fail its neighbours.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::batch::{BatchWrites, StartRow};
use crate::db::{self, Db, to_json, with_db};
use crate::error::{StoreError, describe, is_transient};
use crate::health::{Health, PROBE_EVERY};
use crate::model::{Expect, Finish, InsertOutcome, NewTask, OutboxRow, Pruned, Retry};

/// Runs of a batch that failed for a transient reason before the database
/// is declared down (a pool timeout declares it at once: it already waited).
const ATTEMPTS: u32 = 3;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write and who waits for it.
pub(crate) enum Op {
    Insert(Box<NewTask>, Reply<InsertOutcome>),
    Start {
        id: String,
        instance: String,
        at: i64,
        owner: String,
        reply: Reply<Option<i64>>,
    },
    Finish(Box<Finish>, Reply<bool>),
    Requeue {
        id: String,
        owner: String,
        reply: Reply<bool>,
    },
    Retry(Box<Retry>, Reply<bool>),
    ScheduleRan {
        name: String,
        tick: i64,
        task: String,
        reply: Reply<()>,
    },
    Rerun {
        id: String,
        owner: String,
        deadline_at: i64,
        history: String,
        reply: Reply<Option<swarm_core::Task>>,
    },
    CancelRequest {
        id: String,
        reply: Reply<bool>,
    },
    Heartbeat {
        node: String,
        at: i64,
        /// The node's per-department load, JSON, for other nodes to read.
        load: String,
        reply: Reply<()>,
    },
    Outbox(Box<OutboxRow>, Reply<()>),
    Prune {
        before: i64,
        limit: i64,
        reply: Reply<Pruned>,
    },
    /// Inserts that must share one transaction (a batch submit): the writer
    /// puts all of them in the batch it is filling, even past `batch_max`.
    Group(Vec<Op>),
}

/// Which lane an op travels in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Urgent,
    Admit,
    Background,
}

impl Op {
    pub(crate) fn lane(&self) -> Lane {
        match self {
            Op::Insert(..) | Op::Group(_) => Lane::Admit,
            Op::Prune { .. } => Lane::Background,
            _ => Lane::Urgent,
        }
    }
}

/// An op's answer before it is sent.
enum Answer {
    Insert(Box<InsertOutcome>),
    Start(Option<i64>),
    Bool(bool),
    Pruned(Pruned),
    Task(Option<Box<swarm_core::Task>>),
    Unit,
}

impl Op {
    fn send(self, answer: Result<Answer, StoreError>) {
        // A caller that gave up waiting has dropped its receiver; that is fine.
        match self {
            Op::Insert(_, r) => {
                let _ = r.send(answer.and_then(|a| match a {
                    Answer::Insert(o) => Ok(*o),
                    _ => Err(mismatch()),
                }));
            }
            Op::Start { reply, .. } => {
                let _ = reply.send(answer.and_then(|a| match a {
                    Answer::Start(o) => Ok(o),
                    _ => Err(mismatch()),
                }));
            }
            Op::Rerun { reply, .. } => {
                let _ = reply.send(answer.and_then(|a| match a {
                    Answer::Task(t) => Ok(t.map(|t| *t)),
                    _ => Err(mismatch()),
                }));
            }
            Op::Finish(_, r)
            | Op::Retry(_, r)
            | Op::Requeue { reply: r, .. }
            | Op::CancelRequest { reply: r, .. } => {
                let _ = r.send(answer.map(|a| matches!(a, Answer::Bool(true))));
            }
            Op::Prune { reply, .. } => {
                let _ = reply.send(answer.and_then(|a| match a {
                    Answer::Pruned(p) => Ok(p),
                    _ => Err(mismatch()),
                }));
            }
            Op::Heartbeat { reply, .. } | Op::Outbox(_, reply) | Op::ScheduleRan { reply, .. } => {
                let _ = reply.send(answer.map(|_| ()));
            }
            // Groups are taken apart before a batch runs (`push_op`), so
            // only a refusal of the whole group reaches here.
            Op::Group(ops) => {
                for op in ops {
                    op.send(match &answer {
                        Err(e) => Err(e.clone()),
                        Ok(_) => Err(mismatch()),
                    });
                }
            }
        }
    }
}

/// Adds `op` to `batch`, a group as its members (one transaction for all).
fn push_op(batch: &mut Vec<Op>, op: Op) {
    match op {
        Op::Group(ops) => batch.extend(ops),
        op => batch.push(op),
    }
}

/// `apply` builds answers positionally from the ops themselves, so a
/// mismatch would be a bug in this file; it is reported, never panicked on.
fn mismatch() -> StoreError {
    StoreError::Database("group-commit answer does not match its op".into())
}

/// The writer's own figures, read by `Store::pool_stats`.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) acquires: AtomicU64,
    pub(crate) acquire_us: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) ops: AtomicU64,
    /// Batches run again after a transient failure.
    pub(crate) retries: AtomicU64,
}

/// The SQLite writer's own connection, detached from the pool and kept
/// between batches.
///
/// A pooled connection cost two extra round trips per batch: sqlx pings it
/// when it is acquired (`test_before_acquire`) and again, unconditionally,
/// when it is returned, and the return is a spawned task. On SQLite a round
/// trip is a hand-off to the connection's worker thread and back, and so
/// are `BEGIN` and `COMMIT` through sqlx's transaction API, which also
/// block the worker until the answer is taken. A kept connection is pinged
/// by nothing and its transaction is plain `BEGIN` / `COMMIT` statements:
/// safe because a kept connection is only put back after a batch
/// committed. One that failed, or whose batch was dropped half way, is
/// dropped, which closes it and rolls back; the batch's next run takes a
/// fresh one (`Commit::run_with_retries`), which is all the pings guarded
/// against. Kept connections live at most `database.max_lifetime_ms`, like
/// pooled ones. Measured with echo at 2,000 tasks/s and `wait_ms`
/// (BENCHMARKS.md, "A lean LLM path"): p50 3.6-5.1 -> 2.6-3.4 ms.
///
/// PostgreSQL keeps its pooled connections: kept ones measured slower
/// there (2.5-2.8k against 3.3-6.2k echo tasks/s at 100 clients), and a
/// pooled one is closed rather than returned when its batch fails or is
/// dropped (`Lease`), so a plain `BEGIN` never leaks into the pool.
pub(crate) struct Kept {
    sqlite: Mutex<Option<KeptConn>>,
    /// `database.max_lifetime_ms`.
    max_life: Duration,
}

impl Kept {
    pub(crate) fn new(max_life: Duration) -> Self {
        Self {
            sqlite: Mutex::new(None),
            max_life,
        }
    }
}

/// The kept SQLite connection and when it was opened.
struct KeptConn {
    conn: sqlx::SqliteConnection,
    opened: Instant,
}

/// How the writer holds a connection for one batch, per backend.
trait WriteConn: sqlx::Database {
    type Held: std::ops::DerefMut<Target = Self::Connection> + Send;
    /// A connection for the next batch.
    fn take(
        kept: &Kept,
        pool: &sqlx::Pool<Self>,
    ) -> impl Future<Output = Result<Self::Held, sqlx::Error>> + Send;
    /// The batch committed: keep `held` (or let it go back to the pool).
    fn keep(kept: &Kept, held: Self::Held);
    /// The batch failed or was dropped: `held` must never be used again.
    fn discard(held: &mut Self::Held);
}

impl std::ops::Deref for KeptConn {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &sqlx::SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for KeptConn {
    fn deref_mut(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }
}

impl WriteConn for sqlx::Sqlite {
    type Held = KeptConn;
    async fn take(kept: &Kept, pool: &sqlx::Pool<Self>) -> Result<KeptConn, sqlx::Error> {
        let k = kept
            .sqlite
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match k {
            Some(k) => Ok(k),
            None => Ok(KeptConn {
                conn: pool.acquire().await?.detach(),
                opened: Instant::now(),
            }),
        }
    }
    fn keep(kept: &Kept, held: KeptConn) {
        // Past its lifetime it is dropped, which closes it.
        if held.opened.elapsed() < kept.max_life {
            *kept.sqlite.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
        }
    }
    fn discard(_: &mut KeptConn) {
        // Not put back, so dropped, which closes it.
    }
}

impl WriteConn for sqlx::Postgres {
    type Held = sqlx::pool::PoolConnection<sqlx::Postgres>;
    async fn take(_: &Kept, pool: &sqlx::Pool<Self>) -> Result<Self::Held, sqlx::Error> {
        pool.acquire().await
    }
    fn keep(_: &Kept, held: Self::Held) {
        drop(held);
    }
    fn discard(held: &mut Self::Held) {
        held.close_on_drop();
    }
}

/// A connection for one batch from `pool` (kept or pooled, by backend).
async fn lease<'k, DB: WriteConn>(
    kept: &'k Kept,
    pool: &sqlx::Pool<DB>,
) -> Result<Lease<'k, DB>, sqlx::Error> {
    Ok(Lease {
        held: Some(DB::take(kept, pool).await?),
        kept,
    })
}

/// A batch's connection: discarded on drop unless the batch committed.
struct Lease<'k, DB: WriteConn> {
    held: Option<DB::Held>,
    kept: &'k Kept,
}

impl<DB: WriteConn> Lease<'_, DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        self.held
            .as_mut()
            .expect("a lease holds its connection until done")
    }

    fn committed(mut self) {
        if let Some(h) = self.held.take() {
            DB::keep(self.kept, h);
        }
    }
}

impl<DB: WriteConn> Drop for Lease<'_, DB> {
    fn drop(&mut self) {
        if let Some(h) = self.held.as_mut() {
            DB::discard(h);
        }
    }
}

/// The receiving ends of the three lanes.
pub(crate) struct Lanes {
    pub(crate) urgent: mpsc::Receiver<Op>,
    pub(crate) admit: mpsc::Receiver<Op>,
    pub(crate) background: mpsc::Receiver<Op>,
}

/// The group-commit writer: one per store.
pub(crate) struct Writer {
    /// The pool it takes its connections from.
    pub(crate) db: Db,
    /// The connection it keeps (see [`Kept`]).
    pub(crate) kept: Arc<Kept>,
    /// Where ops arrive.
    pub(crate) lanes: Lanes,
    /// Most ops in one transaction.
    pub(crate) batch_max: usize,
    /// Batches in flight at once on PostgreSQL (`database.write_pipeline`).
    pub(crate) pipeline: usize,
    /// Its figures.
    pub(crate) stats: Arc<WriterStats>,
    /// Marked down when batches keep failing, up when one commits.
    pub(crate) health: Health,
}

/// Why one run of a batch failed.
struct Failed {
    error: sqlx::Error,
    /// The commit itself was in flight, so the batch may be stored.
    at_commit: bool,
}

impl Writer {
    /// Runs until every sender is gone, then returns.
    ///
    /// On PostgreSQL up to `database.write_pipeline` (default 4) batches are in flight at once, each
    /// on its own connection: a batch spends most of its time waiting for
    /// round trips and the commit's flush, and the next batch need not wait
    /// for them. That is safe because no op depends on another op that has
    /// not been answered yet (a start is sent only after its task's insert
    /// is acknowledged, a finish only after its start), and the guards on
    /// state and owner settle the races that remain. SQLite admits one
    /// writer at a time, so there the writer commits one batch at a time.
    pub(crate) async fn run(mut self) {
        let depth = match self.db {
            Db::Pg(_) => self.pipeline,
            Db::Sqlite(_) => 1,
        };
        let mut inflight: tokio::task::JoinSet<Option<StoreError>> = tokio::task::JoinSet::new();
        let mut batch: Vec<Op> = Vec::with_capacity(self.batch_max);
        loop {
            let down = !self.health.is_up();
            // Another batch goes out beside those in flight only when enough
            // waits to fill a large one: on a database short of CPU, many
            // small commits cost more than few large ones (measured: 34 ops
            // per commit at 6.0k tasks/s against 133 at 7.1k).
            let waiting = self.lanes.urgent.len() + self.lanes.admit.len();
            let room = inflight.is_empty()
                || (inflight.len() < depth && waiting >= self.batch_max.div_ceil(4));
            let first = tokio::select! {
                biased;
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(Some(e)) = done {
                        self.fail_waiting_admissions(&e);
                    }
                    continue;
                }
                Some(op) = self.lanes.urgent.recv(), if room => op,
                Some(op) = self.lanes.admit.recv(), if room => op,
                Some(op) = self.lanes.background.recv(), if room => op,
                _ = tokio::time::sleep(PROBE_EVERY), if down && inflight.is_empty() => {
                    self.probe().await;
                    continue;
                }
                else => {
                    debug!("group-commit writer: all senders gone, stopping");
                    return;
                }
            };
            push_op(&mut batch, first);
            self.fill(&mut batch);
            let ctx = Commit {
                db: self.db.clone(),
                kept: self.kept.clone(),
                stats: self.stats.clone(),
                health: self.health.clone(),
            };
            let ops = std::mem::take(&mut batch);
            if depth == 1 {
                if let Some(e) = ctx.commit(ops).await {
                    self.fail_waiting_admissions(&e);
                }
            } else {
                inflight.spawn(ctx.commit(ops));
            }
        }
    }

    /// Adds what is waiting, lane by lane, up to `batch_max`.
    fn fill(&mut self, batch: &mut Vec<Op>) {
        let max = self.batch_max;
        while batch.len() < max {
            match self.lanes.urgent.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        while batch.len() < max {
            match self.lanes.admit.try_recv() {
                Ok(op) => push_op(batch, op),
                Err(_) => break,
            }
        }
        if batch.len() < max
            && !batch.iter().any(|op| op.lane() == Lane::Background)
            && let Ok(op) = self.lanes.background.try_recv()
        {
            batch.push(op);
        }
    }

    /// The database is down: submissions waiting for the writer are
    /// answered now instead of each waiting for a connection in turn.
    fn fail_waiting_admissions(&mut self, e: &StoreError) {
        let reason = match e {
            StoreError::Unavailable(r) | StoreError::InDoubt(r) => r.clone(),
            other => other.to_string(),
        };
        while let Ok(op) = self.lanes.admit.try_recv() {
            op.send(Err(StoreError::Unavailable(reason.clone())));
        }
    }

    /// One small write transaction, to learn whether writes commit again.
    async fn probe(&mut self) {
        let result = with_db!(&self.db, p => async {
            let mut conn = p.acquire().await?;
            let outcome = async {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let row = sqlx::query(db::SQL_PROBE_WRITE)
                    .bind(swarm_core::clock::now_ms())
                    .fetch_one(&mut *tx)
                    .await?;
                let id: i64 = row.try_get(0)?;
                sqlx::query(db::SQL_PROBE_CLEAR).bind(id).execute(&mut *tx).await?;
                tx.commit().await
            }
            .await;
            if outcome.is_err() {
                conn.close_on_drop();
            }
            outcome
        }.await);
        match result {
            Ok(()) => self.health.up(),
            Err(e) => debug!(error = %describe(&e), "database probe failed"),
        }
    }
}

/// What one batch's commit needs; cloned per batch so batches can run side
/// by side.
struct Commit {
    db: Db,
    kept: Arc<Kept>,
    stats: Arc<WriterStats>,
    health: Health,
}

impl Commit {
    /// Commits `batch` and answers every op in it.
    async fn commit(self, batch: Vec<Op>) -> Option<StoreError> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match self.run_with_retries(&batch).await {
            Ok(answers) => {
                for (op, a) in batch.into_iter().zip(answers) {
                    op.send(Ok(a));
                }
                None
            }
            Err(e) if e.is_unavailable() => {
                for op in batch {
                    op.send(Err(e.clone()));
                }
                Some(e)
            }
            Err(e) if batch.len() == 1 => {
                for op in batch {
                    op.send(Err(e.clone()));
                }
                None
            }
            Err(e) => {
                warn!(error = %e, ops = batch.len(), "batched write failed; retrying ops one by one");
                let mut unavailable = None;
                for op in batch {
                    let answer = self
                        .run_with_retries(std::slice::from_ref(&op))
                        .await
                        .and_then(|mut v| v.pop().ok_or_else(mismatch));
                    if let Err(e) = &answer
                        && e.is_unavailable()
                    {
                        unavailable = Some(e.clone());
                    }
                    op.send(answer);
                }
                unavailable
            }
        }
    }

    /// Runs `ops` in one transaction, again on a fresh connection after a
    /// transient failure; marks the database down if that keeps failing.
    async fn run_with_retries(&self, ops: &[Op]) -> Result<Vec<Answer>, StoreError> {
        let mut in_doubt = false;
        for attempt in 1..=ATTEMPTS {
            match apply(&self.db, &self.kept, ops, &self.stats).await {
                // Only the probe ends an outage: a batch that wrote nothing
                // (a refused start, say) commits even on a full disk.
                Ok(answers) => return Ok(answers),
                Err(f) if is_transient(&f.error) => {
                    in_doubt |= f.at_commit;
                    let waited = matches!(f.error, sqlx::Error::PoolTimedOut);
                    if attempt == ATTEMPTS || waited {
                        let reason = describe(&f.error);
                        self.health.down(&reason);
                        return Err(if in_doubt {
                            StoreError::InDoubt(reason)
                        } else {
                            StoreError::Unavailable(reason)
                        });
                    }
                    debug!(error = %f.error, attempt, "write failed for a transient reason; running it again");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(f) => return Err(StoreError::from(f.error)),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Applies `ops` in one transaction; answers are in the ops' order.
async fn apply(
    db: &Db,
    kept: &Kept,
    ops: &[Op],
    stats: &WriterStats,
) -> Result<Vec<Answer>, Failed> {
    let before = |error| Failed {
        error,
        at_commit: false,
    };
    let mut answers: Vec<Option<Answer>> = (0..ops.len()).map(|_| None).collect();

    // Inserts first (one multi-row statement per chunk), deduplicating
    // idempotency keys within the batch: the first wins, later ones replay it.
    let inserts: Vec<(usize, &NewTask)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            Op::Insert(n, _) => Some((i, n.as_ref())),
            _ => None,
        })
        .collect();
    let mut first_by_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut dup_of: HashMap<usize, usize> = HashMap::new();
    let mut unique: Vec<(usize, &NewTask)> = Vec::with_capacity(inserts.len());
    for (i, n) in &inserts {
        if let Some(k) = n.task.idempotency_key.as_deref() {
            if let Some(&first) = first_by_key.get(&(n.task.tenant.as_str(), k)) {
                dup_of.insert(*i, first);
                continue;
            }
            first_by_key.insert((n.task.tenant.as_str(), k), *i);
        }
        unique.push((*i, n));
    }

    with_db!(db, pool => {
        let asked = std::time::Instant::now();
        let mut lease = lease(kept, pool).await.map_err(before)?;
        stats.acquires.fetch_add(1, Ordering::Relaxed);
        let outcome = async {
        // Plain statements, not sqlx's transaction API: see `Kept`.
        let tx = lease.conn();
        sqlx::raw_sql("BEGIN").execute(&mut *tx).await.map_err(before)?;
        stats
            .acquire_us
            .fetch_add(asked.elapsed().as_micros() as u64, Ordering::Relaxed);
        let work = async {
            let rows: Vec<&NewTask> = unique.iter().map(|(_, n)| *n).collect();
            let created = BatchWrites::insert_tasks(&mut *tx, &rows).await?;
            for (i, n) in &unique {
                let id = n.task.id.to_string();
                let answer = if created.contains(&id) {
                    InsertOutcome::Created(n.task.clone())
                } else if let Some(key) = n.task.idempotency_key.clone() {
                    let row = sqlx::query(db::SQL_EXISTING)
                        .bind(n.task.tenant.clone())
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                    let task = db::task_from_row(&row).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                    if task.id == n.task.id {
                        // Our own row, from a run of this batch whose commit
                        // landed although its answer was lost.
                        InsertOutcome::Created(n.task.clone())
                    } else {
                        let stored_hash: Option<String> = row.try_get(21)?;
                        InsertOutcome::Existing { task, same_request: stored_hash == n.request_hash }
                    }
                } else {
                    // No key, so only the id can have collided: our own row
                    // from an earlier run of this batch.
                    let found = sqlx::query(db::SQL_EXISTS).bind(id).fetch_optional(&mut *tx).await?;
                    if found.is_none() {
                        return Err(sqlx::Error::Protocol("a new task was neither stored nor found".into()));
                    }
                    InsertOutcome::Created(n.task.clone())
                };
                answers[*i] = Some(Answer::Insert(Box::new(answer)));
            }
            for (dup, first) in &dup_of {
                let dup_hash = match &ops[*dup] { Op::Insert(n, _) => n.request_hash.clone(), _ => None };
                let first_hash = match &ops[*first] { Op::Insert(n, _) => n.request_hash.clone(), _ => None };
                let task = match answers[*first].as_ref() {
                    Some(Answer::Insert(first)) => match first.as_ref() {
                        InsertOutcome::Created(t) | InsertOutcome::Existing { task: t, .. } => t.clone(),
                    },
                    _ => return Err(sqlx::Error::Protocol("duplicate insert without a first".into())),
                };
                answers[*dup] = Some(Answer::Insert(Box::new(InsertOutcome::Existing {
                    task,
                    same_request: dup_hash == first_hash,
                })));
            }

            // The hot path — starts, and completions of running tasks — goes
            // as one multi-row UPDATE per chunk (`batch`: VALUES on SQLite,
            // UNNEST of arrays on PostgreSQL) instead of a statement per
            // task: per-statement overhead (a round trip to SQLite's worker
            // thread or over the network to PostgreSQL) was the writer's
            // main cost. A second op on the same id in one batch
            // is left to the one-by-one path below, so the join never sees
            // duplicates.
            let mut seen: HashSet<&str> = HashSet::new();
            let starts: Vec<usize> = ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, Op::Start { id, .. } if seen.insert(id.as_str())))
                .map(|(i, _)| i)
                .collect();
            let rows: Vec<StartRow<'_>> = starts
                .iter()
                .filter_map(|i| match &ops[*i] {
                    Op::Start { id, instance, at, owner, .. } => {
                        Some((id.as_str(), instance.as_str(), *at, owner.as_str()))
                    }
                    _ => None,
                })
                .collect();
            let started = BatchWrites::start_tasks(&mut *tx, &rows).await?;
            for i in &starts {
                if let Op::Start { id, .. } = &ops[*i] {
                    answers[*i] = Some(Answer::Start(started.get(id).copied()));
                }
            }
            let mut seen: HashSet<String> = HashSet::new();
            let finishes: Vec<usize> = ops
                .iter()
                .enumerate()
                .filter(|(_, op)| {
                    matches!(op, Op::Finish(f, _) if f.expect == Expect::Running && seen.insert(f.id.to_string()))
                })
                .map(|(i, _)| i)
                .collect();
            let rows: Vec<&Finish> = finishes
                .iter()
                .filter_map(|i| match &ops[*i] {
                    Op::Finish(f, _) => Some(f.as_ref()),
                    _ => None,
                })
                .collect();
            let done = BatchWrites::finish_running(&mut *tx, &rows).await?;
            for i in &finishes {
                if let Op::Finish(f, _) = &ops[*i] {
                    answers[*i] = Some(Answer::Bool(done.contains(&f.id.to_string())));
                }
            }

            for (i, op) in ops.iter().enumerate() {
                if answers[i].is_some() {
                    continue;
                }
                let answer = match op {
                    // Groups never reach a batch whole (`push_op`).
                    Op::Insert(..) | Op::Group(_) => continue,
                    Op::Start { id, instance, at, owner, .. } => {
                        let row = sqlx::query(db::SQL_START)
                            .bind(id.clone())
                            .bind(instance.clone())
                            .bind(*at)
                            .bind(owner.clone())
                            .fetch_optional(&mut *tx)
                            .await?;
                        Answer::Start(match row {
                            Some(r) => Some(r.try_get::<i64, _>(0)?),
                            None => None,
                        })
                    }
                    Op::Finish(f, _) => {
                        let sql = match f.expect {
                            Expect::Queued => db::SQL_FINISH_QUEUED,
                            Expect::Running => db::SQL_FINISH_RUNNING,
                            Expect::Unfinished => db::SQL_FINISH_UNFINISHED,
                        };
                        let done = sqlx::query(sql)
                            .bind(f.id.to_string())
                            .bind(f.status.as_str())
                            .bind(f.result.as_ref().map(to_json))
                            .bind(f.error.as_ref().map(to_json))
                            .bind(f.finished_at)
                            .bind(to_json(&f.timings))
                            .bind(f.instance.clone())
                            .bind(f.owner.clone())
                            .execute(&mut *tx)
                            .await?;
                        Answer::Bool(done.rows_affected() > 0)
                    }
                    Op::Requeue { id, owner, .. } => {
                        let done = sqlx::query(db::SQL_REQUEUE)
                            .bind(id.clone())
                            .bind(owner.clone())
                            .execute(&mut *tx)
                            .await?;
                        Answer::Bool(done.rows_affected() > 0)
                    }
                    Op::Retry(r, _) => {
                        let done = sqlx::query(db::SQL_RETRY)
                            .bind(r.id.to_string())
                            .bind(r.owner.clone())
                            .bind(r.run_after)
                            .bind(to_json(&r.history))
                            .bind(r.error.as_ref().map(to_json))
                            .bind(to_json(&r.timings))
                            .execute(&mut *tx)
                            .await?;
                        Answer::Bool(done.rows_affected() > 0)
                    }
                    Op::ScheduleRan { name, tick, task, .. } => {
                        sqlx::query(db::SQL_SCHEDULE_RAN)
                            .bind(name.clone())
                            .bind(*tick)
                            .bind(task.clone())
                            .bind(swarm_core::clock::now_ms())
                            .execute(&mut *tx)
                            .await?;
                        Answer::Unit
                    }
                    Op::Rerun { id, owner, deadline_at, history, .. } => {
                        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                            format!("{}{}", db::SQL_RERUN, db::TASK_COLS)
                        });
                        let row = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
                            .bind(id.clone())
                            .bind(owner.clone())
                            .bind(*deadline_at)
                            .bind(history.clone())
                            .fetch_optional(&mut *tx)
                            .await?;
                        Answer::Task(match row {
                            Some(r) => Some(Box::new(
                                db::task_from_row(&r).map_err(|e| sqlx::Error::Protocol(e.to_string()))?,
                            )),
                            None => None,
                        })
                    }
                    Op::CancelRequest { id, .. } => {
                        let done = sqlx::query(db::SQL_CANCEL_REQUEST)
                            .bind(id.clone())
                            .execute(&mut *tx)
                            .await?;
                        Answer::Bool(done.rows_affected() > 0)
                    }
                    Op::Heartbeat { node, at, load, .. } => {
                        sqlx::query(db::SQL_HEARTBEAT)
                            .bind(node.clone())
                            .bind(*at)
                            .bind(load.clone())
                            .execute(&mut *tx)
                            .await?;
                        Answer::Unit
                    }
                    Op::Outbox(o, _) => {
                        sqlx::query(db::SQL_OUTBOX_INSERT)
                            .bind(o.id.clone())
                            .bind(o.task_id.clone())
                            .bind(o.tenant.clone())
                            .bind(o.sender.clone())
                            .bind(to_json(&o.recipients))
                            .bind(to_json(&o.cc))
                            .bind(o.subject.clone())
                            .bind(o.body.clone())
                            .bind(o.created_at)
                            .execute(&mut *tx)
                            .await?;
                        Answer::Unit
                    }
                    Op::Prune { before, limit, .. } => {
                        let tasks = sqlx::query(db::SQL_PRUNE_TASKS)
                            .bind(*before)
                            .bind(*limit)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        let outbox = sqlx::query(db::SQL_PRUNE_OUTBOX)
                            .bind(*before)
                            .bind(*limit)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        Answer::Pruned(Pruned { tasks, outbox })
                    }
                };
                answers[i] = Some(answer);
            }
            Ok::<(), sqlx::Error>(())
        };
        work.await.map_err(before)?;
        sqlx::raw_sql("COMMIT")
            .execute(&mut *tx)
            .await
            .map_err(|error| Failed { error, at_commit: true })?;
        Ok::<(), Failed>(())
        }
        .await;
        // A connection whose batch failed is closed (`Lease`): it may still
        // hold the transaction open, or be broken; the next run takes a
        // fresh one.
        if outcome.is_ok() {
            lease.committed();
        }
        outcome?;
    });

    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| before(sqlx::Error::Protocol("write left unanswered".into()))))
        .collect()
}
