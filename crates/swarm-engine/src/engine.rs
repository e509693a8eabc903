//! The engine's public face: start-up wiring, the calls the HTTP edge makes
//! (submit, get, list, watch, wait, cancel, status, metrics), and shutdown.
//!
//! It decides nothing itself: admission decides what is admitted, the
//! lifecycle changes state, the dispatchers and runs do the work, the
//! upkeep loops tend the rest. This file wires them and translates.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use swarm_agents::{AgentError, BUILTIN_KINDS, Outbox, OutboxMessage, builtin_agents};
use swarm_core::clock::now_ms;
use swarm_core::config::Config;
use swarm_core::task::SpecLimits;
use swarm_core::{FieldError, Task, TaskId, TaskSpec, TaskStatus, Timings};
use swarm_sched::cpu::CpuPool;
use swarm_sched::limit::{Classify, LimitConfig, Limiter};
use swarm_store::{Backend, ListQuery, NewTask, OutboxRow, Store};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::attempt::OverloadClassifier;
use crate::director::Director;
use crate::dispatch::Dispatcher;
use crate::env::RunEnv;
use crate::error::EngineError;
use crate::hub::Hub;
use crate::ledger::TenantLedger;
use crate::lifecycle::{Accepted, Admitted, Cancelled, Lifecycle};
use crate::monitor::{Alerts, AlertsView, Resources};
use crate::pool::{Pool, Pools};
use crate::roster::{Roster, Tenants};
use crate::shutdown::Shutdown;
use crate::stats::Metrics;
use crate::status::{ClusterCounts, DatabaseStatus, NodeView, NodesView, Status};
use crate::tokens::TenantBudgets;
use crate::upkeep::governor::Governor;
use crate::upkeep::heartbeat::{Cluster, Heartbeat};
use crate::upkeep::peers::{PeerStats, Peers};
use crate::upkeep::retention::{Retention, RetentionStats};
use crate::watch::{Remote, Watch};

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

    const ADMIN: Access<'static> = Access {
        tenant: "",
        admin: true,
    };
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
    /// The task runs on another node, which was asked to cancel it (or its
    /// outcome is not stored yet).
    Requested(Task),
}

/// The running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    core: Arc<Core>,
}

/// Everything the engine holds, each part owned by the module that uses it
/// and reached here only to wire or to read.
struct Core {
    /// The configuration it started with.
    cfg: Arc<Config>,
    /// This node's name in the store.
    node_id: String,
    /// The record of truth.
    store: Store,
    /// The departments.
    pools: Arc<Pools>,
    /// Live tasks, for waiters and cancels.
    hub: Arc<Hub>,
    /// The shared poller of watches of tasks held elsewhere.
    remote: Arc<Remote>,
    /// Every state transition.
    lifecycle: Arc<Lifecycle>,
    /// Every admission decision.
    admission: Admission,
    /// Routing.
    director: Director,
    /// The stop signals and the runs' tracker.
    shutdown: Shutdown,
    /// The process-wide cap on running tasks.
    global: Limiter,
    /// Blocking, CPU-heavy agent work runs here.
    cpu: CpuPool,
    /// The monitor's last reading.
    resources: Arc<Resources>,
    /// Alerts raised by the monitor.
    alerts: Arc<Alerts>,
    /// What retention deleted.
    retention: Arc<RetentionStats>,
    /// What the cluster loop did (claims, takeovers, live peers).
    peers: Arc<PeerStats>,
    /// Outstanding tasks per tenant (shared with admission and lifecycle).
    tenants: Arc<TenantLedger>,
    /// The tenants' token budgets (shared with admission and the runs).
    tenant_tokens: Arc<TenantBudgets>,
    /// `[[tenants]]` as configured now (reloaded on SIGHUP).
    roster: Roster,
    /// Prometheus metrics.
    metrics: Arc<Metrics>,
    /// Start time, for uptime.
    started: Instant,
    /// The dispatchers and upkeep loops.
    background: TaskTracker,
    /// `[[schedules]]`, parsed.
    schedules: crate::timetable::Schedules,
    /// `[webhooks]`, parsed: callbacks' checks, secrets, the sender.
    webhooks: Arc<crate::upkeep::webhooks::WebhookPlan>,
    /// The runtime the engine was started on: its loops and runs live there,
    /// and so does every submission's store write and queueing (see
    /// [`Engine::submit`]).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.core.node_id)
            .finish()
    }
}

