//! Prometheus metrics: what is recorded as it happens, and what is read at
//! scrape time.
//!
//! Two kinds of figures, handled differently so the hot path pays little:
//!
//! - **Events** (a task's stage timings, a tenant's submissions and
//!   outcomes, HTTP requests) are recorded when they happen into
//!   pre-registered handles of a per-engine `metrics-exporter-prometheus`
//!   recorder: an atomic push, no lookup, no lock. Histogram samples are
//!   folded into buckets by [`Metrics::upkeep`], which the monitor runs
//!   every interval, so memory stays bounded however rarely `/metrics` is
//!   scraped.
//! - **State** (limits, queue depths, resources, counters the engine already
//!   keeps for `/api/status`) is copied into gauges and counters only when
//!   `/metrics` is rendered, so keeping it costs nothing between scrapes and
//!   nothing is counted twice.
//!
//! The recorder is the engine's own, not a process-global one, so several
//! engines in one process (the integration tests) keep separate figures.
//! Label sets are bounded: pools and reasons come from config and code;
//! tenants beyond `monitor.max_tenant_labels` share the label `_other`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use swarm_core::{TaskStatus, Timings};
use swarm_sched::balance::BalancerSnapshot;
use swarm_store::PoolStats;
use tokio::time::Instant;

use crate::monitor::{ALERT_NAMES, AlertsView};
use crate::status::{RecentLatency, Status};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Upper bounds of the latency buckets, seconds: 0.5 ms to 5 minutes, about
/// ×2.5 apart, so both microsecond admissions and minute-long agent runs land
/// in a bucket that tells them apart.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The stages of a task, in order (the `stage` label).
pub(crate) const STAGES: [&str; 6] = ["admission", "persist", "queue", "run", "complete", "total"];

/// Label value for tenants past the label budget.
pub const OTHER_TENANT: &str = "_other";

