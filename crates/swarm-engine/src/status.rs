//! The engine as `/api/status` shows it: plain data, filled in by the
//! modules that keep each figure, assembled by `Engine::status` and
//! rendered for Prometheus by `stats`. It imports nothing of the engine's
//! own but the monitor's reading, so every layer can produce its view.

use serde::Serialize;
use swarm_sched::cpu::CpuPoolStats;
use swarm_sched::limit::LimiterSnapshot;
use swarm_store::HealthSnapshot;

use std::collections::BTreeMap;

use swarm_sched::balance::BalancerSnapshot;

use crate::monitor::ResourceReading;

/// The engine as `/api/status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// Build version.
    pub version: &'static str,
    /// This node's id.
    pub node_id: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Database and its connection pool.
    pub database: DatabaseStatus,
    /// Departments.
    pub pools: Vec<PoolStatus>,
    /// Tasks this process is tracking (queued or running here).
    pub live_tasks: usize,
    /// The process-wide cap on running tasks (`admission.global_max_inflight`,
    /// lowered by the resource governor while CPU or memory is high).
    pub global: LimiterSnapshot,
    /// Process CPU and memory as last sampled.
    pub resources: ResourceReading,
    /// The thread pool for blocking, CPU-heavy agent work.
    pub cpu_pool: CpuPoolStats,
    /// State changes that needed the database more than once, and tasks
    /// taken from the store into this node's queues.
    pub transitions: TransitionCounts,
    /// Whether shutdown has begun.
    pub draining: bool,
    /// The token budgets of tenants that have one (`[[tenants]]
    /// tokens_per_minute`, `tokens_per_day`), per window: limit, spent,
    /// reserved, remaining, on every node.
    pub tenant_tokens: std::collections::BTreeMap<String, swarm_sched::budget::BudgetStatus>,
}

/// The database, its connection pool and its upkeep, for `/api/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatabaseStatus {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Whether writes commit now (false during an outage).
    pub available: bool,
    /// Outages: the current one (length, reason) and how many since start.
    pub health: HealthSnapshot,
    /// Open connections.
    pub size: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections in use.
    pub in_use: u32,
    /// Ceiling.
    pub max: u32,
    /// Writes waiting for the group-commit writer.
    pub write_queue: usize,
    /// Batches the writer ran again after a transient failure.
    pub write_retries: u64,
    /// Deletion of finished work past `[database] retention`.
    pub retention: RetentionStatus,
}

/// A pool as `/api/status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Retries waiting for their backoff to end, and delayed tasks
    /// (`run_at`, `delay_ms`) waiting for their time: not counted as queued.
    pub scheduled: usize,
    /// Retries scheduled since start.
    pub retries: u64,
    /// Retries the department's retry budget refused (the task failed).
    pub retries_refused: u64,
    /// Times the provider said a quota was spent (rate-limit headers with
    /// nothing remaining, a `429` with `Retry-After`) and starts paused.
    pub provider_pauses: u64,
    /// How much longer starts are paused, ms (0: not paused).
    pub paused_ms: u64,
    /// The department's token budget (`tokens_per_minute`,
    /// `tokens_per_day`), per window: limit, spent, reserved, remaining,
    /// on every node. Absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<swarm_sched::budget::BudgetStatus>,
    /// Times spent tokens filled a window and paused starts.
    pub token_pauses: u64,
    /// Queued by priority.
    pub queued_by_priority: BTreeMap<&'static str, usize>,
    /// Queued by tenant (the ten largest).
    pub queued_by_tenant: BTreeMap<String, usize>,
    /// While anything is queued: what the queued tasks wait for (the step
    /// the department's dispatcher cannot pass yet).
    #[schema(required)]
    pub waiting_for: Option<swarm_core::Blocker>,
    /// Queued tasks by what they wait for (every blocker listed).
    pub queued_by_blocker: BTreeMap<&'static str, usize>,
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
    /// Completions per second (stored tasks and children), smoothed.
    pub drain_per_s: f64,
    /// End-to-end latency of tasks that succeeded in the last 5-10 s.
    pub latency_ms: RecentLatency,
    /// Instance names.
    pub instances: Vec<String>,
    /// The balancer over the instances, when there are several: policy and
    /// per instance state (healthy, ejected, half-open, draining), calls in
    /// flight, latency estimate, outcomes and share of picks.
    pub balancer: Option<BalancerSnapshot>,
    /// Worker processes (`agent = "process"`): alive, busy, restarts, kills.
    pub workers: Option<swarm_agents::ProcessStats>,
    /// Tasks accepted since start.
    pub accepted: u64,
    /// Submissions refused since start, all reasons.
    pub rejected: u64,
    /// Submissions refused since start, by reason.
    pub rejections: Rejections,
    /// Outcomes since start, stored tasks and children together.
    pub succeeded: u64,
    /// Outcomes since start, stored tasks and children together.
    pub failed: u64,
    /// Outcomes since start (in the queue or while running), stored tasks
    /// and children together.
    pub timed_out: u64,
    /// Of `timed_out`, stored tasks whose deadline passed while queued.
    pub expired_in_queue: u64,
    /// Outcomes since start, stored tasks and children together.
    pub cancelled: u64,
    /// Child tasks (nested calls from other departments' runs) run since
    /// start.
    pub children: u64,
    /// The outcomes of those child tasks alone (included in the totals
    /// above).
    pub child_outcomes: Outcomes,
}

