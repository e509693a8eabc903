//! A department's instances at runtime: listing them, adding, draining and
//! removing one (`/api/pools/{pool}/instances`), and taking a reloaded
//! configuration (SIGHUP): its instance lists, and its tenants
//! ([`crate::roster`]).
//!
//! Only pools whose agent balances several instances (`agent = "http"`,
//! built-in agents with `replicas` > 1) can change; the balancer
//! ([`swarm_agents::BalancedAgent`]) does the work. A removed instance is
//! drained first: it gets no new calls, its calls in flight finish, and it
//! leaves once none is left, so no task fails for it.

use serde::Serialize;
pub use swarm_agents::InstanceSpec;
use swarm_agents::balanced::BalancedAgent;
use swarm_agents::{InstanceError, ProcessStats, Reconciled};
use swarm_core::config::{Config, PoolConfig};
use swarm_sched::balance::BalancerSnapshot;
pub use swarm_sched::balance::InstanceSnapshot;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::pool::Pool;
use crate::roster::TenantChanges;

/// `GET /api/pools/{pool}/instances`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstancesView {
    /// The department.
    pub pool: String,
    /// Its agent kind.
    pub agent: String,
    /// Whether instances can be added and removed.
    pub mutable: bool,
    /// The balancer's view (policy, per-instance state, load, shares);
    /// absent for a single instance.
    pub balancer: Option<BalancerSnapshot>,
    /// Worker processes, for `agent = "process"`.
    pub workers: Option<ProcessStats>,
    /// Instance names.
    pub instances: Vec<String>,
}

/// What a reload changed, per pool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Pools whose instances changed, with the changes.
    pub changed: Vec<(String, Reconciled)>,
    /// What changed in `[[tenants]]` (keys, roles, weights, quotas).
    pub tenants: TenantChanges,
    /// What the reload could not apply without a restart.
    pub ignored: Vec<String>,
}

fn not_found(pool: &str) -> EngineError {
    EngineError::Missing {
        code: "pool_not_found",
        message: format!("no department `{pool}`"),
    }
}

fn instance_error(pool: &str, e: InstanceError) -> EngineError {
    match e {
        InstanceError::Invalid(f) => EngineError::Invalid(f),
        InstanceError::NotFound(id) => EngineError::Missing {
            code: "instance_not_found",
            message: format!("department `{pool}` has no instance `{id}`"),
        },
    }
}

impl Engine {
    fn pool(&self, name: &str) -> Result<&Pool, EngineError> {
        self.pools()
            .get(name)
            .map(|p| p.as_ref())
            .ok_or_else(|| not_found(name))
    }

    fn balanced(&self, name: &str) -> Result<&BalancedAgent, EngineError> {
        let pool = self.pool(name)?;
        pool.agent()
            .balanced()
            .ok_or_else(|| EngineError::Conflict {
                code: "instances_fixed",
                message: format!(
                    "department `{name}` runs one `{}` agent; instances can be added and removed \
                 for `agent = \"http\"` pools and built-in agents with `replicas` above 1",
                    pool.agent_kind()
                ),
            })
    }

    /// A department's instances.
    pub fn pool_instances(&self, name: &str) -> Result<InstancesView, EngineError> {
        let pool = self.pool(name)?;
        let balancer = pool.agent().balanced().map(|b| b.snapshot());
        Ok(InstancesView {
            pool: name.to_string(),
            agent: pool.agent_kind().to_string(),
            mutable: balancer.is_some(),
            instances: pool.instance_names(balancer.as_ref()),
            balancer,
            workers: pool.agent().workers(),
        })
    }

    /// Adds an instance to a department (or takes it back from draining).
    /// Returns it and whether it is new.
    pub fn add_instance(
        &self,
        pool: &str,
        spec: &InstanceSpec,
    ) -> Result<(InstanceSnapshot, bool), EngineError> {
        let b = self.balanced(pool)?;
        let r = b.add(spec).map_err(|e| instance_error(pool, e))?;
        tracing::info!(pool, instance = %r.0.id, new = r.1, "instance added");
        Ok(r)
    }

    /// Stops new calls to an instance; its calls in flight finish.
    pub fn drain_instance(&self, pool: &str, id: &str) -> Result<InstanceSnapshot, EngineError> {
        let r = self
            .balanced(pool)?
            .drain(id)
            .map_err(|e| instance_error(pool, e))?;
        tracing::info!(pool, instance = %r.id, "instance draining");
        Ok(r)
    }

