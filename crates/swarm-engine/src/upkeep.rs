//! The engine's background loops, each a struct with one `run`:
//! - [`heartbeat`]: this node's lease, and the cluster duties done beside it
//!   (cancel requests from other nodes, rescue of dead nodes' tasks, the
//!   sweep of this node's own orphaned rows);
//! - [`peers`]: the cluster on PostgreSQL: liveness lock, failover in
//!   under a second, shared work between nodes;
//! - [`governor`]: pool upkeep (drain rates, CoDel targets, fair shares,
//!   expired queued tasks), the resource monitor and the global cap, alerts;
//! - [`retention`]: deletion of finished work past `[database] retention`;
//! - [`webhooks`]: delivery of finished tasks to their `callback_url`.

pub(crate) mod governor;
pub(crate) mod heartbeat;
pub(crate) mod peers;
pub(crate) mod retention;
pub(crate) mod webhooks;
