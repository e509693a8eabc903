//! # swarm-sched
//!
//! Scheduling building blocks with no knowledge of HTTP, SQL or agents, so
//! other Rust programs can reuse them and every control loop can be tested
//! with paused `tokio::time`.
//!
//! # Layout
//! - [`fair`]: priorities × per-tenant deficit round robin, bounded.
//! - [`balance`]: which instance of a pool gets a call (p2c over peak-EWMA,
//!   least outstanding, round robin, weighted, sticky hash), passive health
//!   with a half-open return, and retry helpers.
//! - [`codel`]: queue-delay overload detection (CoDel).
//! - [`limit`]: adaptive concurrency limits (fixed, AIMD, Gradient2, Vegas)
//!   enforced by a shrinkable semaphore.
//! - [`cpu`]: a bounded pool of threads for blocking, CPU-heavy work.
//! - [`util`]: deadlines and a bounded `join_all`.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod balance;
pub mod budget;
pub mod codel;
pub mod cpu;
pub mod fair;
pub mod limit;
pub mod util;

pub use codel::CoDel;
pub use cpu::{CancelFlag, CpuError, CpuJob, CpuPool, CpuPoolFull, CpuPoolStats};
pub use fair::{FairQueue, Full, QueueMeta};
pub use util::{Deadline, Elapsed, join_bounded, within};
