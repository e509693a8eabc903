//! Builds the built-in agents from configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use swarm_core::config::{Config, PoolConfig};

use crate::agent::Agent;
use crate::allow::HostAllowList;
use crate::balanced::{
    BalancedAgent, Factory, HealthCheck, InstanceSpec, Member, Probe, RuntimeCheck,
};
use crate::communications::{CommunicationsAgent, ReviewerAgent};
use crate::echo::EchoAgent;
use crate::email::{EmailAgent, Outbox};
use crate::http::{HttpAgent, HttpConfig, ProbeClients};
use crate::openai::{OpenAiAgent, OpenAiClient, OpenAiConfig};
use crate::process::{ProcessAgent, ProcessConfig};
use crate::sim::SimAgent;
use swarm_core::FieldError;
use swarm_sched::cpu::CpuPool;

/// The agent kinds this build provides.
pub const BUILTIN_KINDS: &[&str] = &[
    "communications",
    "reviewers",
    "email",
    "sim",
    "echo",
    "process",
    "http",
    "openai",
];

/// The agent of a pool whose instances are its own (`agent = "process"`,
/// `"http"` or `"openai"`), built from `[pools.NAME.process]` /
/// `[pools.NAME.http]` / `[pools.NAME.openai]`; `None` for the shared
/// built-in kinds. Errors name the setting.
pub fn pool_agent(name: &str, pc: &PoolConfig) -> Result<Option<Arc<dyn Agent>>, String> {
    let key = |k: &str, e: String| format!("pools.{name}.{k}: {e}");
    match pc.agent_kind(name) {
        "process" => {
            let table = pc.process.clone().ok_or_else(|| {
                key(
                    "process",
                    "`agent = \"process\"` needs a [process] table with `command`".into(),
                )
            })?;
            let cfg: ProcessConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| key("process", e.message().to_string()))?;
            let agent = ProcessAgent::new(cfg).map_err(|e| {
                key(
                    &format!("process.{}", e.field.unwrap_or_default()),
                    e.message,
                )
            })?;
            agent.start();
            Ok(Some(Arc::new(agent)))
        }
        "http" => {
            let mut table = pc.http.clone().ok_or_else(|| {
                key(
                    "http",
                    "`agent = \"http\"` needs an [http] table with `urls`".into(),
                )
            })?;
            let specs =
                http_instance_specs(table.remove("urls")).map_err(|e| key("http.urls", e))?;
            let health = health_check(&mut table).map_err(|(k, e)| key(&format!("http.{k}"), e))?;
            let allow = match table.remove("allow_hosts") {
                Some(v) => HostAllowList::parse(&v)
                    .map_err(|e| key(&field_key("http", e.field.as_deref()), e.message))?,
                None => HostAllowList::of_urls(specs.iter().filter_map(|s| s.url.as_deref())),
            };
            let pool = name.to_string();
            let check: RuntimeCheck = Arc::new(move |spec: &InstanceSpec| match &spec.url {
                Some(url) => allow.check(&pool, url),
                None => Err(FieldError::missing("url")),
            });
            let factory = http_factory(table);
            let agent = BalancedAgent::new(
                "http",
                factory,
                &specs,
                pc.balance.clone().unwrap_or_default(),
                pc.retry.clone().unwrap_or_default(),
                pc.hash_key.clone(),
            )
            .map_err(|e| {
                let field = e.field.unwrap_or_default();
                match field.split_once('.') {
                    // A setting shared by all instances, found building the first.
                    Some(("0", k)) if k != "url" => key(&format!("http.{k}"), e.message),
                    None if field == "0" => key("http", e.message),
                    _ => key(&format!("http.urls.{field}"), e.message),
                }
            })?
            .with_runtime_check(check);
            let agent = Arc::new(agent);
            if let Some(h) = health {
                agent.start_health_checks(h);
            }
            Ok(Some(agent))
        }
        "openai" => {
            let table = pc.openai.clone().ok_or_else(|| {
                key(
                    "openai",
                    "`agent = \"openai\"` needs an [openai] table with `base_url` and `model`"
                        .into(),
                )
            })?;
            let agent = OpenAiConfig::from_table(table)
                .and_then(OpenAiAgent::new)
                .map_err(|e| key(&field_key("openai", e.field.as_deref()), e.message))?;
            Ok(Some(Arc::new(agent)))
        }
        _ => Ok(None),
    }
}

