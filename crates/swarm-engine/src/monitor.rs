//! The resource monitor and its alerts.
//!
//! Every `monitor.interval_ms` the governor (`upkeep/governor.rs`) calls
//! [`sample`]: process CPU and RSS, open file descriptors and their limit,
//! threads, the machine's load and available memory (all from `/proc`, see
//! proc(5)), and the tokio runtime's workers, alive tasks and global queue.
//! The reading feeds the global cap (CPU, RSS) and [`AlertBook::evaluate`].
//! What a sample cost is kept in the reading (`sample_us`), so the
//! monitor's own overhead is visible in `/api/status` and `/metrics`.
//!
//! Alerts fire when a figure crosses its threshold and clear only once it
//! is back 10% inside it (hysteresis, so a figure hovering at the line does
//! not flap). Each transition is logged (WARN when firing, INFO when
//! clearing) and kept in a short history for `GET /api/alerts`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use swarm_core::clock::{now_ms, rfc3339};

/// The last reading, shared by the governor (which writes it) and admission
/// and status (which read it).
#[derive(Debug, Default)]
pub(crate) struct Resources(Mutex<ResourceReading>);

impl Resources {
    pub(crate) fn get(&self) -> ResourceReading {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set(&self, r: ResourceReading) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }
}

/// Alerts raised by the monitor, behind a lock.
#[derive(Debug, Default)]
pub(crate) struct Alerts(Mutex<AlertBook>);

impl Alerts {
    pub(crate) fn evaluate(&self, checks: &[Check]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evaluate(checks);
    }

    pub(crate) fn view(&self) -> AlertsView {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).view()
    }
}

/// Process and machine figures, as the monitor last read them.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct ResourceReading {
    /// Process CPU since the previous sample, percent of all cores.
    pub cpu_pct: f64,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Whether CPU is over `admission.cpu_high_pct`.
    pub cpu_high: bool,
    /// Whether memory is over `admission.rss_high_mib`.
    pub rss_high: bool,
    /// Open file descriptors.
    pub fds: u64,
    /// The soft limit on file descriptors (0: unknown).
    pub max_fds: u64,
    /// OS threads.
    pub threads: u64,
    /// One-minute load average of the machine.
    pub load1: f64,
    /// Cores the process may use.
    pub cores: usize,
    /// Memory the machine can still give (`MemAvailable`), MiB.
    pub mem_available_mib: f64,
    /// Tokio worker threads.
    pub runtime_workers: usize,
    /// Tokio tasks alive.
    pub runtime_alive_tasks: usize,
    /// Tokio tasks waiting in the runtime's global queue.
    pub runtime_global_queue: usize,
    /// The database writer's mean wait for a connection (plus `BEGIN`)
    /// over the last interval, ms.
    pub db_acquire_ms: f64,
    /// What taking this sample cost, microseconds.
    pub sample_us: u64,
}

/// Reads this process's CPU time (user + system, seconds; proc(5)
/// `/proc/self/stat` fields 14 and 15), resident set size (bytes; `VmRSS`
/// of `/proc/self/status`, in kB there so no page size is assumed) and
/// threads (`Threads:`). `None` where `/proc` is missing.
pub(crate) fn read_self_usage() -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field n is f[n - 3].
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rss_kb = field("VmRSS:")?;
    let threads = field("Threads:").unwrap_or(0);
    // USER_HZ is 100 on every Linux ABI (sysconf(_SC_CLK_TCK)).
    Some(((utime + stime) / 100.0, rss_kb * 1024, threads))
}

/// Open descriptors (entries of `/proc/self/fd`, less the one the listing
/// itself holds) and the soft limit.
fn read_fds() -> (u64, u64) {
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0);
    let max = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    (open, max)
}

/// The machine's one-minute load and `MemAvailable` (MiB).
fn read_machine() -> (f64, f64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0);
    (load, avail)
}

/// Where the previous sample left off, for CPU rates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    at: std::time::Instant,
    cpu_s: f64,
}

