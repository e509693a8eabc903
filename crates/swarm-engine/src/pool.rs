//! A department: its agent, its queue, its limiter and its instances.
//!
//! # Queue
//! Stored tasks wait in a [`FairQueue`]: priorities served by weighted round
//! robin (8:4:2:1), tenants inside a priority by deficit round robin, so a
//! flooding tenant delays another by at most one round. Child tasks (nested
//! calls of running tasks) wait in a separate FIFO that is served first:
//! finishing work already started frees its parent's slot soonest, and
//! children never wait behind new submissions.
//!
//! # Dispatch
//! One dispatcher per pool takes a permit from the pool's adaptive
//! [`Limiter`] and then the next piece of work, so work leaves the queue only
//! when it can start at once (queue wait is honest, and cancelling a queued
//! task is a queue removal). A stored task also needs a permit of the global
//! limiter (the process-wide cap); children run on their parent's global
//! permit, so a parent waiting for children can never starve them of it.
//! Permits move into the run and are released when it ends, on every path,
//! because they are dropped with the run's future.
//!
//! # Admission
//! `Pool::admit` answers from memory before anything is stored: the queue
//! bound; queue-delay shedding by CoDel (Nichols & Jacobson 2012, used for
//! admission as in Facebook's "Fail at Scale", 2015) and by a Little's-law
//! estimate of the wait, applied only to the tenants admitted fastest, so a
//! light tenant is not refused for a heavy one's load; and an estimate of
//! whether the task could start before its deadline at the measured drain
//! rate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use swarm_agents::Agent;
use swarm_core::config::{PoolConfig, TenantConfig};
use swarm_core::{Priority, Task, TaskId};
use swarm_sched::codel::CoDel;
use swarm_sched::fair::{FairQueue, QueueMeta};
use swarm_sched::limit::{Limiter, LimiterSnapshot};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{DrainRate, TenantRates, TenantSlot};
use crate::child::ChildJob;
use crate::error::EngineError;
use crate::monitor::PoolMark;
use crate::stats::{PoolMetrics, RecentLatency};

/// Weighted-round-robin weights per priority (critical, high, normal, low).
const PRIORITY_WEIGHTS: [u32; 4] = [8, 4, 2, 1];

/// Floor of the automatic CoDel target: below it, timer and scheduling noise
/// would read as queueing.
const MIN_AUTO_TARGET: Duration = Duration::from_millis(5);

/// A stored task waiting in a pool's queue.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) task: Task,
    /// When this process queued it (for sub-millisecond queue timings).
    pub(crate) enqueued_at: Instant,
    /// When this process accepted it, if it did (not for recovered tasks).
    pub(crate) accepted_at: Option<Instant>,
    /// The tenant's outstanding-task count, held until the task leaves.
    pub(crate) slot: TenantSlot,
    /// The submitting request's id, when this process accepted it.
    pub(crate) request_id: Option<String>,
}

/// A task admitted but not yet queued; dropping it (queued, or failed to
/// store) ends that.
#[derive(Debug)]
pub(crate) struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running task's handle: firing `cancel` stops it as `cancelled`.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub(crate) cancel: CancellationToken,
}

struct Queues {
    tasks: FairQueue<Queued>,
    children: VecDeque<ChildJob>,
    codel: CoDel,
    /// The target `codel` was built with; `None` while an automatic target
    /// waits for its first measurement (no shedding on a guess).
    codel_target: Option<Duration>,
}

pub(crate) struct Pool {
    pub(crate) name: String,
    pub(crate) agent_kind: String,
    pub(crate) agent: Arc<dyn Agent>,
    pub(crate) capacity: usize,
    pub(crate) default_timeout_ms: u64,
    pub(crate) max_timeout_ms: u64,
    pub(crate) instances: Vec<String>,
    next_instance: AtomicUsize,
    queues: Mutex<Queues>,
    /// `Some(target)` when configured, `None` for the automatic target,
    /// shedding off when configured as 0.
    codel_fixed: Option<Duration>,
    codel_on: bool,
    codel_interval: Duration,
    pub(crate) notify: Notify,
    pub(crate) limiter: Limiter,
    running: Mutex<HashMap<TaskId, Running>>,
    pub(crate) counters: Counters,
    /// Stage histograms and recent latencies.
    pub(crate) metrics: PoolMetrics,
    pub(crate) drain: DrainRate,
    /// Admission rates per tenant (fair shedding).
    pub(crate) rates: TenantRates,
    /// Tasks admitted and not yet queued (their rows are being committed).
    /// Admission counts them as queued: at thousands of submissions a
    /// second, a group commit's few milliseconds hold dozens of them, and
    /// counting only the queue would admit all of them on the same view.
    pending: AtomicUsize,
}

