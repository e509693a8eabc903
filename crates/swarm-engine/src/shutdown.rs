//! The phases of stopping, as tokens every part of the engine can watch.
//!
//! 1. **Draining** ([`Shutdown::begin`]): no new submissions, no new starts
//!    of stored tasks (children still start, so running parents can end).
//! 2. **Grace over** ([`Shutdown::end_runs`]): running tasks are cut and
//!    handed back to the queue in the store.
//! 3. **Stopped** ([`Shutdown::stop`]): transitions waiting for the database
//!    give up; what they could not store stays unfinished in the store and
//!    is run again at the next start (or by another node).

use futures_util::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The engine's stop signals and the tracker of its runs; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    /// Fired when shutdown begins.
    draining: CancellationToken,
    /// Fired when the grace period ends.
    runs_over: CancellationToken,
    /// Fired when the engine stops for good.
    stopped: CancellationToken,
    /// Every run and every transition spawned off a dispatcher.
    runs: TaskTracker,
}

impl Shutdown {
    pub(crate) fn begin(&self) {
        self.draining.cancel();
        self.runs.close();
    }

    pub(crate) fn end_runs(&self) {
        self.runs_over.cancel();
    }

    pub(crate) fn stop(&self) {
        self.stopped.cancel();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub(crate) fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Fires when the grace period ends; runs hand their tasks back.
    pub(crate) fn runs_over(&self) -> &CancellationToken {
        &self.runs_over
    }

    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.stopped
    }

    /// Spawns a run (or a transition) that shutdown waits for.
    pub(crate) fn spawn_run<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runs.spawn(f);
    }

    /// Waits for every run spawned so far (after [`Shutdown::begin`], for
    /// all of them).
    pub(crate) async fn runs_done(&self) {
        self.runs.wait().await
    }
}
