//! The node's heartbeat, cross-node cancel requests, and rescue of tasks
//! whose node died.
//!
//! Leases are per node, not per task: one `nodes` row per process is renewed
//! every `lease_ms / 3`, and a node's unfinished tasks become claimable once
//! its heartbeat is older than `lease_ms`. Renewing one row instead of every
//! task's row keeps the heartbeat's cost flat however deep the queues are
//! (the problem River #1258 and Oban #364 hit with hour-long rescue timers is
//! avoided by the short lease, and the per-node row keeps it cheap).

use std::time::Duration;

use swarm_core::clock::now_ms;
use tracing::{info, warn};

use crate::engine::Engine;

/// Most tasks taken over per rescue pass.
const RESCUE_BATCH: i64 = 1000;

pub(crate) async fn heartbeat(engine: Engine) {
    let inner = &engine.inner;
    let lease = inner.cfg.database.lease_ms;
    let period = Duration::from_millis((lease / 3).max(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = inner.stop_dispatch.cancelled() => return,
        }
        let now = now_ms();
        if let Err(e) = inner.store.heartbeat(&inner.node_id, now).await {
            warn!(error = %e, "heartbeat failed");
            continue;
        }
        match inner.store.cancel_requests(&inner.node_id).await {
            Ok(ids) => {
                for id in ids {
                    let admin = crate::Access {
                        tenant: "",
                        admin: true,
                    };
                    if let Ok(task) = engine.get(id, admin).await
                        && let Err(e) = engine.cancel_local(&task).await
                    {
                        warn!(task = %id, error = %e, "cancel request from another node failed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "reading cancel requests failed"),
        }
        match inner
            .store
            .rescue(&inner.node_id, now - lease as i64, RESCUE_BATCH)
            .await
        {
            Ok(tasks) if !tasks.is_empty() => {
                info!(
                    count = tasks.len(),
                    "took over tasks of a node whose heartbeat stopped"
                );
                for t in tasks {
                    engine.adopt(t).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "rescue pass failed"),
        }
    }
}