/// Descriptions, so every family has `# HELP` (promtool insists).
const HELP: &[(&str, &str)] = &[
    (
        "swarmd_task_stage_seconds",
        "Time a task spent in each stage; total is acceptance to stored outcome.",
    ),
    (
        "swarmd_tenant_tasks_total",
        "Submissions and outcomes by tenant (tenants past the label budget are _other).",
    ),
    (
        "swarmd_http_requests_total",
        "HTTP requests answered, by route template, method and status.",
    ),
    (
        "swarmd_http_request_duration_seconds",
        "HTTP request handling time, by route template, method and status (an acknowledgement and a refusal cost very different times).",
    ),
    ("swarmd_pool_accepted_total", "Tasks accepted by a pool."),
    (
        "swarmd_pool_rejected_total",
        "Submissions a pool refused, by reason.",
    ),
    (
        "swarmd_pool_finished_total",
        "Work a pool ended, by outcome and kind (task: stored tasks; child: nested calls from other departments' runs).",
    ),
    (
        "swarmd_pool_expired_in_queue_total",
        "Tasks whose deadline passed while queued.",
    ),
    (
        "swarmd_pool_children_total",
        "Child tasks (nested calls) run.",
    ),
    ("swarmd_pool_limit", "A pool's current concurrency limit."),
    ("swarmd_pool_in_flight", "Tasks running in a pool."),
    ("swarmd_pool_queued", "Tasks queued in a pool, by priority."),
    (
        "swarmd_pool_children_queued",
        "Child tasks waiting in a pool.",
    ),
    ("swarmd_pool_queue_capacity", "A pool's queue bound."),
    (
        "swarmd_pool_oldest_queued_seconds",
        "Age of a pool's oldest queued task.",
    ),
    (
        "swarmd_pool_shedding",
        "1 while CoDel sheds load in a pool.",
    ),
    (
        "swarmd_pool_drain_rate",
        "Completions per second, smoothed.",
    ),
    (
        "swarmd_pool_rtt_seconds",
        "The limiter's recent round-trip time of a pool's agent.",
    ),
    (
        "swarmd_tokens_limit",
        "A token budget's limit, by scope (pool or tenant), name and window (minute or day).",
    ),
    (
        "swarmd_tokens_spent",
        "Tokens spent in a budget's sliding window, on every node.",
    ),
    (
        "swarmd_tokens_reserved",
        "Tokens reserved by tasks admitted and not yet ended, on every node.",
    ),
    (
        "swarmd_tokens_remaining",
        "What a new task may still reserve of a token budget's window.",
    ),
    (
        "swarmd_global_cap",
        "The process-wide cap on running tasks (lowered under resource pressure).",
    ),
    ("swarmd_global_in_flight", "Tasks running in the process."),
    (
        "swarmd_live_tasks",
        "Tasks this process tracks (queued or running here).",
    ),
    (
        "swarmd_process_cpu_ratio",
        "Process CPU over the last sample, share of all cores (0-1).",
    ),
    (
        "swarmd_process_resident_memory_bytes",
        "Process resident memory.",
    ),
    ("swarmd_process_open_fds", "Open file descriptors."),
    (
        "swarmd_process_max_fds",
        "The process's file-descriptor limit.",
    ),
    ("swarmd_process_threads", "OS threads of the process."),
    (
        "swarmd_machine_load1",
        "One-minute load average of the machine.",
    ),
    (
        "swarmd_machine_memory_available_bytes",
        "Memory the machine can still give (MemAvailable).",
    ),
    ("swarmd_runtime_workers", "Tokio worker threads."),
    ("swarmd_runtime_alive_tasks", "Tokio tasks alive."),
    (
        "swarmd_runtime_global_queue_depth",
        "Tokio tasks waiting in the runtime's global queue.",
    ),
    ("swarmd_db_connections", "Database connections, by state."),
    (
        "swarmd_db_available",
        "1 while the database takes writes, 0 during an outage.",
    ),
    ("swarmd_db_outages_total", "Database outages since start."),
    (
        "swarmd_db_down_seconds",
        "Seconds since start the database took no writes, the current outage included (only grows).",
    ),
    (
        "swarmd_db_write_retries_total",
        "Group commits run again after a transient database failure.",
    ),
    (
        "swarmd_db_retention_deleted_total",
        "Rows deleted past [database] retention, by table.",
    ),
    (
        "swarmd_transitions_total",
        "Task state changes that needed the database more than once (retried, replaced, abandoned) and tasks taken from the store (adopted, swept).",
    ),
    ("swarmd_db_connections_max", "Database connection ceiling."),
    (
        "swarmd_db_write_queue",
        "Writes waiting for the group-commit writer.",
    ),
    (
        "swarmd_db_acquire_mean_seconds",
        "The writer's mean wait for a connection plus BEGIN over the last monitor interval.",
    ),
    ("swarmd_db_acquires_total", "Transactions the writer began."),
    ("swarmd_db_batches_total", "Group commits."),
    (
        "swarmd_db_ops_total",
        "Writes applied by the group-commit writer.",
    ),
    (
        "swarmd_cpu_pool_threads",
        "Threads of the pool for blocking, CPU-heavy work.",
    ),
    ("swarmd_cpu_pool_busy", "CPU-pool threads running a job."),
    (
        "swarmd_cpu_pool_queued",
        "Jobs waiting for a CPU-pool thread.",
    ),
    ("swarmd_cpu_pool_jobs_total", "CPU-pool jobs, by outcome."),
    (
        "swarmd_monitor_sample_seconds",
        "What the last resource sample cost the monitor.",
    ),
    ("swarmd_alerts_active", "1 while an alert is firing."),
    ("swarmd_alerts_fired_total", "Times an alert fired."),
    ("swarmd_uptime_seconds", "Seconds since the engine started."),
    (
        "swarmd_instance_state",
        "1 for an instance's current state (healthy, ejected, half_open, draining), else 0.",
    ),
    (
        "swarmd_instance_in_flight",
        "Calls in flight to an instance.",
    ),
    (
        "swarmd_instance_rtt_seconds",
        "Peak-EWMA round-trip estimate of an instance, as the balancer sees it.",
    ),
    (
        "swarmd_instance_calls_total",
        "Calls to an instance by outcome (success, failure, cancelled).",
    ),
    (
        "swarmd_instance_ejections_total",
        "Times an instance was ejected as an outlier.",
    ),
    (
        "swarmd_pool_workers",
        "Worker processes of a pool (agent = process), alive and busy.",
    ),
    (
        "swarmd_pool_worker_restarts_total",
        "Worker processes started to replace one that exited or was killed.",
    ),
    (
        "swarmd_pool_worker_kills_total",
        "Worker processes killed (deadline, cancel, bad output).",
    ),
    ("swarmd_http_connections_open", "HTTP connections open now."),
    (
        "swarmd_http_connections_accepted_total",
        "HTTP connections accepted.",
    ),
    (
        "swarmd_http_header_timeouts_total",
        "Connections closed because request headers came too slowly.",
    ),
    (
        "swarmd_http_idle_timeouts_total",
        "Keep-alive connections closed for idling.",
    ),
    (
        "swarmd_http_body_timeouts_total",
        "Requests answered 408 because the body came too slowly.",
    ),
    (
        "swarmd_http_write_timeouts_total",
        "Connections cut because a response made no write progress for `server.write_timeout_ms`.",
    ),
    (
        "swarmd_http_early_413_total",
        "Requests answered 413 from their Content-Length, before any body was read.",
    ),
    (
        "swarmd_http_accept_errors_total",
        "Errors accepting connections (such as running out of descriptors).",
    ),
];

