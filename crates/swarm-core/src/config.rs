//! `swarmd.toml` as types.
//!
//! Every field has a default, so an empty file (or none) runs the embedded
//! setup: SQLite file `./swarmd.db`, the four built-in departments, no keys.
//! Unknown keys are errors, so a misspelt setting is reported, not ignored.
//! Precedence (flags > `SWARMD_*` env > file > defaults) is applied by the
//! binary; this module only parses and checks.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
pub use swarm_sched::limit::{Algorithm, LimitConfig};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This process's name in a shared database; leases and recovery use it.
    /// Default: `local` on SQLite, `<hostname>:<port>` on PostgreSQL.
    pub node_id: Option<String>,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Database settings.
    pub database: DatabaseConfig,
    /// Routing rules.
    pub director: DirectorConfig,
    /// Departments (agent pools) by name; merged over the built-in ones.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Outbound mail; without it the email agent writes to the outbox.
    pub smtp: Option<SmtpConfig>,
    /// Admission control: tenant quotas, the process-wide cap, resource
    /// thresholds.
    pub admission: AdmissionConfig,
    /// The bounded thread pool for blocking and CPU-heavy agent work.
    pub cpu_pool: CpuPoolConfig,
    /// API keys. None configured: `X-Tenant` names the tenant.
    pub tenants: Vec<TenantConfig>,
    /// Who is an admin when no keys are configured.
    pub auth: AuthConfig,
    /// Bounds on what a task's `args` may ask of the `sim` agent.
    pub sim: SimConfig,
    /// The resource monitor, metrics and alerts.
    pub monitor: MonitorConfig,
    /// Trace export (OpenTelemetry); off unless `otlp_endpoint` is set.
    pub telemetry: TelemetryConfig,
    /// Completion webhooks: which hosts may receive them, how they are
    /// signed and retried (`[webhooks]`).
    pub webhooks: WebhookConfig,
    /// An OpenAI-compatible LLM for the communications drafter and
    /// reviewers (`base_url`, `model`, …; read and checked by
    /// `swarm_agents::openai::OpenAiConfig`). Without it they use their
    /// built-in rules.
    pub llm: Option<toml::Table>,
    /// Periodic tasks: a cron expression in a time zone and a task
    /// template each (`[[schedules]]`).
    pub schedules: Vec<ScheduleConfig>,
}

/// `[webhooks]`: completion callbacks (`callback_url` on a task, or a
/// tenant's default), signed by the Standard Webhooks scheme.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Hosts (`host`, `host:port`) and CIDR blocks callbacks may go to;
    /// empty: no task may ask for a callback (`422 host_not_allowed`).
    pub allow_hosts: Vec<String>,
    /// The signing secret of tenants without their own: `whsec_` and the
    /// base64 of at least 16 random bytes (`swarmd` refuses to start with
    /// a malformed one). Without any, callbacks go unsigned.
    pub secret: Option<String>,
    /// Tries of one delivery before it is given up (`failed`).
    pub max_attempts: u32,
    /// The first retry's backoff ceiling, ms (doubled per retry, full
    /// jitter).
    pub backoff_ms: u64,
    /// The highest backoff ceiling, ms.
    pub max_backoff_ms: u64,
    /// One delivery's time limit, ms (connect, send, answer).
    pub timeout_ms: u64,
    /// Deliveries in flight at once, per node.
    pub concurrency: usize,
    /// Per-tenant defaults: `[webhooks.tenants.NAME] url`, `secret`.
    pub tenants: BTreeMap<String, TenantWebhook>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            secret: None,
            max_attempts: 10,
            backoff_ms: 500,
            max_backoff_ms: 60_000,
            timeout_ms: 10_000,
            concurrency: 16,
            tenants: BTreeMap::new(),
        }
    }
}

/// `[webhooks.tenants.NAME]`: a tenant's callback default and secret.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantWebhook {
    /// Where the tenant's finished tasks are sent when they name no
    /// `callback_url`.
    pub url: Option<String>,
    /// The tenant's signing secret (`whsec_…`), over `[webhooks] secret`.
    pub secret: Option<String>,
}

impl WebhookConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(cfg_err(
                "webhooks.max_attempts",
                "must be between 1 and 100",
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 300_000 {
            return Err(cfg_err(
                "webhooks.timeout_ms",
                "must be between 1 and 300000",
            ));
        }
        if self.concurrency == 0 {
            return Err(cfg_err("webhooks.concurrency", "must be at least 1"));
        }
        if self.backoff_ms > 3_600_000 || self.max_backoff_ms > 3_600_000 {
            return Err(cfg_err(
                "webhooks.backoff_ms",
                "`backoff_ms` and `max_backoff_ms` must be at most 3600000",
            ));
        }
        Ok(())
    }
}

/// `[[schedules]]`: a task submitted on every tick of a cron expression.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Its name (1-64 of letters, digits, `_`, `-`, `.`), unique.
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first; `@hourly`, `@daily`… too (croner's syntax).
    pub cron: String,
    /// The IANA time zone the expression is read in (`Europe/Paris`);
    /// default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The tenant the tasks belong to; default `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// After downtime, submit the ticks missed since the last one (at most
    /// 100); by default they are skipped and the next tick runs.
    #[serde(default)]
    pub catch_up: bool,
    /// The task each tick submits (the body of `POST /api/tasks`, without
    /// `wait_ms`, `idempotency_key`, `run_at` or `delay_ms`).
    pub task: crate::task::TaskSpec,
}

fn utc() -> String {
    "UTC".to_string()
}

fn default_tenant() -> String {
    "default".to_string()
}

