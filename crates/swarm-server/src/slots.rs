//! Per-tenant caps on long-lived requests: event streams
//! (`server.max_streams_per_tenant`) and `wait_ms` waiters
//! (`server.max_waiters_per_tenant`).
//!
//! Each holds a connection for as long as its task runs, so without a cap
//! one tenant could hold every connection the server has
//! (`server.max_connections`). A request beyond its tenant's cap is
//! answered `429` with `Retry-After` before it does anything (a refused
//! waiter's task is not submitted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;

/// The slots of one kind of long-lived request, per tenant.
#[derive(Debug)]
pub struct TenantSlots {
    code: &'static str,
    what: &'static str,
    setting: &'static str,
    max: usize,
    held: Mutex<HashMap<String, usize>>,
    refused: AtomicU64,
}

/// What `/api/status` shows of one [`TenantSlots`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SlotCounts {
    /// Held now, all tenants.
    pub open: usize,
    /// The per-tenant cap.
    pub per_tenant_max: usize,
    /// Requests refused for the cap since start.
    pub refused: u64,
}

impl TenantSlots {
    /// Slots for event streams.
    pub fn streams(max: usize) -> Arc<Self> {
        Self::new(
            "too_many_streams",
            "event streams",
            "server.max_streams_per_tenant",
            max,
        )
    }

    /// Slots for `wait_ms` waiters.
    pub fn waiters(max: usize) -> Arc<Self> {
        Self::new(
            "too_many_waiters",
            "waiting requests",
            "server.max_waiters_per_tenant",
            max,
        )
    }

    fn new(code: &'static str, what: &'static str, setting: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            code,
            what,
            setting,
            max,
            held: Mutex::default(),
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `tenant`, or `429` when it holds its cap already.
    pub fn take(self: &Arc<Self>, tenant: &str) -> Result<Slot, ApiError> {
        let mut held = self.lock();
        let n = held.get(tenant).copied().unwrap_or(0);
        if n >= self.max {
            drop(held);
            self.refused.fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                self.code,
                format!(
                    "this tenant has {n} {} open, its limit ({}); close one or retry later",
                    self.what, self.setting
                ),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        held.insert(tenant.to_string(), n + 1);
        Ok(Slot {
            slots: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Held by `tenant` now.
    pub fn held_by(&self, tenant: &str) -> usize {
        self.lock().get(tenant).copied().unwrap_or(0)
    }

    /// The counters now.
    pub fn counts(&self) -> SlotCounts {
        SlotCounts {
            open: self.lock().values().sum(),
            per_tenant_max: self.max,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// One held slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<TenantSlots>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(n) = held.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_capped_alone_and_slots_come_back() {
        let s = TenantSlots::streams(2);
        let a1 = s.take("a").unwrap();
        let _a2 = s.take("a").unwrap();
        let e = s.take("a").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "too_many_streams");
        assert_eq!(e.retry_after_s, Some(1));
        // Another tenant is not affected.
        let _b = s.take("b").unwrap();
        drop(a1);
        assert_eq!(s.held_by("a"), 1);
        let _a3 = s.take("a").unwrap();
        let c = s.counts();
        assert_eq!((c.open, c.per_tenant_max, c.refused), (3, 2, 1));
    }
}