/// Outcomes since start.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Outcomes {
    /// Ended `succeeded`.
    pub succeeded: u64,
    /// Ended `failed`.
    pub failed: u64,
    /// Ended `timed_out`.
    pub timed_out: u64,
    /// Ended `cancelled`.
    pub cancelled: u64,
}

impl Outcomes {
    /// All outcomes.
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out + self.cancelled
    }
}

/// Refusals by reason.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rejections {
    /// Queue at its bound (503 `queue_full`).
    pub queue_full: u64,
    /// CoDel: a standing queue (503 `queue_delay`).
    pub queue_delay: u64,
    /// Could not start before its deadline (503 `deadline_unmeetable`).
    pub deadline_unmeetable: u64,
    /// Tenant over its quota (429 `tenant_quota`).
    pub tenant_quota: u64,
    /// No room in the tenant's or the department's token budget (429
    /// `token_budget`).
    pub token_budget: u64,
    /// Process over its memory threshold (503 `process_overloaded`).
    pub process_overloaded: u64,
    /// The database takes no writes (503 `database_unavailable`).
    pub database_unavailable: u64,
    /// The database writer is behind on new tasks (503 `database_busy`).
    pub database_busy: u64,
}

impl Rejections {
    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.queue_delay
            + self.deadline_unmeetable
            + self.tenant_quota
            + self.token_budget
            + self.process_overloaded
            + self.database_unavailable
            + self.database_busy
    }
}

/// The figures of [`Lifecycle::counts`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TransitionCounts {
    /// Writes of accepted work tried again after the database failed them.
    pub retried: u64,
    /// Tasks taken into this node's queues from the store (start-up,
    /// rescue of dead nodes, sweep).
    pub adopted: u64,
    /// Of those, taken back by the sweep: rows this node owned but did not
    /// hold, after a write whose outcome was unknown.
    pub swept: u64,
    /// Outcomes the store refused, stored as `failed` with
    /// `outcome_not_stored` instead.
    pub replaced: u64,
    /// Transitions given up when the engine stopped (run again later).
    pub abandoned: u64,
}

/// Retention as `/api/status` shows it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RetentionStatus {
    /// How long finished work is kept, seconds; absent: for ever.
    pub keep_s: Option<u64>,
    /// Finished tasks deleted since start.
    pub deleted_tasks: u64,
    /// Outbox messages deleted since start.
    pub deleted_outbox: u64,
    /// Passes run since start.
    pub passes: u64,
    /// When the last pass ran, epoch ms (0: not yet).
    pub last_pass_at: i64,
}

/// Recent end-to-end latency of successful tasks, for `/api/status`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RecentLatency {
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Tasks the figures cover.
    pub count: u64,
    /// The window, seconds.
    pub window_s: f64,
}

/// `GET /api/nodes`: the nodes sharing this database and this node's
/// cluster counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodesView {
    /// This node's id.
    pub node_id: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Every node registered on the database.
    pub nodes: Vec<NodeView>,
    /// What this node counted of the cluster.
    pub this_node: ClusterCounts,
}

/// One node of [`NodesView`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its id.
    pub node_id: String,
    /// Where it serves HTTP.
    pub address: String,
    /// Whether its process holds its liveness lock now.
    pub alive: bool,
    /// Whether it left (shut down cleanly).
    pub left: bool,
    /// Milliseconds since its last heartbeat; `null` once it left.
    #[schema(required)]
    pub heartbeat_age_ms: Option<i64>,
    /// When it (last) started (RFC 3339).
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Its process id on its machine.
    pub pid: i64,
    /// Its version.
    pub version: String,
    /// Whether it is the node answering.
    pub this: bool,
    /// Its per-department load as it last published it.
    #[schema(value_type = Object)]
    pub pools: serde_json::Value,
}

/// This node's view of the cluster, in [`NodesView`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterCounts {
    /// Other nodes alive now.
    pub live_peers: u64,
    /// Tasks this node claimed from the shared queue.
    pub claimed: u64,
    /// Tasks queued here that other nodes claimed (and this node dropped).
    pub claimed_from_here: u64,
    /// Tasks taken over from nodes that died.
    pub taken_over: u64,
    /// Outstanding tasks per tenant on the other nodes, as this node counts
    /// them against tenant quotas.
    pub tenants_elsewhere: std::collections::HashMap<String, usize>,
}
