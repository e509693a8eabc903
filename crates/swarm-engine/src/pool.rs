//! A department: its agent, its queues, its limiter and its counters.
//!
//! # Queue
//! Stored tasks wait in a [`FairQueue`]: priorities served by weighted round
//! robin (8:4:2:1), tenants inside a priority by deficit round robin, so a
//! flooding tenant delays another by at most one round. Child tasks (nested
//! calls of running tasks) wait in a separate FIFO that is served first:
//! finishing work already started frees its parent's slot soonest, and
//! children never wait behind new submissions.
//!
//! # Limiter
//! A dispatcher (`dispatch`) takes a permit of the pool's adaptive
//! [`Limiter`] before it takes work out, so work leaves the queue only when
//! it can start at once (queue wait is honest, and cancelling a queued task
//! is a queue removal).
//!
//! # Retries and delayed tasks waiting for their time
//! A task whose attempt failed retryably waits out its backoff in the
//! pool's `later` set, ordered by its `run_after` (epoch ms), not in the
//! queue, and so does a task submitted with `run_at` or `delay_ms`: it is
//! `scheduled`, counted apart from `queued` by status and by
//! admission, and it holds no permit. The dispatcher moves the due ones
//! into the queue ([`Pool::promote`]) before each look at the queue, and
//! sleeps until the next one is due when there is nothing else to do.
//! Cancels and a shutdown's hand-off see `later` as they see the queue;
//! the deadline sweep need not, since everything there is due before its
//! deadline.
//!
//! # What the pool does not decide
//! Whether a submission is admitted is `admission`'s decision, made from
//! the readings this pool offers ([`Pool::queue_reading`],
//! [`Pool::expected_wait`]); what a task's state becomes is `lifecycle`'s.
//! The pool only holds the state, behind methods.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use swarm_agents::Agent;
use swarm_core::config::{PoolConfig, TaskRetryConfig, TenantConfig};
use swarm_core::{Blocker, Priority, RetryPolicy, TaskId, TaskStatus};
use swarm_sched::balance::{RetryBudget, RetryConfig};
use swarm_sched::codel::CoDel;
use swarm_sched::fair::FairQueue;
use swarm_sched::limit::Limiter;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::ledger::{DrainRate, TenantRates};
use crate::monitor::PoolMark;
use crate::stats::PoolMetrics;
use crate::status::{Outcomes, PoolStatus, Rejections};
use crate::tokens::Budget;
use crate::work::{ChildJob, Queued};

/// Weighted-round-robin weights per priority (critical, high, normal, low).
const PRIORITY_WEIGHTS: [u32; 4] = [8, 4, 2, 1];

/// Floor of the automatic CoDel target: below it, timer and scheduling noise
/// would read as queueing.
const MIN_AUTO_TARGET: Duration = Duration::from_millis(5);

/// The departments by name, fixed for the life of the engine.
pub(crate) struct Pools(BTreeMap<String, Arc<Pool>>);

impl Pools {
    pub(crate) fn new(pools: BTreeMap<String, Arc<Pool>>) -> Self {
        Self(pools)
    }

    /// The department called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.0.get(name)
    }

    /// Every department, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.0.values()
    }
}

// === Queues ===

struct Queues {
    tasks: FairQueue<Queued>,
    /// Retries waiting for their `run_after`, by (run_after, id).
    later: BTreeMap<(i64, TaskId), Queued>,
    children: VecDeque<ChildJob>,
    codel: CoDel,
    /// The target `codel` was built with; `None` while an automatic target
    /// waits for its first measurement (no shedding on a guess).
    codel_target: Option<Duration>,
    /// At most the earliest deadline (epoch ms) of a task in `tasks`: every
    /// push lowers it, and a look at the whole queue (`Pool::tend`) sets it
    /// exactly. Removals leave it low, which costs at most one look too
    /// many. Until it passes, nothing in the queue can have expired, so the
    /// governor's tick does not walk a deep backlog (a million tasks took a
    /// core of memmove at four looks a second).
    expiry_bound: i64,
}

