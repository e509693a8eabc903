//! # swarm-engine
//!
//! The life of a task between the HTTP edge and the agents: admission,
//! durable storage, per-department queues, dispatch under each pool's
//! concurrency limit, running under a deadline with cancellation, storing
//! the outcome (through any database outage), and telling waiters. It knows
//! nothing of HTTP.
//!
//! # Layout
//! The modules form layers; each imports only those below it
//! (`ARCHITECTURE.md` draws the graph).
//! - [`engine`]: [`Engine`], the public face: start-up wiring, submit, get,
//!   list, watch, wait, cancel, status, shutdown. [`instances`] adds a
//!   pool's instances at runtime and configuration reload; [`roster`]: the
//!   tenants as configured now, which a reload replaces.
//! - `admission`: every admission decision.
//! - `dispatch`: one dispatcher per pool. `run`: one stored task's run.
//!   `child`: nested calls as child tasks (and why they cannot deadlock).
//!   `env`: the handles they share.
//! - `upkeep`: heartbeat and cluster duties (cancel requests, rescue,
//!   sweep), the governor (pool upkeep, resources, global cap, alerts),
//!   retention.
//! - `attempt`: one agent attempt (deadline, cancel, grace, panic) and its
//!   limiter sample.
//! - `lifecycle`: every state transition (accept, start, finish, expire,
//!   hand back, cancel, adopt, rescue, sweep), with its store write, live
//!   publish and counters.
//! - `pool`: a department's queues, limiter and counters, behind methods.
//!   `work`: the queued items. `hub`: live task state and cancel tokens.
//!   [`watch`]: following one task. `ledger`: tenant slots and rates.
//!   `shutdown`: the stop signals.
//! - [`stats`]: metrics and their rendering; [`status`]: the status view;
//!   [`monitor`]: resource readings and alerts; [`director`]: routing;
//!   [`error`]: [`EngineError`].
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod admission;
mod attempt;
mod child;
pub mod director;
mod dispatch;
pub mod engine;
mod env;
pub mod error;
mod hub;
pub mod instances;
mod ledger;
mod lifecycle;
pub mod monitor;
mod pool;
pub mod roster;
mod run;
mod schedules;
mod shutdown;
pub mod stats;
pub mod status;
pub mod timetable;
mod tokens;
mod upkeep;
pub mod watch;
mod work;

pub use attempt::OverloadClassifier;
pub use engine::{Access, CancelOutcome, Engine, Submission, Submitted};
pub use error::EngineError;
pub use hub::{REPLAY, TaskEvent};
pub use monitor::{Alert, AlertsView, ResourceReading};
pub use stats::Metrics;
pub use status::{
    ClusterCounts, DatabaseStatus, NodeView, NodesView, Outcomes, PoolStatus, RecentLatency,
    Rejections, RetentionStatus, Status, TransitionCounts,
};
pub use swarm_store::ListQuery;
pub use watch::Watch;
