//! # swarm-core
//!
//! The vocabulary every other SwarmDirector crate speaks. No IO lives here.
//!
//! # Layout
//! - [`task`]: ids, states, priorities, the submitted [`task::TaskSpec`] and the
//!   stored [`task::Task`], per-stage [`task::Timings`].
//! - [`error`]: the field-level validation error every layer reports bad input with.
//! - [`config`]: `swarmd.toml` as types, with defaults and validation.
//! - [`clock`]: wall-clock milliseconds and their RFC 3339 rendering.
//! - [`whole`]: whole numbers in request bodies (`5.0` is `5`, as in JSON
//!   Schema).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod clock;
pub mod config;
pub mod error;
pub mod task;
pub mod whole;

pub use error::FieldError;
pub use task::{
    Attempt, Blocker, Delivery, Priority, RetryPolicy, RetrySpec, Task, TaskError, TaskId,
    TaskSpec, TaskStatus, Timings,
};
