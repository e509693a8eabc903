//! The engine: the life of a task from admission to its stored outcome.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};
use swarm_agents::{AgentError, BUILTIN_KINDS, Outbox, OutboxMessage, builtin_agents};
use swarm_core::clock::now_ms;
use swarm_core::config::Config;
use swarm_core::task::SpecLimits;
use swarm_core::{FieldError, Task, TaskError, TaskId, TaskSpec, TaskStatus, Timings};
use swarm_sched::cpu::{CpuPool, CpuPoolStats};
use swarm_sched::limit::{Classify, LimitConfig, Limiter, LimiterSnapshot};
use swarm_store::{Backend, Expect, Finish, InsertOutcome, ListQuery, NewTask, OutboxRow, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admission::TenantLedger;
use crate::director::Director;
use crate::error::EngineError;
use crate::hub::{Hub, TaskEvent};
use crate::monitor::{AlertBook, AlertsView, ResourceReading};
use crate::pool::{Pool, PoolStatus, Queued};
use crate::run::OverloadClassifier;
use crate::stats::Metrics;
use crate::{background, run};

/// Who is asking: reads and cancels are limited to the caller's tenant
/// unless the caller is an admin.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The caller's tenant.
    pub tenant: &'a str,
    /// Admins see every tenant's tasks.
    pub admin: bool,
}

impl Access<'_> {
    fn may_read(&self, task: &Task) -> bool {
        self.admin || task.tenant == self.tenant
    }
}

/// A submission as the HTTP edge hands it over.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The parsed body.
    pub spec: TaskSpec,
    /// The caller's tenant.
    pub tenant: String,
    /// When the request arrived (admission latency is measured from here).
    pub received_at: Instant,
    /// The request's `X-Request-Id`, carried to the run's log lines and the
    /// agent.
    pub request_id: Option<String>,
}

/// What a submission produced.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The task as stored.
    pub task: Task,
    /// False when an idempotency key returned an earlier task.
    pub created: bool,
}

/// What a cancel did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The task ended (normally as `cancelled`; if it finished first, as it
    /// finished).
    Done(Task),
    /// The task runs on another node, which was asked to cancel it.
    Requested(Task),
}

/// The engine as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Build version.
    pub version: &'static str,
    /// This node's id.
    pub node_id: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Database and its connection pool.
    pub database: DatabaseStatus,
    /// Departments.
    pub pools: Vec<PoolStatus>,
    /// Tasks this process is tracking (queued or running here).
    pub live_tasks: usize,
    /// The process-wide cap on running tasks (`admission.global_max_inflight`,
    /// lowered by the resource governor while CPU or memory is high).
    pub global: LimiterSnapshot,
    /// Process CPU and memory as last sampled.
    pub resources: ResourceReading,
    /// The thread pool for blocking, CPU-heavy agent work.
    pub cpu_pool: CpuPoolStats,
    /// Whether shutdown has begun.
    pub draining: bool,
}

/// The connection pool, for `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatus {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Open connections.
    pub size: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections in use.
    pub in_use: u32,
    /// Ceiling.
    pub max: u32,
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) store: Store,
    pub(crate) node_id: String,
    pub(crate) director: Director,
    pub(crate) pools: BTreeMap<String, Arc<Pool>>,
    pub(crate) hub: Hub,
    started: Instant,
    /// Fired when shutdown begins: no new submissions, no new starts.
    pub(crate) stop_dispatch: CancellationToken,
    /// Fired when the grace period ends: running tasks go back to the queue.
    pub(crate) stop_runs: CancellationToken,
    pub(crate) runs: TaskTracker,
    background: TaskTracker,
    /// The process-wide cap on running tasks.
    pub(crate) global: Limiter,
    /// Outstanding tasks per tenant (quotas).
    pub(crate) tenants: Arc<TenantLedger>,
    /// Per-tenant quota overrides.
    quotas: HashMap<String, usize>,
    /// Maps a run's result to the limiter's success / drop / ignore.
    pub(crate) classifier: Arc<dyn Classify<Result<Value, AgentError>>>,
    /// Last resource sample.
    pub(crate) resources: Mutex<ResourceReading>,
    /// Blocking, CPU-heavy agent work runs here.
    pub(crate) cpu: CpuPool,
    /// Prometheus metrics.
    pub(crate) metrics: Metrics,
    /// Alerts raised by the monitor.
    pub(crate) alerts: Mutex<AlertBook>,
}

