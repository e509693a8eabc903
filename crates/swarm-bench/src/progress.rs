//! A one-line progress display on a terminal; silence otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::load::Live;

/// A running display; `finish` clears it.
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Progress {
    /// Shows `label` with live counts from `live` for about `expected`, when
    /// standard error is a terminal and `quiet` is false.
    pub fn start(quiet: bool, label: String, live: Arc<Live>, expected: Duration) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Self {
                stop: None,
                handle: None,
            };
        }
        let (tx, mut rx) = oneshot::channel();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (start, 0u64);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = &mut rx => break,
                }
                let now = Instant::now();
                let done = live.done.load(Ordering::Relaxed);
                let rate =
                    (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, done);
                let elapsed = now.duration_since(start).as_secs_f64();
                let total = expected.as_secs_f64().max(1e-3);
                let filled = ((elapsed / total).min(1.0) * 20.0) as usize;
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{label} [{}{}] {elapsed:.1}/{total:.1} s  {done} answered  {rate:.0}/s",
                    "#".repeat(filled),
                    ".".repeat(20 - filled)
                );
                let _ = err.flush();
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        });
        Self {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Removes the line.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}