/// Takes one reading. CPU is the share since `prev` (0 on the first).
pub(crate) fn sample(prev: Option<CpuMark>) -> (ResourceReading, Option<CpuMark>) {
    let started = std::time::Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut r = ResourceReading {
        cores,
        ..ResourceReading::default()
    };
    let mut mark = None;
    if let Some((cpu_s, rss, threads)) = read_self_usage() {
        let now = std::time::Instant::now();
        if let Some(p) = prev {
            let wall = (now - p.at).as_secs_f64().max(1e-3);
            r.cpu_pct = ((cpu_s - p.cpu_s) / wall / cores as f64 * 100.0).max(0.0);
        }
        r.rss_mib = rss as f64 / (1024.0 * 1024.0);
        r.threads = threads;
        mark = Some(CpuMark { at: now, cpu_s });
    }
    (r.fds, r.max_fds) = read_fds();
    (r.load1, r.mem_available_mib) = read_machine();
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        let m = h.metrics();
        r.runtime_workers = m.num_workers();
        r.runtime_alive_tasks = m.num_alive_tasks();
        r.runtime_global_queue = m.global_queue_depth();
    }
    r.sample_us = started.elapsed().as_micros() as u64;
    (r, mark)
}

/// One figure checked against its threshold.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// The alert's name (`cpu_high`, `queue_age`, …).
    pub(crate) name: &'static str,
    /// What it is about: `process`, `machine`, `database` or a pool name.
    pub(crate) scope: String,
    /// The figure now; `None` when there is nothing to judge (too few
    /// samples), which leaves the alert as it is.
    pub(crate) value: Option<f64>,
    /// The threshold (0: this alert is off).
    pub(crate) threshold: f64,
    /// True when the alert fires below the threshold (available memory).
    pub(crate) below: bool,
    /// What the figure is, for the message (`"process CPU %"`).
    pub(crate) what: &'static str,
}

/// An alert, firing or past.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Alert {
    /// Its name.
    pub name: &'static str,
    /// What it is about.
    pub scope: String,
    /// The figure when it fired (or, while active, the latest).
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// A sentence for people.
    pub message: String,
    /// When it fired (RFC 3339).
    pub since: String,
    /// When it cleared (RFC 3339), for past alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<String>,
}

/// Alerts for `GET /api/alerts`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct AlertsView {
    /// Firing now.
    pub active: Vec<Alert>,
    /// Recently fired or cleared, newest first.
    pub recent: Vec<Alert>,
    /// Times each alert has fired since start.
    pub fired: BTreeMap<&'static str, u64>,
}

/// Every alert the monitor raises.
pub const ALERT_NAMES: [&str; 9] = [
    "cpu_high",
    "rss_high",
    "fds_high",
    "memory_low",
    "load_high",
    "db_acquire_slow",
    "queue_age",
    "rejecting",
    "timing_out",
];

/// Alerts kept in the history.
const HISTORY: usize = 100;

/// The alert state machine.
#[derive(Debug, Default)]
pub(crate) struct AlertBook {
    active: BTreeMap<(&'static str, String), Alert>,
    recent: VecDeque<Alert>,
    fired: BTreeMap<&'static str, u64>,
}

impl AlertBook {
    /// Applies one round of checks, logging each transition.
    pub(crate) fn evaluate(&mut self, checks: &[Check]) {
        for c in checks {
            let Some(value) = c.value else { continue };
            let key = (c.name, c.scope.clone());
            if c.threshold <= 0.0 {
                self.active.remove(&key);
                continue;
            }
            let over = if c.below {
                value < c.threshold
            } else {
                value > c.threshold
            };
            let back = if c.below {
                value >= c.threshold * 1.1
            } else {
                value <= c.threshold * 0.9
            };
            match self.active.get_mut(&key) {
                None if over => {
                    let message = format!(
                        "{}: {} = {} ({} {})",
                        c.scope,
                        c.what,
                        round(value),
                        if c.below { "under" } else { "over" },
                        round(c.threshold)
                    );
                    tracing::warn!(alert = c.name, scope = %c.scope, value, threshold = c.threshold, "alert: {message}");
                    let alert = Alert {
                        name: c.name,
                        scope: c.scope.clone(),
                        value,
                        threshold: c.threshold,
                        message,
                        since: rfc3339(now_ms()),
                        cleared_at: None,
                    };
                    *self.fired.entry(c.name).or_default() += 1;
                    self.push_recent(alert.clone());
                    self.active.insert(key, alert);
                }
                Some(a) if back => {
                    tracing::info!(alert = c.name, scope = %c.scope, value, threshold = c.threshold, "alert cleared: {}", a.message);
                    let mut done = a.clone();
                    done.value = value;
                    done.cleared_at = Some(rfc3339(now_ms()));
                    self.active.remove(&key);
                    self.push_recent(done);
                }
                Some(a) => a.value = value,
                None => {}
            }
        }
    }

