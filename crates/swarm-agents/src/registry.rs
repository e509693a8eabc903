//! Builds the built-in agents from configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use swarm_core::config::Config;

use crate::agent::Agent;
use crate::communications::{CommunicationsAgent, ReviewerAgent};
use crate::echo::EchoAgent;
use crate::email::{EmailAgent, Outbox};
use crate::sim::SimAgent;
use swarm_sched::cpu::CpuPool;

/// The agent kinds this build provides.
pub const BUILTIN_KINDS: &[&str] = &["communications", "reviewers", "email", "sim", "echo"];

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
