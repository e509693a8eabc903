//! `swarmd.toml` as types.
//!
//! Every field has a default, so an empty file (or none) runs the embedded
//! setup: SQLite file `./swarmd.db`, the four built-in departments, no keys.
//! Unknown keys are errors, so a misspelt setting is reported, not ignored.
//! Precedence (flags > `SWARMD_*` env > file > defaults) is applied by the
//! binary; this module only parses and checks.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

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
    /// API keys. None configured: `X-Tenant` names the tenant.
    pub tenants: Vec<TenantConfig>,
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
            tenants: Vec::new(),
        }
    }
}

/// The built-in departments, one per built-in agent.
pub fn builtin_pools() -> BTreeMap<String, PoolConfig> {
    ["communications", "email", "sim", "echo"]
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            max_wait_ms: 60_000,
            shutdown_grace_ms: 10_000,
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
    /// How long a node's claim on its tasks lasts without a heartbeat; after
    /// it, another node (sharing PostgreSQL) takes the tasks over.
    pub lease_ms: u64,
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
            lease_ms: 30_000,
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

/// One department: an agent kind and how much of it runs at once.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Agent kind (`communications`, `email`, `sim`, `echo`); default: the
    /// pool's own name.
    pub agent: Option<String>,
    /// Tasks run at once; default by agent kind.
    pub concurrency: Option<usize>,
    /// Agent instances the pool spreads work over (named `<pool>-<n>`).
    pub replicas: Option<usize>,
    /// Queued tasks beyond which submissions are refused with 503.
    pub queue_capacity: Option<usize>,
    /// Deadline given to tasks that set no `timeout_ms`.
    pub default_timeout_ms: Option<u64>,
    /// Largest `timeout_ms` accepted (422 beyond).
    pub max_timeout_ms: Option<u64>,
}

impl PoolConfig {
    /// The agent kind, defaulting to the pool's name.
    pub fn agent_kind<'a>(&'a self, pool: &'a str) -> &'a str {
        self.agent.as_deref().unwrap_or(pool)
    }

    /// Concurrency, defaulting by agent kind: waiting-bound agents (sim,
    /// echo) get many slots, mail-sending ones fewer.
    pub fn concurrency_or_default(&self, pool: &str) -> usize {
        self.concurrency.unwrap_or(match self.agent_kind(pool) {
            "sim" | "echo" => 1024,
            "communications" => 128,
            "email" => 16,
            _ => 64,
        })
    }

    /// Instances, default 1.
    pub fn replicas_or_default(&self) -> usize {
        self.replicas.unwrap_or(1)
    }

    /// Queue bound, default 100,000.
    pub fn queue_capacity_or_default(&self) -> usize {
        self.queue_capacity.unwrap_or(100_000)
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
        if self.database.max_connections == 0 {
            return Err(cfg_err("database.max_connections", "must be at least 1"));
        }
        if self.database.min_connections > self.database.max_connections {
            return Err(cfg_err(
                "database.min_connections",
                "must not exceed database.max_connections",
            ));
        }
        if self.database.batch_max == 0 {
            return Err(cfg_err("database.batch_max", "must be at least 1"));
        }
        if self.database.lease_ms < 1_000 {
            return Err(cfg_err("database.lease_ms", "must be at least 1000"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(cfg_err("server.max_body_bytes", "must be at least 1024"));
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
            if pool.concurrency == Some(0) {
                return Err(cfg_err(key("concurrency"), "must be at least 1"));
            }
            if pool.replicas == Some(0) {
                return Err(cfg_err(key("replicas"), "must be at least 1"));
            }
            if pool.queue_capacity == Some(0) {
                return Err(cfg_err(key("queue_capacity"), "must be at least 1"));
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
            names.insert(t.name.clone());
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.is_empty() {
                return Err(cfg_err("smtp.host", "must not be empty"));
            }
            if smtp.pool_size == 0 {
                return Err(cfg_err("smtp.pool_size", "must be at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[&str] = &["communications", "email", "sim", "echo"];

    #[test]
    fn empty_file_is_the_embedded_default() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate(KINDS).unwrap();
        assert_eq!(cfg.pools.len(), 4);
        assert_eq!(cfg.director.types["email"], "communications");
    }

    #[test]
    fn pools_merge_over_builtins() {
        let cfg = Config::from_toml(
            "[pools.sim]\nconcurrency = 4\n[pools.fast]\nagent = \"sim\"\nreplicas = 3\n",
        )
        .unwrap();
        cfg.validate(KINDS).unwrap();
        assert_eq!(cfg.pools["sim"].concurrency_or_default("sim"), 4);
        assert_eq!(cfg.pools["fast"].agent_kind("fast"), "sim");
        assert_eq!(cfg.pools["fast"].replicas_or_default(), 3);
        assert_eq!(cfg.pools["echo"].concurrency_or_default("echo"), 1024);
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
}