/// Lifetime counts, for status and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected_full: AtomicU64,
    pub(crate) rejected_delay: AtomicU64,
    pub(crate) rejected_deadline: AtomicU64,
    pub(crate) rejected_quota: AtomicU64,
    pub(crate) rejected_process: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) expired_in_queue: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) children: AtomicU64,
}

/// Refusals by reason.
#[derive(Debug, Clone, Serialize)]
pub struct Rejections {
    /// Queue at its bound (503 `queue_full`).
    pub queue_full: u64,
    /// CoDel: a standing queue (503 `queue_delay`).
    pub queue_delay: u64,
    /// Could not start before its deadline (503 `deadline_unmeetable`).
    pub deadline_unmeetable: u64,
    /// Tenant over its quota (429 `tenant_quota`).
    pub tenant_quota: u64,
    /// Process over its memory threshold (503 `process_overloaded`).
    pub process_overloaded: u64,
}

impl Rejections {
    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.queue_delay
            + self.deadline_unmeetable
            + self.tenant_quota
            + self.process_overloaded
    }
}

/// A pool as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Department name.
    pub name: String,
    /// Agent kind.
    pub agent: String,
    /// The limiter: algorithm, current limit, in flight, RTT estimates.
    pub limit: LimiterSnapshot,
    /// Tasks allowed to run at once now (the limiter's current limit).
    pub concurrency: usize,
    /// Tasks running now.
    pub running: usize,
    /// Tasks queued now.
    pub queued: usize,
    /// Queued by priority.
    pub queued_by_priority: BTreeMap<&'static str, usize>,
    /// Queued by tenant (the ten largest).
    pub queued_by_tenant: BTreeMap<String, usize>,
    /// Child tasks waiting.
    pub children_queued: usize,
    /// Queue bound.
    pub queue_capacity: usize,
    /// Age of the oldest queued task, ms.
    pub oldest_queued_ms: u64,
    /// CoDel target in use, ms (0: shedding off).
    pub queue_target_ms: f64,
    /// Whether CoDel is shedding now.
    pub shedding: bool,
    /// Completions per second, smoothed.
    pub drain_per_s: f64,
    /// End-to-end latency of tasks that succeeded in the last 5-10 s.
    pub latency_ms: RecentLatency,
    /// Instance names.
    pub instances: Vec<String>,
    /// The balancer over the instances, when there are several: policy and
    /// per instance state (healthy, ejected, half-open, draining), calls in
    /// flight, latency estimate, outcomes and share of picks.
    pub balancer: Option<swarm_sched::balance::BalancerSnapshot>,
    /// Worker processes (`agent = "process"`): alive, busy, restarts, kills.
    pub workers: Option<swarm_agents::ProcessStats>,
    /// Tasks accepted since start.
    pub accepted: u64,
    /// Submissions refused since start, all reasons.
    pub rejected: u64,
    /// Submissions refused since start, by reason.
    pub rejections: Rejections,
    /// Outcomes since start.
    pub succeeded: u64,
    /// Outcomes since start.
    pub failed: u64,
    /// Outcomes since start (in the queue or while running).
    pub timed_out: u64,
    /// Of `timed_out`, those whose deadline passed while queued.
    pub expired_in_queue: u64,
    /// Outcomes since start.
    pub cancelled: u64,
    /// Child tasks run since start.
    pub children: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few container operations that cannot
    // panic half-way, so a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new(
        name: &str,
        cfg: &PoolConfig,
        tenants: &[TenantConfig],
        agent: Arc<dyn Agent>,
        metrics: PoolMetrics,
    ) -> Self {
        let limiter = Limiter::new(cfg.limit_or_default(name));
        let replicas = cfg.replicas_or_default();
        let balanced = agent.balanced().is_some();
        let interval = Duration::from_millis(cfg.queue.interval_ms.max(1));
        let (codel_fixed, codel_on) = match cfg.queue.target_delay_ms {
            Some(0) => (None, false),
            Some(ms) => (Some(Duration::from_millis(ms)), true),
            None => (None, true),
        };
        // An automatic target starts unset (see `Queues::codel_target`).
        let target = codel_fixed.unwrap_or(MIN_AUTO_TARGET);
        // Admission checks the bound before the task is stored; once stored,
        // a task must always find a place, so the queue itself is unbounded.
        let mut tasks = FairQueue::new(PRIORITY_WEIGHTS, usize::MAX);
        for t in tenants {
            tasks.set_tenant_weight(&t.name, t.weight);
        }
        Self {
            name: name.to_string(),
            agent_kind: cfg.agent_kind(name).to_string(),
            agent,
            capacity: cfg.queue.capacity,
            default_timeout_ms: cfg.default_timeout_or_default(),
            max_timeout_ms: cfg.max_timeout_or_default(),
            // A balancing agent picks the instance inside the run and names
            // it at the end; until then the task shows the department.
            instances: if balanced {
                vec![name.to_string()]
            } else {
                (0..replicas).map(|i| format!("{name}-{i}")).collect()
            },
            next_instance: AtomicUsize::new(0),
            queues: Mutex::new(Queues {
                tasks,
                children: VecDeque::new(),
                codel: CoDel::new(target, interval),
                codel_target: codel_fixed,
            }),
            codel_fixed,
            codel_on,
            codel_interval: interval,
            notify: Notify::new(),
            limiter,
            running: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            drain: DrainRate::default(),
            rates: TenantRates::default(),
            pending: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Decides, from memory, whether a task of `tenant` with deadline
    /// `timeout` may be queued here now.
    /// On success the returned guard counts the task as pending until it is
    /// queued or given up.
    pub(crate) fn admit(
        &self,
        timeout: Duration,
        tenant: &str,
    ) -> Result<PendingGuard<'_>, EngineError> {
        let now = Instant::now();
        self.rates.offered(tenant, now);
        let mut q = lock(&self.queues);
        let queued = q.tasks.len() + self.pending.load(Ordering::Relaxed);
        if queued >= self.capacity {
            drop(q);
            self.counters.rejected_full.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded {
                code: "queue_full",
                message: format!(
                    "department `{}` has {queued} tasks queued (its bound); retry later",
                    self.name
                ),
                retry_after_s: self.drain.retry_after_s(queued),
            });
        }
        if self.codel_on
            && let Some(target) = q.codel_target
        {
            let head_age = q.tasks.oldest_enqueued_at().map(|t| now - t);
            let standing = q.codel.on_admission(head_age, now);
            // CoDel needs an interval to see a queue stand; at ten times
            // capacity an interval admits far more than the target's worth
            // of work, so the wait estimate refuses at once.
            let expected = self.expected_wait(queued);
            // Shedding is fair: a tenant within its fair share (favoured)
            // is still admitted, and so is one admitted at a lower rate
            // than another tenant over its share (see `TenantRates`), so
            // the heaviest tenants are the ones refused.
            let exempt = q.tasks.is_favoured(tenant)
                || self.rates.is_light(tenant, now, |t| q.tasks.is_favoured(t));
            if (standing || expected > target) && !exempt {
                drop(q);
                self.counters.rejected_delay.fetch_add(1, Ordering::Relaxed);
                return Err(EngineError::Overloaded {
                    code: "queue_delay",
                    message: format!(
                        "department `{}` is overloaded: queued tasks would wait over its {} ms target; retry later",
                        self.name,
                        target.as_millis()
                    ),
                    retry_after_s: self.drain.retry_after_s(queued),
                });
            }
        }
        drop(q);
        // If this task would start after its deadline, accepting it would
        // only store a future timeout.
        let wait = self.expected_wait(queued);
        if queued > 0 && wait > timeout {
            self.counters
                .rejected_deadline
                .fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded {
                code: "deadline_unmeetable",
                message: format!(
                    "department `{}` would start this task in about {} ms, after its {} ms deadline; retry later or allow more time",
                    self.name,
                    wait.as_millis(),
                    timeout.as_millis()
                ),
                retry_after_s: self.drain.retry_after_s(queued),
            });
        }
        self.rates.admitted(tenant, now);
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(PendingGuard(&self.pending))
    }

    /// How long a task admitted now would wait, by Little's law: with
    /// `limit` running, each taking `rtt`, one leaves every rtt / limit, and
    /// everything queued (and the dispatcher's own wait for a permit) is
    /// ahead. Zero before any run has been measured.
    fn expected_wait(&self, queued: usize) -> Duration {
        let snap = self.limiter.snapshot();
        let ahead = (queued + snap.waiting) as f64;
        Duration::from_secs_f64(ahead * snap.rtt_us as f64 / 1e6 / snap.limit.max(1) as f64)
    }

    /// Whether the dispatcher has something to start: a child always, a
    /// stored task unless shutdown has begun.
    pub(crate) fn ready(&self, draining: bool) -> bool {
        let q = lock(&self.queues);
        !q.children.is_empty() || (!draining && !q.tasks.is_empty())
    }

    pub(crate) fn push(&self, q: Queued) {
        let class = q.task.priority.index();
        let tenant = q.task.tenant.clone();
        // The queue is unbounded (see `new`), so this cannot be refused.
        let _ = lock(&self.queues).tasks.push(class, &tenant, q);
        self.notify.notify_one();
    }

    pub(crate) fn push_front(&self, q: Queued) {
        let class = q.task.priority.index();
        let tenant = q.task.tenant.clone();
        let at = q.enqueued_at;
        lock(&self.queues).tasks.push_front(class, &tenant, at, q);
        self.notify.notify_one();
    }

    pub(crate) fn push_child(&self, c: ChildJob) {
        lock(&self.queues).children.push_back(c);
        self.notify.notify_one();
    }

    pub(crate) fn has_child(&self) -> bool {
        !lock(&self.queues).children.is_empty()
    }

    pub(crate) fn pop_child(&self) -> Option<ChildJob> {
        lock(&self.queues).children.pop_front()
    }

    /// The next stored task, feeding its queueing delay to CoDel.
    pub(crate) fn pop_task(&self) -> Option<(Queued, QueueMeta)> {
        let now = Instant::now();
        let mut q = lock(&self.queues);
        let (item, meta) = q.tasks.pop()?;
        q.codel.on_dequeue(now - meta.enqueued_at, now);
        Some((item, meta))
    }

    pub(crate) fn remove_queued(&self, id: TaskId) -> Option<Queued> {
        lock(&self.queues)
            .tasks
            .remove_first(|q| q.task.id == id)
            .map(|(q, _)| q)
    }

    /// Takes out queued tasks whose deadline has passed.
    pub(crate) fn take_expired(&self, now_ms: i64) -> Vec<Queued> {
        lock(&self.queues)
            .tasks
            .retain(|q, _| q.task.deadline_at > now_ms)
            .into_iter()
            .map(|(q, _)| q)
            .collect()
    }

    /// Follows the automatic CoDel target: an eighth of the pool's no-load
    /// run time (measured in BENCHMARKS.md: a half let admitted p99 reach
    /// 2.3× the unloaded p99 at 10× overload; an eighth keeps it near 2×
    /// with the same goodput).
    /// Marks the tenants asking for less than their fair share of what the
    /// pool completes, so the queue serves them first (see
    /// `TenantRates::within_share`).
    pub(crate) fn refavour(&self, now: Instant) {
        let capacity = self.drain.per_second();
        let mut q = lock(&self.queues);
        let within = self
            .rates
            .within_share(capacity, |t| q.tasks.tenant_weight(t), now);
        q.tasks.set_favoured(within.iter().map(|t| &**t));
    }

    pub(crate) fn retune_codel(&self) {
        if !self.codel_on || self.codel_fixed.is_some() {
            return;
        }
        let snap = self.limiter.snapshot();
        if snap.min_rtt_us == 0 {
            return;
        }
        let target = (Duration::from_micros(snap.min_rtt_us) / 8).max(MIN_AUTO_TARGET);
        let mut q = lock(&self.queues);
        // Rebuilding forgets CoDel's interval state; only do it for a real
        // change.
        let change = match q.codel_target {
            None => true,
            Some(cur) => {
                (target.as_secs_f64() - cur.as_secs_f64()).abs() > cur.as_secs_f64() * 0.25
            }
        };
        if change {
            q.codel = CoDel::new(target, self.codel_interval);
            q.codel_target = Some(target);
        }
    }

    /// Round robin over the pool's instances.
    pub(crate) fn pick_instance(&self) -> &str {
        let i = self.next_instance.fetch_add(1, Ordering::Relaxed);
        &self.instances[i % self.instances.len()]
    }

    /// The instances' names: the balancer's ids when it has them.
    pub(crate) fn instance_names(
        &self,
        balancer: Option<&swarm_sched::balance::BalancerSnapshot>,
    ) -> Vec<String> {
        match balancer {
            Some(b) => b.instances.iter().map(|i| i.id.clone()).collect(),
            None => self.instances.clone(),
        }
    }

    pub(crate) fn track_running(&self, id: TaskId, r: Running) {
        lock(&self.running).insert(id, r);
    }

    pub(crate) fn untrack_running(&self, id: TaskId) {
        lock(&self.running).remove(&id);
    }

    pub(crate) fn running_handle(&self, id: TaskId) -> Option<Running> {
        lock(&self.running).get(&id).cloned()
    }

    pub(crate) fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    fn rejections(&self) -> Rejections {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Rejections {
            queue_full: get(&c.rejected_full),
            queue_delay: get(&c.rejected_delay),
            deadline_unmeetable: get(&c.rejected_deadline),
            tenant_quota: get(&c.rejected_quota),
            process_overloaded: get(&c.rejected_process),
        }
    }

    /// What the monitor judges every interval: the counters and the oldest
    /// queued task's age (ms), without building the whole status view.
    pub(crate) fn mark(&self) -> (PoolMark, u64) {
        let oldest = lock(&self.queues)
            .tasks
            .oldest_enqueued_at()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rejected = self.rejections().total();
        let timed_out = get(&c.timed_out);
        let mark = PoolMark {
            offered: get(&c.accepted) + rejected,
            rejected,
            ended: get(&c.succeeded) + get(&c.failed) + timed_out + get(&c.cancelled),
            timed_out,
        };
        (mark, oldest)
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let (queued, by_class, oldest, tenants, children, target, shedding) = {
            let q = lock(&self.queues);
            let oldest = q
                .tasks
                .oldest_enqueued_at()
                .map(|t| (now - t).as_millis() as u64)
                .unwrap_or(0);
            let tenants: BTreeMap<String, usize> = q
                .tasks
                .tenants()
                .into_iter()
                .take(10)
                .map(|(t, n)| (t.to_string(), n))
                .collect();
            (
                q.tasks.len(),
                q.tasks.len_by_class(),
                oldest,
                tenants,
                q.children.len(),
                q.codel_target,
                q.codel.is_overloaded(),
            )
        };
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rejections = self.rejections();
        let limit = self.limiter.snapshot();
        let balancer = self.agent.balanced().map(|b| b.snapshot());
        PoolStatus {
            name: self.name.clone(),
            agent: self.agent_kind.clone(),
            concurrency: limit.limit,
            limit,
            running: self.running_count(),
            queued,
            queued_by_priority: Priority::ALL
                .iter()
                .map(|p| (p.as_str(), by_class[p.index()]))
                .collect(),
            queued_by_tenant: tenants,
            children_queued: children,
            queue_capacity: self.capacity,
            oldest_queued_ms: oldest,
            queue_target_ms: match (self.codel_on, target) {
                (true, Some(t)) => t.as_secs_f64() * 1000.0,
                _ => 0.0,
            },
            // The verdict of the last admission, while anything waits.
            shedding: self.codel_on && shedding && queued > 0,
            drain_per_s: self.drain.per_second(),
            latency_ms: self.metrics.recent(),
            instances: self.instance_names(balancer.as_ref()),
            balancer,
            workers: self.agent.workers(),
            accepted: get(&c.accepted),
            rejected: rejections.total(),
            rejections,
            succeeded: get(&c.succeeded),
            failed: get(&c.failed),
            timed_out: get(&c.timed_out),
            expired_in_queue: get(&c.expired_in_queue),
            cancelled: get(&c.cancelled),
            children: get(&c.children),
        }
    }

    /// Takes every queued task out (shutdown); waiting children are
    /// dropped, which fails their parents' calls.
    pub(crate) fn drain(&self) -> Vec<Queued> {
        let mut q = lock(&self.queues);
        q.children.clear();
        q.tasks.drain().into_iter().map(|(q, _)| q).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metrics;

    #[tokio::test]
    async fn tasks_being_stored_count_against_the_queue_bound() {
        let mut cfg = PoolConfig::default();
        cfg.queue.capacity = 2;
        let pool = Pool::new(
            "p",
            &cfg,
            &[],
            Arc::new(swarm_agents::echo::EchoAgent),
            Metrics::new(false, 1).pool("p"),
        );
        let t = Duration::from_secs(10);
        let a = pool.admit(t, "x").expect("first");
        let _b = pool.admit(t, "x").expect("second");
        // Nothing is in the queue yet, but two are on their way into it.
        match pool.admit(t, "x") {
            Err(EngineError::Overloaded { code, .. }) => assert_eq!(code, "queue_full"),
            other => panic!("expected queue_full, got {other:?}"),
        }
        drop(a);
        assert!(
            pool.admit(t, "x").is_ok(),
            "a stored (or failed) task frees its place"
        );
    }
}