impl ScheduleConfig {
    /// The parsed expression and time zone.
    pub fn parse(&self) -> Result<(croner::Cron, chrono_tz::Tz), String> {
        use std::str::FromStr as _;
        let cron = croner::Cron::from_str(self.cron.trim())
            .map_err(|e| format!("`cron` = \"{}\" does not parse: {e}", self.cron))?;
        let tz = chrono_tz::Tz::from_str(self.timezone.trim()).map_err(|_| {
            format!(
                "`timezone` = \"{}\" is not an IANA time zone (e.g. `UTC`, `Europe/Paris`)",
                self.timezone
            )
        })?;
        Ok((cron, tz))
    }

    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err("`name` must be 1-64 letters, digits, `_`, `-` or `.`".into());
        }
        self.parse()?;
        let t = &self.task;
        if t.wait_ms.is_some()
            || t.idempotency_key.is_some()
            || t.run_at.is_some()
            || t.delay_ms.is_some()
        {
            return Err(
                "`task` takes no `wait_ms`, `idempotency_key`, `run_at` or `delay_ms` (each tick is keyed by the schedule)".into(),
            );
        }
        let mut spec = t.clone();
        spec.validate(crate::task::SpecLimits { max_wait_ms: 0 })
            .map_err(|e| format!("`task.{}`: {}", e.field.unwrap_or_default(), e.message))?;
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            director: DirectorConfig::default(),
            pools: builtin_pools(),
            smtp: None,
            admission: AdmissionConfig::default(),
            cpu_pool: CpuPoolConfig::default(),
            tenants: Vec::new(),
            auth: AuthConfig::default(),
            sim: SimConfig::default(),
            monitor: MonitorConfig::default(),
            telemetry: TelemetryConfig::default(),
            webhooks: WebhookConfig::default(),
            llm: None,
            schedules: Vec::new(),
        }
    }
}

/// The built-in departments, one per built-in agent.
pub fn builtin_pools() -> BTreeMap<String, PoolConfig> {
    ["communications", "reviewers", "email", "sim", "echo"]
        .into_iter()
        .map(|n| (n.to_string(), PoolConfig::default()))
        .collect()
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest accepted request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest accepted `wait_ms`.
    pub max_wait_ms: u64,
    /// How long shutdown waits for running tasks before handing them back to
    /// the queue.
    pub shutdown_grace_ms: u64,
    /// A connection must deliver a request's headers within this, ms (also
    /// bounds a new connection that sends nothing).
    pub header_read_timeout_ms: u64,
    /// A request body must arrive within this, ms.
    pub body_read_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this, ms.
    pub idle_timeout_ms: u64,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// A response that makes no write progress for this long (the client
    /// stopped reading) is cut off and its connection closed, ms; 0: never.
    pub write_timeout_ms: u64,
    /// A page of `GET /api/tasks` stops before it would exceed this many
    /// bytes of JSON (it always holds at least one task), bytes.
    pub max_page_bytes: usize,
    /// Event streams (`GET /api/tasks/{id}/events`) one tenant may hold open
    /// at once; more answer 429.
    pub max_streams_per_tenant: usize,
    /// Requests one tenant may have waiting (`wait_ms`) at once; more answer
    /// 429.
    pub max_waiters_per_tenant: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            max_wait_ms: 60_000,
            shutdown_grace_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 20_000,
            write_timeout_ms: 30_000,
            max_page_bytes: 1 << 20,
            max_streams_per_tenant: 1_000,
            max_waiters_per_tenant: 5_000,
        }
    }
}

/// Database and connection-pool settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` (created if missing) or `postgres://…`.
    pub url: String,
    /// Pool size ceiling.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long a caller waits for a connection before failing.
    pub acquire_timeout_ms: u64,
    /// Idle connections beyond `min_connections` are closed after this.
    pub idle_timeout_ms: u64,
    /// Connections are replaced after this age.
    pub max_lifetime_ms: u64,
    /// SQLite `synchronous`: `normal` survives a killed process (the default),
    /// `full` also survives power loss at some cost per commit.
    pub sqlite_synchronous: SqliteSync,
    /// Most writes folded into one transaction by the group-commit writer.
    pub batch_max: usize,
    /// PostgreSQL: group commits in flight at once, each on its own
    /// connection (1: one at a time). SQLite always commits one at a time.
    pub write_pipeline: usize,
    /// How long a node's claim on its tasks lasts without a heartbeat; after
    /// it, another node (sharing PostgreSQL) takes the tasks over.
    pub lease_ms: u64,
    /// Finished tasks and outbox messages older than this are deleted in
    /// the background, in small batches (`"7d"`, `"12h"`, `"30m"`; `"0"`
    /// keeps everything).
    pub retention: Retention,
    /// PostgreSQL `statement_timeout` of swarmd's sessions, ms (0: none): a
    /// statement that runs longer fails instead of holding a connection.
    pub statement_timeout_ms: u64,
    /// PostgreSQL `lock_timeout` of swarmd's sessions, ms (0: none): a write
    /// blocked by another session's lock fails (and is retried) instead of
    /// stalling the writer behind it.
    pub lock_timeout_ms: u64,
    /// PostgreSQL `idle_in_transaction_session_timeout` of swarmd's
    /// sessions, ms (0: none).
    pub idle_in_transaction_timeout_ms: u64,
}

/// How long finished work is kept (`[database] retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(Option<std::time::Duration>);

impl Retention {
    /// Seven days, the default.
    pub const DEFAULT: Retention = Retention(Some(std::time::Duration::from_secs(7 * 86_400)));

    /// Keep everything.
    pub const FOREVER: Retention = Retention(None);

    /// Keep finished work for `d` (zero keeps everything).
    pub fn new(d: std::time::Duration) -> Self {
        Retention((!d.is_zero()).then_some(d))
    }

    /// How long finished work is kept; `None` keeps it for ever.
    pub fn get(self) -> Option<std::time::Duration> {
        self.0
    }

    /// Parses `"7d"`, `"90m"`, `"0"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "0" {
            return Ok(Self::FOREVER);
        }
        humantime::parse_duration(t).map(Self::new).map_err(|e| {
            format!("`{t}` is not a duration ({e}); write it like \"7d\", \"12h\" or \"0\"")
        })
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Zero(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => Retention::parse(&t).map_err(serde::de::Error::custom),
            Raw::Zero(0) => Ok(Retention::FOREVER),
            Raw::Zero(n) => Err(serde::de::Error::custom(format!(
                "a number here can only be 0 (keep everything); write `{n}` with a unit, like \"{n}d\""
            ))),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://swarmd.db".into(),
            max_connections: 8,
            min_connections: 1,
            acquire_timeout_ms: 5_000,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 1_800_000,
            sqlite_synchronous: SqliteSync::Normal,
            batch_max: 512,
            write_pipeline: 4,
            lease_ms: 30_000,
            retention: Retention::DEFAULT,
            statement_timeout_ms: 30_000,
            lock_timeout_ms: 5_000,
            idle_in_transaction_timeout_ms: 60_000,
        }
    }
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// WAL + `synchronous=NORMAL`: durable across process crashes.
    Normal,
    /// `synchronous=FULL`: durable across power loss too.
    Full,
}