/// Backs the email agent's outbox with the store's `outbox` table.
struct StoreOutbox(Store);

impl Outbox for StoreOutbox {
    fn deliver(&self, msg: OutboxMessage) -> BoxFuture<'static, Result<String, String>> {
        let store = self.0.clone();
        Box::pin(async move {
            let id = TaskId::new().to_string();
            let row = OutboxRow {
                id: id.clone(),
                task_id: msg.task_id.to_string(),
                tenant: msg.tenant,
                sender: msg.from,
                recipients: msg.to,
                cc: msg.cc,
                subject: msg.subject,
                body: msg.body,
                created_at: now_ms(),
            };
            // A database that is down is no reason to fail the message:
            // the write (idempotent by id) waits for it. The task's deadline
            // bounds the wait, since the run drops this future at it.
            loop {
                match store.outbox_insert(row.clone()).await {
                    Ok(()) => return Ok(id),
                    Err(e) if e.is_unavailable() => {
                        store.health().wait_up().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
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

// === impl Engine: start-up ===

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
        swarm_store::cluster::check_node_id(&node_id).map_err(EngineError::Internal)?;
        // Registered, then the liveness lock: a previous process with this
        // id must be dead before this one takes back what it left.
        store
            .register_node(&node_id, now_ms(), &cfg.server.listen)
            .await?;
        let lock = store.lock_node(&node_id, Duration::from_secs(5)).await?;
        let cpu = CpuPool::new(
            cfg.cpu_pool.threads_or_default(),
            cfg.cpu_pool.queue,
            "swarmd-cpu",
        );
        let agents = builtin_agents(&cfg, Arc::new(StoreOutbox(store.clone())), cpu.clone())
            .map_err(EngineError::Internal)?;
        let metrics = Arc::new(Metrics::new(
            cfg.monitor.metrics,
            cfg.monitor.max_tenant_labels,
        ));
        let mut pools = std::collections::BTreeMap::new();
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
        let pools = Arc::new(Pools::new(pools));
        let hub = Arc::new(Hub::new());
        let tenants = Arc::new(TenantLedger::default());
        let resources = Arc::new(Resources::default());
        let shutdown = Shutdown::default();
        let lifecycle = Arc::new(Lifecycle::new(
            store.clone(),
            hub.clone(),
            pools.clone(),
            tenants.clone(),
            node_id.clone(),
            metrics.clone(),
            cfg.monitor.slow_task_ms,
            shutdown.clone(),
        ));
        let tenant_tokens = Arc::new(TenantBudgets::new(&cfg.tenants));
        let env = Arc::new(RunEnv::new(
            lifecycle.clone(),
            pools.clone(),
            hub.clone(),
            classifier,
            shutdown.clone(),
            tenant_tokens.clone(),
        ));
        let cfg = Arc::new(cfg);
        let remote = Remote::new(hub.clone(), store.clone());
        let schedules = crate::timetable::Schedules::new(&cfg.schedules)?;
        let webhooks = Arc::new(
            crate::upkeep::webhooks::WebhookPlan::new(&cfg.webhooks).map_err(|e| {
                EngineError::Internal(format!(
                    "{}: {}",
                    e.field.as_deref().unwrap_or("webhooks"),
                    e.message
                ))
            })?,
        );
        let core = Arc::new(Core {
            admission: Admission::new(
                &cfg,
                tenants.clone(),
                tenant_tokens.clone(),
                resources.clone(),
                store.clone(),
            ),
            tenant_tokens,
            tenants,
            roster: Roster::new(cfg.tenants.clone()),
            director: Director::new(&cfg),
            global: Limiter::new(LimitConfig::fixed(cfg.admission.global_max_inflight)),
            cfg,
            node_id,
            store,
            pools,
            remote,
            hub,
            lifecycle,
            shutdown,
            cpu,
            resources,
            alerts: Arc::default(),
            retention: Arc::default(),
            peers: Arc::default(),
            metrics,
            started: Instant::now(),
            background: TaskTracker::new(),
            schedules,
            webhooks,
            runtime: tokio::runtime::Handle::current(),
        });
        // A schedule whose template routes nowhere would fail every tick.
        for sch in &core.cfg.schedules {
            core.director.route(&sch.task).map_err(|e| {
                EngineError::Internal(format!(
                    "schedule `{}`: its task does not route to a department: {e}",
                    sch.name
                ))
            })?;
        }
        core.lifecycle.recover().await?;
        let engine = Engine { core };
        engine.spawn_loops(env, lock);
        engine.spawn_schedules();
        Ok(engine)
    }

    /// `[[schedules]]`, parsed.
    pub(crate) fn schedules(&self) -> &crate::timetable::Schedules {
        &self.core.schedules
    }

    /// Runs `f` with the engine's loops (tracked, ended by shutdown).
    pub(crate) fn spawn_background<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.core.background.spawn(f);
    }

    /// Fired when shutdown begins.
    pub(crate) fn draining_token(&self) -> tokio_util::sync::CancellationToken {
        self.core.shutdown.draining().clone()
    }

    /// The dispatchers and the upkeep loops.
    fn spawn_loops(&self, env: Arc<RunEnv>, lock: Option<swarm_store::cluster::NodeLock>) {
        let c = &self.core;
        if let Some(lock) = lock {
            // A cluster-wide limit starts at nothing here: the first round
            // of the cluster loop, at once, leases this node's part.
            for pool in c.pools.iter() {
                if pool.limiter().config().scope == swarm_sched::limit::Scope::Cluster {
                    pool.limiter().set_share(Some(0));
                }
            }
            c.background.spawn(
                Peers {
                    store: c.store.clone(),
                    hub: c.hub.clone(),
                    lifecycle: c.lifecycle.clone(),
                    pools: c.pools.clone(),
                    tenants: c.tenants.clone(),
                    tokens: c.tenant_tokens.clone(),
                    node_id: c.node_id.clone(),
                    lock,
                    shutdown: c.shutdown.clone(),
                    stats: c.peers.clone(),
                }
                .run(),
            );
        }
        let stop = c.shutdown.draining().clone();
        for pool in c.pools.iter() {
            c.background.spawn(
                Dispatcher {
                    env: env.clone(),
                    pool: pool.clone(),
                    global: c.global.clone(),
                    health: c.store.health().clone(),
                }
                .run(),
            );
        }
        c.background.spawn(
            Heartbeat {
                store: c.store.clone(),
                pools: c.pools.clone(),
                node_id: c.node_id.clone(),
                lease_ms: c.cfg.database.lease_ms,
                stop: stop.clone(),
            }
            .run(),
        );
        c.background.spawn(
            Cluster {
                store: c.store.clone(),
                hub: c.hub.clone(),
                lifecycle: c.lifecycle.clone(),
                node_id: c.node_id.clone(),
                lease_ms: c.cfg.database.lease_ms,
                stop: stop.clone(),
            }
            .run(),
        );
        c.background.spawn(
            Governor {
                cfg: c.cfg.clone(),
                pools: c.pools.clone(),
                lifecycle: c.lifecycle.clone(),
                shutdown: c.shutdown.clone(),
                global: c.global.clone(),
                resources: c.resources.clone(),
                alerts: c.alerts.clone(),
                store: c.store.clone(),
                metrics: c.metrics.clone(),
            }
            .run(),
        );
        c.background.spawn(
            crate::upkeep::webhooks::Deliverer {
                store: c.store.clone(),
                plan: c.webhooks.clone(),
                node_id: c.node_id.clone(),
                stop: stop.clone(),
            }
            .run(),
        );
        c.background.spawn(
            Retention {
                store: c.store.clone(),
                keep: c.cfg.database.retention,
                stats: c.retention.clone(),
                stop,
            }
            .run(),
        );
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.core.node_id
    }

    /// The configuration the engine started with. A reload changes the
    /// instance lists and the tenants ([`Engine::tenants`]), not this.
    pub fn config(&self) -> &Config {
        &self.core.cfg
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// The departments (for `instances`).
    pub(crate) fn pools(&self) -> &Pools {
        &self.core.pools
    }

    /// The tenants as configured now (reloaded on SIGHUP).
    pub fn tenants(&self) -> Arc<Tenants> {
        self.core.roster.get()
    }

    /// The tenants as configured now (for a reload).
    pub(crate) fn roster(&self) -> &Roster {
        &self.core.roster
    }

    /// The admission policy (for a reload).
    pub(crate) fn admission(&self) -> &Admission {
        &self.core.admission
    }
}

// === impl Engine: tasks ===

impl Engine {
    /// Validates, routes, admits, stores and queues a task. Returns once the
    /// task is durable.
    ///
    /// The store write and the queueing run as a task of the engine's own
    /// runtime, so they finish even if the caller goes away (a client that
    /// hangs up cannot leave a stored task out of its queue), and, when the
    /// engine has a runtime of its own (`swarmd serve`), a flood of requests
    /// on the server's runtime cannot delay them.
    pub async fn submit(&self, sub: Submission) -> Result<Submitted, EngineError> {
        let metrics = &self.core.metrics;
        let tenant = metrics.enabled().then(|| sub.tenant.clone());
        let r = self.submit_inner(sub).await;
        if let Some(t) = tenant {
            match &r {
                Ok(s) if s.created => metrics.submitted(&t, true),
                Err(
                    EngineError::Overloaded { .. }
                    | EngineError::QuotaExceeded { .. }
                    | EngineError::Unavailable(_),
                ) => metrics.submitted(&t, false),
                _ => {}
            }
        }
        r
    }

    async fn submit_inner(&self, sub: Submission) -> Result<Submitted, EngineError> {
        let c = &self.core;
        if c.shutdown.is_draining() {
            return Err(EngineError::ShuttingDown);
        }
        let item = self.prepare(sub.spec, &sub.tenant)?;
        let lifecycle = c.lifecycle.clone();
        let received_at = sub.received_at;
        let accepted = c
            .runtime
            .spawn(async move {
                lifecycle
                    .accept(
                        &item.pool,
                        item.new,
                        item.pending,
                        item.slot,
                        received_at,
                        sub.request_id,
                    )
                    .await
            })
            .await
            .map_err(|e| EngineError::Internal(format!("storing the task failed: {e}")))??;
        self.answer(accepted)
    }

    /// Validates, routes, admits, stores and queues many tasks of one
    /// tenant, all stored in one commit: one answer per spec, in order
    /// (`POST /api/tasks/batch`). Each item is judged on its own, as if
    /// submitted alone, so a bad or refused item fails only itself. Fails
    /// whole only when the engine is shutting down.
    pub async fn submit_batch(
        &self,
        specs: Vec<TaskSpec>,
        tenant: &str,
        received_at: Instant,
        request_id: Option<String>,
    ) -> Result<Vec<Result<Submitted, EngineError>>, EngineError> {
        let c = &self.core;
        if c.shutdown.is_draining() {
            return Err(EngineError::ShuttingDown);
        }
        let mut answers: Vec<Option<Result<Submitted, EngineError>>> =
            (0..specs.len()).map(|_| None).collect();
        let mut admitted = Vec::with_capacity(specs.len());
        let mut slots = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            match self.prepare(spec, tenant) {
                Ok(item) => {
                    admitted.push(item);
                    slots.push(i);
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let lifecycle = c.lifecycle.clone();
        let stored = c
            .runtime
            .spawn(async move {
                lifecycle
                    .accept_many(admitted, received_at, request_id)
                    .await
            })
            .await
            .map_err(|e| EngineError::Internal(format!("storing the tasks failed: {e}")))?;
        for (i, accepted) in slots.into_iter().zip(stored) {
            answers[i] = Some(accepted.and_then(|a| self.answer(a)));
        }
        let metrics = &c.metrics;
        let out: Vec<Result<Submitted, EngineError>> = answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(EngineError::Internal("a batch item went unanswered".into()))
                })
            })
            .collect();
        if metrics.enabled() {
            for r in &out {
                match r {
                    Ok(s) if s.created => metrics.submitted(tenant, true),
                    Err(
                        EngineError::Overloaded { .. }
                        | EngineError::QuotaExceeded { .. }
                        | EngineError::Unavailable(_),
                    ) => metrics.submitted(tenant, false),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Everything a submission goes through before it is stored:
    /// validation, routing, admission, and the row.
    fn prepare(&self, mut spec: TaskSpec, tenant: &str) -> Result<Admitted, EngineError> {
        let c = &self.core;
        spec.validate(SpecLimits {
            max_wait_ms: c.cfg.server.max_wait_ms,
        })?;
        let (department, _reason) = c.director.route(&spec)?;
        let pool = c.pools.get(&department).ok_or_else(|| {
            EngineError::Internal(format!("routed to missing pool `{department}`"))
        })?;
        pool.agent()
            .validate(spec.args())
            .map_err(|e| e.nested_under("args"))?;
        let timeout_ms = spec.timeout_ms.unwrap_or(pool.default_timeout_ms());
        if timeout_ms > pool.max_timeout_ms() {
            return Err(FieldError::invalid(
                "timeout_ms",
                format!(
                    "`timeout_ms` must be at most {} for department `{}`",
                    pool.max_timeout_ms(),
                    pool.name()
                ),
            )
            .into());
        }
        let now = now_ms();
        let run_after = spec.start_after(now)?;
        let ticket = c.admission.admit_at(
            pool,
            tenant,
            Duration::from_millis(timeout_ms),
            run_after.is_some(),
            // Estimated only when a budget counts it (parsing a prompt
            // costs more than the rest of admission).
            c.tenant_tokens
                .charges(pool.tokens(), tenant)
                .then(|| pool.agent().token_estimate(spec.args()))
                .flatten(),
        )?;
        // A delayed task's deadline counts from its start time.
        let begins = run_after.unwrap_or(now);
        let request_hash = spec.idempotency_key.as_ref().map(|_| request_hash(&spec));
        let task = Task {
            id: TaskId::new(),
            tenant: tenant.to_string(),
            task_type: spec.task_type.clone(),
            status: TaskStatus::Queued,
            priority: spec.priority.unwrap_or_default(),
            department: pool.name().to_string(),
            agent: pool.agent_kind().to_string(),
            instance: None,
            title: spec.title.clone(),
            description: spec.description.clone(),
            args: spec.args().clone(),
            result: None,
            error: None,
            idempotency_key: spec.idempotency_key.clone(),
            // Bounded by `max_timeout_ms` (at most 30 days at load).
            timeout_ms: i64::try_from(timeout_ms).unwrap_or(i64::MAX),
            deadline_at: begins.saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX)),
            created_at: now,
            started_at: None,
            finished_at: None,
            attempts: 0,
            nodes: Vec::new(),
            waiting_for: None,
            // `admission_ms` is set as the row is written (lifecycle).
            timings: Timings::default(),
            retry: {
                let p = spec.retry.unwrap_or_default().over(pool.retry_policy());
                (p.max_attempts > 1).then_some(p)
            },
            run_after,
            history: Vec::new(),
            callback_url: c.webhooks.callback(tenant, spec.callback_url.as_deref())?,
            callback_state: None,
        };
        Ok(Admitted {
            pool: pool.clone(),
            new: NewTask {
                task,
                request_hash,
                owner: c.node_id.clone(),
            },
            pending: ticket.pending,
            slot: ticket.slot,
        })
    }

    /// The answer to a stored (or replayed) submission.
    fn answer(&self, accepted: Accepted) -> Result<Submitted, EngineError> {
        match accepted {
            Accepted::New(task) => Ok(Submitted {
                task,
                created: true,
            }),
            Accepted::Existing { task, same_request } => {
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
                let task = match self.core.hub.current(task.id) {
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
        let task = match self.core.hub.current(id) {
            Some(t) => (*t).clone(),
            None => self
                .core
                .store
                .get(id)
                .await?
                .ok_or(EngineError::NotFound)?,
        };
        if access.may_read(&task) {
            let mut task = task;
            task.waiting_for = self.waiting_for(&task);
            Ok(task)
        } else {
            Err(EngineError::NotFound)
        }
    }

    /// What `task` waits for, while it is queued on this node.
    pub fn waiting_for(&self, task: &Task) -> Option<swarm_core::Blocker> {
        self.queued_here_in(task).map(|p| p.blocker())
    }

    /// Follows what `task`'s department's queued tasks wait for, while
    /// `task` is queued on this node (for its event stream).
    pub fn waiting_watch(
        &self,
        task: &Task,
    ) -> Option<tokio::sync::watch::Receiver<swarm_core::Blocker>> {
        self.queued_here_in(task).map(|p| p.blocker_watch())
    }

    /// The pool `task` is queued in on this node, if it is.
    fn queued_here_in(&self, task: &Task) -> Option<&Arc<crate::pool::Pool>> {
        if task.status != TaskStatus::Queued || !self.core.hub.contains(task.id) {
            return None;
        }
        self.core.pools.get(&task.department)
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
        let mut tasks = self.core.store.list(&q).await?;
        for t in &mut tasks {
            t.waiting_for = self.waiting_for(t);
        }
        Ok(tasks)
    }

    /// Outbox messages, newest first; clients see only their tenant's.
    pub async fn outbox(
        &self,
        limit: u32,
        access: Access<'_>,
    ) -> Result<Vec<OutboxRow>, EngineError> {
        let tenant = (!access.admin).then_some(access.tenant);
        Ok(self.core.store.outbox_list(tenant, limit).await?)
    }

    /// Tasks held elsewhere that watches here follow now, and the reads
    /// their shared poller has made since start.
    pub fn remote_watches(&self) -> (usize, u64) {
        let r = &self.core.remote;
        (r.followed(), r.reads())
    }

    /// Follows a task's changes (for `wait_ms` and server-sent events).
    pub async fn watch(&self, id: TaskId, access: Access<'_>) -> Result<Watch, EngineError> {
        let c = &self.core;
        if let Some(sub) = c.hub.subscribe(id) {
            if !access.may_read(&sub.current) {
                return Err(EngineError::NotFound);
            }
            return Ok(Watch::live(c.remote.clone(), sub));
        }
        let task = self.get(id, access).await?;
        Ok(Watch::stored(c.remote.clone(), task))
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
        let ended = match self.core.lifecycle.cancel(&task).await? {
            Cancelled::Ended(t) => return Ok(CancelOutcome::Done(*t)),
            Cancelled::Signalled => {
                self.wait(id, Access::ADMIN, Duration::from_secs(30))
                    .await?
            }
            Cancelled::NotHere => {
                // Not queued or running here: another node owns it.
                self.core.store.request_cancel(id).await?;
                self.get(id, access).await?
            }
        };
        if ended.status.is_terminal() {
            Ok(CancelOutcome::Done(ended))
        } else {
            Ok(CancelOutcome::Requested(ended))
        }
    }
}

impl Engine {
    /// Every try of a task's completion webhook, oldest first.
    pub async fn deliveries(
        &self,
        id: TaskId,
        access: Access<'_>,
    ) -> Result<Vec<swarm_core::Delivery>, EngineError> {
        self.get(id, access).await?;
        Ok(self.core.store.deliveries(id).await?)
    }

    /// Runs an ended task that did not succeed again, as a new attempt on
    /// this node (`POST /api/tasks/{id}/retry`).
    pub async fn retry(&self, id: TaskId, access: Access<'_>) -> Result<Task, EngineError> {
        let task = self.get(id, access).await?;
        let Some(pool) = self.core.pools.get(&task.department) else {
            return Err(EngineError::Conflict {
                code: "department_gone",
                message: format!(
                    "department `{}` of task {id} is no longer configured",
                    task.department
                ),
            });
        };
        self.core.lifecycle.rerun(pool, task).await
    }
}

// === impl Engine: status and shutdown ===

impl Engine {
    /// Pools, database, resources, uptime.
    pub fn status(&self) -> Status {
        let c = &self.core;
        let db = c.store.pool_stats();
        let health = c.store.health().snapshot();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            node_id: c.node_id.clone(),
            uptime_s: c.started.elapsed().as_secs_f64(),
            database: DatabaseStatus {
                backend: c.store.backend().as_str(),
                available: health.available,
                health,
                size: db.size,
                idle: db.idle,
                in_use: db.size.saturating_sub(db.idle),
                max: db.max,
                write_queue: db.write_queue,
                write_retries: db.retries,
                retention: c.retention.status(c.cfg.database.retention),
            },
            pools: c.pools.iter().map(|p| p.status()).collect(),
            live_tasks: c.hub.len(),
            draining: c.shutdown.is_draining(),
            global: c.global.snapshot(),
            resources: c.resources.get(),
            cpu_pool: c.cpu.stats(),
            transitions: c.lifecycle.counts(),
            tenant_tokens: c
                .tenant_tokens
                .all()
                .iter()
                .map(|(t, b)| (t.clone(), crate::tokens::status(b)))
                .collect(),
        }
    }

    /// Alerts firing now and recently.
    pub fn alerts(&self) -> AlertsView {
        self.core.alerts.view()
    }

    /// The engine's metrics; the server records its HTTP figures here.
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// The Prometheus exposition of the engine's state and events. `None`
    /// when `monitor.metrics` is off.
    pub fn render_metrics(&self) -> Option<String> {
        let m = &self.core.metrics;
        if !m.enabled() {
            return None;
        }
        Some(m.render_with(
            &self.status(),
            &self.alerts(),
            &self.core.store.pool_stats(),
        ))
    }

    /// Every node on this database (`GET /api/nodes`): id, address,
    /// heartbeat age, whether its process is alive (it holds its liveness
    /// lock), its per-department load, and this node's cluster counts.
    pub async fn nodes(&self) -> Result<NodesView, EngineError> {
        let c = &self.core;
        let now = now_ms();
        let rows = c.store.nodes().await?;
        let nodes = rows
            .into_iter()
            .map(|n| NodeView {
                this: n.node_id == c.node_id,
                left: n.heartbeat_at == 0,
                heartbeat_age_ms: (n.heartbeat_at > 0).then(|| (now - n.heartbeat_at).max(0)),
                started_at: swarm_core::clock::rfc3339(n.started_at),
                node_id: n.node_id,
                address: n.address,
                alive: n.alive,
                pid: n.pid,
                version: n.version,
                pools: n.load,
            })
            .collect();
        let p = &c.peers;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Ok(NodesView {
            node_id: c.node_id.clone(),
            backend: c.store.backend().as_str(),
            nodes,
            this_node: ClusterCounts {
                live_peers: get(&p.peers),
                claimed: get(&p.claimed),
                claimed_from_here: get(&p.claimed_from_us),
                taken_over: get(&p.rescued),
                // Outstanding tasks per tenant on the other nodes, as this
                // node counts them against tenant quotas.
                tenants_elsewhere: c.tenants.elsewhere(),
            },
        })
    }

    /// Whether the database takes writes and answers.
    pub async fn ready(&self) -> Result<(), EngineError> {
        let health = self.core.store.health().snapshot();
        if !health.available {
            return Err(EngineError::Unavailable(health.reason.unwrap_or_default()));
        }
        Ok(self.core.store.ping().await?)
    }

    /// Graceful shutdown: stop taking and starting work, let running tasks
    /// finish for up to `grace`, then hand the rest back to the queue (the
    /// store keeps them `queued` for the next start or another node).
    pub async fn shutdown(&self, grace: Duration) {
        let c = &self.core;
        c.shutdown.begin();
        let running: usize = c.pools.iter().map(|p| p.running_count()).sum();
        info!(running, grace_ms = grace.as_millis() as u64, "draining");
        if tokio::time::timeout(grace, c.shutdown.runs_done())
            .await
            .is_err()
        {
            warn!("grace period over; returning running tasks to the queue");
            c.shutdown.end_runs();
            if tokio::time::timeout(Duration::from_secs(10), c.shutdown.runs_done())
                .await
                .is_err()
            {
                warn!("outcomes still waiting for the database are left for the next start");
            }
        }
        // Runs are over: dispatchers still serving children may stop, and
        // transitions still waiting for the database give up.
        c.shutdown.end_runs();
        c.shutdown.stop();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.shutdown.runs_done()).await;
        c.background.close();
        c.cpu.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.background.wait()).await;
        let queued: usize = c.pools.iter().map(|p| p.drain_queue().len()).sum();
        if queued > 0 {
            info!(queued, "left queued tasks in the store for the next start");
        }
        if let Err(e) = c.store.leave(&c.node_id).await {
            warn!(error = %e, "could not mark this node as gone");
        }
    }
}