/// The engine's metrics.
pub struct Metrics {
    enabled: bool,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    max_tenants: usize,
    tenants: Mutex<HashMap<String, Arc<TenantCounters>>>,
    /// HTTP handles by route template (a bounded set).
    http: Mutex<HashMap<String, Vec<HttpHandles>>>,
}

/// The handles of one (route, method, status).
struct HttpHandles {
    method: String,
    status: u16,
    count: Counter,
    time: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// One tenant's counters.
pub(crate) struct TenantCounters {
    accepted: Counter,
    rejected: Counter,
    outcome: [Counter; 4],
}

/// One pool's event handles and recent latencies.
pub(crate) struct PoolMetrics {
    stage: [Histogram; 6],
    recent: Mutex<Recent>,
}

impl Metrics {
    /// A recorder with our buckets; `enabled = false` hands out no-op
    /// handles and renders nothing.
    pub fn new(enabled: bool, max_tenants: usize) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map(|b| b.build_recorder())
            // Only fails on empty buckets, which ours are not.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        for (name, help) in HELP {
            let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
            recorder.describe_gauge(KeyName::from(*name), unit, (*help).into());
        }
        let handle = recorder.handle();
        Self {
            enabled,
            recorder,
            handle,
            max_tenants,
            tenants: Mutex::new(HashMap::new()),
            http: Mutex::new(HashMap::new()),
        }
    }

    /// Whether metrics are recorded and served.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Handles for one pool.
    pub(crate) fn pool(&self, pool: &str) -> PoolMetrics {
        let stage = STAGES.map(|s| {
            self.histogram(
                "swarmd_task_stage_seconds",
                vec![Label::new("pool", pool.to_string()), Label::new("stage", s)],
            )
        });
        PoolMetrics {
            stage,
            recent: Mutex::new(Recent::new()),
        }
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        if !self.enabled {
            return Histogram::noop();
        }
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &META)
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        if !self.enabled {
            return Counter::noop();
        }
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    /// A gauge, for values copied in at render time.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        if !self.enabled {
            return Gauge::noop();
        }
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
    }

    /// A counter set to an absolute value at render time (the engine keeps
    /// the count itself).
    pub fn counter_at(&self, name: &'static str, labels: &[(&'static str, &str)], value: u64) {
        if !self.enabled {
            return;
        }
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        self.counter(name, labels).absolute(value);
    }

    /// The counters of `tenant`, or of `_other` once the label budget is
    /// spent.
    pub(crate) fn tenant(&self, tenant: &str) -> Option<Arc<TenantCounters>> {
        if !self.enabled {
            return None;
        }
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(tenant) {
            return Some(c.clone());
        }
        let label = if map.len() < self.max_tenants {
            tenant
        } else {
            OTHER_TENANT
        };
        if let Some(c) = map.get(label) {
            return Some(c.clone());
        }
        let make = |event: &'static str| {
            self.counter(
                "swarmd_tenant_tasks_total",
                vec![
                    Label::new("tenant", label.to_string()),
                    Label::new("event", event),
                ],
            )
        };
        let c = Arc::new(TenantCounters {
            accepted: make("accepted"),
            rejected: make("rejected"),
            outcome: ["succeeded", "failed", "timed_out", "cancelled"].map(make),
        });
        map.insert(label.to_string(), c.clone());
        Some(c)
    }

    /// A submission's fate, by tenant.
    pub(crate) fn submitted(&self, tenant: &str, accepted: bool) {
        if let Some(c) = self.tenant(tenant) {
            if accepted {
                c.accepted.increment(1);
            } else {
                c.rejected.increment(1);
            }
        }
    }

    /// An HTTP request answered. `route` is the matched route template (a
    /// bounded set), never the raw path.
    pub fn http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        // Handles are cached by route, then (method, status): after the
        // first request of a kind, recording allocates nothing.
        let (count, time) = {
            let mut map = self.http.lock().unwrap_or_else(|p| p.into_inner());
            let found = map.get(route).and_then(|v| {
                v.iter()
                    .find(|h| h.method == method && h.status == status)
                    .map(|h| (h.count.clone(), h.time.clone()))
            });
            match found {
                Some(h) => h,
                None => {
                    let h = HttpHandles {
                        method: method.to_string(),
                        status,
                        count: self.counter(
                            "swarmd_http_requests_total",
                            vec![
                                Label::new("method", method.to_string()),
                                Label::new("route", route.to_string()),
                                Label::new("status", status.to_string()),
                            ],
                        ),
                        time: self.histogram(
                            "swarmd_http_request_duration_seconds",
                            vec![
                                Label::new("method", method.to_string()),
                                Label::new("route", route.to_string()),
                                Label::new("status", status.to_string()),
                            ],
                        ),
                    };
                    let pair = (h.count.clone(), h.time.clone());
                    map.entry(route.to_string()).or_default().push(h);
                    pair
                }
            }
        };
        count.increment(1);
        time.record(elapsed.as_secs_f64());
    }

    /// Folds recorded histogram samples into their buckets.
    pub(crate) fn upkeep(&self) {
        if self.enabled {
            self.handle.run_upkeep();
        }
    }

    /// The Prometheus text exposition of everything recorded so far (state
    /// gauges must have been copied in first; see [`Metrics::render_with`]).
    fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