impl Queues {
    /// Queues `q` at the back of its class and tenant.
    fn push(&mut self, q: Queued) {
        let (class, tenant) = (q.task.priority.index(), q.task.tenant.clone());
        self.expiry_bound = self.expiry_bound.min(q.task.deadline_at);
        // The queue is unbounded (see `Pool::new`), so this cannot be refused.
        let _ = self.tasks.push(class, &tenant, q);
    }

    /// Puts `q` back at the head of its class, keeping its enqueue time.
    fn push_front(&mut self, q: Queued) {
        let (class, tenant) = (q.task.priority.index(), q.task.tenant.clone());
        self.expiry_bound = self.expiry_bound.min(q.task.deadline_at);
        self.tasks.push_front(class, &tenant, q.enqueued_at, q);
    }
}

/// What admission reads of a pool's queue for one submission.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueReading {
    /// Tasks queued plus those being stored (see [`Pool::begin_pending`]).
    pub(crate) queued: usize,
    /// The queue bound.
    pub(crate) capacity: usize,
    /// CoDel's target and its verdict (a queue standing above the target
    /// for an interval); `None` while shedding is off or unmeasured.
    pub(crate) codel: Option<(Duration, bool)>,
    /// Whether this tenant is exempt from shedding: within its max-min fair
    /// share, or admitted more slowly than a tenant over its share.
    pub(crate) exempt: bool,
}

/// A task admitted but not yet queued: counted as queued until dropped
/// (queued, or failed to store).
#[derive(Debug)]
pub(crate) struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A run in progress; counts in [`Pool::running_count`] until dropped.
#[derive(Debug)]
pub(crate) struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === Counters ===

/// Why a submission was refused, for the counters (`Rejections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    QueueFull,
    QueueDelay,
    DeadlineUnmeetable,
    TenantQuota,
    TokenBudget,
    ProcessOverloaded,
    DatabaseUnavailable,
    DatabaseBusy,
}

/// Outcomes of one kind of work (stored tasks, or children).
#[derive(Debug, Default)]
struct OutcomeCounts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
}

