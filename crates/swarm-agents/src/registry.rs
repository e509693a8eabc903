//! Builds the built-in agents from configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use swarm_core::config::{Config, PoolConfig};

use crate::agent::Agent;
use crate::balanced::BalancedAgent;
use crate::communications::{CommunicationsAgent, ReviewerAgent};
use crate::echo::EchoAgent;
use crate::email::{EmailAgent, Outbox};
use crate::http::{HttpAgent, HttpConfig};
use crate::process::{ProcessAgent, ProcessConfig};
use crate::sim::SimAgent;
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
];

/// The agent of a pool whose instances are its own (`agent = "process"`
/// or `"http"`), built from `[pools.NAME.process]` / `[pools.NAME.http]`;
/// `None` for the shared built-in kinds. Errors name the setting.
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
            let urls: Vec<String> = match table.remove("urls") {
                Some(v) => v
                    .try_into()
                    .map_err(|_| key("http.urls", "must be a list of URLs".into()))?,
                None => return Err(key("http.urls", "at least one URL is needed".into())),
            };
            if urls.is_empty() {
                return Err(key("http.urls", "at least one URL is needed".into()));
            }
            let mut instances: Vec<(String, Arc<dyn Agent>)> = Vec::new();
            for url in urls {
                let mut t = table.clone();
                t.insert("url".into(), toml::Value::String(url.clone()));
                let cfg: HttpConfig = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| key("http", e.message().to_string()))?;
                let agent = HttpAgent::new(cfg).map_err(|e| {
                    key(&format!("http.{}", e.field.unwrap_or_default()), e.message)
                })?;
                if instances.iter().any(|(id, _)| *id == url) {
                    return Err(key("http.urls", format!("`{url}` is listed twice")));
                }
                instances.push((url, Arc::new(agent)));
            }
            let balance = pc.balance.clone().unwrap_or_default();
            balance.validate().map_err(|e| key("balance", e))?;
            Ok(Some(Arc::new(BalancedAgent::new(
                "http",
                instances,
                balance,
                pc.hash_key.clone(),
            ))))
        }
        _ => Ok(None),
    }
}

/// One instance of each built-in agent, by kind. Pools share an agent object;
/// agents keep per-run state in their futures, so sharing is safe.
pub fn builtin_agents(
    cfg: &Config,
    outbox: Arc<dyn Outbox>,
    cpu: CpuPool,
) -> Result<BTreeMap<&'static str, Arc<dyn Agent>>, String> {
    let email = Arc::new(EmailAgent::new(cfg.smtp.as_ref(), outbox)?);
    let mut agents: BTreeMap<&'static str, Arc<dyn Agent>> = BTreeMap::new();
    agents.insert(
        "communications",
        Arc::new(CommunicationsAgent::new(email.clone())),
    );
    agents.insert("reviewers", Arc::new(ReviewerAgent));
    agents.insert("email", email);
    agents.insert("sim", Arc::new(SimAgent::with_cpu_pool(cpu)));
    agents.insert("echo", Arc::new(EchoAgent));
    Ok(agents)
}