// === Rendering the engine's state ===

impl Metrics {
    /// The Prometheus exposition: the state `/api/status` shows (`st`), the
    /// alerts and the writer's figures are copied into gauges and counters,
    /// then everything is rendered.
    pub(crate) fn render_with(&self, st: &Status, alerts: &AlertsView, db: &PoolStats) -> String {
        let m = self;
        for p in &st.pools {
            let pool = [("pool", p.name.as_str())];
            m.gauge("swarmd_pool_limit", &pool)
                .set(p.limit.limit as f64);
            m.gauge("swarmd_pool_in_flight", &pool)
                .set(p.limit.in_flight as f64);
            for (prio, n) in &p.queued_by_priority {
                m.gauge(
                    "swarmd_pool_queued",
                    &[("pool", &p.name), ("priority", prio)],
                )
                .set(*n as f64);
            }
            m.gauge("swarmd_pool_children_queued", &pool)
                .set(p.children_queued as f64);
            m.gauge("swarmd_pool_queue_capacity", &pool)
                .set(p.queue_capacity as f64);
            m.gauge("swarmd_pool_oldest_queued_seconds", &pool)
                .set(p.oldest_queued_ms as f64 / 1e3);
            m.gauge("swarmd_pool_shedding", &pool)
                .set(if p.shedding { 1.0 } else { 0.0 });
            m.gauge("swarmd_pool_drain_rate", &pool).set(p.drain_per_s);
            m.gauge("swarmd_pool_rtt_seconds", &pool)
                .set(p.limit.rtt_us as f64 / 1e6);
            m.counter_at("swarmd_pool_accepted_total", &pool, p.accepted);
            let r = &p.rejections;
            for (reason, n) in [
                ("queue_full", r.queue_full),
                ("queue_delay", r.queue_delay),
                ("deadline_unmeetable", r.deadline_unmeetable),
                ("tenant_quota", r.tenant_quota),
                ("token_budget", r.token_budget),
                ("process_overloaded", r.process_overloaded),
                ("database_unavailable", r.database_unavailable),
                ("database_busy", r.database_busy),
            ] {
                m.counter_at(
                    "swarmd_pool_rejected_total",
                    &[("pool", &p.name), ("reason", reason)],
                    n,
                );
            }
            let kids = &p.child_outcomes;
            for (outcome, all, child) in [
                ("succeeded", p.succeeded, kids.succeeded),
                ("failed", p.failed, kids.failed),
                ("timed_out", p.timed_out, kids.timed_out),
                ("cancelled", p.cancelled, kids.cancelled),
            ] {
                for (kind, n) in [("task", all - child), ("child", child)] {
                    m.counter_at(
                        "swarmd_pool_finished_total",
                        &[("pool", &p.name), ("outcome", outcome), ("kind", kind)],
                        n,
                    );
                }
            }
            m.counter_at(
                "swarmd_pool_expired_in_queue_total",
                &pool,
                p.expired_in_queue,
            );
            m.counter_at("swarmd_pool_children_total", &pool, p.children);
            if let Some(b) = &p.tokens {
                render_tokens(m, "pool", &p.name, b);
            }
            if let Some(b) = &p.balancer {
                render_instances(m, &p.name, b);
            }
            if let Some(w) = &p.workers {
                for (state, n) in [("alive", w.alive), ("busy", w.busy)] {
                    m.gauge(
                        "swarmd_pool_workers",
                        &[("pool", &p.name), ("state", state)],
                    )
                    .set(n as f64);
                }
                m.counter_at("swarmd_pool_worker_restarts_total", &pool, w.restarts);
                m.counter_at("swarmd_pool_worker_kills_total", &pool, w.kills);
            }
        }
        for (tenant, b) in &st.tenant_tokens {
            render_tokens(m, "tenant", tenant, b);
        }
        m.gauge("swarmd_global_cap", &[])
            .set(st.global.cap.unwrap_or(st.global.limit) as f64);
        m.gauge("swarmd_global_in_flight", &[])
            .set(st.global.in_flight as f64);
        m.gauge("swarmd_live_tasks", &[]).set(st.live_tasks as f64);
        m.gauge("swarmd_uptime_seconds", &[]).set(st.uptime_s);
        let r = &st.resources;
        m.gauge("swarmd_process_cpu_ratio", &[])
            .set(r.cpu_pct / 100.0);
        m.gauge("swarmd_process_resident_memory_bytes", &[])
            .set(r.rss_mib * 1024.0 * 1024.0);
        m.gauge("swarmd_process_open_fds", &[]).set(r.fds as f64);
        m.gauge("swarmd_process_max_fds", &[]).set(r.max_fds as f64);
        m.gauge("swarmd_process_threads", &[]).set(r.threads as f64);
        m.gauge("swarmd_machine_load1", &[]).set(r.load1);
        m.gauge("swarmd_machine_memory_available_bytes", &[])
            .set(r.mem_available_mib * 1024.0 * 1024.0);
        m.gauge("swarmd_runtime_workers", &[])
            .set(r.runtime_workers as f64);
        m.gauge("swarmd_runtime_alive_tasks", &[])
            .set(r.runtime_alive_tasks as f64);
        m.gauge("swarmd_runtime_global_queue_depth", &[])
            .set(r.runtime_global_queue as f64);
        m.gauge("swarmd_monitor_sample_seconds", &[])
            .set(r.sample_us as f64 / 1e6);
        m.gauge("swarmd_db_connections", &[("state", "idle")])
            .set(db.idle as f64);
        m.gauge("swarmd_db_connections", &[("state", "in_use")])
            .set(db.size.saturating_sub(db.idle) as f64);
        m.gauge("swarmd_db_connections_max", &[]).set(db.max as f64);
        m.gauge("swarmd_db_write_queue", &[])
            .set(db.write_queue as f64);
        m.gauge("swarmd_db_acquire_mean_seconds", &[])
            .set(r.db_acquire_ms / 1e3);
        m.counter_at("swarmd_db_acquires_total", &[], db.acquires);
        m.counter_at("swarmd_db_batches_total", &[], db.batches);
        m.counter_at("swarmd_db_ops_total", &[], db.ops);
        let d = &st.database;
        m.gauge("swarmd_db_available", &[])
            .set(if d.available { 1.0 } else { 0.0 });
        m.counter_at("swarmd_db_outages_total", &[], d.health.outages);
        m.counter_at("swarmd_db_write_retries_total", &[], d.write_retries);
        m.gauge("swarmd_db_down_seconds", &[])
            .set(d.health.down_ms_total as f64 / 1e3);
        for (table, n) in [
            ("tasks", d.retention.deleted_tasks),
            ("outbox", d.retention.deleted_outbox),
        ] {
            m.counter_at("swarmd_db_retention_deleted_total", &[("table", table)], n);
        }
        let t = &st.transitions;
        for (event, n) in [
            ("retried", t.retried),
            ("adopted", t.adopted),
            ("swept", t.swept),
            ("replaced", t.replaced),
            ("abandoned", t.abandoned),
        ] {
            m.counter_at("swarmd_transitions_total", &[("event", event)], n);
        }
        let c = &st.cpu_pool;
        m.gauge("swarmd_cpu_pool_threads", &[])
            .set(c.threads as f64);
        m.gauge("swarmd_cpu_pool_busy", &[]).set(c.busy as f64);
        m.gauge("swarmd_cpu_pool_queued", &[]).set(c.queued as f64);
        for (outcome, n) in [
            ("completed", c.completed),
            ("rejected", c.rejected),
            ("panicked", c.panicked),
            ("cancelled", c.cancelled),
        ] {
            m.counter_at("swarmd_cpu_pool_jobs_total", &[("outcome", outcome)], n);
        }
        for (name, n) in &alerts.fired {
            m.counter_at("swarmd_alerts_fired_total", &[("alert", name)], *n);
        }
        // Every known alert has a series, 0 when quiet, so a dashboard can
        // graph it before it first fires.
        for name in ALERT_NAMES {
            let firing = alerts.active.iter().filter(|a| a.name == name).count();
            m.gauge("swarmd_alerts_active", &[("alert", name)])
                .set(firing as f64);
        }
        m.render()
    }
}