impl OutcomeCounts {
    fn add(&self, status: TaskStatus) {
        match status {
            TaskStatus::Succeeded => &self.succeeded,
            TaskStatus::Failed => &self.failed,
            TaskStatus::TimedOut => &self.timed_out,
            _ => &self.cancelled,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn view(&self) -> Outcomes {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Outcomes {
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            timed_out: get(&self.timed_out),
            cancelled: get(&self.cancelled),
        }
    }
}

/// Lifetime counts, for status and benchmarks.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: [AtomicU64; 8],
    tasks: OutcomeCounts,
    children: OutcomeCounts,
    expired_in_queue: AtomicU64,
}

// === Pool ===

/// One department.
pub(crate) struct Pool {
    /// The department's name.
    name: String,
    /// Its agent kind, as configured.
    agent_kind: String,
    /// The agent every run calls.
    agent: Arc<dyn Agent>,
    /// Queue bound (admission refuses past it).
    capacity: usize,
    default_timeout_ms: u64,
    max_timeout_ms: u64,
    /// Nominal instance names, picked round robin; one entry (the pool's
    /// name) when the agent balances instances itself.
    instances: Vec<String>,
    next_instance: AtomicUsize,
    /// The queues and CoDel, under one lock.
    queues: Mutex<Queues>,
    /// `Some(target)` when configured, `None` for the automatic target.
    codel_fixed: Option<Duration>,
    /// False when configured with a target of 0.
    codel_on: bool,
    codel_interval: Duration,
    /// Wakes the dispatcher when work arrives.
    notify: Notify,
    /// What the dispatcher last had to wait for, so what every task queued
    /// here waits for (event streams follow its changes).
    waiting: watch::Sender<Blocker>,
    /// Starts held until a time, and why ([`Pool::pause`]).
    pause: Mutex<Option<(Blocker, Instant)>>,
    /// Wakes the dispatcher when a pause is set or lengthened.
    pause_changed: Notify,
    /// The pool's concurrency limit.
    limiter: Limiter,
    /// Runs in progress.
    running: Arc<AtomicUsize>,
    /// Tasks admitted and not yet queued (their rows are being committed).
    /// Admission counts them as queued: at thousands of submissions a
    /// second, a group commit's few milliseconds hold dozens of them, and
    /// counting only the queue would admit all of them on the same view.
    pending: Arc<AtomicUsize>,
    /// Delayed tasks admitted and not yet held (their rows are being
    /// committed): scheduled, not queued.
    pending_later: Arc<AtomicUsize>,
    counters: Counters,
    /// Stage histograms and recent latencies.
    metrics: PoolMetrics,
    /// Completions per second (the basis of `Retry-After`).
    drain: DrainRate,
    /// Admission rates per tenant (fair shedding).
    rates: TenantRates,
    /// The retry policy of tasks that give none.
    retry_policy: RetryPolicy,
    /// Bounds retries across the department: first attempts deposit,
    /// retries withdraw.
    retry_budget: RetryBudget,
    /// Retries scheduled, and retries the budget refused.
    retries: AtomicU64,
    retries_refused: AtomicU64,
    /// Pauses the provider asked for (its quota spent).
    provider_pauses: AtomicU64,
    /// `obey_rate_limits`: whether provider signals pause starts.
    obey_rate_limits: bool,
    /// `tokens_per_minute`, `tokens_per_day`, if either is set.
    tokens: Option<Budget>,
    /// Times a spent token budget paused starts.
    token_pauses: AtomicU64,
}

/// tower's budget behind the balancer's retries, with the task retry
/// settings.
fn retry_budget(cfg: &TaskRetryConfig) -> RetryBudget {
    RetryBudget::new(&RetryConfig {
        ratio: cfg.budget_ratio,
        min_per_sec: cfg.budget_min_per_sec,
        ttl_secs: cfg.budget_ttl_secs,
        ..RetryConfig::default()
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few container operations that cannot
    // panic half-way, so a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// Replaces the tenants' fair-queue weights (a reload); tenants no
    /// longer listed go back to weight 1.
    pub(crate) fn set_tenant_weights(&self, tenants: &[TenantConfig]) {
        let mut q = lock(&self.queues);
        q.tasks.clear_tenant_weights();
        for t in tenants {
            q.tasks.set_tenant_weight(&t.name, t.weight);
        }
    }

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
        let retry = cfg.retry_task.clone().unwrap_or_default();
        Self {
            retry_policy: retry.policy(),
            retry_budget: retry_budget(&retry),
            retries: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
            provider_pauses: AtomicU64::new(0),
            obey_rate_limits: cfg.obey_rate_limits.unwrap_or(true),
            tokens: crate::tokens::budget(cfg.tokens_per_minute, cfg.tokens_per_day),
            token_pauses: AtomicU64::new(0),
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
                later: BTreeMap::new(),
                children: VecDeque::new(),
                codel: CoDel::new(target, interval),
                codel_target: codel_fixed,
                expiry_bound: i64::MAX,
            }),
            codel_fixed,
            codel_on,
            codel_interval: interval,
            notify: Notify::new(),
            waiting: watch::channel(Blocker::DepartmentLimit).0,
            pause: Mutex::new(None),
            pause_changed: Notify::new(),
            limiter,
            running: Arc::default(),
            pending: Arc::default(),
            pending_later: Arc::default(),
            counters: Counters::default(),
            drain: DrainRate::default(),
            rates: TenantRates::default(),
            metrics,
        }
    }

    // --- what queued tasks wait for ---

    /// Records what the dispatcher waits for now; only a change wakes the
    /// streams that follow it.
    pub(crate) fn set_blocker(&self, b: Blocker) {
        self.waiting.send_if_modified(|cur| {
            let changed = *cur != b;
            *cur = b;
            changed
        });
    }

    /// What the tasks queued here wait for.
    pub(crate) fn blocker(&self) -> Blocker {
        *self.waiting.borrow()
    }

    /// Follows [`Pool::blocker`].
    pub(crate) fn blocker_watch(&self) -> watch::Receiver<Blocker> {
        self.waiting.subscribe()
    }

