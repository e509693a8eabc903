//! Periodic tasks: `[[schedules]]`, a cron expression read in a time zone
//! and a task template each (impl Engine).
//!
//! # One task per tick, across nodes
//! Every node runs every schedule's ticker, and each tick is submitted as
//! an ordinary task whose idempotency key is `schedule:<name>:<tick ms>`
//! (the tick's own time, the same on every node whatever their clocks).
//! The store's unique index of keys lets exactly one insert win: the other
//! nodes' submissions replay that task. This is how pg_cron and Oban's
//! cron plugin avoid a leader election: the database's uniqueness is the
//! lock. A node that is down simply does not submit; the others do.
//!
//! # Downtime
//! The last tick submitted is recorded (`schedules` table, only a later
//! tick replaces it). At start a schedule with `catch_up` submits the ticks
//! it missed since then (at most [`MAX_CATCH_UP`], oldest first, each with
//! its own key, so a catch-up on two nodes still yields one task per tick);
//! without it the missed ticks are skipped and the next one runs, so a
//! node that was down for a day does not start a day's worth at once.
//!
//! # Timers
//! Ticks are wall-clock times; the ticker sleeps toward the next one in
//! steps of at most [`MAX_SLEEP`] and looks at the clock again after each,
//! so a clock adjustment delays a tick by at most one step.

use std::sync::Arc;
use std::time::Duration;

use swarm_core::clock::{now_ms, rfc3339};
use swarm_core::{TaskId, TaskSpec};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::engine::{Engine, Submission};
use crate::error::EngineError;
use crate::timetable::{Schedule, ScheduleView, lock};

/// The most missed ticks a `catch_up` start submits.
pub(crate) const MAX_CATCH_UP: usize = 100;
/// The longest sleep before the ticker looks at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long a tick's submission keeps trying while the database or the
/// department refuses it.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(30);

impl Engine {
    /// Starts one ticker per schedule; they end when shutdown begins.
    pub(crate) fn spawn_schedules(&self) {
        for s in &self.schedules().0 {
            let (engine, s) = (self.clone(), s.clone());
            self.spawn_background(async move { engine.tick_forever(s).await });
        }
    }

    /// Every schedule with its next and last runs.
    pub async fn schedule_views(&self) -> Result<Vec<ScheduleView>, EngineError> {
        let runs = self.store().schedule_runs().await?;
        let now = now_ms();
        Ok(self
            .schedules()
            .0
            .iter()
            .map(|s| {
                let last = runs.get(&s.cfg.name);
                let seen = lock(&s.seen);
                ScheduleView {
                    name: s.cfg.name.clone(),
                    cron: s.cfg.cron.clone(),
                    timezone: s.tz.name().to_string(),
                    tenant: s.cfg.tenant.clone(),
                    catch_up: s.cfg.catch_up,
                    task_type: s.cfg.task.task_type.clone(),
                    next_run: s.next_after(now).map(rfc3339),
                    last_run: last.map(|(t, _)| rfc3339(*t)),
                    last_task: last.and_then(|(_, id)| id.clone()),
                    submitted_here: seen.submitted_here,
                    last_error: seen.last_error.clone(),
                }
            })
            .collect())
    }

    async fn tick_forever(&self, s: Arc<Schedule>) {
        let stop = self.draining_token();
        // The catch-up covers the ticks up to this instant and the ticker
        // those after it, so none falls between the two.
        let mut after = now_ms();
        if s.cfg.catch_up {
            tokio::select! {
                _ = self.catch_up(&s, after) => {}
                _ = stop.cancelled() => return,
            }
        }
        loop {
            let Some(tick) = s.next_after(after) else {
                info!(schedule = %s.cfg.name, "the schedule has no future tick; its ticker ends");
                return;
            };
            // Toward the tick in bounded steps, reading the clock after each.
            loop {
                let left = tick - now_ms();
                if left <= 0 {
                    break;
                }
                let step = Duration::from_millis(left as u64).min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stop.cancelled() => return,
                }
            }
            tokio::select! {
                _ = self.fire(&s, tick) => {}
                _ = stop.cancelled() => return,
            }
            after = tick;
        }
    }

    /// Submits the ticks missed since the last recorded one, up to `now`.
    async fn catch_up(&self, s: &Schedule, now: i64) {
        let last = match self.store().schedule_runs().await {
            Ok(runs) => runs.get(&s.cfg.name).map(|(t, _)| *t),
            Err(e) => {
                warn!(schedule = %s.cfg.name, error = %e, "could not read the last tick; no catch-up");
                return;
            }
        };
        let Some(mut after) = last else {
            return;
        };
        let mut n = 0;
        while let Some(tick) = s.next_after(after) {
            if tick > now || n == MAX_CATCH_UP {
                break;
            }
            self.fire(s, tick).await;
            after = tick;
            n += 1;
        }
        if n > 0 {
            info!(schedule = %s.cfg.name, ticks = n, "caught up on missed ticks");
        }
    }

    /// Submits one tick (once across the cluster, by its key), retrying a
    /// while if it is refused for load or the database.
    async fn fire(&self, s: &Schedule, tick: i64) {
        let mut spec: TaskSpec = s.cfg.task.clone();
        spec.idempotency_key = Some(format!("schedule:{}:{tick}", s.cfg.name));
        let give_up = Instant::now() + SUBMIT_PATIENCE;
        let mut backoff = Duration::from_millis(200);
        loop {
            let sub = Submission {
                spec: spec.clone(),
                tenant: s.cfg.tenant.clone(),
                received_at: Instant::now(),
                request_id: Some(format!("schedule-{}-{tick}", s.cfg.name)),
            };
            match self.submit(sub).await {
                Ok(done) => {
                    if done.created {
                        lock(&s.seen).submitted_here += 1;
                        info!(schedule = %s.cfg.name, tick = %rfc3339(tick), task = %done.task.id, "schedule ticked");
                    }
                    self.record_tick(s, tick, done.task.id).await;
                    return;
                }
                // A replay whose template changed on another node still
                // means another node ran this tick.
                Err(EngineError::Conflict { .. }) => return,
                Err(
                    e @ (EngineError::Overloaded { .. }
                    | EngineError::QuotaExceeded { .. }
                    | EngineError::Unavailable(_)),
                ) if Instant::now() + backoff < give_up => {
                    lock(&s.seen).last_error = Some(format!("{}: {e}", rfc3339(tick)));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    warn!(schedule = %s.cfg.name, tick = %rfc3339(tick), error = %e, "a schedule's tick could not be submitted");
                    lock(&s.seen).last_error = Some(format!("{}: {e}", rfc3339(tick)));
                    return;
                }
            }
        }
    }

    async fn record_tick(&self, s: &Schedule, tick: i64, task: TaskId) {
        if let Err(e) = self.store().schedule_ran(&s.cfg.name, tick, task).await {
            warn!(schedule = %s.cfg.name, error = %e, "could not record a tick (a catch-up may submit it again, as the same task)");
        }
    }
}