/// The running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

/// Per-instance series of a balanced pool. Instance ids come from the
/// configuration or the admin API, so the label set stays bounded; a
/// removed instance's series keep their last values until restart.
fn render_instances(m: &Metrics, pool: &str, b: &swarm_sched::balance::BalancerSnapshot) {
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

/// Backs the email agent's outbox with the store's `outbox` table.
struct StoreOutbox(Store);

impl Outbox for StoreOutbox {
    fn deliver(&self, msg: OutboxMessage) -> BoxFuture<'static, Result<String, String>> {
        let store = self.0.clone();
        Box::pin(async move {
            let id = TaskId::new().to_string();
            store
                .outbox_insert(OutboxRow {
                    id: id.clone(),
                    task_id: msg.task_id.to_string(),
                    tenant: msg.tenant,
                    sender: msg.from,
                    recipients: msg.to,
                    cc: msg.cc,
                    subject: msg.subject,
                    body: msg.body,
                    created_at: now_ms(),
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(id)
        })
    }
}

/// The node id when the configuration names none: SQLite has one node per
/// file; on PostgreSQL, host and port tell processes apart and stay the same
/// across a restart, so a restarted node takes its own tasks back at once.
fn default_node_id(backend: Backend, listen: &str) -> String {
    match backend {
        Backend::Sqlite => "local".to_string(),
        Backend::Postgres => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "localhost".to_string());
            let port = listen.rsplit(':').next().unwrap_or("0");
            format!("{host}:{port}")
        }
    }
}

