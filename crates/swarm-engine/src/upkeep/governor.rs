//! The governor: pool upkeep, the resource monitor, the global cap and the
//! alerts.
//!
//! Every [`TEND`] it tends the pools (drain rates, the automatic CoDel
//! target, fair shares) and expires the queued tasks whose deadline passed;
//! every `monitor.interval_ms` it takes a resource sample
//! ([`crate::monitor::sample`]), moves the global cap (lowered while CPU or
//! memory is over its threshold, restored after; see [`next_cap`]),
//! evaluates the alerts and folds recorded histogram samples into their
//! buckets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use swarm_core::clock::now_ms;
use swarm_core::config::Config;
use swarm_sched::limit::Limiter;
use swarm_store::Store;
use tracing::{info, warn};

use crate::lifecycle::Lifecycle;
use crate::monitor::{self, Alerts, Check, PoolMark, ResourceReading, Resources};
use crate::pool::Pools;
use crate::shutdown::Shutdown;
use crate::stats::Metrics;

/// How often pools are tended: drain rates, expired queued tasks, the
/// automatic CoDel target.
const TEND: Duration = Duration::from_millis(250);

/// The governor's handles.
pub(crate) struct Governor {
    pub(crate) cfg: Arc<Config>,
    pub(crate) pools: Arc<Pools>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) shutdown: Shutdown,
    pub(crate) global: Limiter,
    pub(crate) resources: Arc<Resources>,
    pub(crate) alerts: Arc<Alerts>,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
}

impl Governor {
    pub(crate) async fn run(self) {
        let inner = &self;
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
                _ = inner.shutdown.draining().cancelled() => return,
            }
            let now = tokio::time::Instant::now();
            let elapsed = now - last_tick;
            last_tick = now;
            let wall_ms = now_ms();
            for pool in inner.pools.iter() {
                for q in pool.tend(now, elapsed, wall_ms) {
                    let (lifecycle, pool) = (inner.lifecycle.clone(), pool.clone());
                    inner.shutdown.spawn_run(async move {
                        let verdict = Lifecycle::expired(&q.task);
                        lifecycle.end_held(Some(&pool), &q, verdict).await;
                    });
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
            inner.alerts.evaluate(&checks);
            inner.metrics.upkeep();
            // The monitor's whole round, alerts and upkeep included.
            reading.sample_us = started.elapsed().as_micros() as u64;
            inner.resources.set(reading);
        }
    }
}

/// Moves the global cap from a fresh reading (and marks the reading's
/// `cpu_high` / `rss_high`).
fn govern(inner: &Governor, r: &mut ResourceReading) {
    let adm = &inner.cfg.admission;
    r.cpu_high = adm.cpu_high_pct > 0.0 && r.cpu_pct > adm.cpu_high_pct;
    r.rss_high = adm.rss_high_mib > 0 && r.rss_mib > adm.rss_high_mib as f64;
    let was = {
        let prev = inner.resources.get();
        (prev.cpu_high, prev.rss_high)
    };
    let snap = inner.global.snapshot();
    let high = r.cpu_high || r.rss_high;
    let cap = next_cap(snap.cap, snap.in_flight, adm.global_max_inflight, high);
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
fn checks(inner: &Governor, r: &mut ResourceReading, marks: &mut Marks) -> Vec<Check> {
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
    for pool in inner.pools.iter() {
        let (now, oldest_ms) = pool.mark();
        let prev = marks
            .pools
            .insert(pool.name().to_string(), now)
            .unwrap_or_default();
        let scope = || pool.name().to_string();
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

/// The global cap's next value: lowered by a quarter each sample while the
/// process is over a threshold, raised by a quarter (and at least one) each
/// sample after, until it reaches `max` again (`None`: uncapped).
pub(crate) fn next_cap(
    current: Option<usize>,
    in_flight: usize,
    max: usize,
    high: bool,
) -> Option<usize> {
    if high {
        // Start from what is running, not from the ceiling, so the first
        // step already bites.
        let base = current.unwrap_or(max).min(in_flight.max(1));
        Some((base * 3 / 4).max(1))
    } else {
        let c = current?;
        let up = (c + c / 4).max(c + 1);
        (up < max).then_some(up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_falls_while_high_and_recovers_after() {
        let mut cap = None;
        cap = next_cap(cap, 100, 4096, true);
        assert_eq!(cap, Some(75));
        cap = next_cap(cap, 75, 4096, true);
        assert_eq!(cap, Some(56));
        let mut steps = 0;
        while cap.is_some() {
            cap = next_cap(cap, 10, 4096, false);
            steps += 1;
        }
        assert!(steps < 40, "restored in {steps} samples");
        assert_eq!(next_cap(Some(1), 0, 4096, true), Some(1), "never below 1");
    }
}
