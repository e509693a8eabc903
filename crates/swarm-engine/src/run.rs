//! Dispatching and running tasks.
//!
//! A run races the agent's future against the task's deadline, a client
//! cancel and the end of the shutdown grace period. Whichever wins, the
//! agent's future is dropped (so its work stops at its next await) and its
//! cancellation token fires (so work it handed elsewhere stops too). A
//! panicking agent is caught and fails only its own task.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use swarm_agents::{AgentContext, AgentError, AgentInput, Placement};
use swarm_core::clock::now_ms;
use swarm_core::{Task, TaskError, TaskStatus};
use swarm_sched::limit::{Classify, Outcome as LimitOutcome, Permit, Sample};
use swarm_store::{Expect, Finish, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, warn};

use crate::child::{self, ChildRunner};
use crate::engine::{Inner, ms, progress_for};
use crate::pool::{Pool, Queued, Running};

/// Waits for work, takes a permit of the pool's limiter, then a child or
/// (with a permit of the global cap too) a stored task, and starts it.
///
/// Once shutdown begins no stored task starts, but children still do until
/// the grace period ends: running parents waiting for their children must
/// be able to finish within the grace.
pub(crate) async fn dispatch(inner: Arc<Inner>, pool: Arc<Pool>) {
    let stop = inner.stop_dispatch.clone();
    let end = inner.stop_runs.clone();
    loop {
        let draining = stop.is_cancelled();
        if !pool.ready(draining) {
            // Wake for new work, for the start of shutdown (to look again
            // as draining), or to end.
            tokio::select! {
                _ = pool.notify.notified() => {}
                _ = stop.cancelled(), if !draining => {}
                _ = end.cancelled() => return,
            }
            continue;
        }
        let permit = tokio::select! {
            p = pool.limiter.acquire() => p,
            _ = end.cancelled() => return,
        };
        if let Some(child) = pool.pop_child() {
            inner
                .runs
                .spawn(child::run_child(inner.clone(), pool.clone(), child, permit));
            continue;
        }
        if stop.is_cancelled() {
            continue;
        }
        // A stored task also needs the global cap. A child that arrives
        // meanwhile must not wait behind the cap (its parent holds a global
        // permit already): give the pool permit back and serve it.
        let global = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break None,
                g = inner.global.acquire() => break Some(g),
                _ = pool.notify.notified() => {
                    if pool.has_child() {
                        break None;
                    }
                }
            }
        };
        let Some(global) = global else {
            continue;
        };
        let now = now_ms();
        let mut popped = None;
        while let Some((queued, _meta)) = pool.pop_task() {
            if now >= queued.task.deadline_at {
                // Never started: its deadline passed while it waited. Recorded
                // off the permit, so dead work costs no slot.
                inner
                    .runs
                    .spawn(expire(inner.clone(), pool.clone(), queued));
                continue;
            }
            popped = Some(queued);
            break;
        }
        if let Some(queued) = popped {
            // Every log line of the run carries the task, its pool and the
            // request that submitted it.
            let span = tracing::info_span!(
                "task",
                id = %queued.task.id,
                pool = %pool.name,
                request_id = queued.request_id.as_deref().unwrap_or("")
            );
            inner.runs.spawn(
                run_task(inner.clone(), pool.clone(), queued, permit, global).instrument(span),
            );
        }
    }
}

/// Ends a task whose deadline passed in the queue as `timed_out` at stage
/// `queue`.
pub(crate) async fn expire(inner: Arc<Inner>, pool: Arc<Pool>, queued: Queued) {
    let Queued {
        task,
        accepted_at,
        slot: _slot,
        ..
    } = queued;
    let mut timings = task.timings.clone();
    timings.queue_ms = Some(match accepted_at {
        Some(at) => ms(at.elapsed()),
        None => (now_ms() - task.created_at).max(0) as f64,
    });
    timings.total_ms = Some(total_ms(&task, accepted_at));
    let error = TaskError::new(
        "deadline_exceeded",
        format!("deadline of {} ms passed while queued", task.timeout_ms),
        Some("queue"),
    );
    pool.counters
        .expired_in_queue
        .fetch_add(1, Ordering::Relaxed);
    record(
        &inner,
        &pool,
        task,
        Expect::Queued,
        TaskStatus::TimedOut,
        None,
        Some(error),
        timings,
    )
    .await;
}

/// The limiter's sample for a run that ended with `result` after `rtt`,
/// through the engine's injected classifier.
pub(crate) fn classify_sample(
    inner: &Inner,
    result: &Result<Value, AgentError>,
    rtt: Duration,
) -> Sample {
    Sample {
        rtt,
        outcome: inner.classifier.classify(result),
    }
}

/// The default classifier: a backend's refusal (`Overloaded`) and timeouts
/// (the backend's or the task's deadline) are back-pressure; successes are
/// latency samples; cancellations and other failures say nothing about
/// load (a fast failure would drag the latency baseline down) and are
/// ignored.
#[derive(Debug, Default, Clone, Copy)]
pub struct OverloadClassifier;

