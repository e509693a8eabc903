//! # swarm-agents
//!
//! What does the work. An [`Agent`] gets a task's input, its deadline and a
//! cancellation token, and returns JSON or an [`AgentError`]. The engine owns
//! scheduling, deadlines and storage; an agent only does its job, promptly
//! giving up when its token fires.
//!
//! # Layout
//! - [`agent`]: the [`Agent`] trait, [`AgentContext`], [`AgentInput`], [`AgentError`].
//! - [`echo`]: returns its input.
//! - [`sim`]: a stand-in for a saturating LLM provider (latency, jitter,
//!   failures, CPU burn, capacity per group).
//! - [`communications`]: the prototype's workflow: draft, two reviewers in
//!   parallel, merge the edits it agrees with, hand to email.
//! - [`email`]: sends over pooled SMTP, or stores into the [`Outbox`].
//! - [`process`]: runs tasks on long-lived worker processes speaking JSON
//!   lines (how an agent written in Python plugs in).
//! - [`http`]: POSTs tasks to one agent instance over HTTP.
//! - [`allow`]: the hosts an HTTP pool may be given at runtime.
//! - [`balanced`]: several instances behind one agent: balancing, retries,
//!   health, instances added and removed at runtime.
//! - [`openai`]: an OpenAI-compatible chat-completions client (streaming
//!   tokens as progress), as a pool's agent and as the communications
//!   workflow's LLM.
//! - [`ratelimit`]: reads providers' rate-limit headers (OpenAI's
//!   `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`) into a
//!   [`ProviderPause`].
//! - [`registry`]: builds the built-in agents from configuration.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod agent;
pub mod allow;
pub mod balanced;
pub mod communications;
pub mod echo;
pub mod email;
pub mod http;
pub mod openai;
pub mod process;
pub mod ratelimit;
pub mod registry;
pub mod sim;
#[cfg(test)]
pub(crate) mod test_support;
pub mod webhook;

pub use agent::{
    Agent, AgentContext, AgentError, AgentInput, Children, Placement, Progress, ProviderSignal,
    reported_tokens,
};
pub use balanced::{BalancedAgent, InstanceError, InstanceSpec, Reconciled};
pub use email::{Outbox, OutboxMessage};
pub use http::{HttpAgent, HttpConfig, install_crypto_provider};
pub use openai::{OpenAiAgent, OpenAiClient, OpenAiConfig};
pub use process::{ProcessAgent, ProcessConfig, ProcessStats};
pub use ratelimit::{ProviderPause, Quota, headroom, rate_limit};
pub use registry::{BUILTIN_KINDS, builtin_agents, pool_agent, replicated};