/// Per-instance series of a balanced pool. Instance ids come from the
/// configuration or the admin API, so the label set stays bounded; a
/// removed instance's series keep their last values until restart.
/// A token budget's windows as gauges.
fn render_tokens(m: &Metrics, scope: &str, name: &str, b: &swarm_sched::budget::BudgetStatus) {
    for (window, w) in [("minute", b.minute), ("day", b.day)] {
        let Some(w) = w else { continue };
        let labels = [("scope", scope), ("name", name), ("window", window)];
        m.gauge("swarmd_tokens_limit", &labels).set(w.limit as f64);
        m.gauge("swarmd_tokens_spent", &labels).set(w.spent as f64);
        m.gauge("swarmd_tokens_reserved", &labels)
            .set(w.reserved as f64);
        m.gauge("swarmd_tokens_remaining", &labels)
            .set(w.remaining as f64);
    }
}

fn render_instances(m: &Metrics, pool: &str, b: &BalancerSnapshot) {
    use swarm_sched::balance::InstanceState;
    for i in &b.instances {
        let labels = [("pool", pool), ("instance", i.id.as_str())];
        for (state, name) in [
            (InstanceState::Healthy, "healthy"),
            (InstanceState::Ejected, "ejected"),
            (InstanceState::HalfOpen, "half_open"),
            (InstanceState::Draining, "draining"),
        ] {
            m.gauge(
                "swarmd_instance_state",
                &[("pool", pool), ("instance", &i.id), ("state", name)],
            )
            .set(if i.state == state { 1.0 } else { 0.0 });
        }
        m.gauge("swarmd_instance_in_flight", &labels)
            .set(f64::from(i.outstanding));
        m.gauge("swarmd_instance_rtt_seconds", &labels)
            .set(i.ewma_rtt_us as f64 / 1e6);
        for (outcome, n) in [
            ("success", i.successes),
            ("failure", i.failures),
            ("cancelled", i.cancelled),
        ] {
            m.counter_at(
                "swarmd_instance_calls_total",
                &[("pool", pool), ("instance", &i.id), ("outcome", outcome)],
                n,
            );
        }
        m.counter_at("swarmd_instance_ejections_total", &labels, i.ejections);
    }
}

