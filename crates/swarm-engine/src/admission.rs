//! Every admission decision, made from memory before anything is stored, so
//! a refusal costs microseconds and no IO.
//!
//! In order, a submission is refused when:
//! 1. the database takes no writes (`503 database_unavailable`): it could
//!    not be stored, and waiting for a connection would only hold the
//!    client;
//! 2. the process is over its memory threshold (`503 process_overloaded`);
//! 3. the tenant has its quota of tasks outstanding (`429 tenant_quota`),
//!    or the task's token estimate does not fit in its tenant's or its
//!    department's token budget (`429 token_budget`; see `tokens`);
//! 4. the department's queue is at its bound (`503 queue_full`);
//! 5. the database writer is behind on new tasks (`503 database_busy`):
//!    more are waiting to be written than [`BACKLOG_BATCHES`] group commits
//!    take. The writer serves the starts and finishes of accepted work first
//!    (`swarm_store`'s lanes), so this bounds admissions by the rate at
//!    which the writer has room left after completions, and a flood of
//!    submissions can never starve the work already accepted;
//! 6. a queue stands above its target (`503 queue_delay`): CoDel (Nichols &
//!    Jacobson 2012, used for admission as in Facebook's "Fail at Scale",
//!    2015), or a Little's-law estimate that the new task would wait past
//!    the target. Shedding is fair: tenants within their max-min share, or
//!    admitted more slowly than a heavier one, are exempt;
//! 7. at the measured drain rate it would start after its deadline
//!    (`503 deadline_unmeetable`).
//!
//! Every refusal carries a `Retry-After` computed from the drain rate.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use swarm_core::config::Config;
use swarm_store::Store;
use tokio::time::Instant;

use crate::error::EngineError;
use crate::ledger::{TenantLedger, TenantSlot};
use crate::monitor::Resources;
use crate::pool::{PendingGuard, Pool, Refusal};
use crate::tokens::TenantBudgets;

/// Group commits' worth of new tasks that may wait for the writer before
/// submissions are refused as `database_busy`.
pub(crate) const BACKLOG_BATCHES: usize = 2;

/// What an admitted submission holds until its task is queued or dropped.
pub(crate) struct Ticket {
    /// The tenant's outstanding-task count.
    pub(crate) slot: TenantSlot,
    /// Counts the task as queued while its row is written.
    pub(crate) pending: PendingGuard,
}

/// The admission policy of one engine.
pub(crate) struct Admission {
    /// Outstanding tasks per tenant.
    tenants: Arc<TenantLedger>,
    /// Tasks each tenant may have outstanding (replaced by a reload).
    quotas: RwLock<Quotas>,
    /// The tenants' token budgets (shared with the runs that spend them).
    tokens: Arc<TenantBudgets>,
    /// The monitor's last reading (memory over threshold).
    resources: Arc<Resources>,
    /// The threshold, for the message.
    rss_high_mib: u64,
    /// Whether writes commit, and how many new tasks wait for the writer.
    store: Store,
    /// New tasks allowed to wait for the writer.
    backlog_max: usize,
}

/// Tasks each tenant may have queued or running at once.
struct Quotas {
    /// Per-tenant overrides (`[[tenants]] max_outstanding`).
    by_tenant: HashMap<String, usize>,
    /// The quota of tenants without one (`admission.tenant_max_outstanding`).
    default: usize,
}

impl Quotas {
    fn from_config(cfg: &Config) -> Self {
        Self {
            by_tenant: cfg
                .tenants
                .iter()
                .filter_map(|t| t.max_outstanding.map(|m| (t.name.clone(), m)))
                .collect(),
            default: cfg.admission.tenant_max_outstanding,
        }
    }

    fn of(&self, tenant: &str) -> usize {
        self.by_tenant.get(tenant).copied().unwrap_or(self.default)
    }
}

impl Admission {
    /// Takes a reloaded configuration's quotas; tasks already admitted
    /// keep their slots.
    pub(crate) fn set_quotas(&self, cfg: &Config) {
        *self.quotas.write().unwrap_or_else(|p| p.into_inner()) = Quotas::from_config(cfg);
        self.tokens.reload(&cfg.tenants);
    }

