//! Whether the database takes writes now, as the writer last found it.
//!
//! The group-commit writer is the judge: a batch that keeps failing for a
//! transient reason (see [`crate::error`]) marks the database down, and
//! while it is down the writer commits a small probe transaction every
//! [`PROBE_EVERY`] until one succeeds, which marks it up again. So "up"
//! means "a write commits", on both backends (a read-only SQLite file still
//! answers reads).
//!
//! Callers use it three ways: submissions are refused at once while the
//! database is down instead of each waiting out the pool's acquire timeout;
//! transitions that must be stored wait for [`Health::wait_up`] between
//! retries instead of spinning; `/ready` reports it. The outage is logged
//! once when it starts and once when it ends, never per task.
//!
//! A database can flap: with its disk full, SQLite still commits the tiny
//! probe in a page's slack while a real batch fails again a moment later.
//! A failure within [`FLAP_WINDOW`] of recovering continues the outage it
//! followed (one outage in the count, one ERROR line; each relapse is a
//! WARN), so a flapping database reads as one incident, not many.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// How often the writer probes a database it found down.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// A failure this soon after recovering continues the same outage.
pub(crate) const FLAP_WINDOW: Duration = Duration::from_secs(5);

/// The database's availability; cheap to clone.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `true` while writes commit.
    up: watch::Sender<bool>,
    /// The outage now and the last recovery.
    state: Mutex<State>,
    /// Outages since start.
    outages: AtomicU64,
    /// Their total length, ms.
    down_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// When the current spell of failing writes began and why, while down.
    outage: Option<(Instant, String)>,
    /// When writes last came back, to tell a relapse from a new outage.
    recovered_at: Option<Instant>,
}

/// Availability as `/api/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct HealthSnapshot {
    /// Whether writes commit now.
    pub available: bool,
    /// How long the current outage has lasted, ms (0 while available).
    pub down_for_ms: u64,
    /// Why the current outage began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Outages since start.
    pub outages: u64,
    /// Their total length, ms, the current one included.
    pub down_ms_total: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A database believed up.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                up: watch::Sender::new(true),
                state: Mutex::new(State::default()),
                outages: AtomicU64::new(0),
                down_ms: AtomicU64::new(0),
            }),
        }
    }

    /// Whether writes commit now.
    pub fn is_up(&self) -> bool {
        *self.inner.up.borrow()
    }

    /// Returns once the database takes writes (at once if it does now).
    pub async fn wait_up(&self) {
        let mut rx = self.inner.up.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Records that writes fail for `reason`; logs only when this starts an
    /// outage (or, as a WARN, resumes one that ended moments ago).
    pub(crate) fn down(&self, reason: &str) {
        let mut st = self.lock();
        if st.outage.is_some() {
            return;
        }
        let now = Instant::now();
        st.outage = Some((now, reason.to_string()));
        self.inner.up.send_replace(false);
        let relapse = st
            .recovered_at
            .is_some_and(|at| now.duration_since(at) < FLAP_WINDOW);
        if relapse {
            warn!(reason, "database failing again right after it came back");
        } else {
            self.inner.outages.fetch_add(1, Ordering::Relaxed);
            error!(
                reason,
                "database unavailable: submissions get 503 and outcomes are kept until it answers"
            );
        }
    }

    /// Records that a write committed; logs when this ends an outage.
    pub(crate) fn up(&self) {
        let mut st = self.lock();
        if let Some((since, reason)) = st.outage.take() {
            let ms = since.elapsed().as_millis() as u64;
            self.inner.down_ms.fetch_add(ms, Ordering::Relaxed);
            st.recovered_at = Some(Instant::now());
            self.inner.up.send_replace(true);
            info!(down_ms = ms, after = %reason, "database reachable again");
        }
    }

    /// The figures for `/api/status`.
    pub fn snapshot(&self) -> HealthSnapshot {
        let st = self.lock();
        let outage = &st.outage;
        let current = outage
            .as_ref()
            .map_or(0, |(since, _)| since.elapsed().as_millis() as u64);
        HealthSnapshot {
            available: outage.is_none(),
            down_for_ms: current,
            reason: outage.as_ref().map(|(_, r)| r.clone()),
            outages: self.inner.outages.load(Ordering::Relaxed),
            down_ms_total: self.inner.down_ms.load(Ordering::Relaxed) + current,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No code that can panic runs under the lock: a poisoned lock still
        // holds a consistent value.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_counted_once_and_wakes_waiters_when_it_ends() {
        let h = Health::new();
        assert!(h.is_up());
        h.wait_up().await;
        h.down("connection refused");
        h.down("pool timed out");
        assert!(!h.is_up());
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.wait_up().await }
        });
        tokio::time::advance(Duration::from_secs(3)).await;
        let s = h.snapshot();
        assert_eq!((s.available, s.outages), (false, 1));
        assert_eq!(s.reason.as_deref(), Some("connection refused"));
        assert_eq!(s.down_for_ms, 3000);
        assert!(!waiter.is_finished());
        h.up();
        waiter.await.unwrap();
        let s = h.snapshot();
        assert_eq!(
            (s.available, s.down_for_ms, s.down_ms_total),
            (true, 0, 3000)
        );
        h.up();
        assert_eq!(
            h.snapshot().outages,
            1,
            "an up without an outage is no event"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_relapse_soon_after_recovery_is_the_same_outage() {
        let h = Health::new();
        h.down("disk full");
        tokio::time::advance(Duration::from_millis(250)).await;
        h.up();
        tokio::time::advance(FLAP_WINDOW - Duration::from_millis(1)).await;
        h.down("disk full");
        assert!(!h.is_up(), "a relapse is still down");
        tokio::time::advance(Duration::from_millis(750)).await;
        h.up();
        let s = h.snapshot();
        assert_eq!((s.outages, s.down_ms_total), (1, 1000));
        tokio::time::advance(FLAP_WINDOW).await;
        h.down("connection refused");
        assert_eq!(h.snapshot().outages, 2, "after the window it is new");
    }
}
