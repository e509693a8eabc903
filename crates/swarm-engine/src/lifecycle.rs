//! Every change of a task's state, in one place.
//!
//! ```text
//!            accept                 start                  finish
//!   (new) ──────────► queued ─────────────────► running ─────────► succeeded | failed
//!                      │  ▲                        │                timed_out | cancelled
//!                      │  └──── hand back, adopt ──┘
//!                      └── expire, cancel, department gone ──► timed_out | cancelled | failed
//! ```
//!
//! Each transition here does its store write, its live-state publish (the
//! hub) and its counters together, in that order: what a waiter sees is
//! already durable. The store's guards (state *and* owner) make every write
//! conditional, so two transitions racing for one task cannot both win, and
//! a node whose tasks were taken over can never overwrite what the new owner
//! stores.
//!
//! # Never giving up on the database
//! A transition of accepted work that fails because the database is
//! unavailable is retried, waiting for the store's [`Health`] to come back
//! and then backing off with jitter, until it is stored or the engine stops
//! for good. A running task's outcome is kept in memory meanwhile. What
//! could not be stored when the engine stops stays unfinished in the store
//! and runs again (delivery is at-least-once). Only a submission itself is
//! not retried here: its caller gets `503 database_unavailable` and retries.
//!
//! # Ownership in memory
//! A queued task belongs to whoever holds its [`Queued`] value, so nothing
//! else on this node acts on it. A task is registered with the hub before
//! its row is written and at most once, so the sweep ([`Lifecycle::sweep`]),
//! which takes back unfinished rows this node owns but does not hold (a
//! write whose outcome was unknown), never duplicates a task in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use swarm_core::clock::now_ms;
use swarm_core::{Task, TaskError, TaskId, TaskStatus, Timings};
use swarm_store::{Expect, Finish, InsertOutcome, NewTask, Store, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::EngineError;
use crate::hub::Hub;
use crate::ledger::{TenantLedger, TenantSlot};
use crate::pool::{PendingGuard, Pool, Pools};
use crate::shutdown::Shutdown;
use crate::stats::Metrics;
use crate::status::TransitionCounts;
use crate::work::Queued;

/// Milliseconds with microsecond precision, as timings are stored.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// The longest wait between two tries of a write while the database is
/// back but still failing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How a transition ends a task: its terminal status and why.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) status: TaskStatus,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<TaskError>,
}

impl Verdict {
    pub(crate) fn succeeded(result: Value) -> Self {
        Self {
            status: TaskStatus::Succeeded,
            result: Some(result),
            error: None,
        }
    }

    pub(crate) fn failed(code: &str, message: impl Into<String>, stage: &str) -> Self {
        Self::ended(TaskStatus::Failed, code, message, stage)
    }

    pub(crate) fn ended(
        status: TaskStatus,
        code: &str,
        message: impl Into<String>,
        stage: &str,
    ) -> Self {
        Self {
            status,
            result: None,
            error: Some(TaskError::new(code, message, Some(stage))),
        }
    }

    pub(crate) fn cancelled(stage: &str) -> Self {
        let when = if stage == "queue" {
            "queued"
        } else {
            "running"
        };
        Self::ended(
            TaskStatus::Cancelled,
            "cancelled",
            format!("cancelled by client while {when}"),
            stage,
        )
    }
}

/// What a start did.
#[derive(Debug)]
pub(crate) enum Begun {
    /// Stored as running; the task as it now is, and its cancel token.
    Running(Box<Task>, CancellationToken),
    /// No longer this node's to start (ended, or taken over); the hub has
    /// been told.
    Gone,
    /// The database is unavailable: put it back and try once it answers.
    Retry,
    /// The store refused the start for a reason a retry will not fix.
    Broken(String),
}

/// What a client's cancel found on this node.
#[derive(Debug)]
pub(crate) enum Cancelled {
    /// It was queued here and is now stored as cancelled.
    Ended(Box<Task>),
    /// It is starting or running here: its run was told and ends it.
    Signalled,
    /// This node does not hold it.
    NotHere,
}

/// Why an ending was not stored.
#[derive(Debug)]
enum NotStored {
    /// Another transition ended it first, or another node took it; the hub
    /// shows what the store has.
    Superseded,
    /// The database is unavailable and the caller asked for one try.
    Unavailable(StoreError),
    /// The engine stopped before the database came back, or the store
    /// refused even a failure; the row stays unfinished for a later run.
    Abandoned,
}

