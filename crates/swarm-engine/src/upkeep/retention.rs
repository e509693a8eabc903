//! Deleting finished work past `[database] retention`, so the database stays
//! bounded while tasks flow.
//!
//! A pass deletes finished tasks and outbox messages older than the cutoff
//! in batches of [`BATCH`] rows, oldest first, each its own short
//! transaction in the writer's background lane (at most one per group
//! commit, behind the transitions of live work), pausing between batches,
//! so no lock is held for long and live work never waits behind a purge. A
//! pass stops after [`PASS_BATCHES`] batches; if it found more, the next
//! pass comes soon, else after a tenth of the retention (between one
//! second and a minute).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use swarm_core::clock::now_ms;
use swarm_core::config::Retention as Keep;
use swarm_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::status::RetentionStatus;

/// Rows per delete statement.
pub(crate) const BATCH: i64 = 500;

/// Batches per pass before the pass yields to the next.
const PASS_BATCHES: usize = 40;

/// The pause between two batches of one pass.
const PAUSE: Duration = Duration::from_millis(20);

/// What retention deleted, shared with `/api/status`.
#[derive(Debug, Default)]
pub(crate) struct RetentionStats {
    tasks: AtomicU64,
    outbox: AtomicU64,
    passes: AtomicU64,
    /// Epoch ms of the last pass (0: none yet).
    last_pass_at: AtomicI64,
}

impl RetentionStats {
    pub(crate) fn status(&self, keep: Keep) -> RetentionStatus {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RetentionStatus {
            keep_s: keep.get().map(|d| d.as_secs()),
            deleted_tasks: get(&self.tasks),
            deleted_outbox: get(&self.outbox),
            passes: get(&self.passes),
            last_pass_at: self.last_pass_at.load(Ordering::Relaxed),
        }
    }
}

/// The retention loop.
pub(crate) struct Retention {
    pub(crate) store: Store,
    pub(crate) keep: Keep,
    pub(crate) stats: Arc<RetentionStats>,
    pub(crate) stop: CancellationToken,
}

impl Retention {
    pub(crate) async fn run(self) {
        let Some(keep) = self.keep.get() else {
            return;
        };
        let idle = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut wait = Duration::from_secs(1).min(idle);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
            if !self.store.health().is_up() {
                wait = idle;
                continue;
            }
            let more = self.pass(now_ms() - keep.as_millis() as i64).await;
            wait = if more { PAUSE } else { idle };
        }
    }

    /// One pass; true if it stopped with rows left to delete.
    async fn pass(&self, before: i64) -> bool {
        let (mut tasks, mut outbox) = (0, 0);
        let mut more = false;
        for i in 0..PASS_BATCHES {
            if i > 0 {
                tokio::time::sleep(PAUSE).await;
            }
            match self.store.prune(before, BATCH).await {
                Ok(p) => {
                    tasks += p.tasks;
                    outbox += p.outbox;
                    more = p.tasks == BATCH as u64 || p.outbox == BATCH as u64;
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "retention batch failed; tried again next pass");
                    more = false;
                    break;
                }
            }
        }
        self.stats.tasks.fetch_add(tasks, Ordering::Relaxed);
        self.stats.outbox.fetch_add(outbox, Ordering::Relaxed);
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        self.stats.last_pass_at.store(now_ms(), Ordering::Relaxed);
        if tasks + outbox > 0 {
            debug!(
                tasks,
                outbox, "retention: deleted finished work past [database] retention"
            );
        }
        more
    }
}
