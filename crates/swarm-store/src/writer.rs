//! Group commit: every write goes through one writer task that folds whatever
//! is waiting into a single transaction.
//!
//! Callers send an [`Op`] with a reply channel and wait. The writer takes the
//! first op, then everything else already queued (up to `batch_max`), runs
//! them in one transaction and answers each caller only after the commit.
//! Under light load a batch is one op and costs one commit, as before; under
//! heavy load hundreds of acknowledgements share one commit, so durability
//! stops costing a transaction per request (the technique databases use for
//! their own logs: "group commit", Gawlick & Kinkade 1985; PostgreSQL's
//! `commit_delay`). On SQLite a single writer is also what the database wants:
//! it admits one writer at a time.
//!
//! If a batch's transaction fails, each op is retried alone so one bad write
//! cannot fail its neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::StoreError;
use crate::db::{self, Db, to_json, with_db};
use crate::model::{Expect, Finish, InsertOutcome, NewTask, OutboxRow};

/// Rows per multi-row INSERT: 17 binds each stays far below SQLite's and
/// PostgreSQL's bind-parameter limits.
const INSERT_CHUNK: usize = 500;

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
    CancelRequest {
        id: String,
        reply: Reply<bool>,
    },
    Heartbeat {
        node: String,
        at: i64,
        reply: Reply<()>,
    },
    Outbox(Box<OutboxRow>, Reply<()>),
}

/// An op's answer before it is sent.
enum Answer {
    Insert(Box<InsertOutcome>),
    Start(Option<i64>),
    Bool(bool),
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
            Op::Finish(_, r)
            | Op::Requeue { reply: r, .. }
            | Op::CancelRequest { reply: r, .. } => {
                let _ = r.send(answer.map(|a| matches!(a, Answer::Bool(true))));
            }
            Op::Heartbeat { reply, .. } | Op::Outbox(_, reply) => {
                let _ = reply.send(answer.map(|_| ()));
            }
        }
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
}

/// Runs until every sender is gone, then returns.
pub(crate) async fn run(
    db: Db,
    mut rx: mpsc::Receiver<Op>,
    batch_max: usize,
    stats: Arc<WriterStats>,
) {
    let mut batch: Vec<Op> = Vec::with_capacity(batch_max);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, batch_max).await == 0 {
            debug!("group-commit writer: all senders gone, stopping");
            return;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match apply(&db, &batch, &stats).await {
            Ok(answers) => {
                for (op, a) in batch.drain(..).zip(answers) {
                    op.send(Ok(a));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(op) = batch.pop() {
                    op.send(Err(StoreError::from(e)));
                }
            }
            Err(e) => {
                warn!(error = %e, ops = batch.len(), "batched write failed; retrying ops one by one");
                for op in batch.drain(..) {
                    let one = std::slice::from_ref(&op);
                    let answer = apply(&db, one, &stats)
                        .await
                        .map_err(StoreError::from)
                        .and_then(|mut v| v.pop().ok_or(StoreError::Closed));
                    op.send(answer);
                }
            }
        }
    }
}

