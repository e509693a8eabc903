//! One stored task's run: start it, run one attempt, store the outcome.
//!
//! The run owns its [`Queued`] value (and with it the tenant's slot) and
//! its permits from the dispatcher to the stored outcome, so every path out
//! (finish, cancel, deadline, hand back, a start the database could not
//! take) releases them by dropping them. Every state change goes through
//! [`Lifecycle`]; the agent's race through [`Attempt`].

use std::sync::Arc;
use std::time::Duration;

use swarm_agents::{AgentContext, AgentError, AgentInput, Placement};
use swarm_core::TaskStatus;
use swarm_core::clock::now_ms;
use swarm_sched::limit::Permit;
use tokio::time::Instant;

use crate::attempt::{Attempt, Ended};
use crate::child::ChildRunner;
use crate::env::RunEnv;
use crate::lifecycle::{Begun, Lifecycle, Verdict};
use crate::pool::Pool;
use crate::work::Queued;

/// A task taken out of its queue to run.
pub(crate) struct TaskRun {
    /// Shared handles.
    pub(crate) env: Arc<RunEnv>,
    /// Its department.
    pub(crate) pool: Arc<Pool>,
    /// The task, as queued.
    pub(crate) queued: Queued,
    /// A permit of the pool's limiter, fed this run's sample.
    pub(crate) permit: Permit,
    /// A permit of the global cap, held for the run.
    pub(crate) global: Permit,
}

impl TaskRun {
    pub(crate) async fn run(self) {
        let TaskRun {
            env,
            pool,
            mut queued,
            permit,
            global,
        } = self;
        let lifecycle = env.lifecycle();
        let task = &queued.task;
        // A task whose deadline passed while it waited is never started.
        if now_ms() >= task.deadline_at {
            let verdict = Lifecycle::expired(task);
            drop((permit, global));
            lifecycle.end_held(Some(&pool), &queued, verdict).await;
            return;
        }
        let instance = pool.pick_instance().to_string();
        let (running, cancel) = match lifecycle.start(&mut queued, &instance).await {
            Begun::Running(t, c) => (*t, c),
            Begun::Gone => {
                // Claimed by another node (or ended there): its tenant slot
                // counts until the cluster has the claimer's count.
                lifecycle.park(queued.slot);
                return;
            }
            Begun::Retry => {
                // Without holding a slot; the dispatcher waits for the
                // database before it takes work again.
                drop((permit, global));
                pool.push_front(queued);
                return;
            }
            Begun::Broken(why) => {
                drop((permit, global));
                let verdict = Verdict::failed(
                    "start_not_stored",
                    format!("the task could not be marked running: {why}"),
                    "queue",
                );
                lifecycle.end_held(Some(&pool), &queued, verdict).await;
                return;
            }
        };
        let _running = pool.begin_run();
        if running.history.is_empty() && running.attempts <= 1 {
            // A first attempt: what the retry budget is a share of.
            pool.count_first_attempt();
        }
        if cancel.is_cancelled() {
            // The cancel reached it while its start was being stored.
            drop((permit, global));
            lifecycle
                .finish(
                    &pool,
                    &queued,
                    running,
                    Verdict::cancelled("run"),
                    Instant::now(),
                )
                .await;
            return;
        }
        let deadline =
            Instant::now() + Duration::from_millis((running.deadline_at - now_ms()).max(0) as u64);
        let placed = if pool.agent().balanced().is_some() {
            Placement::tracked()
        } else {
            Placement::default()
        };
        let ctx = AgentContext {
            task_id: running.id,
            tenant: running.tenant.clone(),
            attempt: running.attempts.max(1) as u32,
            instance,
            deadline,
            cancel: env.shutdown().runs_over().child_token(),
            progress: env.progress_for(running.id),
            children: Some(ChildRunner::for_pool(&env, &[], pool.name())),
            request_id: queued.request_id.clone(),
            placed: placed.clone(),
            provider: pool.provider_signal(),
        };
        let input = AgentInput {
            task_type: running.task_type.clone(),
            title: running.title.clone(),
            description: running.description.clone(),
            args: running.args.clone(),
        };
        let finished = Attempt {
            agent: pool.agent(),
            ctx,
            input,
            deadline,
            cancel: &cancel,
            grace_over: Some(env.shutdown().runs_over()),
        }
        .run()
        .await;
        // Spent before the permit frees, so the next start already sees
        // a budget this run filled.
        env.spend_tokens(&pool, &running.tenant, &running.args, &finished.ended);
        let typical = Duration::from_micros(pool.limiter().snapshot().rtt_us);
        permit.record(finished.sample(env.classifier(), typical));
        drop(global);
        let mut running = running;
        // A balancing agent names the instance it chose; it is stored with
        // the outcome.
        if let Some(instance) = placed.get() {
            running.instance = Some(instance);
        }
        let timeout_ms = running.timeout_ms;
        let verdict = match finished.ended {
            Ended::Returned(Ok(v)) => Verdict::succeeded(v),
            Ended::Returned(Err(_)) if finished.deadline_passed => Verdict::ended(
                TaskStatus::TimedOut,
                "deadline_exceeded",
                format!("deadline of {timeout_ms} ms passed while running"),
                "run",
            ),
            Ended::Returned(Err(e)) => match retry_decision(&pool, &running, &e) {
                Retry::At(run_after) => {
                    let error = agent_failure(&e).error;
                    if let Some(back) = lifecycle
                        .retry(queued, running, error, finished.rtt, run_after)
                        .await
                    {
                        pool.push_later(back, run_after);
                    }
                    return;
                }
                Retry::No(why) => {
                    let mut v = agent_failure(&e);
                    if let (Some(why), Some(err)) = (why, v.error.as_mut()) {
                        err.message = format!("{} ({why})", err.message);
                    }
                    v
                }
            },
            Ended::Panicked(m) => {
                Verdict::failed("agent_panic", format!("the agent crashed: {m}"), "run")
            }
            Ended::Cancelled => Verdict::cancelled("run"),
            Ended::GraceOver => {
                lifecycle.hand_back(running).await;
                return;
            }
        };
        lifecycle
            .finish(&pool, &queued, running, verdict, finished.at)
            .await;
    }
}