/// Routing: how the director picks a department.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DirectorConfig {
    /// Where a task goes when nothing else decides.
    pub default_department: String,
    /// `type` → department name, or `"auto"` for keyword routing. A type
    /// that names a department goes there without an entry here.
    pub types: BTreeMap<String, String>,
    /// Keyword rules, tried in order for `auto` types. Rules in a file
    /// replace the built-in ones (one rule: mail words → `communications`).
    pub rules: Vec<RuleConfig>,
}

impl Default for DirectorConfig {
    fn default() -> Self {
        let types = [
            ("email", "communications"),
            ("message", "communications"),
            ("general", "auto"),
            ("task", "auto"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        Self {
            default_department: "echo".into(),
            types,
            rules: vec![RuleConfig {
                department: "communications".into(),
                keywords: ["email", "mail", "message", "notify", "announce", "reply"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }],
        }
    }
}

/// One keyword rule: any keyword found (as a whole word, case-insensitive) in
/// the title, description or a string in `args` sends the task to `department`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Target department.
    pub department: String,
    /// Words that select it.
    pub keywords: Vec<String>,
}

/// `[pools.NAME.retry_task]`: task retries in a department.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TaskRetryConfig {
    /// Attempts in all for tasks that give no `retry.max_attempts` (1: no
    /// retries).
    pub max_attempts: u32,
    /// The first retry's backoff ceiling, ms (doubled per retry, full
    /// jitter).
    pub backoff_ms: u64,
    /// The highest backoff ceiling, ms.
    pub max_backoff_ms: u64,
    /// Retries allowed per first attempt over the budget's window (0–1),
    /// so an outage where every task fails cannot multiply the load.
    pub budget_ratio: f32,
    /// Retries allowed per second whatever the traffic.
    pub budget_min_per_sec: u32,
    /// The budget's window, s (1–60).
    pub budget_ttl_secs: u64,
}

impl Default for TaskRetryConfig {
    fn default() -> Self {
        let p = crate::task::RetryPolicy::default();
        Self {
            max_attempts: p.max_attempts,
            backoff_ms: p.backoff_ms,
            max_backoff_ms: p.max_backoff_ms,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_ttl_secs: 10,
        }
    }
}

impl TaskRetryConfig {
    /// The policy of tasks that give no `retry`.
    pub fn policy(&self) -> crate::task::RetryPolicy {
        crate::task::RetryPolicy {
            max_attempts: self.max_attempts,
            backoff_ms: self.backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
        }
    }

    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        use crate::task::{MAX_RETRY_ATTEMPTS, MAX_RETRY_BACKOFF_MS};
        if !(1..=MAX_RETRY_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!(
                "`max_attempts` must be between 1 and {MAX_RETRY_ATTEMPTS}"
            ));
        }
        if self.backoff_ms > MAX_RETRY_BACKOFF_MS || self.max_backoff_ms > MAX_RETRY_BACKOFF_MS {
            return Err(format!(
                "`backoff_ms` and `max_backoff_ms` must be at most {MAX_RETRY_BACKOFF_MS}"
            ));
        }
        if !(0.0..=1.0).contains(&self.budget_ratio) {
            return Err("`budget_ratio` must be between 0 and 1".into());
        }
        if !(1..=60).contains(&self.budget_ttl_secs) {
            return Err("`budget_ttl_secs` must be between 1 and 60".into());
        }
        Ok(())
    }
}

/// One department: an agent kind and how much of it runs at once.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Agent kind (`communications`, `email`, `sim`, `echo`); default: the
    /// pool's own name.
    pub agent: Option<String>,
    /// Shorthand for a fixed limit: exactly this many tasks run at once.
    /// Without it (and without `[limit]`), the limit is adaptive.
    pub concurrency: Option<usize>,
    /// Agent instances the pool spreads work over (named `<pool>-<n>`).
    pub replicas: Option<usize>,
    /// The queue: bound and queue-delay shedding.
    pub queue: QueueConfig,
    /// The adaptive concurrency limit; defaults by agent kind.
    pub limit: Option<LimitConfig>,
    /// Deadline given to tasks that set no `timeout_ms`.
    pub default_timeout_ms: Option<u64>,
    /// Largest `timeout_ms` accepted (422 beyond).
    pub max_timeout_ms: Option<u64>,
    /// For `agent = "process"`: the worker processes (`command`, `workers`,
    /// …; read and checked by `swarm_agents::process::ProcessConfig`).
    pub process: Option<toml::Table>,
    /// For `agent = "http"`: the instances (`urls` plus
    /// `swarm_agents::http::HttpConfig`'s other settings, shared by all).
    pub http: Option<toml::Table>,
    /// For `agent = "openai"`: the provider (`base_url`, `model`, …; read
    /// and checked by `swarm_agents::openai::OpenAiConfig`).
    pub openai: Option<toml::Table>,
    /// How calls are spread over the instances (`policy`: `p2c`,
    /// `least_outstanding`, `round_robin`, `weighted`, `hash`; outlier
    /// ejection).
    pub balance: Option<swarm_sched::balance::BalanceConfig>,
    /// Retries of a failed call on another instance (`max_retries`, the
    /// budget's `ratio`, backoff); pools with several instances only.
    pub retry: Option<swarm_sched::balance::RetryConfig>,
    /// Task retries: how often a task that failed retryably runs again
    /// (the default of tasks that give no `retry`), and the budget that
    /// bounds retries across the department.
    pub retry_task: Option<TaskRetryConfig>,
    /// Whether a provider's rate-limit signals (`Retry-After` on a `429`,
    /// `x-ratelimit-*` and `anthropic-ratelimit-*` headers) pause the
    /// department's starts until the quota resets; default true.
    pub obey_rate_limits: Option<bool>,
    /// For `policy = "hash"`: the `args` field whose value keeps a task on
    /// one instance (e.g. `conversation_id`).
    pub hash_key: Option<String>,
    /// Model tokens the department may spend per sliding minute, over all
    /// tenants (and, on a cluster, all nodes). Admission charges each
    /// task's estimate (prompt size plus `max_tokens`) and refuses past it
    /// with `429 token_budget`; reported usage corrects the charge.
    pub tokens_per_minute: Option<u64>,
    /// The same per sliding day; both windows hold together.
    pub tokens_per_day: Option<u64>,
}