/// Applies `ops` in one transaction; answers are in the ops' order.
async fn apply(db: &Db, ops: &[Op], stats: &WriterStats) -> Result<Vec<Answer>, sqlx::Error> {
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
        let mut tx = pool.begin().await?;
        stats.acquires.fetch_add(1, Ordering::Relaxed);
        stats
            .acquire_us
            .fetch_add(asked.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut created: HashSet<String> = HashSet::new();
        for chunk in unique.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::new(db::SQL_INSERT_HEAD);
            qb.push_values(chunk, |mut b, (_, n)| {
                let t = &n.task;
                b.push_bind(t.id.to_string())
                    .push_bind(t.tenant.clone())
                    .push_bind(t.task_type.clone())
                    .push_bind(t.status.as_str())
                    .push_bind(t.priority.index() as i64)
                    .push_bind(t.department.clone())
                    .push_bind(t.agent.clone())
                    .push_bind(t.title.clone())
                    .push_bind(t.description.clone())
                    .push_bind(to_json(&t.args))
                    .push_bind(t.idempotency_key.clone())
                    .push_bind(n.request_hash.clone())
                    .push_bind(t.timeout_ms)
                    .push_bind(t.deadline_at)
                    .push_bind(t.created_at)
                    .push_bind(n.owner.clone())
                    .push_bind(to_json(&t.timings));
            });
            qb.push(db::SQL_INSERT_TAIL);
            for row in qb.build().fetch_all(&mut *tx).await? {
                created.insert(row.try_get::<String, _>(0)?);
            }
        }
        for (i, n) in &unique {
            let answer = if created.contains(&n.task.id.to_string()) {
                InsertOutcome::Created(n.task.clone())
            } else {
                let key = n.task.idempotency_key.clone().unwrap_or_default();
                let row = sqlx::query(db::SQL_EXISTING)
                    .bind(n.task.tenant.clone())
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
                let task = db::task_from_row(&row).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                let stored_hash: Option<String> = row.try_get(21)?;
                InsertOutcome::Existing { task, same_request: stored_hash == n.request_hash }
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

        // The hot path — starts, and completions of running tasks — goes as
        // one multi-row UPDATE … FROM (VALUES …) per chunk instead of a
        // statement per task: per-statement overhead (a round trip to
        // SQLite's worker thread or over the network to PostgreSQL) was the
        // writer's main cost. A second op on the same id in one batch is left
        // to the one-by-one path below, so the join never sees duplicates.
        let mut seen: HashSet<&str> = HashSet::new();
        let starts: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::Start { id, .. } if seen.insert(id.as_str())))
            .map(|(i, _)| i)
            .collect();
        for chunk in starts.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::new(
                "UPDATE tasks SET status = 'running', instance = v.column2, started_at = v.column3, \
                 attempts = tasks.attempts + 1 FROM (",
            );
            qb.push_values(chunk, |mut b, i| {
                if let Op::Start { id, instance, at, owner, .. } = &ops[*i] {
                    b.push_bind(id.clone()).push_bind(instance.clone()).push_bind(*at).push_bind(owner.clone());
                }
            });
            qb.push(
                ") AS v WHERE tasks.id = v.column1 AND tasks.status = 'queued' AND tasks.owner = v.column4 \
                 RETURNING tasks.id, tasks.attempts",
            );
            let mut started: HashMap<String, i64> = HashMap::new();
            for row in qb.build().fetch_all(&mut *tx).await? {
                started.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
            }
            for i in chunk {
                if let Op::Start { id, .. } = &ops[*i] {
                    answers[*i] = Some(Answer::Start(started.get(id).copied()));
                }
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
        for chunk in finishes.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::new(
                "UPDATE tasks SET status = v.column2, result = v.column3, error = v.column4, \
                 finished_at = v.column5, timings = v.column6, \
                 instance = COALESCE(v.column7, tasks.instance), \
                 owner = NULL, cancel_requested = FALSE FROM (",
            );
            qb.push_values(chunk, |mut b, i| {
                if let Op::Finish(f, _) = &ops[*i] {
                    b.push_bind(f.id.to_string())
                        .push_bind(f.status.as_str())
                        .push_bind(f.result.as_ref().map(to_json))
                        .push_bind(f.error.as_ref().map(to_json))
                        .push_bind(f.finished_at)
                        .push_bind(to_json(&f.timings))
                        .push_bind(f.instance.clone());
                }
            });
            qb.push(") AS v WHERE tasks.id = v.column1 AND tasks.status = 'running' RETURNING tasks.id");
            let mut done: HashSet<String> = HashSet::new();
            for row in qb.build().fetch_all(&mut *tx).await? {
                done.insert(row.try_get::<String, _>(0)?);
            }
            for i in chunk {
                if let Op::Finish(f, _) = &ops[*i] {
                    answers[*i] = Some(Answer::Bool(done.contains(&f.id.to_string())));
                }
            }
        }

        for (i, op) in ops.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            let answer = match op {
                Op::Insert(..) => continue,
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
                Op::CancelRequest { id, .. } => {
                    let done = sqlx::query(db::SQL_CANCEL_REQUEST)
                        .bind(id.clone())
                        .execute(&mut *tx)
                        .await?;
                    Answer::Bool(done.rows_affected() > 0)
                }
                Op::Heartbeat { node, at, .. } => {
                    sqlx::query(db::SQL_HEARTBEAT)
                        .bind(node.clone())
                        .bind(*at)
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
            };
            answers[i] = Some(answer);
        }
        tx.commit().await?;
        Ok::<(), sqlx::Error>(())
    })?;

    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| sqlx::Error::Protocol("write left unanswered".into())))
        .collect()
}