impl Classify<Result<Value, AgentError>> for OverloadClassifier {
    fn classify(&self, result: &Result<Value, AgentError>) -> LimitOutcome {
        match result {
            Ok(_) => LimitOutcome::Success,
            Err(AgentError::Overloaded { .. } | AgentError::Timeout { .. }) => {
                LimitOutcome::Dropped
            }
            Err(_) => LimitOutcome::Ignore,
        }
    }
}

/// How a run ended, before it is recorded.
enum Outcome {
    Succeeded(Value),
    Failed(TaskError),
    TimedOut,
    Cancelled,
    /// Shutdown grace ran out: hand the task back, unfinished.
    HandBack,
}

async fn run_task(
    inner: Arc<Inner>,
    pool: Arc<Pool>,
    queued: Queued,
    permit: Permit,
    _global: Permit,
) {
    // A task whose deadline passed while it waited is never started.
    if now_ms() >= queued.task.deadline_at {
        expire(inner, pool, queued).await;
        return;
    }
    let Queued {
        task,
        enqueued_at,
        accepted_at,
        slot,
        request_id,
    } = queued;
    let id = task.id;
    let now = now_ms();
    let queue_ms = match accepted_at {
        Some(at) => ms(at.elapsed()),
        None => (now - task.created_at).max(0) as f64,
    };
    let mut timings = task.timings.clone();
    timings.queue_ms = Some(queue_ms);

    // Tracked before the start is written, so a cancel arriving in between
    // finds the token instead of a gap.
    let user_cancel = CancellationToken::new();
    pool.track_running(
        id,
        Running {
            cancel: user_cancel.clone(),
        },
    );
    let instance = pool.pick_instance().to_string();
    let started = match inner.store.start(id, &instance, now, &inner.node_id).await {
        Ok(Some(attempts)) => attempts,
        Ok(None) => {
            // Cancelled while queued, or taken over by another node.
            pool.untrack_running(id);
            debug!(task = %id, "task left the queue before it could start");
            return;
        }
        Err(e) => {
            pool.untrack_running(id);
            warn!(task = %id, error = %e, "could not mark task running; it stays queued and is retried");
            // Back off without holding the slot, then put it back in line.
            let pool2 = pool.clone();
            let stop = inner.stop_dispatch.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                pool2.push_front(Queued {
                    task,
                    enqueued_at,
                    accepted_at,
                    slot,
                    request_id,
                });
            });
            return;
        }
    };

    let mut running = task.clone();
    running.status = TaskStatus::Running;
    running.instance = Some(instance.clone());
    running.started_at = Some(now);
    running.attempts = started as i32;
    running.timings = timings.clone();
    inner.hub.publish(running.clone());

    let ctx_cancel = inner.stop_runs.child_token();
    let deadline = Instant::now() + Duration::from_millis((task.deadline_at - now).max(0) as u64);
    let ctx = AgentContext {
        task_id: id,
        tenant: task.tenant.clone(),
        instance,
        deadline,
        cancel: ctx_cancel.clone(),
        progress: progress_for(&inner, id),
        children: Some(ChildRunner::for_pool(&inner, &[], &pool.name)),
        request_id: request_id.clone(),
        placed: if pool.agent.balanced().is_some() {
            Placement::tracked()
        } else {
            Placement::default()
        },
    };
    let placed = ctx.placed.clone();
    let input = AgentInput {
        task_type: task.task_type.clone(),
        title: task.title.clone(),
        description: task.description.clone(),
        args: task.args.clone(),
    };
    let run_started = Instant::now();
    let agent = pool.agent.clone();
    let ended = tokio::select! {
        r = AssertUnwindSafe(agent.run(ctx, input)).catch_unwind() => match r {
            Ok(r) => Ok(r),
            Err(panic) => Err(Outcome::Failed(TaskError::new(
                "agent_panic",
                format!("the agent crashed: {}", panic_message(&panic)),
                Some("run"),
            ))),
        },
        _ = tokio::time::sleep_until(deadline) => Ok(Err(AgentError::Timeout {
            message: format!("deadline of {} ms passed while running", task.timeout_ms),
        })),
        _ = user_cancel.cancelled() => Err(Outcome::Cancelled),
        _ = ctx_cancel.cancelled() => Err(Outcome::HandBack),
    };
    let rtt = run_started.elapsed();
    // Feed the limiter: the run's own time, without queue wait.
    let outcome = match ended {
        Ok(result) => {
            let timed_out =
                matches!(&result, Err(AgentError::Timeout { .. })) && Instant::now() >= deadline;
            // A run cut by the task's deadline is back-pressure only if the
            // run itself was slow; when the deadline was spent waiting in
            // the queue, the backend did nothing wrong, and counting it would
            // let a queue collapse the limit that should drain it.
            let typical = Duration::from_micros(pool.limiter.snapshot().rtt_us);
            if timed_out && rtt < typical * 2 {
                permit.record(Sample::ignore());
            } else {
                permit.record(classify_sample(&inner, &result, rtt));
            }
            match result {
                Ok(v) => Outcome::Succeeded(v),
                Err(_) if timed_out => Outcome::TimedOut,
                Err(e) => Outcome::Failed(agent_error(&e)),
            }
        }
        Err(other) => {
            permit.record(Sample::ignore());
            other
        }
    };
    // The agent's future is gone; stop whatever it started elsewhere.
    ctx_cancel.cancel();
    // A balancing agent names the instance it chose; it is stored with the
    // outcome.
    if let Some(instance) = placed.get() {
        running.instance = Some(instance);
    }
    timings.run_ms = Some(ms(rtt));
    timings.total_ms = Some(total_ms(&task, accepted_at));

    let (status, result, error) = match outcome {
        Outcome::Succeeded(v) => (TaskStatus::Succeeded, Some(v), None),
        Outcome::Failed(e) => (TaskStatus::Failed, None, Some(e)),
        Outcome::TimedOut => (
            TaskStatus::TimedOut,
            None,
            Some(TaskError::new(
                "deadline_exceeded",
                format!("deadline of {} ms passed while running", task.timeout_ms),
                Some("run"),
            )),
        ),
        Outcome::Cancelled => (
            TaskStatus::Cancelled,
            None,
            Some(TaskError::new(
                "cancelled",
                "cancelled by client while running",
                Some("run"),
            )),
        ),
        Outcome::HandBack => {
            match inner.store.requeue(id, &inner.node_id).await {
                Ok(_) => {
                    let mut back = running;
                    back.status = TaskStatus::Queued;
                    inner.hub.publish(back);
                }
                Err(e) => {
                    warn!(task = %id, error = %e, "could not hand task back; it is re-run at next start")
                }
            }
            pool.untrack_running(id);
            return;
        }
    };
    record(
        &inner,
        &pool,
        running,
        Expect::Running,
        status,
        result,
        error,
        timings,
    )
    .await;
    pool.untrack_running(id);
}

