//! One dispatcher per department: waits for work and capacity, then starts
//! a child or a stored task.
//!
//! It takes a permit of the pool's limiter first and only then the next
//! piece of work, so work leaves the queue only when it can start at once.
//! A stored task also needs a permit of the global cap; children run on
//! their parent's global permit, so a parent waiting for children can never
//! starve them of it. Stored tasks wait while the database takes no writes
//! (their start could not be stored); children, which are not stored, go
//! on.
//!
//! A pause ([`Pool::pause`]: a provider's quota spent until its reset, the
//! department's token budget spent until it refills) holds every start
//! before any permit is taken.
//!
//! Before each wait it records what it waits for ([`Blocker`]: a pause, the
//! department limit, the global cap, the database), when the wait is real
//! (a free permit is not a wait): that is what every task queued in the
//! department waits for, shown in its JSON, its event stream and the
//! pool's status.
//!
//! Once shutdown begins no stored task starts, but children still do until
//! the grace period ends: running parents waiting for their children must
//! be able to finish within the grace.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use swarm_core::Blocker;
use swarm_core::clock::now_ms;
use swarm_sched::limit::Limiter;
use swarm_store::Health;
use tracing::Instrument;

use crate::child;
use crate::env::RunEnv;
use crate::lifecycle::Lifecycle;
use crate::pool::Pool;
use crate::run::TaskRun;

/// The dispatcher of one department.
pub(crate) struct Dispatcher {
    /// Shared handles.
    pub(crate) env: Arc<RunEnv>,
    /// Its department.
    pub(crate) pool: Arc<Pool>,
    /// The process-wide cap every stored task's run also needs.
    pub(crate) global: Limiter,
    /// Whether the database takes writes (starts are writes).
    pub(crate) health: Health,
}

impl Dispatcher {
    pub(crate) async fn run(self) {
        let Dispatcher {
            env,
            pool,
            global,
            health,
        } = self;
        let shutdown = env.shutdown().clone();
        let stop = shutdown.draining().clone();
        let end = shutdown.runs_over().clone();
        loop {
            let draining = stop.is_cancelled();
            // Retries whose backoff is over join the queue.
            let next_due = pool.promote(now_ms());
            if !pool.ready(draining) {
                if draining {
                    pool.set_blocker(Blocker::Shutdown);
                }
                // Wake for new work, for the next retry's time, for the
                // start of shutdown (to look again as draining), or to end.
                let due = next_due.map(|at| {
                    tokio::time::Instant::now()
                        + std::time::Duration::from_millis((at - now_ms()).max(0) as u64)
                });
                tokio::select! {
                    _ = pool.notified() => {}
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() && !draining => {}
                    _ = stop.cancelled(), if !draining => {}
                    _ = end.cancelled() => return,
                }
                continue;
            }
            // A pause (provider quota, token budget) holds every start
            // until it ends; a longer one set meanwhile is waited for too.
            pool.pause_if_spent();
            if let Some((why, until)) = pool.paused(tokio::time::Instant::now()) {
                pool.set_blocker(why);
                let changed = pool.pause_changed();
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = changed => {}
                    _ = end.cancelled() => return,
                }
                continue;
            }
            let mut acquire = std::pin::pin!(pool.limiter().acquire());
            let permit = match ready_now(&mut acquire).await {
                Some(p) => p,
                None => {
                    pool.set_blocker(Blocker::DepartmentLimit);
                    tokio::select! {
                        p = &mut acquire => p,
                        _ = end.cancelled() => return,
                    }
                }
            };
            if let Some(job) = pool.pop_child() {
                shutdown.spawn_run(child::run_queued(env.clone(), pool.clone(), job, permit));
                continue;
            }
            if stop.is_cancelled() {
                continue;
            }
            // A stored task's start is a write: wait for a database that
            // takes them, serving children meanwhile.
            if !health.is_up() {
                pool.set_blocker(Blocker::Database);
                drop(permit);
                tokio::select! {
                    _ = health.wait_up() => {}
                    _ = pool.notified() => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            }
            // A stored task also needs the global cap. A child that arrives
            // meanwhile must not wait behind the cap (its parent holds a
            // global permit already): give the pool permit back and serve it.
            let mut acquire = std::pin::pin!(global.acquire());
            let global = match ready_now(&mut acquire).await {
                Some(g) if !stop.is_cancelled() => Some(g),
                Some(_) => None,
                None => {
                    pool.set_blocker(Blocker::GlobalCap);
                    loop {
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => break None,
                            g = &mut acquire => break Some(g),
                            _ = pool.notified() => {
                                if pool.has_child() {
                                    break None;
                                }
                            }
                        }
                    }
                }
            };
            let Some(global) = global else {
                continue;
            };
            // A pause set while this waited for its permits (a provider's
            // answer that spent the quota, a run that spent the token
            // budget) holds this start too.
            pool.pause_if_spent();
            if pool.paused(tokio::time::Instant::now()).is_some() {
                drop((permit, global));
                continue;
            }
            let now = now_ms();
            pool.promote(now);
            let mut next = None;
            while let Some(queued) = pool.pop_task() {
                if now >= queued.task.deadline_at {
                    // Never started: its deadline passed while it waited.
                    // Recorded off the permit, so dead work costs no slot.
                    let (env, pool) = (env.clone(), pool.clone());
                    shutdown.spawn_run(async move {
                        let verdict = Lifecycle::expired(&queued.task);
                        env.lifecycle()
                            .end_held(Some(&pool), &queued, verdict)
                            .await;
                    });
                    continue;
                }
                next = Some(queued);
                break;
            }
            if let Some(queued) = next {
                // Every log line of the run carries the task, its pool and
                // the request that submitted it.
                let span = tracing::info_span!(
                    "task",
                    id = %queued.task.id,
                    pool = %pool.name(),
                    request_id = queued.request_id.as_deref().unwrap_or("")
                );
                let run = TaskRun {
                    env: env.clone(),
                    pool: pool.clone(),
                    queued,
                    permit,
                    global,
                };
                shutdown.spawn_run(run.run().instrument(span));
            }
        }
    }
}

/// Polls `f` once: its output if it is ready now. A permit that is free
/// is taken without saying the task waited for it; the future stays in
/// line (a limiter's queue is FIFO) when it is not.
async fn ready_now<F: Future>(f: &mut Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match f.as_mut().poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}
