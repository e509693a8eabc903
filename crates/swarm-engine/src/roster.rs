//! The configured tenants as they are now (`[[tenants]]`: keys, roles,
//! weights, quotas), which a reload replaces while the engine runs.
//!
//! [`Engine::config`](crate::Engine::config) stays the configuration the
//! engine started with; [`Engine::tenants`](crate::Engine::tenants) is the
//! current roster (a reload replaces it: `instances.rs`). The HTTP edge builds its key
//! table from the roster and rebuilds it whenever the roster's
//! [`Tenants::generation`] moves, so a key removed from the file stops
//! working at the reload that removes it. The engine's own uses of the
//! roster (admission quotas, each pool's fair-queue weights) are replaced
//! in the same reload.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use swarm_core::config::TenantConfig;

/// One generation of the roster.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenants {
    /// Starts at 0 and grows by one at each reload that changes the roster.
    pub generation: u64,
    /// The `[[tenants]]` entries.
    pub list: Vec<TenantConfig>,
}

/// What a reload changed in `[[tenants]]`, by tenant name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TenantChanges {
    /// Tenants with no entry before.
    pub added: Vec<String>,
    /// Tenants with no entry now: their keys answer 401.
    pub removed: Vec<String>,
    /// Tenants whose keys, role, weight or quota changed.
    pub changed: Vec<String>,
}

impl TenantChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Compares two rosters by name; a tenant may hold several keys, and
    /// any difference in its entries (their order aside) is a change.
    fn between(old: &[TenantConfig], new: &[TenantConfig]) -> Self {
        let names =
            |l: &[TenantConfig]| -> BTreeSet<String> { l.iter().map(|t| t.name.clone()).collect() };
        let entries = |l: &[TenantConfig], name: &str| -> Vec<String> {
            let mut v: Vec<String> = l
                .iter()
                .filter(|t| t.name == name)
                .map(|t| {
                    let key = t.key_sha256.to_ascii_lowercase();
                    format!("{:?} {key} {} {:?}", t.role, t.weight, t.max_outstanding)
                })
                .collect();
            v.sort();
            v
        };
        let (before, after) = (names(old), names(new));
        Self {
            added: after.difference(&before).cloned().collect(),
            removed: before.difference(&after).cloned().collect(),
            changed: before
                .intersection(&after)
                .filter(|n| entries(old, n) != entries(new, n))
                .cloned()
                .collect(),
        }
    }
}

/// The roster behind a lock; readers take a cheap `Arc`.
#[derive(Debug)]
pub(crate) struct Roster(RwLock<Arc<Tenants>>);

impl Roster {
    pub(crate) fn new(list: Vec<TenantConfig>) -> Self {
        Self(RwLock::new(Arc::new(Tenants {
            generation: 0,
            list,
        })))
    }

    pub(crate) fn get(&self) -> Arc<Tenants> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the list if it differs; returns what changed.
    pub(crate) fn replace(&self, list: &[TenantConfig]) -> TenantChanges {
        let mut cur = self.0.write().unwrap_or_else(|p| p.into_inner());
        let changes = TenantChanges::between(&cur.list, list);
        if !changes.is_empty() {
            *cur = Arc::new(Tenants {
                generation: cur.generation + 1,
                list: list.to_vec(),
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::config::Role;

    fn t(name: &str, key: char, weight: u32) -> TenantConfig {
        TenantConfig {
            name: name.into(),
            role: Role::Client,
            key_sha256: key.to_string().repeat(64),
            weight,
            max_outstanding: None,
            tokens_per_minute: None,
            tokens_per_day: None,
        }
    }

    #[test]
    fn changes_are_named_by_tenant() {
        let old = [t("a", 'a', 1), t("b", 'b', 1), t("c", 'c', 1)];
        let new = [t("b", 'b', 2), t("c", 'C', 1), t("d", 'd', 1)];
        let c = TenantChanges::between(&old, &new);
        assert_eq!(c.added, ["d"]);
        assert_eq!(c.removed, ["a"]);
        // A weight changed; a key's case is no change.
        assert_eq!(c.changed, ["b"]);
        assert!(TenantChanges::between(&old, &old).is_empty());
    }

    #[test]
    fn a_generation_moves_only_with_a_change() {
        let r = Roster::new(vec![t("a", 'a', 1)]);
        assert!(r.replace(&[t("a", 'a', 1)]).is_empty());
        assert_eq!(r.get().generation, 0);
        assert_eq!(r.replace(&[]).removed, ["a"]);
        assert_eq!(r.get().generation, 1);
        assert!(r.get().list.is_empty());
    }
}
