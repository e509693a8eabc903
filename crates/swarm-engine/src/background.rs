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

/// How often pools are tended: drain rates, expired queued tasks, the
/// automatic CoDel target.
const TEND: Duration = Duration::from_millis(250);

/// The governor: tends the pools every [`TEND`], and every
/// `admission.sample_ms` reads process CPU and memory and moves the global
/// cap (lowered while over a threshold, restored after; see
/// [`crate::admission::next_cap`]).
pub(crate) async fn governor(engine: Engine) {
    let inner = &engine.inner;
    let adm = &inner.cfg.admission;
    let sample_every = Duration::from_millis(adm.sample_ms);
    let mut ticker = tokio::time::interval(TEND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = tokio::time::Instant::now();
    let mut last_sample: Option<(tokio::time::Instant, f64)> = None;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = inner.stop_dispatch.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        let elapsed = now - last_tick;
        last_tick = now;
        let wall_ms = now_ms();
        for pool in inner.pools.values() {
            pool.drain.tick(elapsed);
            pool.retune_codel();
            pool.rates.prune(now);
            for q in pool.take_expired(wall_ms) {
                inner
                    .runs
                    .spawn(crate::run::expire(inner.clone(), pool.clone(), q));
            }
        }
        let due = last_sample.is_none_or(|(at, _)| now - at >= sample_every);
        if !due {
            continue;
        }
        let Some((cpu_s, rss)) = crate::admission::read_self_usage() else {
            continue;
        };
        let cpu_pct = match last_sample {
            Some((at, prev)) => {
                let wall = (now - at).as_secs_f64().max(1e-3);
                ((cpu_s - prev) / wall / cores * 100.0).max(0.0)
            }
            None => 0.0,
        };
        last_sample = Some((now, cpu_s));
        let rss_mib = rss as f64 / (1024.0 * 1024.0);
        let cpu_high = adm.cpu_high_pct > 0.0 && cpu_pct > adm.cpu_high_pct;
        let rss_high = adm.rss_high_mib > 0 && rss_mib > adm.rss_high_mib as f64;
        let was = {
            let mut r = inner.resources.lock().unwrap_or_else(|p| p.into_inner());
            let was = (r.cpu_high, r.rss_high);
            *r = crate::admission::ResourceReading {
                cpu_pct,
                rss_mib,
                cpu_high,
                rss_high,
            };
            was
        };
        let snap = inner.global.snapshot();
        let cap = crate::admission::next_cap(
            snap.cap,
            snap.in_flight,
            adm.global_max_inflight,
            cpu_high || rss_high,
        );
        inner.global.set_cap(cap);
        if was != (cpu_high, rss_high) {
            if cpu_high || rss_high {
                warn!(
                    cpu_pct,
                    rss_mib,
                    ?cap,
                    "resources over threshold: lowering the global cap"
                );
            } else {
                info!(
                    cpu_pct,
                    rss_mib, "resources back under threshold: restoring the global cap"
                );
            }
        }
    }
}