    /// Drains an instance and removes it once its calls have finished.
    pub fn remove_instance(&self, pool: &str, id: &str) -> Result<InstanceSnapshot, EngineError> {
        let r = self
            .balanced(pool)?
            .remove(id)
            .map_err(|e| instance_error(pool, e))?;
        tracing::info!(pool, instance = %r.id, in_flight = r.outstanding, "instance removing");
        Ok(r)
    }

    /// Applies a reloaded configuration's instance lists (`[pools.X.http]
    /// urls`, `replicas`) to the running pools, and its tenants (`[[tenants]]`
    /// and `admission.tenant_max_outstanding`: keys, roles, weights,
    /// quotas). Everything else needs a restart and is listed in the
    /// report's `ignored`. Nothing changes if any list is invalid.
    pub fn reload(&self, cfg: &Config) -> Result<ReloadReport, EngineError> {
        let old = self.config();
        let mut report = ReloadReport::default();
        let mut plans = Vec::new();
        for (name, pc) in &cfg.pools {
            let Some(was) = old.pools.get(name) else {
                report.ignored.push(format!("new department `{name}`"));
                continue;
            };
            let pool = self.pool(name)?;
            if pc.agent_kind(name) != was.agent_kind(name) {
                report.ignored.push(format!("pools.{name}.agent"));
                continue;
            }
            let Some(b) = pool.agent().balanced() else {
                if pc.replicas_or_default() != was.replicas_or_default() {
                    report.ignored.push(format!("pools.{name}.replicas"));
                }
                continue;
            };
            let specs = instance_specs(name, pc)?;
            if without_instances(pc) != without_instances(was) {
                report.ignored.push(format!(
                    "pools.{name}: settings other than the instance list"
                ));
            }
            b.check(&specs).map_err(|e| {
                EngineError::Invalid(e.nested_under(&format!("pools.{name}.instances")))
            })?;
            plans.push((name.clone(), b, specs));
        }
        for name in old.pools.keys().filter(|n| !cfg.pools.contains_key(*n)) {
            report.ignored.push(format!("removed department `{name}`"));
        }
        for (name, b, specs) in plans {
            let r = b.reconcile(&specs).map_err(|e| {
                EngineError::Invalid(e.nested_under(&format!("pools.{name}.instances")))
            })?;
            if r != Reconciled::default() {
                tracing::info!(pool = %name, added = ?r.added, removed = ?r.removed, reweighted = ?r.reweighted, "instances reloaded");
                report.changed.push((name, r));
            }
        }
        report.tenants = self.reload_tenants(cfg);
        for what in &report.ignored {
            tracing::warn!(%what, "configuration change needs a restart; not applied");
        }
        Ok(report)
    }
}

// === impl Engine: tenants ===

impl Engine {
    /// Takes a reloaded configuration's `[[tenants]]` and
    /// `admission.tenant_max_outstanding`: the roster (and so the keys),
    /// the admission quotas and every pool's tenant weights. `cfg` has
    /// been validated.
    fn reload_tenants(&self, cfg: &Config) -> TenantChanges {
        let changes = self.roster().replace(&cfg.tenants);
        self.admission().set_quotas(cfg);
        for pool in self.pools().iter() {
            pool.set_tenant_weights(&cfg.tenants);
        }
        if !changes.is_empty() {
            tracing::info!(
                added = ?changes.added,
                removed = ?changes.removed,
                changed = ?changes.changed,
                "tenants reloaded"
            );
        }
        changes
    }
}

/// The instance list a pool's configuration asks for.
fn instance_specs(name: &str, pc: &PoolConfig) -> Result<Vec<InstanceSpec>, EngineError> {
    if let Some(http) = &pc.http {
        return swarm_agents::registry::http_instance_specs(http.get("urls").cloned()).map_err(
            |m| {
                EngineError::Invalid(swarm_core::FieldError::invalid(
                    format!("pools.{name}.http.urls"),
                    m,
                ))
            },
        );
    }
    Ok((0..pc.replicas_or_default())
        .map(|i| InstanceSpec {
            id: Some(format!("{name}-{i}")),
            ..InstanceSpec::default()
        })
        .collect())
}

/// A pool's configuration minus its instance list, to tell whether
/// anything else changed.
fn without_instances(pc: &PoolConfig) -> PoolConfig {
    let mut pc = pc.clone();
    pc.replicas = None;
    if let Some(h) = &mut pc.http {
        h.remove("urls");
    }
    pc
}