    /// Holds every start in the department (stored tasks and children)
    /// until `until`, because of `why` (a provider's quota reset, a spent
    /// token budget). A pause only ever lengthens: an earlier `until` than
    /// the one in force changes nothing, so two signals never shorten each
    /// other's wait. Queued tasks stay queued with their deadlines.
    pub(crate) fn pause(&self, why: Blocker, until: Instant) {
        let mut p = lock(&self.pause);
        let longer = match *p {
            Some((_, cur)) => until > cur,
            None => until > Instant::now(),
        };
        if longer {
            *p = Some((why, until));
            drop(p);
            self.pause_changed.notify_one();
        }
    }

    /// The department's token budget, if it has one.
    pub(crate) fn tokens(&self) -> Option<&Budget> {
        self.tokens.as_ref()
    }

    /// Pauses starts while the department's spent tokens fill a window of
    /// its budget (estimates that were low), until the window has room.
    pub(crate) fn pause_if_spent(&self) {
        let Some(until) = self.tokens.as_ref().and_then(crate::tokens::spent_until) else {
            return;
        };
        let longer = match self.paused(Instant::now()) {
            Some((_, cur)) => until > cur,
            None => true,
        };
        if longer {
            self.token_pauses.fetch_add(1, Ordering::Relaxed);
            self.pause(Blocker::TokenBudget, until);
        }
    }

    /// The pause in force at `now`, if any (an ended one is cleared).
    pub(crate) fn paused(&self, now: Instant) -> Option<(Blocker, Instant)> {
        let mut p = lock(&self.pause);
        match *p {
            Some((_, until)) if until <= now => {
                *p = None;
                None
            }
            other => other,
        }
    }