/// `urls = ["http://…", { url = "http://…", weight = 3 }]`.
pub fn http_instance_specs(v: Option<toml::Value>) -> Result<Vec<InstanceSpec>, String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Url(String),
        Spec(InstanceSpec),
    }
    let entries: Vec<Entry> = v
        .ok_or("at least one URL is needed")?
        .try_into()
        .map_err(|_| "must be a list of URLs or `{ url, weight }` tables".to_string())?;
    if entries.is_empty() {
        return Err("at least one URL is needed".into());
    }
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::Url(url) => InstanceSpec {
                url: Some(url),
                ..InstanceSpec::default()
            },
            Entry::Spec(s) => s,
        })
        .collect())
}

/// Default `health_interval_ms`.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 5_000;
/// Default `health_timeout_ms`.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;

/// Takes `health_path`, `health_interval_ms` and `health_timeout_ms` out of
/// an `[http]` table: active checks `GET` the path on each instance's
/// origin and expect a 2xx. Errors name the key.
fn health_check(table: &mut toml::Table) -> Result<Option<HealthCheck>, (&'static str, String)> {
    let ms = |t: &mut toml::Table, k: &'static str, default: u64| match t.remove(k) {
        None => Ok(default),
        Some(toml::Value::Integer(n)) if n >= 10 => Ok(n as u64),
        Some(_) => Err((
            k,
            "must be a whole number of milliseconds, at least 10".to_string(),
        )),
    };
    let interval = ms(table, "health_interval_ms", DEFAULT_HEALTH_INTERVAL_MS)?;
    let timeout = ms(table, "health_timeout_ms", DEFAULT_HEALTH_TIMEOUT_MS)?;
    let path = match table.remove("health_path") {
        None => return Ok(None),
        Some(toml::Value::String(p)) if p.starts_with('/') => p,
        Some(_) => return Err(("health_path", "must be a path starting with `/`".into())),
    };
    // Probes trust what the instances' clients trust; `ca_file` stays in
    // the table for them (a bad one is reported here first).
    let ca_file = match table.get("ca_file") {
        None => None,
        Some(toml::Value::String(p)) => Some(p.into()),
        Some(_) => return Err(("ca_file", "must be a path (a string)".into())),
    };
    let clients = ProbeClients::new(Duration::from_millis(timeout), ca_file).map_err(|e| {
        let key = if e.field.as_deref() == Some("ca_file") {
            "ca_file"
        } else {
            "health_path"
        };
        (key, e.message)
    })?;
    let clients = Arc::new(clients);
    let probe: Probe = Arc::new(move |id: &str| {
        let target = reqwest::Url::parse(id).and_then(|u| u.join(&path));
        let clients = clients.clone();
        Box::pin(async move {
            let url = target.map_err(|e| e.to_string())?;
            let client = clients.for_url(&url)?;
            let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", resp.status()))
            }
        })
    });
    Ok(Some(HealthCheck {
        probe,
        interval: Duration::from_millis(interval),
    }))
}

/// Builds an HTTP instance from its URL and the pool's shared settings.
fn http_factory(shared: toml::Table) -> Factory {
    Arc::new(move |spec: &InstanceSpec| {
        let url = spec.url.clone().ok_or_else(|| FieldError::missing("url"))?;
        if spec.id.as_ref().is_some_and(|id| *id != url) {
            return Err(FieldError::invalid(
                "id",
                "an HTTP instance's id is its URL; give only `url`",
            ));
        }
        let mut t = shared.clone();
        t.insert("url".into(), toml::Value::String(url.clone()));
        let cfg: HttpConfig = toml::Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| FieldError::invalid("", e.message().to_string()))?;
        let agent = HttpAgent::new(cfg)?;
        Ok(Member {
            id: url,
            agent: Arc::new(agent),
        })
    })
}

