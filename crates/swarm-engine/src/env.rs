//! What every run needs, shared by the dispatchers, the runs and the child
//! runners: the transitions, the departments, the classifier and the stop
//! signals. Built once by the engine; read-only after.

use std::sync::Arc;

use serde_json::Value;
use swarm_agents::{AgentError, Progress};
use swarm_core::TaskId;
use swarm_sched::limit::Classify;

use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::pool::Pools;
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

    /// The tenants' token budgets.
    pub(crate) fn tenant_tokens(&self) -> &TenantBudgets {
        &self.tenant_tokens
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
