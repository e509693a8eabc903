//! What every run needs, shared by the dispatchers, the runs and the child
//! runners: the transitions, the departments, the classifier and the stop
//! signals. Built once by the engine; read-only after.

use std::sync::Arc;

use serde_json::Value;
use swarm_agents::{AgentError, Progress};
use swarm_core::TaskId;
use swarm_sched::limit::Classify;

use crate::attempt::Ended;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::pool::{Pool, Pools};
use crate::shutdown::Shutdown;
use crate::tokens::TenantBudgets;

/// Maps a run's result to the limiter's success / drop / ignore.
pub(crate) type Classifier = Arc<dyn Classify<Result<Value, AgentError>>>;

/// The handles a run works with.
pub(crate) struct RunEnv {
    lifecycle: Arc<Lifecycle>,
    pools: Arc<Pools>,
    hub: Arc<Hub>,
    classifier: Classifier,
    shutdown: Shutdown,
    tenant_tokens: Arc<TenantBudgets>,
}

impl RunEnv {
    pub(crate) fn new(
        lifecycle: Arc<Lifecycle>,
        pools: Arc<Pools>,
        hub: Arc<Hub>,
        classifier: Classifier,
        shutdown: Shutdown,
        tenant_tokens: Arc<TenantBudgets>,
    ) -> Self {
        Self {
            lifecycle,
            pools,
            hub,
            classifier,
            shutdown,
            tenant_tokens,
        }
    }

    /// Whether a run of `tenant` in `pool` is charged to a token budget.
    pub(crate) fn charges_tokens(&self, pool: &Pool, tenant: &str) -> bool {
        self.tenant_tokens.charges(pool.tokens(), tenant)
    }

    /// Charges what an attempt (of a task or a child call) spent to its
    /// department's and its tenant's token budgets: the provider's
    /// reported usage, else (no usage, an error, a cut-off stream) the
    /// estimate, the most it could have cost.
    pub(crate) fn spend_tokens(&self, pool: &Pool, tenant: &str, args: &Value, ended: &Ended) {
        let budget = self.tenant_tokens.get(tenant);
        if pool.tokens().is_none() && budget.is_none() {
            return;
        }
        let reported = match ended {
            Ended::Returned(Ok(v)) => swarm_agents::reported_tokens(v),
            _ => None,
        };
        if let Some(n) = reported.or_else(|| pool.agent().token_estimate(args)) {
            crate::tokens::spend(pool.tokens().into_iter().chain(budget.as_ref()), n);
        }
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub(crate) fn pools(&self) -> &Pools {
        &self.pools
    }

    pub(crate) fn classifier(&self) -> &dyn Classify<Result<Value, AgentError>> {
        self.classifier.as_ref()
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The `progress` reporter of a run of task `id`: reports go to the
    /// task's subscribers (and its replay buffer).
    pub(crate) fn progress_for(&self, id: TaskId) -> Progress {
        let hub = Arc::downgrade(&self.hub);
        Progress::new(move |v: Value| {
            if let Some(hub) = hub.upgrade() {
                hub.progress(id, v);
            }
        })
    }
}