fn total_ms(task: &Task, accepted_at: Option<Instant>) -> f64 {
    match accepted_at {
        Some(at) => ms(at.elapsed()),
        None => (now_ms() - task.created_at).max(0) as f64,
    }
}

fn agent_error(e: &AgentError) -> TaskError {
    let message = match e {
        AgentError::Invalid {
            field: Some(f),
            message,
        } => format!("args.{f}: {message}"),
        other => other.to_string(),
    };
    TaskError::new(e.code(), message, Some("run"))
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Stores a terminal outcome (retrying while the database is unavailable),
/// then tells waiters. Only what is durable is ever published.
#[allow(clippy::too_many_arguments)]
async fn record(
    inner: &Arc<Inner>,
    pool: &Arc<Pool>,
    mut task: Task,
    expect: Expect,
    status: TaskStatus,
    result: Option<Value>,
    error: Option<TaskError>,
    timings: swarm_core::Timings,
) {
    let finished_at = now_ms();
    let finish = Finish {
        id: task.id,
        expect,
        status,
        result: result.clone(),
        error: error.clone(),
        finished_at,
        timings: timings.clone(),
        instance: task.instance.clone(),
    };
    let complete_from = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let stored = loop {
        match inner.store.finish(finish.clone()).await {
            Ok(done) => break Some(done),
            Err(StoreError::Unavailable(e)) if backoff <= Duration::from_secs(30) => {
                warn!(task = %task.id, error = %e, "database unavailable recording an outcome; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                error!(task = %task.id, error = %e, "could not record the outcome; the task will run again after restart");
                break None;
            }
        }
    };
    match stored {
        Some(true) => {
            let c = &pool.counters;
            match status {
                TaskStatus::Succeeded => &c.succeeded,
                TaskStatus::Failed => &c.failed,
                TaskStatus::TimedOut => &c.timed_out,
                _ => &c.cancelled,
            }
            .fetch_add(1, Ordering::Relaxed);
            task.status = status;
            task.result = result;
            task.error = error;
            task.finished_at = Some(finished_at);
            task.timings = timings;
            task.timings.complete_ms = Some(ms(complete_from.elapsed()));
            pool.drain.completed();
            finished(inner, pool, &task);
            inner.hub.publish(task);
        }
        Some(false) => {
            // Someone else ended it first (a cancel of a queued task); the
            // store has the truth, and the hub already published it.
            debug!(task = %task.id, "outcome not recorded: task already ended");
        }
        None => {}
    }
}

/// Metrics and the slow-task log for a task whose outcome is stored.
pub(crate) fn finished(inner: &Inner, pool: &Pool, task: &Task) {
    pool.metrics
        .finished(&inner.metrics, &task.tenant, task.status, &task.timings);
    let slow = inner.cfg.monitor.slow_task_ms;
    if slow > 0
        && let Some(total) = task.timings.total_ms
        && total > slow as f64
    {
        warn!(
            task = %task.id,
            pool = %pool.name,
            status = task.status.as_str(),
            total_ms = total,
            timings = %serde_json::to_string(&task.timings).unwrap_or_default(),
            "slow task: over monitor.slow_task_ms ({slow} ms)"
        );
    }
}