    pub(crate) fn new(
        cfg: &Config,
        tenants: Arc<TenantLedger>,
        tokens: Arc<TenantBudgets>,
        resources: Arc<Resources>,
        store: Store,
    ) -> Self {
        Self {
            tenants,
            tokens,
            quotas: RwLock::new(Quotas::from_config(cfg)),
            resources,
            rss_high_mib: cfg.admission.rss_high_mib,
            store,
            backlog_max: cfg.database.batch_max.max(1) * BACKLOG_BATCHES,
        }
    }

    /// Decides whether a task of `tenant` with deadline `timeout` may be
    /// queued in `pool` now.
    ///
    /// That is for a task that may start now; with `scheduled`, for one
    /// that starts later (`run_at`, `delay_ms`): that one
    /// is not judged by the queue it does not join yet (its bound, CoDel,
    /// the expected wait), but by the database, memory and its tenant's
    /// quota like any other. It reserves no tokens: it is charged what it
    /// spends when it runs.
    ///
    /// `tokens` is the task's token estimate, for agents that call a model.
    pub(crate) fn admit_at(
        &self,
        pool: &Pool,
        tenant: &str,
        timeout: Duration,
        scheduled: bool,
        tokens: Option<u64>,
    ) -> Result<Ticket, EngineError> {
        let refuse = |why: Refusal, code: &'static str, message: String, retry_after_s: u64| {
            pool.count_refusal(why);
            Err(EngineError::Overloaded {
                code,
                message,
                retry_after_s,
            })
        };
        let health = self.store.health();
        if !health.is_up() {
            pool.count_refusal(Refusal::DatabaseUnavailable);
            let reason = health.snapshot().reason.unwrap_or_default();
            return Err(EngineError::Unavailable(reason));
        }
        if self.resources.get().rss_high {
            return refuse(
                Refusal::ProcessOverloaded,
                "process_overloaded",
                format!(
                    "the server's memory is over its threshold ({} MiB); retry later",
                    self.rss_high_mib
                ),
                5,
            );
        }
        let quota = self
            .quotas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .of(tenant);
        let mut slot = match self.tenants.try_take(tenant, quota) {
            Ok(slot) => slot,
            Err(n) => {
                pool.count_refusal(Refusal::TenantQuota);
                return Err(EngineError::QuotaExceeded {
                    code: "tenant_quota",
                    message: format!(
                        "tenant `{tenant}` has {n} tasks queued or running, its quota; retry when some finish"
                    ),
                    // The tenant's excess drains at its share of the pool's
                    // rate at best; one slot frees in about this long.
                    retry_after_s: pool.retry_after_s(1),
                });
            }
        };
        if let Some(estimate) = tokens.filter(|_| !scheduled) {
            let mut budgets = Vec::new();
            if let Some(b) = pool.tokens() {
                budgets.push((b.clone(), format!("department `{}`", pool.name())));
            }
            if let Some(b) = self.tokens.get(tenant) {
                budgets.push((b, format!("tenant `{tenant}`")));
            }
            if !budgets.is_empty() {
                // Dropped with `slot` if a later check refuses the task.
                slot.hold_tokens(self.reserve(pool, budgets, estimate)?);
            }
        }
        let backlog = self.store.admissions_waiting();
        if backlog >= self.backlog_max {
            return refuse(
                Refusal::DatabaseBusy,
                "database_busy",
                format!("{backlog} new tasks are waiting to be stored; retry shortly"),
                1,
            );
        }
        if scheduled {
            return Ok(Ticket {
                slot,
                pending: pool.begin_scheduled(),
            });
        }
        let now = Instant::now();
        let q = pool.queue_reading(tenant, now);
        if q.queued >= q.capacity {
            return refuse(
                Refusal::QueueFull,
                "queue_full",
                format!(
                    "department `{}` has {} tasks queued (its bound); retry later",
                    pool.name(),
                    q.queued
                ),
                pool.retry_after_s(q.queued),
            );
        }
        let wait = pool.expected_wait(q.queued);
        if let Some((target, standing)) = q.codel
            && (standing || wait > target)
            && !q.exempt
        {
            return refuse(
                Refusal::QueueDelay,
                "queue_delay",
                format!(
                    "department `{}` is overloaded: queued tasks would wait over its {} ms target; retry later",
                    pool.name(),
                    target.as_millis()
                ),
                pool.retry_after_s(q.queued),
            );
        }
        // If this task would start after its deadline, accepting it would
        // only store a future timeout.
        if q.queued > 0 && wait > timeout {
            return refuse(
                Refusal::DeadlineUnmeetable,
                "deadline_unmeetable",
                format!(
                    "department `{}` would start this task in about {} ms, after its {} ms deadline; retry later or allow more time",
                    pool.name(),
                    wait.as_millis(),
                    timeout.as_millis()
                ),
                pool.retry_after_s(q.queued),
            );
        }
        Ok(Ticket {
            slot,
            pending: pool.begin_pending(tenant),
        })
    }
}

