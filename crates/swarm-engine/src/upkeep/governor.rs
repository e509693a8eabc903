//! The node's heartbeat, cross-node cancel requests, and rescue of tasks
//! whose node died.
//!
//! Leases are per node, not per task: one `nodes` row per process is renewed
//! every `lease_ms / 3`, and a node's unfinished tasks become claimable once
//! its heartbeat is older than `lease_ms`. Renewing one row instead of every
//! task's row keeps the heartbeat's cost flat however deep the queues are
//! (the problem River #1258 and Oban #364 hit with hour-long rescue timers is
//! avoided by the short lease, and the per-node row keeps it cheap).

use std::collections::HashMap;
use std::time::Duration;

use swarm_core::clock::now_ms;
use tracing::{info, warn};

use crate::engine::{Engine, Inner};
use crate::monitor::{self, Check, PoolMark, ResourceReading};

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
/// `monitor.interval_ms` takes a resource sample ([`crate::monitor::sample`]),
/// moves the global cap (lowered while CPU or memory is over its threshold,
/// restored after; see [`crate::admission::next_cap`]), evaluates the
/// alerts and folds recorded histogram samples into their buckets.
pub(crate) async fn governor(engine: Engine) {
    let inner = &engine.inner;
    let sample_every = Duration::from_millis(inner.cfg.monitor.interval_ms);
    let mut ticker = tokio::time::interval(TEND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = tokio::time::Instant::now();
    let mut last_sample: Option<tokio::time::Instant> = None;
    let mut cpu_mark = None;
    let mut marks = Marks::default();
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
            pool.refavour(now);
            for q in pool.take_expired(wall_ms) {
                inner
                    .runs
                    .spawn(crate::run::expire(inner.clone(), pool.clone(), q));
            }
        }
        if last_sample.is_some_and(|at| now - at < sample_every) {
            continue;
        }
        last_sample = Some(now);
        let started = std::time::Instant::now();
        let (mut reading, mark) = monitor::sample(cpu_mark);
        cpu_mark = mark;
        govern(inner, &mut reading);
        let checks = checks(inner, &mut reading, &mut marks);
        {
            let mut book = inner.alerts.lock().unwrap_or_else(|p| p.into_inner());
            book.evaluate(&checks);
        }
        inner.metrics.upkeep();
        // The monitor's whole round, alerts and upkeep included.
        reading.sample_us = started.elapsed().as_micros() as u64;
        *inner.resources.lock().unwrap_or_else(|p| p.into_inner()) = reading;
    }
}

/// Moves the global cap from a fresh reading (and marks the reading's
/// `cpu_high` / `rss_high`).
fn govern(inner: &Inner, r: &mut ResourceReading) {
    let adm = &inner.cfg.admission;
    r.cpu_high = adm.cpu_high_pct > 0.0 && r.cpu_pct > adm.cpu_high_pct;
    r.rss_high = adm.rss_high_mib > 0 && r.rss_mib > adm.rss_high_mib as f64;
    let was = {
        let prev = inner.resources.lock().unwrap_or_else(|p| p.into_inner());
        (prev.cpu_high, prev.rss_high)
    };
    let snap = inner.global.snapshot();
    let high = r.cpu_high || r.rss_high;
    let cap = crate::admission::next_cap(snap.cap, snap.in_flight, adm.global_max_inflight, high);
    inner.global.set_cap(cap);
    if was != (r.cpu_high, r.rss_high) {
        if high {
            warn!(
                cpu_pct = r.cpu_pct,
                rss_mib = r.rss_mib,
                ?cap,
                "resources over threshold: lowering the global cap"
            );
        } else {
            info!(
                cpu_pct = r.cpu_pct,
                rss_mib = r.rss_mib,
                "resources back under threshold: restoring the global cap"
            );
        }
    }
}

/// Counters at the previous round, for per-interval figures.
#[derive(Debug, Default)]
struct Marks {
    db_acquires: u64,
    db_acquire_us: u64,
    pools: HashMap<String, PoolMark>,
}

/// The figures the alerts judge, from a reading and the pools' counters
/// since the previous round.
fn checks(inner: &Inner, r: &mut ResourceReading, marks: &mut Marks) -> Vec<Check> {
    let adm = &inner.cfg.admission;
    let a = &inner.cfg.monitor.alerts;
    let process = |name, what, value: f64, threshold: f64| Check {
        name,
        scope: "process".into(),
        value: Some(value),
        threshold,
        below: false,
        what,
    };
    let mut out = vec![
        process(
            "cpu_high",
            "CPU % of all cores",
            r.cpu_pct,
            adm.cpu_high_pct,
        ),
        process(
            "rss_high",
            "resident MiB",
            r.rss_mib,
            adm.rss_high_mib as f64,
        ),
        process(
            "fds_high",
            "open file descriptors, % of limit",
            if r.max_fds > 0 {
                r.fds as f64 * 100.0 / r.max_fds as f64
            } else {
                0.0
            },
            a.fd_pct,
        ),
        Check {
            name: "memory_low",
            scope: "machine".into(),
            value: (r.mem_available_mib > 0.0).then_some(r.mem_available_mib),
            threshold: a.mem_available_mib as f64,
            below: true,
            what: "available memory MiB",
        },
        Check {
            name: "load_high",
            scope: "machine".into(),
            value: Some(r.load1 / r.cores.max(1) as f64),
            threshold: a.load_per_core,
            below: false,
            what: "load average per core",
        },
    ];
    let db = inner.store.pool_stats();
    let (acquires, waited_us) = (
        db.acquires.saturating_sub(marks.db_acquires),
        db.acquire_us.saturating_sub(marks.db_acquire_us),
    );
    (marks.db_acquires, marks.db_acquire_us) = (db.acquires, db.acquire_us);
    r.db_acquire_ms = if acquires > 0 {
        waited_us as f64 / 1e3 / acquires as f64
    } else {
        0.0
    };
    out.push(Check {
        name: "db_acquire_slow",
        scope: "database".into(),
        // Mean wait per transaction this interval (needs a few to judge).
        value: (acquires >= 5).then_some(r.db_acquire_ms),
        threshold: a.db_acquire_ms,
        below: false,
        what: "writer wait for a connection, mean ms",
    });
    for pool in inner.pools.values() {
        let (now, oldest_ms) = pool.mark();
        let prev = marks
            .pools
            .insert(pool.name.clone(), now)
            .unwrap_or_default();
        let scope = || pool.name.clone();
        out.push(Check {
            name: "queue_age",
            scope: scope(),
            value: Some(oldest_ms as f64),
            threshold: a.queue_age_ms as f64,
            below: false,
            what: "oldest queued task, ms",
        });
        out.push(Check {
            name: "rejecting",
            scope: scope(),
            value: monitor::interval_ratio(
                (prev.rejected, now.rejected),
                (prev.offered, now.offered),
            ),
            threshold: a.reject_ratio,
            below: false,
            what: "share of submissions refused",
        });
        out.push(Check {
            name: "timing_out",
            scope: scope(),
            value: monitor::interval_ratio(
                (prev.timed_out, now.timed_out),
                (prev.ended, now.ended),
            ),
            threshold: a.timeout_ratio,
            below: false,
            what: "share of tasks timed out",
        });
    }
    out
}