impl PoolConfig {
    /// The agent kind, defaulting to the pool's name.
    pub fn agent_kind<'a>(&'a self, pool: &'a str) -> &'a str {
        self.agent.as_deref().unwrap_or(pool)
    }

    /// The limiter this pool runs with: `concurrency` as a fixed limit,
    /// else `[limit]`, else the default by agent kind. Agents that only
    /// compute in this process (`echo`, and `communications` and
    /// `reviewers` with their built-in rules) have no backend to protect
    /// and run in microseconds, where scheduling noise would read as
    /// latency to an adaptive law: they get a fixed limit (the CPU governor
    /// and the global cap protect the process). Agents in front of a
    /// backend (`sim`, `email`, others) get an adaptive limit whose ceiling
    /// suits the kind.
    pub fn limit_or_default(&self, pool: &str) -> LimitConfig {
        if let Some(n) = self.concurrency {
            return LimitConfig::fixed(n);
        }
        if let Some(l) = &self.limit {
            return l.clone();
        }
        let max = match self.agent_kind(pool) {
            "echo" => return LimitConfig::fixed(1024),
            "communications" | "reviewers" => return LimitConfig::fixed(256),
            "sim" => 1024,
            "email" => 32,
            _ => 128,
        };
        LimitConfig {
            max,
            ..LimitConfig::default()
        }
    }

    /// Instances, default 1.
    pub fn replicas_or_default(&self) -> usize {
        self.replicas.unwrap_or(1)
    }

    /// Default deadline, 30 s.
    pub fn default_timeout_or_default(&self) -> u64 {
        self.default_timeout_ms.unwrap_or(30_000)
    }

    /// Largest deadline, 1 h.
    pub fn max_timeout_or_default(&self) -> u64 {
        self.max_timeout_ms.unwrap_or(3_600_000)
    }
}

/// A pool's queue.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Queued tasks beyond which submissions are refused with 503.
    pub capacity: usize,
    /// CoDel target, ms: when the smallest queueing delay over `interval_ms`
    /// stays above this, new submissions are refused (503) until the queue
    /// drains below it. Unset: an eighth of the pool's measured no-load run
    /// time (at least 5 ms), so a task waits about an eighth of a service
    /// time at most
    /// in a standing queue. 0 turns queue-delay shedding off.
    pub target_delay_ms: Option<u64>,
    /// CoDel interval, ms.
    pub interval_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            target_delay_ms: None,
            interval_ms: 100,
        }
    }
}

/// Admission control for the whole process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Queued plus running tasks one tenant may have at once, all pools
    /// together; beyond it, 429. Per-tenant `max_outstanding` overrides it.
    pub tenant_max_outstanding: usize,
    /// Tasks running at once in the whole process, all pools together.
    pub global_max_inflight: usize,
    /// Process CPU (percent of all cores) above which the global cap is
    /// lowered; 0 turns it off.
    pub cpu_high_pct: f64,
    /// Process resident memory (MiB) above which the global cap is lowered
    /// and submissions refused; 0 turns it off.
    pub rss_high_mib: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            tenant_max_outstanding: 100_000,
            global_max_inflight: 4_096,
            cpu_high_pct: 0.0,
            rss_high_mib: 0,
        }
    }
}

/// The thread pool for blocking, CPU-heavy agent work.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CpuPoolConfig {
    /// Threads; 0 = one fewer than the cores (at least 1), so the async
    /// workers always keep a core.
    pub threads: usize,
    /// Jobs waiting for a thread beyond which new ones are refused.
    pub queue: usize,
}

impl Default for CpuPoolConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            queue: 1_024,
        }
    }
}

impl CpuPoolConfig {
    /// Threads to start.
    pub fn threads_or_default(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        cores.saturating_sub(1).max(1)
    }
}

/// The resource monitor, Prometheus metrics and alerts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Record metrics (stage histograms, counters) and serve `/metrics`;
    /// `false` records nothing (resources are still sampled for the
    /// governor and alerts).
    pub metrics: bool,
    /// How often resources are sampled and alerts evaluated, ms.
    pub interval_ms: u64,
    /// Tasks whose end-to-end time exceeds this are logged with their
    /// timings, ms; 0 turns it off.
    pub slow_task_ms: u64,
    /// Distinct tenants given their own metrics label; the rest are counted
    /// as `_other`, so a flood of `X-Tenant` values cannot grow `/metrics`.
    pub max_tenant_labels: usize,
    /// Alert thresholds (CPU and memory thresholds are `admission.cpu_high_pct`
    /// and `admission.rss_high_mib`, which also lower the global cap).
    pub alerts: AlertThresholds,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            interval_ms: 1_000,
            slow_task_ms: 10_000,
            max_tenant_labels: 100,
            alerts: AlertThresholds::default(),
        }
    }
}

/// When alerts fire; each 0 turns its alert off. An alert clears once its
/// figure is back 10% inside the threshold, so it does not flap.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertThresholds {
    /// Open file descriptors, percent of the process's limit.
    pub fd_pct: f64,
    /// Machine memory available (`MemAvailable`) below this, MiB.
    pub mem_available_mib: u64,
    /// One-minute load average per core.
    pub load_per_core: f64,
    /// A pool's oldest queued task older than this, ms.
    pub queue_age_ms: u64,
    /// A pool refusing more than this share of its submissions over an
    /// interval (0-1; only with at least 20 submissions).
    pub reject_ratio: f64,
    /// A pool ending more than this share of its tasks `timed_out` over an
    /// interval (0-1; only with at least 20 outcomes).
    pub timeout_ratio: f64,
    /// The database writer's mean wait for a connection over an interval, ms.
    pub db_acquire_ms: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            fd_pct: 80.0,
            mem_available_mib: 256,
            load_per_core: 4.0,
            queue_age_ms: 10_000,
            reject_ratio: 0.5,
            timeout_ratio: 0.2,
            db_acquire_ms: 250.0,
        }
    }
}