    fn push_recent(&mut self, a: Alert) {
        if self.recent.len() == HISTORY {
            self.recent.pop_back();
        }
        self.recent.push_front(a);
    }

    pub(crate) fn view(&self) -> AlertsView {
        AlertsView {
            active: self.active.values().cloned().collect(),
            recent: self.recent.iter().cloned().collect(),
            fired: self.fired.clone(),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A pool's counters at the previous sample, for per-interval ratios.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolMark {
    pub(crate) offered: u64,
    pub(crate) rejected: u64,
    pub(crate) ended: u64,
    pub(crate) timed_out: u64,
}

/// Fewest events in an interval for a ratio to count (a single refusal out
/// of two submissions is not an overload).
const MIN_EVENTS: u64 = 20;

/// `part / whole` over the interval from `prev` to `now`, when there were
/// enough events to judge.
pub(crate) fn interval_ratio(part: (u64, u64), whole: (u64, u64)) -> Option<f64> {
    let p = part.1.saturating_sub(part.0);
    let w = whole.1.saturating_sub(whole.0);
    (w >= MIN_EVENTS).then(|| p as f64 / w as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: f64) -> Check {
        Check {
            name: "queue_age",
            scope: "sim".into(),
            value: Some(value),
            threshold: 100.0,
            below: false,
            what: "oldest queued ms",
        }
    }

    #[test]
    fn alerts_fire_and_clear_with_hysteresis() {
        let mut b = AlertBook::default();
        b.evaluate(&[check(50.0)]);
        assert!(b.view().active.is_empty());
        b.evaluate(&[check(150.0)]);
        let v = b.view();
        assert_eq!(v.active.len(), 1);
        assert_eq!(
            v.active[0].message,
            "sim: oldest queued ms = 150 (over 100)"
        );
        assert_eq!(v.fired["queue_age"], 1);
        // Just under the line: still firing (no flapping), value follows.
        b.evaluate(&[check(95.0)]);
        assert_eq!(b.view().active[0].value, 95.0);
        b.evaluate(&[check(89.0)]);
        let v = b.view();
        assert!(v.active.is_empty());
        assert_eq!(v.recent.len(), 2);
        assert!(v.recent[0].cleared_at.is_some());
        // No judgement this round: nothing changes.
        b.evaluate(&[Check {
            value: None,
            ..check(0.0)
        }]);
        assert!(b.view().active.is_empty());
    }

    #[test]
    fn below_alerts_and_disabled_thresholds() {
        let mut b = AlertBook::default();
        let mem = |v: f64, t: f64| Check {
            name: "memory_low",
            scope: "machine".into(),
            value: Some(v),
            threshold: t,
            below: true,
            what: "available memory MiB",
        };
        b.evaluate(&[mem(100.0, 256.0)]);
        assert_eq!(b.view().active.len(), 1);
        b.evaluate(&[mem(270.0, 256.0)]);
        assert_eq!(b.view().active.len(), 1, "needs 10% headroom to clear");
        b.evaluate(&[mem(300.0, 256.0)]);
        assert!(b.view().active.is_empty());
        b.evaluate(&[mem(1.0, 0.0)]);
        assert!(b.view().active.is_empty(), "threshold 0 is off");
    }

    #[test]
    fn ratios_need_enough_events() {
        assert_eq!(interval_ratio((0, 5), (0, 10)), None);
        assert_eq!(interval_ratio((10, 20), (100, 140)), Some(0.25));
    }

    #[tokio::test]
    async fn a_sample_reads_this_process() {
        let (r, mark) = sample(None);
        assert!(mark.is_some(), "/proc/self is readable on Linux");
        assert!(r.rss_mib > 1.0, "{r:?}");
        assert!(r.threads >= 1);
        assert!(r.fds >= 3, "stdin, stdout, stderr at least: {r:?}");
        assert!(r.max_fds >= r.fds);
        assert!(r.mem_available_mib > 0.0);
        assert!(r.runtime_workers >= 1);
        let (r2, _) = sample(mark);
        assert!(r2.cpu_pct >= 0.0);
    }
}
