//! # swarm-engine
//!
//! The life of a task between the HTTP edge and the agents: admission
//! (validation, routing, bounds), durable storage, per-department queues,
//! dispatch under each pool's concurrency limit, running under a deadline
//! with cancellation, recording the outcome, and telling waiters. It knows
//! nothing of HTTP.
//!
//! # Layout
//! - [`engine`]: [`Engine`], its API (submit, get, list, watch, wait, cancel,
//!   status, shutdown) and start-up recovery.
//! - [`director`]: routing a task to a department.
//! - `pool`: a department's fair queue, limiter, CoDel, instances and
//!   counters; admission checks.
//! - `run`: the dispatcher, one task's run, the limiter's classifier.
//! - `child`: nested calls as child tasks (and why they cannot deadlock).
//! - [`admission`]: tenant quotas, drain rates for `Retry-After`, the
//!   resource governor's readings.
//! - `hub`: live task state for waiters and event streams.
//! - `background`: heartbeat, cross-node cancels, rescue of dead nodes'
//!   tasks, and the governor (pool upkeep, CPU/memory → global cap).
//! - [`error`]: the engine's error type, [`EngineError`].
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admission;
mod background;
mod child;
pub mod director;
pub mod engine;
pub mod error;
mod hub;
pub mod instances;
pub mod monitor;
mod pool;
mod run;
pub mod stats;

pub use engine::{
    Access, CancelOutcome, DatabaseStatus, Engine, Status, Submission, Submitted, Watch,
};
pub use error::EngineError;
pub use hub::TaskEvent;
pub use monitor::{Alert, AlertsView, ResourceReading};
pub use pool::{PoolStatus, Rejections};
pub use run::OverloadClassifier;
pub use stats::{Metrics, RecentLatency};
pub use swarm_store::ListQuery;
