//! A department: its agent, its queue, its concurrency and its instances.
//!
//! One dispatcher per pool takes a concurrency permit first and then the next
//! queued task, so a task leaves the queue only when it can start at once
//! (queue wait is honest, and cancelling a queued task is a queue removal).
//! The permit moves into the task's run and is released when the run ends,
//! on every path (success, error, timeout, cancel, panic), because it is
//! dropped with the run's future.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use swarm_agents::Agent;
use swarm_core::config::PoolConfig;
use swarm_core::{Priority, Task, TaskId};
use swarm_sched::ClassQueue;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Weighted-round-robin weights per priority (critical, high, normal, low).
const PRIORITY_WEIGHTS: [u32; 4] = [8, 4, 2, 1];

/// A task waiting in a pool's queue.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) task: Task,
    /// When this process queued it (for sub-millisecond queue timings).
    pub(crate) enqueued_at: Instant,
    /// When this process accepted it, if it did (not for recovered tasks).
    pub(crate) accepted_at: Option<Instant>,
}

/// A running task's handle: firing `cancel` stops it as `cancelled`.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub(crate) cancel: CancellationToken,
}

pub(crate) struct Pool {
    pub(crate) name: String,
    pub(crate) agent_kind: String,
    pub(crate) agent: Arc<dyn Agent>,
    pub(crate) concurrency: usize,
    pub(crate) capacity: usize,
    pub(crate) default_timeout_ms: u64,
    pub(crate) max_timeout_ms: u64,
    pub(crate) instances: Vec<String>,
    next_instance: AtomicUsize,
    queue: Mutex<ClassQueue<Queued, 4>>,
    pub(crate) notify: Notify,
    pub(crate) permits: Arc<Semaphore>,
    running: Mutex<HashMap<TaskId, Running>>,
    pub(crate) counters: Counters,
}

/// Lifetime counts, for status and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) cancelled: AtomicU64,
}

/// A pool as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Department name.
    pub name: String,
    /// Agent kind.
    pub agent: String,
    /// Tasks allowed to run at once.
    pub concurrency: usize,
    /// Tasks running now.
    pub running: usize,
    /// Tasks queued now.
    pub queued: usize,
    /// Queued by priority.
    pub queued_by_priority: BTreeMap<&'static str, usize>,
    /// Queue bound.
    pub queue_capacity: usize,
    /// Age of the oldest queued task, ms.
    pub oldest_queued_ms: u64,
    /// Instance names.
    pub instances: Vec<String>,
    /// Tasks accepted since start.
    pub accepted: u64,
    /// Submissions refused (queue full) since start.
    pub rejected: u64,
    /// Outcomes since start.
    pub succeeded: u64,
    /// Outcomes since start.
    pub failed: u64,
    /// Outcomes since start.
    pub timed_out: u64,
    /// Outcomes since start.
    pub cancelled: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single container operation, so a
    // panic elsewhere cannot leave the data half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new(name: &str, cfg: &PoolConfig, agent: Arc<dyn Agent>) -> Self {
        let concurrency = cfg.concurrency_or_default(name);
        let replicas = cfg.replicas_or_default();
        Self {
            name: name.to_string(),
            agent_kind: cfg.agent_kind(name).to_string(),
            agent,
            concurrency,
            capacity: cfg.queue_capacity_or_default(),
            default_timeout_ms: cfg.default_timeout_or_default(),
            max_timeout_ms: cfg.max_timeout_or_default(),
            instances: (0..replicas).map(|i| format!("{name}-{i}")).collect(),
            next_instance: AtomicUsize::new(0),
            // Admission checks the bound before the task is stored; once
            // stored, a task must always find a place, so the queue itself
            // is unbounded.
            queue: Mutex::new(ClassQueue::new(PRIORITY_WEIGHTS, usize::MAX)),
            notify: Notify::new(),
            permits: Arc::new(Semaphore::new(concurrency)),
            running: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// Whether admission should refuse: the queue is at its bound.
    pub(crate) fn is_full(&self) -> bool {
        lock(&self.queue).len() >= self.capacity
    }

    pub(crate) fn push(&self, q: Queued) {
        let class = q.task.priority.index();
        // The queue is unbounded (see `new`), so this cannot be refused.
        let _ = lock(&self.queue).push(class, q);
        self.notify.notify_one();
    }

    pub(crate) fn push_front(&self, q: Queued) {
        let class = q.task.priority.index();
        lock(&self.queue).push_front(class, q);
        self.notify.notify_one();
    }

    pub(crate) fn pop(&self) -> Option<Queued> {
        lock(&self.queue).pop()
    }

    pub(crate) fn remove_queued(&self, id: TaskId) -> Option<Queued> {
        lock(&self.queue).remove_first(|q| q.task.id == id)
    }

    /// Round robin over the pool's instances.
    pub(crate) fn pick_instance(&self) -> &str {
        let i = self.next_instance.fetch_add(1, Ordering::Relaxed);
        &self.instances[i % self.instances.len()]
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

    pub(crate) fn status(&self) -> PoolStatus {
        let (queued, by_class, oldest) = {
            let q = lock(&self.queue);
            let oldest = q
                .heads()
                .map(|h| h.enqueued_at.elapsed().as_millis() as u64)
                .max()
                .unwrap_or(0);
            (q.len(), q.len_by_class(), oldest)
        };
        let c = &self.counters;
        PoolStatus {
            name: self.name.clone(),
            agent: self.agent_kind.clone(),
            concurrency: self.concurrency,
            running: self.running_count(),
            queued,
            queued_by_priority: Priority::ALL
                .iter()
                .map(|p| (p.as_str(), by_class[p.index()]))
                .collect(),
            queue_capacity: self.capacity,
            oldest_queued_ms: oldest,
            instances: self.instances.clone(),
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Takes every queued task out (shutdown).
    pub(crate) fn drain(&self) -> Vec<Queued> {
        lock(&self.queue).drain()
    }
}