/// How long an ending keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// Until stored or the engine stops: accepted work is never dropped.
    UntilStored,
    /// One try: a client's request, answered 503 if the database is down.
    Once,
}

/// Lifetime counts of the transitions' own troubles, for `/api/status`.
#[derive(Debug, Default)]
struct Counts {
    retried: AtomicU64,
    adopted: AtomicU64,
    swept: AtomicU64,
    replaced: AtomicU64,
    abandoned: AtomicU64,
}

/// What a task being stored holds until its insert is answered.
struct Held<'a> {
    pool: &'a Pool,
    id: TaskId,
    pending: PendingGuard,
    slot: TenantSlot,
}

/// A batch item admitted and ready to store ([`Lifecycle::accept_many`]).
pub(crate) struct Admitted {
    /// Its department.
    pub(crate) pool: Arc<Pool>,
    /// The row to insert.
    pub(crate) new: NewTask,
    /// Counts it as queued while its row is written.
    pub(crate) pending: PendingGuard,
    /// Its tenant's outstanding-task slot.
    pub(crate) slot: TenantSlot,
}

/// What a submission's store write produced.
#[derive(Debug)]
pub(crate) enum Accepted {
    /// Stored and queued.
    New(Task),
    /// The tenant's idempotency key named an earlier task.
    Existing { task: Task, same_request: bool },
}

/// The owner of every transition.
pub(crate) struct Lifecycle {
    /// The record of truth.
    store: Store,
    /// Live state for waiters, and the cancel tokens.
    hub: Arc<Hub>,
    /// The departments, to queue what this node takes over.
    pools: Arc<Pools>,
    /// Outstanding tasks per tenant: adopted tasks take a slot too.
    tenants: Arc<TenantLedger>,
    /// This node, the owner named in every guarded write.
    node_id: String,
    /// Stage histograms and tenant outcomes.
    metrics: Arc<Metrics>,
    /// Stored tasks slower than this are logged (0: never).
    slow_task_ms: u64,
    /// When retrying stops.
    shutdown: Shutdown,
    /// Set when a write's outcome was unknown: the next sweep runs at once.
    dirty: AtomicBool,
    /// Tasks whose hold here a claim race may have broken, with the ticks
    /// each has been seen in passing (see [`Lifecycle::recheck`]).
    suspects: std::sync::Mutex<std::collections::HashMap<TaskId, u8>>,
    counts: Counts,
}