/// Whether a failed attempt runs again.
enum Retry {
    /// Back to the queue, to start at this time (epoch ms) or later.
    At(i64),
    /// Final; why, when the task had attempts left.
    No(Option<String>),
}

/// Decides a retry: only a retryable failure ([`AgentError::is_retryable`]:
/// a timeout of the agent's own call, a backend's refusal or 5xx, a
/// crashed worker; never bad input), with attempts left, a backoff that
/// ends before the deadline, and a share of the department's retry budget.
/// The backoff is exponential with full jitter, never shorter than the
/// backend's `Retry-After`.
fn retry_decision(pool: &Pool, running: &swarm_core::Task, e: &AgentError) -> Retry {
    let Some(policy) = running.retry else {
        return Retry::No(None);
    };
    let attempt = running.attempts.max(1) as u32;
    if !e.is_retryable() || policy.max_attempts <= 1 {
        return Retry::No(None);
    }
    if attempt >= policy.max_attempts {
        return Retry::No(Some(format!(
            "attempt {attempt} of {}, none left",
            policy.max_attempts
        )));
    }
    let retry_after = match e {
        AgentError::Overloaded { retry_after, .. } => *retry_after,
        _ => None,
    };
    let backoff = swarm_sched::balance::Backoff {
        base: Duration::from_millis(policy.backoff_ms),
        max: Duration::from_millis(policy.max_backoff_ms.max(policy.backoff_ms)),
    }
    .delay(attempt - 1, retry_after, &mut fastrand::Rng::new());
    let run_after = now_ms().saturating_add(backoff.as_millis() as i64);
    if run_after >= running.deadline_at {
        return Retry::No(Some(format!(
            "attempt {attempt} of {}; not retried: the backoff of {} ms would pass the deadline",
            policy.max_attempts,
            backoff.as_millis()
        )));
    }
    if !pool.take_retry() {
        return Retry::No(Some(format!(
            "attempt {attempt} of {}; not retried: the department's retry budget is spent",
            policy.max_attempts
        )));
    }
    Retry::At(run_after)
}

/// An agent's error as the task's failure, naming the field of `args` it
/// blames.
fn agent_failure(e: &AgentError) -> Verdict {
    let message = match e {
        AgentError::Invalid {
            field: Some(f),
            message,
        } => format!("args.{f}: {message}"),
        other => other.to_string(),
    };
    Verdict::failed(e.code(), message, "run")
}