/// A pool of `replicas` instances of a built-in agent (`{pool}-{n}`),
/// balanced as the pool says; the agent itself when there is one replica.
/// Replicas share the agent object (built-in agents keep per-run state in
/// their futures), so a replica is a slot with its own load figures and
/// health, and `hash` keeps a key on one.
pub fn replicated(
    name: &str,
    pc: &PoolConfig,
    agent: Arc<dyn Agent>,
) -> Result<Arc<dyn Agent>, String> {
    let n = pc.replicas_or_default();
    if n <= 1 {
        return Ok(agent);
    }
    let kind = agent.kind();
    let shared = agent.clone();
    let factory: Factory = Arc::new(move |spec: &InstanceSpec| {
        if spec.url.is_some() {
            return Err(FieldError::invalid(
                "url",
                "replicas of a built-in agent have an `id`, not a `url`",
            ));
        }
        let id = spec.id.clone().ok_or_else(|| FieldError::missing("id"))?;
        if id.is_empty() {
            return Err(FieldError::invalid("id", "must not be empty"));
        }
        Ok(Member {
            id,
            agent: shared.clone(),
        })
    });
    let specs: Vec<InstanceSpec> = (0..n)
        .map(|i| InstanceSpec {
            id: Some(format!("{name}-{i}")),
            ..InstanceSpec::default()
        })
        .collect();
    let b = BalancedAgent::new(
        kind,
        factory,
        &specs,
        pc.balance.clone().unwrap_or_default(),
        pc.retry.clone().unwrap_or_default(),
        pc.hash_key.clone(),
    )
    .map_err(|e| format!("pools.{name}: {}", e.message))?;
    Ok(Arc::new(b))
}

/// `table.field`, or `table` when the error names no field.
fn field_key(table: &str, field: Option<&str>) -> String {
    match field {
        Some(f) if !f.is_empty() => format!("{table}.{f}"),
        _ => table.to_string(),
    }
}

/// The LLM of the communications drafter and reviewers, from the
/// top-level `[llm]` table (an [`OpenAiConfig`]); `None` without one, and
/// they use their built-in rules. Errors name the key (`llm.base_url`).
pub fn llm_client(cfg: &Config) -> Result<Option<Arc<OpenAiClient>>, String> {
    let Some(table) = cfg.llm.clone() else {
        return Ok(None);
    };
    let client = OpenAiConfig::from_table(table)
        .and_then(OpenAiClient::new)
        .map_err(|e| format!("{}: {}", field_key("llm", e.field.as_deref()), e.message))?;
    Ok(Some(Arc::new(client)))
}

/// One instance of each built-in agent, by kind. Pools share an agent object;
/// agents keep per-run state in their futures, so sharing is safe.
pub fn builtin_agents(
    cfg: &Config,
    outbox: Arc<dyn Outbox>,
    cpu: CpuPool,
) -> Result<BTreeMap<&'static str, Arc<dyn Agent>>, String> {
    let email = Arc::new(EmailAgent::new(cfg.smtp.as_ref(), outbox)?);
    let llm = llm_client(cfg)?;
    let mut agents: BTreeMap<&'static str, Arc<dyn Agent>> = BTreeMap::new();
    agents.insert(
        "communications",
        Arc::new(CommunicationsAgent::new(email.clone()).with_llm(llm.clone())),
    );
    agents.insert("reviewers", Arc::new(ReviewerAgent::with_llm(llm)));
    agents.insert("email", email);
    agents.insert(
        "sim",
        Arc::new(SimAgent::with_cpu_pool(cpu).with_limits(cfg.sim.clone())),
    );
    agents.insert("echo", Arc::new(EchoAgent));
    Ok(agents)
}