impl Lifecycle {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Store,
        hub: Arc<Hub>,
        pools: Arc<Pools>,
        tenants: Arc<TenantLedger>,
        node_id: String,
        metrics: Arc<Metrics>,
        slow_task_ms: u64,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            store,
            hub,
            pools,
            tenants,
            node_id,
            metrics,
            slow_task_ms,
            shutdown,
            dirty: AtomicBool::new(false),
            suspects: std::sync::Mutex::default(),
            counts: Counts::default(),
        }
    }

    pub(crate) fn counts(&self) -> TransitionCounts {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransitionCounts {
            retried: get(&c.retried),
            adopted: get(&c.adopted),
            swept: get(&c.swept),
            replaced: get(&c.replaced),
            abandoned: get(&c.abandoned),
        }
    }

    // === accept ===

    /// Stores a new task, then queues it. The task is registered first, so
    /// the sweep never mistakes it for an orphan; a write whose outcome is
    /// unknown leaves the row (if any) for the sweep.
    pub(crate) async fn accept(
        &self,
        pool: &Pool,
        new: NewTask,
        pending: PendingGuard,
        slot: TenantSlot,
        received_at: Instant,
        request_id: Option<String>,
    ) -> Result<Accepted, EngineError> {
        let mut new = new;
        let id = new.task.id;
        let asked = Instant::now();
        self.register(&mut new, asked, received_at)?;
        let outcome = self.store.insert(new).await;
        let held = Held {
            pool,
            id,
            pending,
            slot,
        };
        self.settle(held, outcome, asked, received_at, request_id)
    }

    /// Stores new tasks in one commit (a batch submit), then queues each:
    /// [`Lifecycle::accept`] for many, with one answer per item in order.
    /// Fails whole only when nothing could be sent to the writer.
    pub(crate) async fn accept_many(
        &self,
        items: Vec<Admitted>,
        received_at: Instant,
        request_id: Option<String>,
    ) -> Vec<Result<Accepted, EngineError>> {
        let asked = Instant::now();
        let mut news = Vec::with_capacity(items.len());
        let mut held = Vec::with_capacity(items.len());
        let mut answers: Vec<Option<Result<Accepted, EngineError>>> =
            (0..items.len()).map(|_| None).collect();
        for (i, mut item) in items.into_iter().enumerate() {
            match self.register(&mut item.new, asked, received_at) {
                Ok(()) => {
                    let id = item.new.task.id;
                    news.push(item.new);
                    held.push((i, id, item.pool, item.pending, item.slot));
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let outcomes = match self.store.insert_many(news).await {
            Ok(v) => v,
            Err(e) => (0..held.len()).map(|_| Err(e.clone())).collect(),
        };
        for ((i, id, pool, pending, slot), outcome) in held.into_iter().zip(outcomes) {
            let held = Held {
                pool: &pool,
                id,
                pending,
                slot,
            };
            answers[i] = Some(self.settle(held, outcome, asked, received_at, request_id.clone()));
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(EngineError::Internal("a batch item went unanswered".into()))
                })
            })
            .collect()
    }

    /// Registers a task about to be stored, so the sweep never mistakes it
    /// for an orphan.
    fn register(
        &self,
        new: &mut NewTask,
        asked: Instant,
        received_at: Instant,
    ) -> Result<(), EngineError> {
        // Each stage ends where the next begins, so they add up to the total.
        new.task.timings.admission_ms = Some(ms(asked - received_at));
        if self.hub.register(new.task.clone()).is_none() {
            return Err(EngineError::Internal(format!(
                "task id {} is already live",
                new.task.id
            )));
        }
        Ok(())
    }

    /// Queues a task whose insert answered `outcome`, or forgets it.
    fn settle(
        &self,
        held: Held<'_>,
        outcome: Result<InsertOutcome, StoreError>,
        asked: Instant,
        received_at: Instant,
        request_id: Option<String>,
    ) -> Result<Accepted, EngineError> {
        let Held {
            pool,
            id,
            pending,
            slot,
        } = held;
        match outcome {
            Ok(InsertOutcome::Created(mut task)) => {
                let stored_at = Instant::now();
                task.timings.persist_ms = Some(ms(stored_at - asked));
                self.hub.publish(task.clone());
                pool.count_accepted();
                let queued = Queued {
                    task: task.clone(),
                    enqueued_at: stored_at,
                    received_at: Some(received_at),
                    stored_at: Some(stored_at),
                    slot,
                    request_id,
                    started: None,
                    start_at: None,
                };
                pool.push_when_due(queued);
                drop(pending);
                Ok(Accepted::New(task))
            }
            Ok(InsertOutcome::Existing { task, same_request }) => {
                self.hub.forget(id);
                Ok(Accepted::Existing { task, same_request })
            }
            Err(e) => {
                self.hub.forget(id);
                if matches!(e, StoreError::InDoubt(_)) {
                    // The row may exist: the sweep takes it back and runs it.
                    self.dirty.store(true, Ordering::Relaxed);
                }
                if e.is_unavailable() {
                    pool.count_refusal(crate::pool::Refusal::DatabaseUnavailable);
                }
                Err(e.into())
            }
        }
    }

    // === start ===

    /// Marks a queued task running on `instance`. Keeps the start's token in
    /// `queued`, so a retry after an unknown outcome is recognised.
    pub(crate) async fn start(&self, queued: &mut Queued, instance: &str) -> Begun {
        let id = queued.task.id;
        let at = *queued.start_at.get_or_insert_with(now_ms);
        match self.store.start(id, instance, at, &self.node_id).await {
            Ok(Some(attempts)) => {
                queued.started = Some(Instant::now());
                let mut running = queued.task.clone();
                running.status = TaskStatus::Running;
                running.instance = Some(instance.to_string());
                running.started_at = Some(at);
                running.attempts = attempts as i32;
                if running.nodes.len() < attempts as usize {
                    running.nodes.push(self.node_id.clone());
                }
                running.timings.queue_ms = Some(waited(queued));
                self.hub.publish(running.clone());
                let cancel = self.hub.cancel_token(id).unwrap_or_default();
                Begun::Running(Box::new(running), cancel)
            }
            Ok(None) => {
                debug!(task = %id, "task left the queue before it could start");
                self.resolve(id).await;
                Begun::Gone
            }
            Err(e) if e.is_unavailable() => {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                debug!(task = %id, error = %e, "could not mark the task running; it waits for the database");
                Begun::Retry
            }
            Err(e) => Begun::Broken(e.to_string()),
        }
    }

    // === finish, expire, cancel, fail ===

    /// Stores a run's outcome (retrying until stored or stopped), then tells
    /// waiters. `running` is the task as its start published it; its run
    /// ended at `ended`.
    pub(crate) async fn finish(
        &self,
        pool: &Pool,
        queued: &Queued,
        running: Task,
        verdict: Verdict,
        ended: Instant,
    ) {
        let mut timings = running.timings.clone();
        let began = queued.started.unwrap_or(ended);
        timings.run_ms = Some(ms(ended.saturating_duration_since(began)));
        timings.total_ms = Some(total_at(queued, ended));
        let _ = self
            .end(
                Some(pool),
                running,
                Expect::Running,
                verdict,
                timings,
                Patience::UntilStored,
            )
            .await;
    }

    /// Ends a task this node holds out of its queue (its deadline passed,
    /// a cancel reached it before its start, or it cannot start), retrying
    /// until stored.
    pub(crate) async fn end_held(&self, pool: Option<&Pool>, queued: &Queued, verdict: Verdict) {
        let timings = held_timings(queued);
        let _ = self
            .end(
                pool,
                queued.task.clone(),
                held_expect(queued),
                verdict,
                timings,
                Patience::UntilStored,
            )
            .await;
    }

    /// The verdict for a task whose deadline passed in the queue.
    pub(crate) fn expired(task: &Task) -> Verdict {
        Verdict::ended(
            TaskStatus::TimedOut,
            "deadline_exceeded",
            format!("deadline of {} ms passed while queued", task.timeout_ms),
            "queue",
        )
    }

    /// A client's cancel of a task this node may hold: a queued one is
    /// ended here (once; if the database is down it goes back to the queue
    /// and the client gets 503), a starting or running one is signalled.
    pub(crate) async fn cancel(&self, task: &Task) -> Result<Cancelled, EngineError> {
        let Some(pool) = self.pools.get(&task.department) else {
            return Ok(Cancelled::NotHere);
        };
        if let Some(queued) = pool.remove_queued(task.id) {
            let timings = held_timings(&queued);
            let ended = self
                .end(
                    Some(pool),
                    queued.task.clone(),
                    held_expect(&queued),
                    Verdict::cancelled("queue"),
                    timings,
                    Patience::Once,
                )
                .await;
            return match ended {
                Ok(t) => Ok(Cancelled::Ended(Box::new(t))),
                Err(NotStored::Unavailable(e)) => {
                    pool.push_front(queued);
                    Err(e.into())
                }
                Err(NotStored::Superseded | NotStored::Abandoned) => Ok(Cancelled::NotHere),
            };
        }
        match self.hub.cancel_token(task.id) {
            Some(token) => {
                token.cancel();
                Ok(Cancelled::Signalled)
            }
            None => Ok(Cancelled::NotHere),
        }
    }

    /// Stores a terminal state guarded by `expect` and this node's
    /// ownership, then publishes it and counts it.
    async fn end(
        &self,
        pool: Option<&Pool>,
        task: Task,
        expect: Expect,
        mut verdict: Verdict,
        timings: Timings,
        patience: Patience,
    ) -> Result<Task, NotStored> {
        let id = task.id;
        // One `finished_at` for every try: a try whose commit landed
        // although its answer was lost is then recognised as ours.
        let finished_at = now_ms();
        let asked = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut replaced = false;
        loop {
            let finish = Finish {
                id,
                expect,
                status: verdict.status,
                result: verdict.result.clone(),
                error: verdict.error.clone(),
                finished_at,
                timings: timings.clone(),
                instance: task.instance.clone(),
                owner: self.node_id.clone(),
            };
            match self.store.finish(finish).await {
                Ok(true) => {}
                Ok(false) => match self.resolve(id).await {
                    // Our own earlier try, whose commit landed although its
                    // answer was lost.
                    Some(t) if t.status == verdict.status && t.finished_at == Some(finished_at) => {
                    }
                    _ => {
                        debug!(task = %id, "outcome not stored: the task had already ended or moved");
                        return Err(NotStored::Superseded);
                    }
                },
                Err(e) if e.is_unavailable() => {
                    if patience == Patience::Once {
                        return Err(NotStored::Unavailable(e));
                    }
                    self.counts.retried.fetch_add(1, Ordering::Relaxed);
                    debug!(task = %id, error = %e, "outcome not stored yet; waiting for the database");
                    if !self.wait_to_retry(&mut backoff).await {
                        self.counts.abandoned.fetch_add(1, Ordering::Relaxed);
                        return Err(NotStored::Abandoned);
                    }
                    continue;
                }
                Err(e) if !replaced => {
                    // Not the database's weather: this outcome cannot be
                    // stored (too large, say). A failure that says so can.
                    error!(task = %id, error = %e, "could not store the outcome; storing a failure in its place");
                    self.counts.replaced.fetch_add(1, Ordering::Relaxed);
                    replaced = true;
                    verdict = Verdict::failed(
                        "outcome_not_stored",
                        format!(
                            "the task ended as {} but its outcome could not be stored: {e}",
                            verdict.status
                        ),
                        "complete",
                    );
                    continue;
                }
                Err(e) => {
                    error!(task = %id, error = %e, "could not store even a failure; the task stays unfinished and runs again");
                    self.counts.abandoned.fetch_add(1, Ordering::Relaxed);
                    self.hub.forget(id);
                    self.dirty.store(true, Ordering::Relaxed);
                    return Err(NotStored::Abandoned);
                }
            }
            let mut done = task;
            done.status = verdict.status;
            done.result = verdict.result;
            done.error = verdict.error;
            done.finished_at = Some(finished_at);
            done.timings = timings;
            // Known only now, so only the live answers carry it.
            done.timings.complete_ms = Some(ms(asked.elapsed()));
            if let Some(pool) = pool {
                // A task timed out before it ran expired in the queue.
                let expired = done.status == TaskStatus::TimedOut && expect != Expect::Running;
                pool.count_stored_outcome(done.status, expired);
                pool.metrics()
                    .finished(&self.metrics, &done.tenant, done.status, &done.timings);
                self.log_if_slow(pool.name(), &done);
            }
            self.hub.publish(done.clone());
            return Ok(done);
        }
    }

    /// Waits until the database takes writes, then a jittered backoff (so a
    /// crowd of waiting outcomes does not land in one burst). False when the
    /// engine stopped first.
    async fn wait_to_retry(&self, backoff: &mut Duration) -> bool {
        let wait = async {
            self.store.health().wait_up().await;
            let jitter = fastrand::f64() * backoff.as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(jitter)).await;
        };
        let go_on = tokio::select! {
            _ = wait => true,
            _ = self.shutdown.stopped().cancelled() => false,
        };
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        go_on
    }

    /// After a guarded write was refused: publishes what the store has, or
    /// forgets a task another node now owns. Returns the stored task.
    /// Holds the tenant slot of a task that left this node (see
    /// [`TenantLedger::park`]).
    pub(crate) fn park(&self, slot: TenantSlot) {
        self.tenants.park(slot);
    }

    async fn resolve(&self, id: TaskId) -> Option<Task> {
        match self.store.get_owned(id).await {
            Ok(Some((t, owner))) => {
                if t.status.is_terminal() || owner.as_deref() == Some(self.node_id.as_str()) {
                    self.hub.publish(t.clone());
                } else {
                    // Unfinished but not ours any more: taken over.
                    self.hub.forget(id);
                }
                Some(t)
            }
            Ok(None) => {
                self.hub.forget(id);
                None
            }
            Err(e) => {
                // The hub keeps its view; the sweep reconciles later.
                debug!(task = %id, error = %e, "could not re-read a task after a refused write");
                self.dirty.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    fn log_if_slow(&self, pool: &str, task: &Task) {
        let slow = self.slow_task_ms;
        if slow > 0
            && let Some(total) = task.timings.total_ms
            && total > slow as f64
        {
            warn!(
                task = %task.id,
                pool,
                status = task.status.as_str(),
                total_ms = total,
                timings = %serde_json::to_string(&task.timings).unwrap_or_default(),
                "slow task: over monitor.slow_task_ms ({slow} ms)"
            );
        }
    }

    // === retry ===

    /// A running task's attempt failed retryably: stored back as queued, not
    /// to start before `run_after` (epoch ms), with the attempt added to
    /// its history (retrying the write until stored or stopped, like an
    /// outcome). Returns the task to hold until then, or `None` when it is
    /// no longer this node's (the hub has been told) or the engine stopped
    /// first (the row stays running and runs again after a restart).
    pub(crate) async fn retry(
        &self,
        mut queued: Queued,
        running: Task,
        error: Option<TaskError>,
        run_time: Duration,
        run_after: i64,
    ) -> Option<Queued> {
        let id = running.id;
        let ended_at = now_ms();
        let mut history = running.history.clone();
        history.push(swarm_core::Attempt {
            attempt: running.attempts,
            node: Some(self.node_id.clone()),
            instance: running.instance.clone(),
            status: TaskStatus::Failed,
            started_at: running.started_at.map(swarm_core::clock::rfc3339),
            finished_at: Some(swarm_core::clock::rfc3339(ended_at)),
            run_ms: Some(ms(run_time)),
            error: error.clone(),
        });
        let mut timings = running.timings.clone();
        timings.run_ms = Some(ms(run_time));
        let mut backoff = Duration::from_millis(50);
        loop {
            let write = swarm_store::Retry {
                id,
                owner: self.node_id.clone(),
                run_after,
                history: history.clone(),
                error: error.clone(),
                timings: timings.clone(),
            };
            match self.store.retry(write).await {
                Ok(true) => break,
                Ok(false) => {
                    debug!(task = %id, "retry not stored: the task had already ended or moved");
                    self.resolve(id).await;
                    return None;
                }
                Err(e) if e.is_unavailable() => {
                    self.counts.retried.fetch_add(1, Ordering::Relaxed);
                    if !self.wait_to_retry(&mut backoff).await {
                        self.counts.abandoned.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
                Err(e) => {
                    // Not the database's weather: end it with the error it has.
                    warn!(task = %id, error = %e, "could not store a retry; the task fails instead");
                    let verdict = Verdict {
                        status: TaskStatus::Failed,
                        result: None,
                        error,
                    };
                    let _ = self
                        .end(
                            None,
                            running,
                            Expect::Running,
                            verdict,
                            timings,
                            Patience::UntilStored,
                        )
                        .await;
                    return None;
                }
            }
        }
        let mut back = running;
        back.status = TaskStatus::Queued;
        back.run_after = Some(run_after);
        back.history = history;
        back.error = error;
        back.timings = timings;
        self.hub.publish(back.clone());
        queued.task = back;
        // A new attempt: its start is a new write with a new token.
        queued.start_at = None;
        queued.started = None;
        Some(queued)
    }

    /// `POST /api/tasks/{id}/retry`: runs an ended task that did not succeed
    /// again on this node, as a new attempt with a new deadline (its
    /// `timeout_ms` from now). Refused (409 `not_retryable`) unless it is
    /// failed, timed out or cancelled.
    pub(crate) async fn rerun(&self, pool: &Pool, task: Task) -> Result<Task, EngineError> {
        let id = task.id;
        let not_retryable = |status: TaskStatus| EngineError::Conflict {
            code: "not_retryable",
            message: format!(
                "task {id} is {status}; only a failed, timed out or cancelled task can be retried"
            ),
        };
        if !matches!(
            task.status,
            TaskStatus::Failed | TaskStatus::TimedOut | TaskStatus::Cancelled
        ) {
            return Err(not_retryable(task.status));
        }
        let history = task.all_attempts();
        let deadline_at = now_ms().saturating_add(task.timeout_ms);
        // Registered before the write, so the sweep never takes it for an
        // orphan.
        let mut live = task.clone();
        live.status = TaskStatus::Queued;
        if self.hub.register(live).is_none() {
            return Err(not_retryable(TaskStatus::Queued));
        }
        match self
            .store
            .rerun(id, &self.node_id, deadline_at, &history)
            .await
        {
            Ok(Some(stored)) => {
                self.hub.publish(stored.clone());
                let slot = self.tenants.take(&stored.tenant);
                pool.push(Queued::taken(stored.clone(), slot));
                Ok(stored)
            }
            Ok(None) => {
                self.hub.forget(id);
                let now = self.store.get(id).await.ok().flatten();
                Err(not_retryable(now.map_or(task.status, |t| t.status)))
            }
            Err(e) => {
                self.hub.forget(id);
                if matches!(e, StoreError::InDoubt(_)) {
                    self.dirty.store(true, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    // === hand back ===

    /// Shutdown's grace ended while `running` ran: back to queued in the
    /// store, for the next start or another node. Tried for a few seconds;
    /// if the database does not answer, the row stays `running` and the
    /// next start of this node (or a rescuing node) takes it anyway.
    pub(crate) async fn hand_back(&self, running: Task) {
        let id = running.id;
        for attempt in 0..5u32 {
            match self.store.requeue(id, &self.node_id).await {
                Ok(true) => {
                    let mut back = running;
                    back.status = TaskStatus::Queued;
                    self.hub.publish(back);
                    return;
                }
                Ok(false) => {
                    self.resolve(id).await;
                    return;
                }
                Err(e) if e.is_unavailable() && attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => {
                    warn!(task = %id, error = %e, "could not hand the task back; it runs again at the next start");
                    return;
                }
            }
        }
    }

    // === adopt, rescue, sweep ===

    /// Queues a task this node has just claimed in the store (start-up,
    /// rescue, sweep). False if it is held here already. A task of a
    /// department no longer configured is failed visibly, not dropped.
    pub(crate) async fn adopt(&self, task: Task) -> bool {
        let Some(pool) = self.pools.get(&task.department) else {
            let slot = self.tenants.take(&task.tenant);
            let gone = Queued::taken(task, slot);
            let verdict = Verdict::failed(
                "department_gone",
                format!(
                    "department `{}` is no longer configured",
                    gone.task.department
                ),
                "queue",
            );
            self.end_held(None, &gone, verdict).await;
            return false;
        };
        if self.hub.register(task.clone()).is_none() {
            // Already held here: queued (nothing to do), or a start in
            // flight that a claim raced (the recheck sees how it ends).
            self.suspect(task.id);
            return false;
        }
        self.counts.adopted.fetch_add(1, Ordering::Relaxed);
        let slot = self.tenants.take(&task.tenant);
        // A retry still in its backoff keeps waiting here.
        pool.push_when_due(Queued::taken(task, slot));
        true
    }

    /// At start (the node registered, and on PostgreSQL holding its
    /// liveness lock): takes back every unfinished task this node owned (a
    /// previous run of it died or stopped) and queues it.
    pub(crate) async fn recover(&self) -> Result<usize, EngineError> {
        let tasks = self.store.claim_at_start(&self.node_id).await?;
        let mut n = 0;
        for t in tasks {
            n += usize::from(self.adopt(t).await);
        }
        if n > 0 {
            info!(count = n, node = %self.node_id, "re-queued unfinished tasks from a previous run");
        }
        Ok(n)
    }

    /// Takes over up to `limit` unfinished tasks of nodes whose heartbeat is
    /// older than `stale_before` (epoch ms).
    pub(crate) async fn rescue(&self, stale_before: i64, limit: i64) -> Result<usize, EngineError> {
        let tasks = self
            .store
            .rescue(&self.node_id, stale_before, limit)
            .await?;
        let mut n = 0;
        for t in tasks {
            n += usize::from(self.adopt(t).await);
        }
        if n > 0 {
            info!(
                count = n,
                "took over tasks of a node whose heartbeat stopped"
            );
        }
        Ok(n)
    }

    /// Marks `id` for [`Lifecycle::recheck`]: this node may own it in the
    /// store without holding it.
    pub(crate) fn suspect(&self, id: TaskId) {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id)
            .or_insert(0);
    }

    /// Takes back the suspects this node owns in the store but does not
    /// hold, so no claim race can strand a task.
    ///
    /// Two nodes claiming from each other can cross: n3 takes X from n2,
    /// n2 (before n3's notice arrives) takes X back, then n3's notice makes
    /// n2 drop its copy; or n2's claim of X finds X still in its hub from a
    /// start the first claim refused. Either way the store says n2 owns X
    /// queued, and n2 holds nothing. Each suspect is one of: held (queued
    /// in a pool, or running here) or ended: dropped; not in the hub: taken
    /// back with one guarded statement (`reclaim`, only rows this node owns
    /// unfinished); in the hub but neither queued nor running (a start in
    /// flight): looked at again next tick, and after three ticks forgotten
    /// and taken back. Runs each cluster tick while there are suspects.
    pub(crate) async fn recheck(&self) -> usize {
        const PASSING_TICKS: u8 = 3;
        let suspects: Vec<(TaskId, u8)> = {
            let mut s = self
                .suspects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.is_empty() {
                return 0;
            }
            s.drain().collect()
        };
        let mut take_back = Vec::new();
        let mut again = Vec::new();
        for (id, seen) in suspects {
            match self.hub.current(id) {
                None => take_back.push(id),
                Some(t) if t.status != TaskStatus::Queued => {}
                Some(t) => {
                    let queued = self
                        .pools
                        .get(&t.department)
                        .is_some_and(|p| p.holds_queued(id));
                    if queued {
                    } else if seen + 1 < PASSING_TICKS {
                        again.push((id, seen + 1));
                    } else {
                        self.hub.forget(id);
                        take_back.push(id);
                    }
                }
            }
        }
        if !again.is_empty() {
            self.suspects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(again);
        }
        if take_back.is_empty() {
            return 0;
        }
        let tasks = match self.store.reclaim(&self.node_id, &take_back).await {
            Ok(t) => t,
            Err(e) => {
                debug!(error = %e, "rechecking claimed tasks failed; the sweep reconciles");
                self.dirty.store(true, Ordering::Relaxed);
                return 0;
            }
        };
        let mut n = 0;
        for t in tasks {
            n += usize::from(self.adopt(t).await);
        }
        if n > 0 {
            self.counts.swept.fetch_add(n as u64, Ordering::Relaxed);
            info!(count = n, "took back tasks a claim race had left unheld");
        }
        n
    }

    /// Whether a write's outcome was unknown since the last sweep.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Takes back the unfinished rows this node owns but does not hold: a
    /// submission whose commit landed although its answer was lost, or a
    /// transition given up. They are queued like any adopted task.
    pub(crate) async fn sweep(&self) -> Result<usize, EngineError> {
        self.dirty.store(false, Ordering::Relaxed);
        let ids = self.store.own_unfinished(&self.node_id).await;
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let orphans: Vec<TaskId> = ids
            .into_iter()
            .filter(|id| !self.hub.contains(*id))
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let tasks = match self.store.reclaim(&self.node_id, &orphans).await {
            Ok(t) => t,
            Err(e) => {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let mut n = 0;
        for t in tasks {
            n += usize::from(self.adopt(t).await);
        }
        if n > 0 {
            self.counts.swept.fetch_add(n as u64, Ordering::Relaxed);
            warn!(
                count = n,
                "took back unfinished tasks this node owned but no longer held (a write's outcome was unknown)"
            );
        }
        Ok(n)
    }
}

/// `queue_ms` so far (up to its start, once started): from the commit this node saw (or, for a task taken
/// from the store, from its creation less its persist time).
fn waited(q: &Queued) -> f64 {
    match q.stored_at {
        Some(at) => ms(q
            .started
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(at)),
        None => {
            let persist = q.task.timings.persist_ms.unwrap_or(0.0);
            ((now_ms() - q.task.created_at) as f64 - persist).max(0.0)
        }
    }
}

/// `total_ms` so far: from the request's arrival (or, for a task taken from
/// the store, from its creation plus its admission time).
fn total(q: &Queued) -> f64 {
    total_at(q, Instant::now())
}

/// `total_ms` up to `end`.
fn total_at(q: &Queued, end: Instant) -> f64 {
    match q.received_at {
        Some(at) => ms(end.saturating_duration_since(at)),
        None => {
            let admission = q.task.timings.admission_ms.unwrap_or(0.0);
            (now_ms() - q.task.created_at) as f64 + admission
        }
    }
}

/// The state a held task must still have in the store to be ended: queued,
/// unless this holder tried to start it (that start may have been stored
/// although its answer was lost). A stale copy of a task that someone else
/// started can therefore never end it.
fn held_expect(q: &Queued) -> Expect {
    if q.start_at.is_some() {
        Expect::Unfinished
    } else {
        Expect::Queued
    }
}

/// The timings of a task ended before it ran.
fn held_timings(q: &Queued) -> Timings {
    let mut t = q.task.timings.clone();
    t.queue_ms = Some(waited(q));
    t.total_ms = Some(total(q));
    t
}

#[cfg(test)]
mod tests;