/// Stable 64-bit FNV-1a of the request's meaningful fields, to tell an
/// idempotent replay from a different request reusing the key. Stable across
/// builds (unlike `DefaultHasher`), since it is stored.
fn request_hash(spec: &TaskSpec) -> String {
    let canonical = json!({
        "type": spec.task_type,
        "args": spec.args(),
        "title": spec.title,
        "description": spec.description,
        "priority": spec.priority.map(|p| p.as_str()),
        "agent": spec.agent,
        "timeout_ms": spec.timeout_ms,
    });
    // serde_json's map is ordered by key, so this text is canonical.
    let text = canonical.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

impl Engine {
    /// Builds pools and agents, takes over unfinished tasks, and starts the
    /// dispatchers and background loops; limiters learn from runs through
    /// the default [`OverloadClassifier`].
    pub async fn start(cfg: Config, store: Store) -> Result<Self, EngineError> {
        Self::start_with_classifier(cfg, store, Arc::new(OverloadClassifier)).await
    }

    /// As [`Engine::start`], with the classifier that tells the limiters
    /// which results are back-pressure.
    pub async fn start_with_classifier(
        cfg: Config,
        store: Store,
        classifier: Arc<dyn Classify<Result<Value, AgentError>>>,
    ) -> Result<Self, EngineError> {
        cfg.validate(BUILTIN_KINDS)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let node_id = cfg
            .node_id
            .clone()
            .unwrap_or_else(|| default_node_id(store.backend(), &cfg.server.listen));
        let cpu = CpuPool::new(
            cfg.cpu_pool.threads_or_default(),
            cfg.cpu_pool.queue,
            "swarmd-cpu",
        );
        let agents = builtin_agents(&cfg, Arc::new(StoreOutbox(store.clone())), cpu.clone())
            .map_err(EngineError::Internal)?;
        let metrics = Metrics::new(cfg.monitor.metrics, cfg.monitor.max_tenant_labels);
        let mut pools = BTreeMap::new();
        for (name, pc) in &cfg.pools {
            let kind = pc.agent_kind(name);
            // Pools with instances of their own (process workers, HTTP
            // endpoints) get their own agent; the others share one.
            let agent = match swarm_agents::pool_agent(name, pc).map_err(EngineError::Internal)? {
                Some(a) => a,
                None => {
                    let shared = agents.get(kind).cloned().ok_or_else(|| {
                        EngineError::Internal(format!("no agent of kind `{kind}`"))
                    })?;
                    swarm_agents::replicated(name, pc, shared).map_err(EngineError::Internal)?
                }
            };
            pools.insert(
                name.clone(),
                Arc::new(Pool::new(name, pc, &cfg.tenants, agent, metrics.pool(name))),
            );
        }
        let quotas = cfg
            .tenants
            .iter()
            .filter_map(|t| t.max_outstanding.map(|m| (t.name.clone(), m)))
            .collect();
        let global = Limiter::new(LimitConfig::fixed(cfg.admission.global_max_inflight));
        let inner = Arc::new(Inner {
            director: Director::new(&cfg),
            cfg,
            store,
            node_id,
            pools,
            hub: Hub::new(),
            started: Instant::now(),
            stop_dispatch: CancellationToken::new(),
            stop_runs: CancellationToken::new(),
            runs: TaskTracker::new(),
            background: TaskTracker::new(),
            global,
            tenants: Arc::new(TenantLedger::default()),
            quotas,
            classifier,
            resources: Mutex::new(ResourceReading::default()),
            cpu,
            metrics,
            alerts: Mutex::new(AlertBook::default()),
        });
        let engine = Engine { inner };
        engine.recover().await?;
        for pool in engine.inner.pools.values() {
            engine
                .inner
                .background
                .spawn(run::dispatch(engine.inner.clone(), pool.clone()));
        }
        engine
            .inner
            .background
            .spawn(background::heartbeat(engine.clone()));
        engine
            .inner
            .background
            .spawn(background::governor(engine.clone()));
        Ok(engine)
    }

    async fn recover(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner.store.register_node(&inner.node_id, now_ms()).await?;
        let tasks = inner.store.claim_at_start(&inner.node_id).await?;
        if !tasks.is_empty() {
            info!(count = tasks.len(), node = %inner.node_id, "re-queued unfinished tasks from a previous run");
        }
        for t in tasks {
            self.adopt(t).await;
        }
        Ok(())
    }

    /// Queues a task this node has just claimed (recovery or rescue).
    pub(crate) async fn adopt(&self, task: Task) {
        let inner = &self.inner;
        match inner.pools.get(&task.department) {
            Some(pool) => {
                inner.hub.register(task.clone());
                let slot = inner.tenants.take(&task.tenant);
                pool.push(Queued {
                    task,
                    enqueued_at: Instant::now(),
                    accepted_at: None,
                    slot,
                    request_id: None,
                });
            }
            None => {
                // The department was removed from the configuration since the
                // task was accepted: fail it visibly rather than drop it.
                let finish = Finish {
                    id: task.id,
                    expect: Expect::Queued,
                    status: TaskStatus::Failed,
                    result: None,
                    error: Some(TaskError::new(
                        "department_gone",
                        format!("department `{}` is no longer configured", task.department),
                        Some("queue"),
                    )),
                    finished_at: now_ms(),
                    timings: task.timings.clone(),
                    instance: None,
                };
                if let Err(e) = inner.store.finish(finish).await {
                    warn!(task = %task.id, error = %e, "could not fail a task of a removed department");
                }
            }
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Validates, routes, stores and queues a task. Returns once the task is
    /// durable.
    pub async fn submit(&self, sub: Submission) -> Result<Submitted, EngineError> {
        let metrics = &self.inner.metrics;
        let tenant = metrics.enabled().then(|| sub.tenant.clone());
        let r = self.submit_inner(sub).await;
        if let Some(t) = tenant {
            match &r {
                Ok(s) if s.created => metrics.submitted(&t, true),
                Err(EngineError::Overloaded { .. } | EngineError::QuotaExceeded { .. }) => {
                    metrics.submitted(&t, false)
                }
                _ => {}
            }
        }
        r
    }

    async fn submit_inner(&self, sub: Submission) -> Result<Submitted, EngineError> {
        let inner = &self.inner;
        if inner.stop_dispatch.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let mut spec = sub.spec;
        spec.validate(SpecLimits {
            max_wait_ms: inner.cfg.server.max_wait_ms,
        })?;
        let (department, _reason) = inner.director.route(&spec)?;
        let pool = inner.pools.get(&department).ok_or_else(|| {
            EngineError::Internal(format!("routed to missing pool `{department}`"))
        })?;
        pool.agent
            .validate(spec.args())
            .map_err(|e| e.nested_under("args"))?;
        let timeout_ms = spec.timeout_ms.unwrap_or(pool.default_timeout_ms);
        if timeout_ms > pool.max_timeout_ms {
            return Err(FieldError::invalid(
                "timeout_ms",
                format!(
                    "`timeout_ms` must be at most {} for department `{}`",
                    pool.max_timeout_ms, pool.name
                ),
            )
            .into());
        }
        // Admission, from memory, before anything is stored.
        if inner
            .resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rss_high
        {
            pool.counters
                .rejected_process
                .fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded {
                code: "process_overloaded",
                message: format!(
                    "the server's memory is over its threshold ({} MiB); retry later",
                    inner.cfg.admission.rss_high_mib
                ),
                retry_after_s: 5,
            });
        }
        let quota = inner
            .quotas
            .get(&sub.tenant)
            .copied()
            .unwrap_or(inner.cfg.admission.tenant_max_outstanding);
        let slot = match inner.tenants.try_take(&sub.tenant, quota) {
            Ok(slot) => slot,
            Err(n) => {
                pool.counters.rejected_quota.fetch_add(1, Ordering::Relaxed);
                return Err(EngineError::QuotaExceeded {
                    message: format!(
                        "tenant `{}` has {n} tasks queued or running, its quota; retry when some finish",
                        sub.tenant
                    ),
                    // The tenant's excess drains at its share of the pool's
                    // rate at best; one slot frees in about this long.
                    retry_after_s: pool.drain.retry_after_s(1),
                });
            }
        };
        let pending = pool.admit(Duration::from_millis(timeout_ms), &sub.tenant)?;
        let now = now_ms();
        let request_hash = spec.idempotency_key.as_ref().map(|_| request_hash(&spec));
        let task = Task {
            id: TaskId::new(),
            tenant: sub.tenant,
            task_type: spec.task_type.clone(),
            status: TaskStatus::Queued,
            priority: spec.priority.unwrap_or_default(),
            department: pool.name.clone(),
            agent: pool.agent_kind.clone(),
            instance: None,
            title: spec.title.clone(),
            description: spec.description.clone(),
            args: spec.args().clone(),
            result: None,
            error: None,
            idempotency_key: spec.idempotency_key.clone(),
            timeout_ms: timeout_ms as i64,
            deadline_at: now.saturating_add(timeout_ms as i64),
            created_at: now,
            started_at: None,
            finished_at: None,
            attempts: 0,
            timings: Timings {
                admission_ms: Some(ms(sub.received_at.elapsed())),
                ..Timings::default()
            },
        };
        let persist_from = Instant::now();
        let outcome = inner
            .store
            .insert(NewTask {
                task,
                request_hash,
                owner: inner.node_id.clone(),
            })
            .await?;
        match outcome {
            InsertOutcome::Created(mut task) => {
                task.timings.persist_ms = Some(ms(persist_from.elapsed()));
                pool.counters.accepted.fetch_add(1, Ordering::Relaxed);
                inner.hub.register(task.clone());
                pool.push(Queued {
                    task: task.clone(),
                    enqueued_at: Instant::now(),
                    accepted_at: Some(sub.received_at),
                    slot,
                    request_id: sub.request_id,
                });
                drop(pending);
                Ok(Submitted {
                    task,
                    created: true,
                })
            }
            InsertOutcome::Existing { task, same_request } => {
                if !same_request {
                    return Err(EngineError::Conflict {
                        code: "idempotency_conflict",
                        message: format!(
                            "idempotency_key `{}` was already used for a different request (task {})",
                            task.idempotency_key.as_deref().unwrap_or_default(),
                            task.id
                        ),
                    });
                }
                let task = match inner.hub.current(task.id) {
                    Some(live) => (*live).clone(),
                    None => task,
                };
                Ok(Submitted {
                    task,
                    created: false,
                })
            }
        }
    }

    /// One task, if the caller may see it.
    pub async fn get(&self, id: TaskId, access: Access<'_>) -> Result<Task, EngineError> {
        let task = match self.inner.hub.current(id) {
            Some(t) => (*t).clone(),
            None => self
                .inner
                .store
                .get(id)
                .await?
                .ok_or(EngineError::NotFound)?,
        };
        if access.may_read(&task) {
            Ok(task)
        } else {
            Err(EngineError::NotFound)
        }
    }

    /// Tasks, newest first; clients see only their tenant's.
    pub async fn list(
        &self,
        mut q: ListQuery,
        access: Access<'_>,
    ) -> Result<Vec<Task>, EngineError> {
        if !access.admin {
            q.tenant = Some(access.tenant.to_string());
        }
        Ok(self.inner.store.list(&q).await?)
    }

    /// Outbox messages, newest first; clients see only their tenant's.
    pub async fn outbox(
        &self,
        limit: u32,
        access: Access<'_>,
    ) -> Result<Vec<OutboxRow>, EngineError> {
        let tenant = (!access.admin).then_some(access.tenant);
        Ok(self.inner.store.outbox_list(tenant, limit).await?)
    }

    /// Follows a task's changes (for `wait_ms` and server-sent events).
    pub async fn watch(&self, id: TaskId, access: Access<'_>) -> Result<Watch, EngineError> {
        if let Some((current, rx)) = self.inner.hub.subscribe(id) {
            if !access.may_read(&current) {
                return Err(EngineError::NotFound);
            }
            return Ok(Watch {
                engine: self.clone(),
                current,
                rx: Some(rx),
                ended: false,
            });
        }
        let task = self.get(id, access).await?;
        Ok(Watch {
            engine: self.clone(),
            current: Arc::new(task),
            rx: None,
            ended: false,
        })
    }

    /// Waits up to `wait` for the task to end; returns its state then.
    pub async fn wait(
        &self,
        id: TaskId,
        access: Access<'_>,
        wait: Duration,
    ) -> Result<Task, EngineError> {
        let mut watch = self.watch(id, access).await?;
        let deadline = Instant::now() + wait;
        while !watch.current().status.is_terminal() {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        Ok(watch.current().clone())
    }

    /// Cancels a queued or running task.
    pub async fn cancel(
        &self,
        id: TaskId,
        access: Access<'_>,
    ) -> Result<CancelOutcome, EngineError> {
        let task = self.get(id, access).await?;
        if task.status.is_terminal() {
            return Err(EngineError::Conflict {
                code: "already_finished",
                message: format!("task {id} already ended as {}", task.status),
            });
        }
        if let Some(t) = self.cancel_local(&task).await? {
            return Ok(CancelOutcome::Done(t));
        }
        // Not queued or running here: another node owns it.
        self.inner.store.request_cancel(id).await?;
        let now = self.get(id, access).await?;
        if now.status.is_terminal() {
            Ok(CancelOutcome::Done(now))
        } else {
            Ok(CancelOutcome::Requested(now))
        }
    }

    /// Cancels a task if this node holds it; `None` if it does not.
    pub(crate) async fn cancel_local(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        let inner = &self.inner;
        let Some(pool) = inner.pools.get(&task.department) else {
            return Ok(None);
        };
        if let Some(run) = pool.running_handle(task.id) {
            run.cancel.cancel();
            let admin = Access {
                tenant: "",
                admin: true,
            };
            return Ok(Some(
                self.wait(task.id, admin, Duration::from_secs(30)).await?,
            ));
        }
        let removed = pool.remove_queued(task.id);
        let held_here = removed.is_some() || inner.hub.current(task.id).is_some();
        if !held_here {
            return Ok(None);
        }
        let mut timings = removed
            .as_ref()
            .map(|q| q.task.timings.clone())
            .unwrap_or_else(|| task.timings.clone());
        let now = now_ms();
        timings.total_ms = Some((now - task.created_at).max(0) as f64);
        let error = TaskError::new(
            "cancelled",
            "cancelled by client while queued",
            Some("queue"),
        );
        let finished = inner
            .store
            .finish(Finish {
                id: task.id,
                expect: Expect::Queued,
                status: TaskStatus::Cancelled,
                result: None,
                error: Some(error.clone()),
                finished_at: now,
                timings: timings.clone(),
                instance: None,
            })
            .await?;
        if finished {
            pool.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            let mut t = removed.map(|q| q.task).unwrap_or_else(|| task.clone());
            t.status = TaskStatus::Cancelled;
            t.error = Some(error);
            t.finished_at = Some(now);
            t.timings = timings;
            run::finished(inner, pool, &t);
            inner.hub.publish(t.clone());
            return Ok(Some(t));
        }
        // It left the queue between our read and the update: it is starting
        // (its run sees the cancel token) or it ended. Ask again.
        if let Some(run) = pool.running_handle(task.id) {
            run.cancel.cancel();
        }
        let admin = Access {
            tenant: "",
            admin: true,
        };
        Ok(Some(
            self.wait(task.id, admin, Duration::from_secs(30)).await?,
        ))
    }

    /// Pools, database pool, uptime.
    pub fn status(&self) -> Status {
        let inner = &self.inner;
        let db = inner.store.pool_stats();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            node_id: inner.node_id.clone(),
            uptime_s: inner.started.elapsed().as_secs_f64(),
            database: DatabaseStatus {
                backend: inner.store.backend().as_str(),
                size: db.size,
                idle: db.idle,
                in_use: db.size.saturating_sub(db.idle),
                max: db.max,
            },
            pools: inner.pools.values().map(|p| p.status()).collect(),
            live_tasks: inner.hub.len(),
            draining: inner.stop_dispatch.is_cancelled(),
            global: inner.global.snapshot(),
            resources: *inner.resources.lock().unwrap_or_else(|p| p.into_inner()),
            cpu_pool: inner.cpu.stats(),
        }
    }

    /// Alerts firing now and recently.
    pub fn alerts(&self) -> AlertsView {
        self.inner
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view()
    }

    /// The engine's metrics; the server records its HTTP figures here.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The Prometheus exposition: the state `/api/status` shows is copied
    /// into gauges and counters, then everything is rendered. `None` when
    /// `monitor.metrics` is off.
    pub fn render_metrics(&self) -> Option<String> {
        let m = &self.inner.metrics;
        if !m.enabled() {
            return None;
        }
        let st = self.status();
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
                ("process_overloaded", r.process_overloaded),
            ] {
                m.counter_at(
                    "swarmd_pool_rejected_total",
                    &[("pool", &p.name), ("reason", reason)],
                    n,
                );
            }
            for (outcome, n) in [
                ("succeeded", p.succeeded),
                ("failed", p.failed),
                ("timed_out", p.timed_out),
                ("cancelled", p.cancelled),
            ] {
                m.counter_at(
                    "swarmd_pool_finished_total",
                    &[("pool", &p.name), ("outcome", outcome)],
                    n,
                );
            }
            m.counter_at(
                "swarmd_pool_expired_in_queue_total",
                &pool,
                p.expired_in_queue,
            );
            m.counter_at("swarmd_pool_children_total", &pool, p.children);
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
        let db = self.inner.store.pool_stats();
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
        let alerts = self.alerts();
        for (name, n) in &alerts.fired {
            m.counter_at("swarmd_alerts_fired_total", &[("alert", name)], *n);
        }
        // Every known alert has a series, 0 when quiet, so a dashboard can
        // graph it before it first fires.
        for name in crate::monitor::ALERT_NAMES {
            let firing = alerts.active.iter().filter(|a| a.name == name).count();
            m.gauge("swarmd_alerts_active", &[("alert", name)])
                .set(firing as f64);
        }
        Some(m.render())
    }

    /// Whether the database answers.
    pub async fn ready(&self) -> Result<(), EngineError> {
        Ok(self.inner.store.ping().await?)
    }

    /// Graceful shutdown: stop taking and starting work, let running tasks
    /// finish for up to `grace`, then hand the rest back to the queue (the
    /// store keeps them `queued` for the next start or another node).
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stop_dispatch.cancel();
        inner.runs.close();
        let running: usize = inner.pools.values().map(|p| p.running_count()).sum();
        info!(running, grace_ms = grace.as_millis() as u64, "draining");
        if tokio::time::timeout(grace, inner.runs.wait())
            .await
            .is_err()
        {
            warn!("grace period over; returning running tasks to the queue");
            inner.stop_runs.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), inner.runs.wait()).await;
        }
        // Runs are over: dispatchers still serving children may stop.
        inner.stop_runs.cancel();
        inner.background.close();
        inner.cpu.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), inner.background.wait()).await;
        let queued: usize = inner.pools.values().map(|p| p.drain().len()).sum();
        if queued > 0 {
            info!(queued, "left queued tasks in the store for the next start");
        }
        if let Err(e) = inner.store.leave(&inner.node_id).await {
            warn!(error = %e, "could not mark this node as gone");
        }
    }
}

