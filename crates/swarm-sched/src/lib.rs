//! # swarm-sched
//!
//! Scheduling building blocks with no knowledge of HTTP, SQL or agents, so
//! other Rust programs can reuse them and every control loop can be tested
//! with paused `tokio::time`.
//!
//! # Layout
//! - [`priority`]: a bounded multi-class queue that serves urgent classes
//!   first without starving the others (weighted round robin).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod priority;

pub use priority::{ClassQueue, Full};
