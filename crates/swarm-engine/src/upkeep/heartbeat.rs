//! This node's lease, and the cluster duties done beside it.
//!
//! Leases are per node, not per task: one `nodes` row per process is renewed
//! every `lease_ms / 3`, and a node's unfinished tasks become claimable once
//! its heartbeat is older than `lease_ms`. Renewing one row instead of every
//! task's row keeps the heartbeat's cost flat however deep the queues are
//! (the problem River #1258 and Oban #364 hit with hour-long rescue timers is
//! avoided by the short lease, and the per-node row keeps it cheap).
//!
//! The renewal runs in a loop of its own ([`Heartbeat`]), so a slow query of
//! the other duties ([`Cluster`]) can never let the lease lapse. Those
//! duties, in one loop so they never race each other:
//! - cancel requests other nodes left for tasks this node holds;
//! - rescue: taking over the tasks of nodes whose lease lapsed;
//! - the sweep: taking back rows this node owns but no longer holds (a
//!   write whose outcome was unknown), at once when a transition flagged
//!   one, after every database outage, and every [`SWEEP_EVERY`] anyway.

use std::sync::Arc;
use std::time::Duration;

use swarm_core::clock::now_ms;
use swarm_store::Store;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::hub::Hub;
use crate::lifecycle::{Cancelled, Lifecycle};
use crate::pool::Pools;

/// Most tasks taken over per rescue pass.
const RESCUE_BATCH: i64 = 1000;

/// The sweep's period when nothing asked for it sooner.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Renews this node's lease and publishes its load.
pub(crate) struct Heartbeat {
    pub(crate) store: Store,
    /// Whose load it publishes (`GET /api/nodes`).
    pub(crate) pools: Arc<Pools>,
    pub(crate) node_id: String,
    pub(crate) lease_ms: u64,
    pub(crate) stop: CancellationToken,
}

impl Heartbeat {
    pub(crate) async fn run(self) {
        let mut ticker = tokio::time::interval(period(self.lease_ms));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            let load: serde_json::Map<String, serde_json::Value> = self
                .pools
                .iter()
                .map(|p| (p.name().to_string(), p.load()))
                .collect();
            let load = serde_json::Value::Object(load).to_string();
            if let Err(e) = self.store.heartbeat(&self.node_id, now_ms(), load).await {
                // The outage itself is logged once by the store.
                debug!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// A third of the lease, so two beats may be lost; at most a second, so
/// the load other nodes read is fresh.
fn period(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 3).clamp(100, 1_000))
}

/// Cancel requests, rescue and the sweep.
pub(crate) struct Cluster {
    pub(crate) store: Store,
    pub(crate) hub: Arc<Hub>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) node_id: String,
    pub(crate) lease_ms: u64,
    pub(crate) stop: CancellationToken,
}

impl Cluster {
    pub(crate) async fn run(self) {
        let mut ticker = tokio::time::interval(period(self.lease_ms));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        let mut outages = self.store.health().snapshot().outages;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            if !self.store.health().is_up() {
                continue;
            }
            self.cancel_requests().await;
            let stale_before = now_ms() - self.lease_ms as i64;
            if let Err(e) = self.lifecycle.rescue(stale_before, RESCUE_BATCH).await {
                debug!(error = %e, "rescue pass failed");
            }
            let seen = self.store.health().snapshot().outages;
            if self.lifecycle.is_dirty() || seen != outages || last_sweep.elapsed() >= SWEEP_EVERY {
                match self.lifecycle.sweep().await {
                    Ok(_) => {
                        outages = seen;
                        last_sweep = Instant::now();
                    }
                    Err(e) => debug!(error = %e, "sweep failed; tried again next round"),
                }
            }
        }
    }

    async fn cancel_requests(&self) {
        let ids = match self.store.cancel_requests(&self.node_id).await {
            Ok(ids) => ids,
            Err(e) => {
                debug!(error = %e, "reading cancel requests failed");
                return;
            }
        };
        for id in ids {
            let task = match self.hub.current(id) {
                Some(t) => Some((*t).clone()),
                None => self.store.get(id).await.ok().flatten(),
            };
            let Some(task) = task else { continue };
            match self.lifecycle.cancel(&task).await {
                Ok(Cancelled::Ended(_) | Cancelled::Signalled | Cancelled::NotHere) => {}
                Err(e) => warn!(task = %id, error = %e, "cancel request from another node failed"),
            }
        }
    }
}
