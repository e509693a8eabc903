//! Token budgets of tenants (`[[tenants]] tokens_per_minute`,
//! `tokens_per_day`) and departments (`[pools.NAME] …`) on this node.
//!
//! The arithmetic (sliding windows, reservations) is
//! [`swarm_sched::budget`]'s. Here is who charges what, when:
//! - admission reserves a task's estimate ([`swarm_agents::Agent::token_estimate`])
//!   in its department's and its tenant's budget, all or none, and the
//!   reservation rides in the task's [`TokenHold`] until the task ends or
//!   leaves the node (dropping it gives the reservation back);
//! - every attempt that ran spends what the provider reported
//!   ([`swarm_agents::reported_tokens`]), or the estimate when it reported
//!   nothing, into both budgets, on the node that ran it;
//! - while a department's spend fills a window, its starts pause
//!   ([`swarm_core::Blocker::TokenBudget`]) until the window has room.
//!
//! Delayed tasks and tasks taken from other nodes hold no reservation:
//! they are charged what they spend when they run. On a cluster each node
//! publishes what it holds of every budget with its tenant counts, and
//! adds what the others published (`upkeep::peers`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use swarm_core::config::TenantConfig;
use swarm_sched::budget::{BudgetStatus, Limits, Refused, TokenBudget, Usage};
use tokio::time::Instant;

/// One budget, shared by the admissions and runs that charge it.
pub(crate) type Budget = Arc<Mutex<TokenBudget>>;

fn lock(b: &Budget) -> MutexGuard<'_, TokenBudget> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// A budget with these limits, if either is set.
pub(crate) fn budget(per_minute: Option<u64>, per_day: Option<u64>) -> Option<Budget> {
    let limits = Limits {
        per_minute,
        per_day,
    };
    limits
        .any()
        .then(|| Arc::new(Mutex::new(TokenBudget::new(limits))))
}

/// Spends `tokens` now in each budget.
pub(crate) fn spend<'a>(budgets: impl IntoIterator<Item = &'a Budget>, tokens: u64) {
    let now = Instant::now();
    for b in budgets {
        lock(b).spend(now, tokens);
    }
}

/// Until when a spent budget holds starts, if it does.
pub(crate) fn spent_until(b: &Budget) -> Option<Instant> {
    lock(b).spent_until(Instant::now())
}

/// A budget's figures now.
pub(crate) fn status(b: &Budget) -> BudgetStatus {
    lock(b).status(Instant::now())
}

/// What this node holds of `b`, to publish.
pub(crate) fn local(b: &Budget) -> Usage {
    lock(b).local(Instant::now())
}

/// What the other nodes hold of `b`.
pub(crate) fn set_elsewhere(b: &Budget, u: Usage) {
    lock(b).set_elsewhere(u);
}

/// A task's reservation in its budgets; given back when dropped, so every
/// path out of the node (finish, cancel, claim by another node, a refusal
/// later in admission, a replayed idempotent submission) releases it.
#[derive(Debug)]
pub(crate) struct TokenHold {
    budgets: Vec<Budget>,
    tokens: u64,
}

impl Drop for TokenHold {
    fn drop(&mut self) {
        for b in &self.budgets {
            lock(b).release(self.tokens);
        }
    }
}

/// Reserves `tokens` in every one of `budgets` (named by `who` in a
/// refusal), or in none of them.
pub(crate) fn reserve(
    budgets: Vec<(Budget, String)>,
    tokens: u64,
) -> Result<TokenHold, (String, Refused)> {
    let now = Instant::now();
    let mut hold = TokenHold {
        budgets: Vec::with_capacity(budgets.len()),
        tokens,
    };
    for (b, who) in budgets {
        if let Err(r) = lock(&b).try_reserve(now, tokens) {
            // `hold` gives back what it took so far.
            return Err((who, r));
        }
        hold.budgets.push(b);
    }
    Ok(hold)
}

/// The tenants' budgets, from `[[tenants]]`.
#[derive(Debug, Default)]
pub(crate) struct TenantBudgets {
    by_tenant: RwLock<HashMap<String, Budget>>,
}

impl TenantBudgets {
    pub(crate) fn new(tenants: &[TenantConfig]) -> Self {
        let me = Self::default();
        me.reload(tenants);
        me
    }

    /// Takes a reloaded `[[tenants]]`: a tenant keeps what it spent and
    /// reserved under new limits; one whose limits are gone has none.
    pub(crate) fn reload(&self, tenants: &[TenantConfig]) {
        let mut m = self.by_tenant.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for t in tenants {
            let limits = Limits {
                per_minute: t.tokens_per_minute,
                per_day: t.tokens_per_day,
            };
            if !limits.any() {
                continue;
            }
            let b = match m.remove(&t.name) {
                Some(b) => {
                    lock(&b).set_limits(limits);
                    b
                }
                None => Arc::new(Mutex::new(TokenBudget::new(limits))),
            };
            next.insert(t.name.clone(), b);
        }
        *m = next;
    }

    /// Whether a run of `tenant` under a department budget `pool` (if
    /// any) is charged to a budget at all.
    pub(crate) fn charges(&self, pool: Option<&Budget>, tenant: &str) -> bool {
        pool.is_some()
            || self
                .by_tenant
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(tenant)
    }

    /// `tenant`'s budget, if it has one.
    pub(crate) fn get(&self, tenant: &str) -> Option<Budget> {
        self.by_tenant
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Every tenant's budget, by name.
    pub(crate) fn all(&self) -> BTreeMap<String, Budget> {
        self.by_tenant
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
