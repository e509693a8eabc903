//! The engine as `/api/status` shows it: plain data, assembled by
//! `Engine::status` and rendered for Prometheus by `stats`.

use serde::Serialize;
use swarm_sched::cpu::CpuPoolStats;
use swarm_sched::limit::LimiterSnapshot;
use swarm_store::HealthSnapshot;

use crate::lifecycle::TransitionCounts;
use crate::monitor::ResourceReading;
use crate::pool::PoolStatus;
use crate::upkeep::retention::RetentionStatus;

/// The engine as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
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
}

/// The database, its connection pool and its upkeep, for `/api/status`.
#[derive(Debug, Clone, Serialize)]
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