impl PoolMetrics {
    /// A task's stages once its outcome is stored.
    pub(crate) fn finished(
        &self,
        metrics: &Metrics,
        tenant: &str,
        status: TaskStatus,
        t: &Timings,
    ) {
        let stages = [
            t.admission_ms,
            t.persist_ms,
            t.queue_ms,
            t.run_ms,
            t.complete_ms,
            t.total_ms,
        ];
        for (h, v) in self.stage.iter().zip(stages) {
            if let Some(ms) = v {
                h.record(ms / 1e3);
            }
        }
        if let Some(c) = metrics.tenant(tenant) {
            let i = match status {
                TaskStatus::Succeeded => 0,
                TaskStatus::Failed => 1,
                TaskStatus::TimedOut => 2,
                _ => 3,
            };
            c.outcome[i].increment(1);
        }
        if status == TaskStatus::Succeeded
            && let Some(total) = t.total_ms
        {
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(Instant::now(), total);
        }
    }

    /// End-to-end latency of tasks that succeeded recently.
    pub(crate) fn recent(&self) -> RecentLatency {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .summary(Instant::now())
    }
}

/// How long a half of the recent-latency window lasts: figures cover the
/// last 5-10 s, fresh enough for a live view, long enough for a p99.
const RECENT_HALF: Duration = Duration::from_secs(5);