/// Outbound SMTP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub security: SmtpSecurity,
    /// Login name, if the server wants one.
    pub username: Option<String>,
    /// Name of the environment variable that holds the password (the
    /// password itself never sits in the file).
    pub password_env: Option<String>,
    /// Envelope and header sender.
    pub from: String,
    /// Pooled connections kept open.
    pub pool_size: u32,
    /// Per-command timeout.
    pub timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 25,
            security: SmtpSecurity::None,
            username: None,
            password_env: None,
            from: "SwarmDirector <swarmd@localhost>".into(),
            pool_size: 4,
            timeout_ms: 10_000,
        }
    }
}

/// Transport security for SMTP.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain text (local relays, tests).
    None,
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// One API key and the tenant it names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant name; used for fairness, quotas, metrics and ownership.
    pub name: String,
    /// `client` (its own tasks) or `admin` (everything).
    #[serde(default = "default_role")]
    pub role: Role,
    /// Lower-case hex SHA-256 of the key (`swarmd hash-key` prints it).
    pub key_sha256: String,
    /// Share of a pool this tenant gets when tenants compete (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Overrides `admission.tenant_max_outstanding` for this tenant.
    #[serde(default)]
    pub max_outstanding: Option<usize>,
    /// Model tokens this tenant may spend per sliding minute, in every
    /// department (`429 token_budget` past it; see the pools' own).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// The same per sliding day; both windows hold together.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Admin access without keys (`[auth]`). With `[[tenants]]` configured,
/// only an `admin` key opens admin endpoints, whatever is set here.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// With no keys configured, treat callers on this machine (loopback
    /// peers) as admins. Off by default: a reverse proxy on the same host
    /// makes every request it relays a loopback peer.
    pub loopback_admin: bool,
}

fn default_role() -> Role {
    Role::Client
}

/// What a key may do.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and writes its own tenant's tasks.
    Client,
    /// Also reads every tenant's tasks and uses admin endpoints.
    Admin,
}

/// Trace export over OTLP/HTTP (needs a `swarmd` built with the `otlp`
/// feature).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`;
    /// spans are POSTed to `<endpoint>/v1/traces`. None: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "swarmd".into(),
        }
    }
}

/// `[sim]`: the largest `latency_ms` (and `jitter_ms`) and `cpu_ms` a
/// task's `args` may give the `sim` agent (422 beyond), so one caller
/// cannot hold a slot or burn a CPU for longer than the operator allows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Largest `latency_ms` and `jitter_ms`, at most [`SIM_MAX_LATENCY_MS`].
    pub max_latency_ms: u64,
    /// Largest `cpu_ms`, at most [`SIM_MAX_CPU_MS`].
    pub max_cpu_ms: u64,
}

/// The ceiling of `[sim] max_latency_ms`: 10 minutes.
pub const SIM_MAX_LATENCY_MS: u64 = 600_000;
/// The ceiling of `[sim] max_cpu_ms`: 1 minute.
pub const SIM_MAX_CPU_MS: u64 = 60_000;

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            max_latency_ms: SIM_MAX_LATENCY_MS,
            max_cpu_ms: 10_000,
        }
    }
}

/// The largest `[pools.NAME] max_timeout_ms` accepted: 30 days. Deadlines
/// are stored as milliseconds since the epoch (`i64`) and added to clock
/// readings; this keeps every sum far from overflow.
pub const MAX_TIMEOUT_MS: u64 = 30 * 86_400_000;