    /// Resolves when [`Pool::pause`] sets or lengthens a pause.
    pub(crate) fn pause_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.pause_changed.notified()
    }

    // --- what the pool is ---

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn agent_kind(&self) -> &str {
        &self.agent_kind
    }

    pub(crate) fn agent(&self) -> &Arc<dyn Agent> {
        &self.agent
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    pub(crate) fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// `timeout_ms` when a submission gives none.
    pub(crate) fn default_timeout_ms(&self) -> u64 {
        self.default_timeout_ms
    }

    /// The largest `timeout_ms` a submission may ask for.
    pub(crate) fn max_timeout_ms(&self) -> u64 {
        self.max_timeout_ms
    }

    /// Seconds until `backlog` tasks have drained at the measured rate.
    pub(crate) fn retry_after_s(&self, backlog: usize) -> u64 {
        self.drain.retry_after_s(backlog)
    }

    // --- admission readings ---

    /// Counts a submission of `tenant` and reads the queue for it. Feeds
    /// CoDel's admission-side state (see `swarm_sched::codel`).
    pub(crate) fn queue_reading(&self, tenant: &str, now: Instant) -> QueueReading {
        self.rates.offered(tenant, now);
        let mut q = lock(&self.queues);
        let queued = q.tasks.len() + self.pending.load(Ordering::Relaxed);
        let codel = match (self.codel_on, q.codel_target) {
            (true, Some(target)) if queued < self.capacity => {
                let head_age = q.tasks.oldest_enqueued_at().map(|t| now - t);
                Some((target, q.codel.on_admission(head_age, now)))
            }
            _ => None,
        };
        let exempt = q.tasks.is_favoured(tenant)
            || self.rates.is_light(tenant, now, |t| q.tasks.is_favoured(t));
        QueueReading {
            queued,
            capacity: self.capacity,
            codel,
            exempt,
        }
    }

    /// How long a task admitted now would wait, by Little's law: with
    /// `limit` running, each taking `rtt`, one leaves every rtt / limit, and
    /// everything queued (and the dispatcher's own wait for a permit) is
    /// ahead. Zero before any run has been measured.
    pub(crate) fn expected_wait(&self, queued: usize) -> Duration {
        let snap = self.limiter.snapshot();
        let ahead = (queued + snap.waiting) as f64;
        Duration::from_secs_f64(ahead * snap.rtt_us as f64 / 1e6 / snap.limit.max(1) as f64)
    }

    /// Marks one admitted task as on its way into the queue.
    pub(crate) fn begin_pending(&self, tenant: &str) -> PendingGuard {
        self.rates.admitted(tenant, Instant::now());
        self.pending.fetch_add(1, Ordering::Relaxed);
        PendingGuard(self.pending.clone())
    }

    /// [`Pool::begin_pending`] for a task that starts later: counted as
    /// scheduled, not queued, while its row is written.
    pub(crate) fn begin_scheduled(&self) -> PendingGuard {
        self.pending_later.fetch_add(1, Ordering::Relaxed);
        PendingGuard(self.pending_later.clone())
    }

    pub(crate) fn count_refusal(&self, why: Refusal) {
        self.counters.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_accepted(&self) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stored task's or a child's outcome; children also feed the
    /// drain rate and the recent-latency window here, stored tasks in
    /// [`Pool::count_stored_outcome`].
    pub(crate) fn count_child_outcome(&self, status: TaskStatus) {
        self.counters.children.add(status);
        self.drain.completed();
    }

    /// Counts a stored outcome. `expired` is a task whose deadline passed
    /// while it waited.
    pub(crate) fn count_stored_outcome(&self, status: TaskStatus, expired: bool) {
        self.counters.tasks.add(status);
        if expired {
            self.counters
                .expired_in_queue
                .fetch_add(1, Ordering::Relaxed);
        }
        self.drain.completed();
    }

    // --- queues ---

    /// Whether the dispatcher has something to start: a child always, a
    /// stored task unless shutdown has begun.
    pub(crate) fn ready(&self, draining: bool) -> bool {
        let q = lock(&self.queues);
        !q.children.is_empty() || (!draining && !q.tasks.is_empty())
    }

    /// Waits until work is pushed (or [`Pool::wake`] is called).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }

    pub(crate) fn push(&self, q: Queued) {
        lock(&self.queues).push(q);
        self.notify.notify_one();
    }

    /// Puts a task back at the head of its class (a start that could not
    /// be stored), keeping its place in CoDel's view.
    pub(crate) fn push_front(&self, q: Queued) {
        lock(&self.queues).push_front(q);
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
    pub(crate) fn pop_task(&self) -> Option<Queued> {
        let now = Instant::now();
        let mut q = lock(&self.queues);
        let (item, meta) = q.tasks.pop()?;
        q.codel.on_dequeue(now - meta.enqueued_at, now);
        Some(item)
    }

    /// What an agent of this department calls when its provider says a
    /// quota is spent (rate-limit headers, a `429` with `Retry-After`):
    /// every start waits until the reset instead of probing into refusals.
    pub(crate) fn provider_signal(self: &Arc<Self>) -> swarm_agents::ProviderSignal {
        let pool = Arc::downgrade(self);
        swarm_agents::ProviderSignal::new(move |p| {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            // The calls in flight (this one included, whose request the
            // provider has counted) may each use one of what is left: a
            // start past that would be refused.
            let in_flight = pool.limiter.in_flight() as u64;
            if pool.obey_rate_limits && (p.remaining == 0 || p.remaining < in_flight) {
                pool.provider_pauses.fetch_add(1, Ordering::Relaxed);
                pool.pause(Blocker::ProviderPause, Instant::now() + p.delay);
            }
        })
    }

    /// Queues a task, or holds it in `later` while its `run_after` is
    /// ahead (a delayed task, a retry in its backoff).
    pub(crate) fn push_when_due(&self, q: Queued) {
        match q
            .task
            .run_after
            .filter(|at| *at > swarm_core::clock::now_ms())
        {
            Some(at) => self.push_later(q, at),
            None => self.push(q),
        }
    }

    /// Holds a retry until `at` (epoch ms); [`Pool::promote`] queues it then.
    pub(crate) fn push_later(&self, q: Queued, at: i64) {
        let id = q.task.id;
        lock(&self.queues).later.insert((at, id), q);
        // The dispatcher may be asleep with no deadline: let it see this one.
        self.notify.notify_one();
    }

    /// Queues the retries due at `now_ms`; returns when the next one is due.
    pub(crate) fn promote(&self, now_ms: i64) -> Option<i64> {
        let mut q = lock(&self.queues);
        let mut moved = false;
        while let Some(entry) = q.later.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let mut item = entry.remove();
            // Its queue wait starts now, not at the commit before its delay.
            item.enqueued_at = Instant::now();
            item.stored_at = Some(item.enqueued_at);
            q.push(item);
            moved = true;
        }
        let next = q.later.keys().next().map(|k| k.0);
        drop(q);
        if moved {
            self.notify.notify_one();
        }
        next
    }

    /// Retries and delayed tasks waiting for their time.
    pub(crate) fn scheduled_len(&self) -> usize {
        lock(&self.queues).later.len() + self.pending_later.load(Ordering::Relaxed)
    }

    /// The policy of a task that gives no `retry`.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry_policy
    }

    /// Records a first attempt (the budget's deposit).
    pub(crate) fn count_first_attempt(&self) {
        self.retry_budget.deposit();
    }

    /// Takes the right to one retry from the department's budget.
    pub(crate) fn take_retry(&self) -> bool {
        if self.retry_budget.withdraw() {
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.retries_refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Stored tasks waiting in the queue.
    pub(crate) fn queued_len(&self) -> usize {
        lock(&self.queues).tasks.len()
    }

    /// What other nodes see of this pool (the `load` of `GET /api/nodes`).
    pub(crate) fn load(&self) -> serde_json::Value {
        let limiter = self.limiter();
        serde_json::json!({
            "queued": self.queued_len(),
            "running": self.running_count(),
            "limit": limiter.limit(),
            "in_flight": limiter.in_flight(),
        })
    }

    /// Takes a queued task out, if it is here.
    pub(crate) fn remove_queued(&self, id: TaskId) -> Option<Queued> {
        let mut q = lock(&self.queues);
        if let Some((item, _)) = q.tasks.remove_first(|q| q.task.id == id) {
            return Some(item);
        }
        let key = q.later.keys().find(|k| k.1 == id).copied()?;
        q.later.remove(&key)
    }

    /// Whether task `id` is queued here (a scan: for the rare recheck).
    pub(crate) fn holds_queued(&self, id: TaskId) -> bool {
        let mut found = false;
        let mut q = lock(&self.queues);
        q.tasks.retain(|q, _| {
            found |= q.task.id == id;
            true
        });
        found || q.later.keys().any(|k| k.1 == id)
    }

    /// Takes every queued task out (shutdown); waiting children are
    /// dropped, which fails their parents' calls.
    pub(crate) fn drain_queue(&self) -> Vec<Queued> {
        let mut q = lock(&self.queues);
        q.children.clear();
        let later = std::mem::take(&mut q.later);
        q.tasks
            .drain()
            .into_iter()
            .map(|(q, _)| q)
            .chain(later.into_values())
            .collect()
    }

    // --- runs ---

    /// Counts a run as in progress until the guard drops.
    pub(crate) fn begin_run(&self) -> RunningGuard {
        self.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard(self.running.clone())
    }

    pub(crate) fn running_count(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Round robin over the pool's nominal instances.
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

    // --- upkeep ---

    /// The governor's tick: folds completions into the drain rate, follows
    /// the automatic CoDel target, refreshes fair shares, and takes out the
    /// queued tasks whose deadline passed (for `lifecycle` to expire).
    pub(crate) fn tend(&self, now: Instant, elapsed: Duration, wall_ms: i64) -> Vec<Queued> {
        self.drain.tick(elapsed);
        self.retune_codel();
        self.rates.prune(now);
        self.refavour(now);
        // `later` needs no look: a task there is due before its deadline
        // (a retry is not scheduled past it, a delayed task's deadline
        // counts from its start), so it is promoted before it can expire.
        let mut q = lock(&self.queues);
        if q.expiry_bound > wall_ms {
            return Vec::new();
        }
        let mut earliest = i64::MAX;
        let expired = q.tasks.retain(|q, _| {
            let keep = q.task.deadline_at > wall_ms;
            if keep {
                earliest = earliest.min(q.task.deadline_at);
            }
            keep
        });
        q.expiry_bound = earliest;
        drop(q);
        expired.into_iter().map(|(q, _)| q).collect()
    }

    /// Marks the tenants asking for less than their fair share of what the
    /// pool completes, so the queue serves them first (see
    /// `TenantRates::within_share`).
    fn refavour(&self, now: Instant) {
        let capacity = self.drain.per_second();
        let mut q = lock(&self.queues);
        let within = self
            .rates
            .within_share(capacity, |t| q.tasks.tenant_weight(t), now);
        q.tasks.set_favoured(within.iter().map(|t| &**t));
    }

    /// Follows the automatic CoDel target: an eighth of the pool's no-load
    /// run time (measured in BENCHMARKS.md: a half let admitted p99 reach
    /// 2.3× the unloaded p99 at 10× overload; an eighth keeps it near 2×
    /// with the same goodput).
    fn retune_codel(&self) {
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

    // --- views ---

    fn rejections(&self) -> Rejections {
        let r = |why: Refusal| self.counters.refused[why as usize].load(Ordering::Relaxed);
        Rejections {
            queue_full: r(Refusal::QueueFull),
            queue_delay: r(Refusal::QueueDelay),
            deadline_unmeetable: r(Refusal::DeadlineUnmeetable),
            tenant_quota: r(Refusal::TenantQuota),
            token_budget: r(Refusal::TokenBudget),
            process_overloaded: r(Refusal::ProcessOverloaded),
            database_unavailable: r(Refusal::DatabaseUnavailable),
            database_busy: r(Refusal::DatabaseBusy),
        }
    }

    /// What the monitor judges every interval: the counters and the oldest
    /// queued task's age (ms), without building the whole status view.
    pub(crate) fn mark(&self) -> (PoolMark, u64) {
        let oldest = lock(&self.queues)
            .tasks
            .oldest_enqueued_at()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        let rejected = self.rejections().total();
        let tasks = self.counters.tasks.view();
        let mark = PoolMark {
            offered: self.counters.accepted.load(Ordering::Relaxed) + rejected,
            rejected,
            ended: tasks.total(),
            timed_out: tasks.timed_out,
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
        let rejections = self.rejections();
        // One reading for both views, so they agree.
        let blocker = self.blocker();
        let limit = self.limiter.snapshot();
        let balancer = self.agent.balanced().map(|b| b.snapshot());
        let tasks = c.tasks.view();
        let kids = c.children.view();
        PoolStatus {
            name: self.name.clone(),
            agent: self.agent_kind.clone(),
            concurrency: limit.limit,
            limit,
            running: self.running_count(),
            queued,
            scheduled: self.scheduled_len(),
            retries: self.retries.load(Ordering::Relaxed),
            retries_refused: self.retries_refused.load(Ordering::Relaxed),
            provider_pauses: self.provider_pauses.load(Ordering::Relaxed),
            paused_ms: self
                .paused(now)
                .map_or(0, |(_, until)| (until - now).as_millis() as u64),
            tokens: self.tokens.as_ref().map(crate::tokens::status),
            token_pauses: self.token_pauses.load(Ordering::Relaxed),
            queued_by_priority: Priority::ALL
                .iter()
                .map(|p| (p.as_str(), by_class[p.index()]))
                .collect(),
            queued_by_tenant: tenants,
            waiting_for: (queued > 0).then_some(blocker),
            queued_by_blocker: Blocker::ALL
                .iter()
                .map(|b| (b.as_str(), if *b == blocker { queued } else { 0 }))
                .collect(),
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
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: rejections.total(),
            rejections,
            succeeded: tasks.succeeded + kids.succeeded,
            failed: tasks.failed + kids.failed,
            timed_out: tasks.timed_out + kids.timed_out,
            expired_in_queue: c.expired_in_queue.load(Ordering::Relaxed),
            cancelled: tasks.cancelled + kids.cancelled,
            children: kids.total(),
            child_outcomes: kids,
        }
    }
}