/// Two rotating HDR histograms (current and previous half-window) of
/// end-to-end latency in microseconds.
struct Recent {
    cur: Hdr<u64>,
    prev: Hdr<u64>,
    started: Option<Instant>,
}

impl Recent {
    fn new() -> Self {
        // Three significant figures from 1 µs to an hour.
        let h = || {
            Hdr::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| Hdr::new(3).expect("hdr"))
        };
        Self {
            cur: h(),
            prev: h(),
            started: None,
        }
    }

    fn rotate(&mut self, now: Instant) {
        let started = *self.started.get_or_insert(now);
        let age = now.saturating_duration_since(started);
        if age >= RECENT_HALF * 2 {
            self.prev.reset();
            self.cur.reset();
            self.started = Some(now);
        } else if age >= RECENT_HALF {
            std::mem::swap(&mut self.cur, &mut self.prev);
            self.cur.reset();
            self.started = Some(now);
        }
    }

    fn record(&mut self, now: Instant, ms: f64) {
        self.rotate(now);
        let us = (ms * 1e3).round().clamp(1.0, 3_600_000_000.0) as u64;
        self.cur.saturating_record(us);
    }

    fn summary(&mut self, now: Instant) -> RecentLatency {
        self.rotate(now);
        let mut all = self.prev.clone();
        // Same bounds, so adding cannot fail.
        let _ = all.add(&self.cur);
        let window = self.started.map_or(0.0, |s| {
            (RECENT_HALF + now.saturating_duration_since(s)).as_secs_f64()
        });
        if all.is_empty() {
            return RecentLatency {
                window_s: window,
                ..RecentLatency::default()
            };
        }
        RecentLatency {
            p50: all.value_at_quantile(0.5) as f64 / 1e3,
            p99: all.value_at_quantile(0.99) as f64 / 1e3,
            count: all.len(),
            window_s: window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_bounded() {
        let m = Metrics::new(true, 2);
        for t in ["a", "b", "c", "d"] {
            m.submitted(t, true);
        }
        m.submitted("a", false);
        let text = m.render();
        assert!(
            text.contains(r#"swarmd_tenant_tasks_total{tenant="a",event="accepted"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"swarmd_tenant_tasks_total{tenant="a",event="rejected"} 1"#));
        assert!(text.contains(r#"tenant="b""#));
        assert!(!text.contains(r#"tenant="c""#), "c is past the budget");
        assert!(
            text.contains(r#"swarmd_tenant_tasks_total{tenant="_other",event="accepted"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn stage_histograms_have_buckets_and_help() {
        let m = Metrics::new(true, 10);
        let p = m.pool("echo");
        let t = Timings {
            admission_ms: Some(0.2),
            queue_ms: Some(3.0),
            run_ms: Some(40.0),
            total_ms: Some(44.0),
            ..Timings::default()
        };
        p.finished(&m, "a", TaskStatus::Succeeded, &t);
        let text = m.render();
        assert!(text.contains("# HELP swarmd_task_stage_seconds"), "{text}");
        assert!(
            text.contains("# TYPE swarmd_task_stage_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"swarmd_task_stage_seconds_bucket{pool="echo",stage="run",le="0.05"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"swarmd_task_stage_seconds_bucket{pool="echo",stage="run",le="0.025"} 0"#
            )
        );
        // No persist timing: that stage saw no sample.
        assert!(text.contains(r#"swarmd_task_stage_seconds_count{pool="echo",stage="persist"} 0"#));
        let r = p.recent();
        assert_eq!(r.count, 1);
        assert!((r.p99 - 44.0).abs() < 0.1, "{r:?}");
    }

    #[test]
    fn http_requests_count_by_route_method_and_status() {
        let m = Metrics::new(true, 10);
        for (method, status) in [("GET", 200), ("GET", 200), ("POST", 200), ("GET", 404)] {
            m.http(method, "/api/tasks", status, Duration::from_millis(3));
        }
        let text = m.render();
        for (line, n) in [
            (r#"method="GET",route="/api/tasks",status="200"} "#, 2),
            (r#"method="POST",route="/api/tasks",status="200"} "#, 1),
            (r#"method="GET",route="/api/tasks",status="404"} "#, 1),
        ] {
            let want = format!("swarmd_http_requests_total{{{line}{n}");
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        for (line, n) in [
            (r#"method="GET",route="/api/tasks",status="200"} "#, 2),
            (r#"method="GET",route="/api/tasks",status="404"} "#, 1),
        ] {
            let want = format!("swarmd_http_request_duration_seconds_count{{{line}{n}");
            assert!(text.contains(&want), "{want} in\n{text}");
        }
    }

    #[test]
    fn disabled_records_nothing() {
        let m = Metrics::new(false, 10);
        let p = m.pool("echo");
        p.finished(
            &m,
            "a",
            TaskStatus::Succeeded,
            &Timings {
                total_ms: Some(1.0),
                ..Timings::default()
            },
        );
        m.submitted("a", true);
        m.http("GET", "/health", 200, Duration::from_millis(1));
        assert!(!m.render().contains("swarmd_"));
        assert_eq!(p.recent().count, 1, "the status view still has latencies");
    }

    #[test]
    fn recent_window_forgets_old_samples() {
        let mut r = Recent::new();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        r.record(at(0), 100.0);
        r.record(at(6), 10.0);
        assert_eq!(r.summary(at(6)).count, 2);
        let s = r.summary(at(12));
        assert_eq!(s.count, 1, "{s:?}");
        assert!((s.p99 - 10.0).abs() < 0.1);
        assert_eq!(r.summary(at(23)).count, 0);
    }
}
