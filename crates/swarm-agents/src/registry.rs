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
use crate::openai::{OpenAiAgent, OpenAiClient, OpenAiConfig};
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
    agents.insert("sim", Arc::new(SimAgent::with_cpu_pool(cpu)));
    agents.insert("echo", Arc::new(EchoAgent));
    Ok(agents)
}