impl Admission {
    /// Reserves `estimate` tokens in `budgets`, or says why not.
    fn reserve(
        &self,
        pool: &Pool,
        budgets: Vec<(crate::tokens::Budget, String)>,
        estimate: u64,
    ) -> Result<crate::tokens::TokenHold, EngineError> {
        use swarm_sched::budget::Refused;
        match crate::tokens::reserve(budgets, estimate) {
            Ok(hold) => Ok(hold),
            Err((who, Refused::TooLarge { span, limit })) => {
                Err(swarm_core::FieldError::invalid(
                    "args",
                    format!(
                        "this task may cost about {estimate} tokens (its prompt and `max_tokens`), \
                         more than {who}'s whole {} of {limit}; lower `max_tokens` or shorten the prompt",
                        span.key()
                    ),
                )
                .into())
            }
            Err((
                who,
                Refused::Spent {
                    span,
                    limit,
                    remaining,
                    retry_after,
                },
            )) => {
                pool.count_refusal(Refusal::TokenBudget);
                Err(EngineError::QuotaExceeded {
                    code: "token_budget",
                    message: format!(
                        "{who} has {remaining} of its {limit} {} left, and this task may cost \
                         about {estimate} (its prompt and `max_tokens`); retry later",
                        span.key()
                    ),
                    retry_after_s: retry_after.as_secs_f64().ceil() as u64,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metrics;
    use swarm_core::config::PoolConfig;

    async fn store(dir: &std::path::Path) -> Store {
        let cfg = swarm_core::config::DatabaseConfig {
            url: format!("sqlite://{}", dir.join("a.db").display()),
            ..Default::default()
        };
        Store::connect(&cfg).await.unwrap()
    }

    #[tokio::test]
    async fn tasks_being_stored_count_against_the_queue_bound() {
        let dir = std::env::temp_dir().join(format!("swarmd-adm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pc = PoolConfig::default();
        pc.queue.capacity = 2;
        let pool = Pool::new(
            "p",
            &pc,
            &[],
            Arc::new(swarm_agents::echo::EchoAgent),
            Metrics::new(false, 1).pool("p"),
        );
        let adm = Admission::new(
            &Config::default(),
            Arc::new(TenantLedger::default()),
            Arc::default(),
            Arc::default(),
            store(&dir).await,
        );
        let t = Duration::from_secs(10);
        let a = adm
            .admit_at(&pool, "x", t, false, None)
            .map_err(|e| e.to_string())
            .expect("first");
        let _b = adm
            .admit_at(&pool, "x", t, false, None)
            .map_err(|e| e.to_string())
            .expect("second");
        // Nothing is in the queue yet, but two are on their way into it.
        match adm.admit_at(&pool, "x", t, false, None) {
            Err(EngineError::Overloaded { code, .. }) => assert_eq!(code, "queue_full"),
            Err(e) => panic!("expected queue_full, got {e}"),
            Ok(_) => panic!("expected queue_full, got a ticket"),
        }
        drop(a);
        assert!(
            adm.admit_at(&pool, "x", t, false, None).is_ok(),
            "a stored (or failed) task frees its place"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