/// A task's changes as they happen.
pub struct Watch {
    engine: Engine,
    current: Arc<Task>,
    rx: Option<tokio::sync::broadcast::Receiver<TaskEvent>>,
    ended: bool,
}

/// How often a watch polls the store for a task another node runs.
const POLL: Duration = Duration::from_millis(250);

impl Watch {
    /// The latest state seen.
    pub fn current(&self) -> &Task {
        &self.current
    }

    /// The next event; `None` after the task has ended.
    pub async fn next(&mut self) -> Option<TaskEvent> {
        if self.ended || self.current.status.is_terminal() {
            self.ended = true;
            return None;
        }
        loop {
            if let Some(rx) = &mut self.rx {
                match rx.recv().await {
                    Ok(TaskEvent::State(t)) => {
                        self.current = t.clone();
                        return Some(TaskEvent::State(t));
                    }
                    Ok(ev @ TaskEvent::Progress(_)) => return Some(ev),
                    Err(RecvError::Lagged(_)) => {
                        if let Some(t) = self.refresh().await {
                            return Some(TaskEvent::State(t));
                        }
                    }
                    Err(RecvError::Closed) => {
                        // The hub forgot the task: it ended, or this process
                        // handed it back. The store has the truth.
                        self.rx = None;
                        if let Some(t) = self.refresh().await {
                            return Some(TaskEvent::State(t));
                        }
                    }
                }
            } else {
                tokio::time::sleep(POLL).await;
                if let Some((current, rx)) = self.engine.inner.hub.subscribe(self.current.id) {
                    self.rx = Some(rx);
                    if *current != *self.current {
                        self.current = current.clone();
                        return Some(TaskEvent::State(current));
                    }
                    continue;
                }
                if let Some(t) = self.refresh().await {
                    return Some(TaskEvent::State(t));
                }
            }
        }
    }

    /// Re-reads the task; returns it if it changed.
    async fn refresh(&mut self) -> Option<Arc<Task>> {
        let id = self.current.id;
        let latest = match self.engine.inner.hub.current(id) {
            Some(t) => Some(t),
            None => match self.engine.inner.store.get(id).await {
                Ok(Some(t)) => Some(Arc::new(t)),
                Ok(None) => None,
                Err(e) => {
                    warn!(task = %id, error = %e, "watch could not re-read its task");
                    None
                }
            },
        }?;
        if *latest != *self.current {
            self.current = latest.clone();
            Some(latest)
        } else {
            None
        }
    }
}

/// Builds the `progress` reporter for one run.
pub(crate) fn progress_for(engine: &Arc<Inner>, id: TaskId) -> swarm_agents::Progress {
    let weak = Arc::downgrade(engine);
    swarm_agents::Progress::new(move |v: Value| {
        if let Some(inner) = weak.upgrade() {
            inner.hub.progress(id, v);
        }
    })
}