/// The largest `[server] max_wait_ms` accepted: 1 hour (a waiting request
/// holds its connection).
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// A configuration that parsed but does not hold together.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid configuration at `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted key that is wrong.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn cfg_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// A token budget's limits: positive when set.
fn check_tokens(at: &str, minute: Option<u64>, day: Option<u64>) -> Result<(), ConfigError> {
    for (k, v) in [("tokens_per_minute", minute), ("tokens_per_day", day)] {
        if v == Some(0) {
            return Err(cfg_err(
                format!("{at}.{k}"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Parses a `swarmd.toml`, merging its pools over the built-in ones.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, pool) in builtin_pools() {
            cfg.pools.entry(name).or_insert(pool);
        }
        Ok(cfg)
    }

    /// Checks cross-references and ranges. `agent_kinds` are the agent kinds
    /// this build provides.
    pub fn validate(&self, agent_kinds: &[&str]) -> Result<(), ConfigError> {
        self.webhooks.validate()?;
        let mut names = std::collections::BTreeSet::new();
        for (i, sch) in self.schedules.iter().enumerate() {
            sch.validate()
                .map_err(|m| cfg_err(format!("schedules[{i}]"), m))?;
            if !names.insert(sch.name.as_str()) {
                return Err(cfg_err(
                    format!("schedules[{i}].name"),
                    format!("`{}` names two schedules", sch.name),
                ));
            }
        }
        if self.database.max_connections == 0 {
            return Err(cfg_err("database.max_connections", "must be at least 1"));
        }
        if self.database.min_connections > self.database.max_connections {
            return Err(cfg_err(
                "database.min_connections",
                "must not exceed database.max_connections",
            ));
        }
        if self.database.write_pipeline == 0 || self.database.write_pipeline > 64 {
            return Err(cfg_err(
                "database.write_pipeline",
                "must be between 1 and 64",
            ));
        }
        if self.database.batch_max == 0 {
            return Err(cfg_err("database.batch_max", "must be at least 1"));
        }
        if self.database.lease_ms < 1_000 {
            return Err(cfg_err("database.lease_ms", "must be at least 1000"));
        }
        if self.server.max_wait_ms > MAX_WAIT_MS {
            return Err(cfg_err(
                "server.max_wait_ms",
                format!("must be at most {MAX_WAIT_MS} (1 hour)"),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(cfg_err("server.max_body_bytes", "must be at least 1024"));
        }
        if self.server.max_page_bytes < 1024 {
            return Err(cfg_err("server.max_page_bytes", "must be at least 1024"));
        }
        if self.server.max_streams_per_tenant == 0 {
            return Err(cfg_err(
                "server.max_streams_per_tenant",
                "must be at least 1",
            ));
        }
        if self.server.max_waiters_per_tenant == 0 {
            return Err(cfg_err(
                "server.max_waiters_per_tenant",
                "must be at least 1",
            ));
        }
        for (name, pool) in &self.pools {
            let key = |k: &str| format!("pools.{name}.{k}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            {
                return Err(cfg_err(
                    format!("pools.{name}"),
                    "pool names are letters, digits, `_` and `-`",
                ));
            }
            let kind = pool.agent_kind(name);
            if !agent_kinds.contains(&kind) {
                return Err(cfg_err(
                    key("agent"),
                    format!("unknown agent `{kind}`; known: {}", agent_kinds.join(", ")),
                ));
            }
            check_tokens(
                &format!("pools.{name}"),
                pool.tokens_per_minute,
                pool.tokens_per_day,
            )?;
            if pool.concurrency == Some(0) {
                return Err(cfg_err(key("concurrency"), "must be at least 1"));
            }
            if pool.replicas == Some(0) {
                return Err(cfg_err(key("replicas"), "must be at least 1"));
            }
            if pool.queue.capacity == 0 {
                return Err(cfg_err(key("queue.capacity"), "must be at least 1"));
            }
            if pool.queue.interval_ms == 0 {
                return Err(cfg_err(key("queue.interval_ms"), "must be at least 1"));
            }
            if pool.concurrency.is_some() && pool.limit.is_some() {
                return Err(cfg_err(
                    key("limit"),
                    "give either `concurrency` (a fixed limit) or `[limit]`, not both",
                ));
            }
            if let Some(l) = &pool.limit {
                l.validate().map_err(|m| cfg_err(key("limit"), m))?;
            }
            if let Some(b) = &pool.balance {
                b.validate().map_err(|m| cfg_err(key("balance"), m))?;
            }
            if let Some(r) = &pool.retry_task {
                r.validate().map_err(|m| cfg_err(key("retry_task"), m))?;
            }
            if let Some(r) = &pool.retry {
                r.validate().map_err(|m| cfg_err(key("retry"), m))?;
            }
            if !(1..=MAX_TIMEOUT_MS).contains(&pool.max_timeout_or_default()) {
                return Err(cfg_err(
                    key("max_timeout_ms"),
                    format!("must be between 1 and {MAX_TIMEOUT_MS} (30 days)"),
                ));
            }
            if pool.default_timeout_or_default() == 0
                || pool.default_timeout_or_default() > pool.max_timeout_or_default()
            {
                return Err(cfg_err(
                    key("default_timeout_ms"),
                    "must be at least 1 and at most max_timeout_ms",
                ));
            }
        }
        let d = &self.director;
        if !self.pools.contains_key(&d.default_department) {
            return Err(cfg_err(
                "director.default_department",
                format!("no pool named `{}`", d.default_department),
            ));
        }
        for (ty, target) in &d.types {
            if target != "auto" && !self.pools.contains_key(target) {
                return Err(cfg_err(
                    format!("director.types.{ty}"),
                    format!("no pool named `{target}` (use a pool name or \"auto\")"),
                ));
            }
        }
        for (i, rule) in d.rules.iter().enumerate() {
            if !self.pools.contains_key(&rule.department) {
                return Err(cfg_err(
                    format!("director.rules[{i}].department"),
                    format!("no pool named `{}`", rule.department),
                ));
            }
            if rule.keywords.is_empty() {
                return Err(cfg_err(
                    format!("director.rules[{i}].keywords"),
                    "must not be empty",
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.is_empty() || t.name.len() > 64 {
                return Err(cfg_err(
                    format!("tenants[{i}].name"),
                    "must be 1-64 characters",
                ));
            }
            let hex = t.key_sha256.to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(cfg_err(
                    format!("tenants[{i}].key_sha256"),
                    "must be 64 hex digits (run `swarmd hash-key <key>`)",
                ));
            }
            if !keys.insert(hex) {
                return Err(cfg_err(format!("tenants[{i}].key_sha256"), "duplicate key"));
            }
            check_tokens(
                &format!("tenants[{i}]"),
                t.tokens_per_minute,
                t.tokens_per_day,
            )?;
            names.insert(t.name.clone());
        }
        if self.admission.global_max_inflight == 0 {
            return Err(cfg_err(
                "admission.global_max_inflight",
                "must be at least 1",
            ));
        }
        if self.admission.tenant_max_outstanding == 0 {
            return Err(cfg_err(
                "admission.tenant_max_outstanding",
                "must be at least 1",
            ));
        }
        if !(0.0..=100.0).contains(&self.admission.cpu_high_pct) {
            return Err(cfg_err("admission.cpu_high_pct", "must be 0-100"));
        }
        let m = &self.monitor;
        if m.interval_ms < 10 {
            return Err(cfg_err("monitor.interval_ms", "must be at least 10"));
        }
        let a = &m.alerts;
        if !(0.0..=100.0).contains(&a.fd_pct) {
            return Err(cfg_err("monitor.alerts.fd_pct", "must be 0-100"));
        }
        for (key, v) in [
            ("reject_ratio", a.reject_ratio),
            ("timeout_ratio", a.timeout_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(cfg_err(format!("monitor.alerts.{key}"), "must be 0-1"));
            }
        }
        for (key, v) in [
            ("load_per_core", a.load_per_core),
            ("db_acquire_ms", a.db_acquire_ms),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(cfg_err(
                    format!("monitor.alerts.{key}"),
                    "must be 0 or more",
                ));
            }
        }
        if self.sim.max_latency_ms > SIM_MAX_LATENCY_MS {
            return Err(cfg_err(
                "sim.max_latency_ms",
                format!("must be at most {SIM_MAX_LATENCY_MS}"),
            ));
        }
        if self.sim.max_cpu_ms > SIM_MAX_CPU_MS {
            return Err(cfg_err(
                "sim.max_cpu_ms",
                format!("must be at most {SIM_MAX_CPU_MS}"),
            ));
        }
        if self.cpu_pool.queue == 0 {
            return Err(cfg_err("cpu_pool.queue", "must be at least 1"));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if t.weight == 0 {
                return Err(cfg_err(
                    format!("tenants[{i}].weight"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.is_empty() {
                return Err(cfg_err("smtp.host", "must not be empty"));
            }
            if smtp.pool_size == 0 {
                return Err(cfg_err("smtp.pool_size", "must be at least 1"));
            }
        }
        let t = &self.telemetry;
        if let Some(e) = &t.otlp_endpoint {
            let host = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if !host.is_some_and(|h| !h.is_empty() && !h.starts_with('/')) {
                return Err(cfg_err(
                    "telemetry.otlp_endpoint",
                    format!(
                        "`{e}` is not an http:// or https:// URL (e.g. \"http://127.0.0.1:4318\")"
                    ),
                ));
            }
        }
        if t.service_name.trim().is_empty() || t.service_name.len() > 255 {
            return Err(cfg_err(
                "telemetry.service_name",
                "must be 1-255 characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[&str] = &["communications", "reviewers", "email", "sim", "echo"];

    #[test]
    fn empty_file_is_the_embedded_default() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate(KINDS).unwrap();
        assert_eq!(cfg.pools.len(), 5);
        assert_eq!(cfg.director.types["email"], "communications");
    }

    #[test]
    fn pools_merge_over_builtins() {
        let cfg = Config::from_toml(
            "[pools.sim]\nconcurrency = 4\n[pools.fast]\nagent = \"sim\"\nreplicas = 3\n",
        )
        .unwrap();
        cfg.validate(KINDS).unwrap();
        assert_eq!(
            cfg.pools["sim"].limit_or_default("sim"),
            LimitConfig::fixed(4)
        );
        assert_eq!(cfg.pools["fast"].agent_kind("fast"), "sim");
        assert_eq!(cfg.pools["fast"].replicas_or_default(), 3);
        assert_eq!(
            cfg.pools["echo"].limit_or_default("echo"),
            LimitConfig::fixed(1024)
        );
        assert_eq!(
            cfg.pools["communications"].limit_or_default("communications"),
            LimitConfig::fixed(256)
        );
        let adaptive = cfg.pools["fast"].limit_or_default("fast");
        assert_eq!(
            (adaptive.algorithm, adaptive.max),
            (Algorithm::default(), 1024)
        );
    }

    #[test]
    fn retention_reads_durations_and_zero() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(Config::default().database.retention.get(), Some(day * 7));
        let get = |v: &str| {
            Config::from_toml(&format!("[database]\nretention = {v}\n"))
                .map(|c| c.database.retention.get())
        };
        assert_eq!(get("\"2d\""), Ok(Some(day * 2)));
        assert_eq!(
            get("\"90m\""),
            Ok(Some(std::time::Duration::from_secs(5400)))
        );
        assert_eq!(get("\"0\""), Ok(None));
        assert_eq!(get("0"), Ok(None));
        let err = get("\"soon\"").unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
        let err = get("30").unwrap_err();
        assert!(err.contains("with a unit"), "{err}");
    }

    #[test]
    fn typos_are_errors() {
        let err = Config::from_toml("[server]\nlisen = \"x\"\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn cross_references_are_checked() {
        let cfg = Config::from_toml("[pools.x]\nagent = \"nope\"\n").unwrap();
        assert_eq!(cfg.validate(KINDS).unwrap_err().key, "pools.x.agent");

        let cfg = Config::from_toml("[director]\ndefault_department = \"nope\"\n").unwrap();
        assert_eq!(
            cfg.validate(KINDS).unwrap_err().key,
            "director.default_department"
        );

        let cfg = Config::from_toml("[director.types]\nfoo = \"nope\"\n").unwrap();
        assert_eq!(cfg.validate(KINDS).unwrap_err().key, "director.types.foo");

        let cfg = Config::from_toml("[[tenants]]\nname = \"a\"\nkey_sha256 = \"zz\"\n").unwrap();
        assert_eq!(
            cfg.validate(KINDS).unwrap_err().key,
            "tenants[0].key_sha256"
        );

        let cfg = Config::from_toml("[pools.sim]\ndefault_timeout_ms = 10\nmax_timeout_ms = 5\n")
            .unwrap();
        assert_eq!(
            cfg.validate(KINDS).unwrap_err().key,
            "pools.sim.default_timeout_ms"
        );
    }

    #[test]
    fn schedules_and_task_retries_are_checked_at_load() {
        let check = |toml: &str| Config::from_toml(toml).unwrap().validate(KINDS);
        let sch = |cron: &str, tz: &str, task: &str| {
            format!(
                "[[schedules]]\nname = \"n\"\ncron = \"{cron}\"\ntimezone = \"{tz}\"\n[schedules.task]\n{task}\n"
            )
        };
        check(&sch("0 9 * * MON-FRI", "Europe/Paris", "type = \"echo\"")).unwrap();
        let err = check(&sch("61 * * * *", "UTC", "type = \"echo\"")).unwrap_err();
        assert_eq!(err.key, "schedules[0]");
        assert!(err.message.contains("cron"), "{err}");
        let err = check(&sch("* * * * *", "Mars/Olympus", "type = \"echo\"")).unwrap_err();
        assert!(err.message.contains("time zone"), "{err}");
        let err = check(&sch("* * * * *", "UTC", "type = \"echo\"\nwait_ms = 5")).unwrap_err();
        assert!(err.message.contains("wait_ms"), "{err}");
        let err = check(&sch("* * * * *", "UTC", "type = \"a b\"")).unwrap_err();
        assert!(err.message.contains("task.type"), "{err}");
        let two = format!(
            "{}{}",
            sch("* * * * *", "UTC", "type = \"echo\""),
            sch("* * * * *", "UTC", "type = \"echo\"")
        );
        assert_eq!(check(&two).unwrap_err().key, "schedules[1].name");
        let err = check("[pools.sim.retry_task]\nmax_attempts = 0\n").unwrap_err();
        assert_eq!(err.key, "pools.sim.retry_task");
        let err = check("[pools.sim.retry_task]\nbudget_ratio = 2.0\n").unwrap_err();
        assert!(err.message.contains("budget_ratio"), "{err}");
    }

    #[test]
    fn waits_and_deadlines_are_bounded_at_load() {
        let check = |toml: &str| Config::from_toml(toml).unwrap().validate(KINDS);
        // Past i64::MAX milliseconds, `as i64` used to wrap to a deadline
        // in the past.
        let err = check("[pools.sim]\nmax_timeout_ms = 18446744073709551615\n").unwrap_err();
        assert_eq!(err.key, "pools.sim.max_timeout_ms");
        assert!(err.message.contains("30 days"), "{err}");
        check(&format!("[pools.sim]\nmax_timeout_ms = {MAX_TIMEOUT_MS}\n")).unwrap();
        let err = check("[server]\nmax_wait_ms = 9223372036854775807\n").unwrap_err();
        assert_eq!(err.key, "server.max_wait_ms");
        check(&format!("[server]\nmax_wait_ms = {MAX_WAIT_MS}\n")).unwrap();
    }

    #[test]
    fn loopback_admin_is_opt_in() {
        assert!(!Config::default().auth.loopback_admin);
        let cfg = Config::from_toml("[auth]\nloopback_admin = true\n").unwrap();
        assert!(cfg.auth.loopback_admin);
    }

    #[test]
    fn tenants_parse_with_default_role() {
        let key = "a".repeat(64);
        let cfg = Config::from_toml(&format!(
            "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{key}\"\n[[tenants]]\nname = \"ops\"\nrole = \"admin\"\nkey_sha256 = \"{}\"\n",
            "b".repeat(64)
        ))
        .unwrap();
        cfg.validate(KINDS).unwrap();
        assert_eq!(cfg.tenants[0].role, Role::Client);
        assert_eq!(cfg.tenants[1].role, Role::Admin);
    }

    #[test]
    fn concurrency_settings_parse_and_are_checked() {
        let cfg = Config::from_toml(
            "[admission]\ntenant_max_outstanding = 5\nglobal_max_inflight = 100\ncpu_high_pct = 80\n\
             [cpu_pool]\nthreads = 3\nqueue = 16\n\
             [pools.llm]\nagent = \"sim\"\n[pools.llm.queue]\ncapacity = 10\ntarget_delay_ms = 50\n\
             [pools.llm.limit]\nalgorithm = \"vegas\"\ninitial = 4\nmax = 64\n",
        )
        .unwrap();
        cfg.validate(KINDS).unwrap();
        assert_eq!(cfg.admission.tenant_max_outstanding, 5);
        assert_eq!(cfg.cpu_pool.threads_or_default(), 3);
        let llm = &cfg.pools["llm"];
        assert_eq!(
            (llm.queue.capacity, llm.queue.target_delay_ms),
            (10, Some(50))
        );
        let l = llm.limit_or_default("llm");
        assert_eq!((l.algorithm, l.initial, l.max), (Algorithm::Vegas, 4, 64));
        assert_eq!(cfg.pools["email"].limit_or_default("email").max, 32);
        assert!(CpuPoolConfig::default().threads_or_default() >= 1);

        let bad = |toml: &str| {
            Config::from_toml(toml)
                .unwrap()
                .validate(KINDS)
                .unwrap_err()
                .key
        };
        assert_eq!(
            bad("[pools.x]\nagent = \"sim\"\n[pools.x.limit]\nmin = 10\nmax = 5\ninitial = 7\n"),
            "pools.x.limit"
        );
        assert_eq!(
            bad(
                "[pools.x]\nagent = \"sim\"\nconcurrency = 4\n[pools.x.limit]\nalgorithm = \"aimd\"\n"
            ),
            "pools.x.limit"
        );
        assert_eq!(
            bad("[pools.x]\nagent = \"sim\"\n[pools.x.queue]\ncapacity = 0\n"),
            "pools.x.queue.capacity"
        );
        assert_eq!(
            bad("[pools.x]\nagent = \"sim\"\n[pools.x.queue]\ninterval_ms = 0\n"),
            "pools.x.queue.interval_ms"
        );
        assert_eq!(
            bad("[admission]\nglobal_max_inflight = 0\n"),
            "admission.global_max_inflight"
        );
        assert_eq!(
            bad("[admission]\ntenant_max_outstanding = 0\n"),
            "admission.tenant_max_outstanding"
        );
        assert_eq!(
            bad("[pools.echo]\ntokens_per_day = 0\n"),
            "pools.echo.tokens_per_day"
        );
        assert_eq!(
            bad("[admission]\ncpu_high_pct = 120\n"),
            "admission.cpu_high_pct"
        );
        assert_eq!(bad("[monitor]\ninterval_ms = 1\n"), "monitor.interval_ms");
        assert_eq!(
            bad("[monitor.alerts]\nreject_ratio = 1.5\n"),
            "monitor.alerts.reject_ratio"
        );
        assert_eq!(
            bad("[monitor.alerts]\nfd_pct = -1\n"),
            "monitor.alerts.fd_pct"
        );
        assert_eq!(bad("[cpu_pool]\nqueue = 0\n"), "cpu_pool.queue");
        let key = "a".repeat(64);
        assert_eq!(
            bad(&format!(
                "[[tenants]]\nname = \"t\"\nkey_sha256 = \"{key}\"\nweight = 0\n"
            )),
            "tenants[0].weight"
        );
        assert_eq!(
            bad("[telemetry]\notlp_endpoint = \"localhost:4318\"\n"),
            "telemetry.otlp_endpoint"
        );
        assert_eq!(
            bad("[telemetry]\notlp_endpoint = \"http://\"\n"),
            "telemetry.otlp_endpoint"
        );
        assert_eq!(
            bad("[telemetry]\nservice_name = \" \"\n"),
            "telemetry.service_name"
        );
        let t = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://otel:4318\"\nservice_name = \"swarmd-a\"\n",
        )
        .unwrap();
        t.validate(KINDS).unwrap();
        assert_eq!(
            t.telemetry.otlp_endpoint.as_deref(),
            Some("http://otel:4318")
        );
        assert_eq!(Config::default().telemetry.service_name, "swarmd");
        let unknown = Config::from_toml("[pools.x.limit]\nalgoritm = \"aimd\"\n").unwrap_err();
        assert!(unknown.to_string().contains("algoritm"), "{unknown}");
    }
}
