//! Deadlines and a bounded `join_all`.
//!
//! A [`Deadline`] is an optional point in `tokio::time`: a task either has
//! one (from its request, or inherited from its parent) or runs unbounded.
//! Nested calls combine deadlines with [`Deadline::earliest`], so a child can
//! never outlive its parent's budget (the gRPC deadline-propagation rule,
//! see "gRPC and Deadlines", grpc.io blog, 2018). [`within`] runs a future
//! under a deadline, and [`join_bounded`] runs many futures with at most
//! `limit` of them polled at once, so a fan-out (a department asking ten
//! reviewers) cannot by itself exhaust a downstream pool.
//!
//! Everything is based on `tokio::time::Instant`, so tests drive it with
//! paused time.
//!
//! ```
//! use std::time::Duration;
//! use swarm_sched::util::{join_bounded, within, Deadline, Elapsed};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let deadline = Deadline::after(Duration::from_secs(5));
//! assert_eq!(within(deadline, async { 1 + 1 }).await, Ok(2));
//! let late = within(Deadline::after(Duration::ZERO), std::future::pending::<()>()).await;
//! assert_eq!(late, Err(Elapsed));
//! let squares = join_bounded(2, (1..=4).map(|i| async move { i * i })).await;
//! assert_eq!(squares, [1, 4, 9, 16]);
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

/// An optional point in time by which work must finish.
///
/// ```
/// use std::time::Duration;
/// use swarm_sched::util::Deadline;
///
/// let parent = Deadline::after(Duration::from_secs(10));
/// let child = Deadline::after(Duration::from_secs(60)).earliest(parent);
/// assert_eq!(child, parent);
/// assert!(Deadline::none().remaining().is_none());
/// assert!(!child.is_expired());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: work may take as long as it takes.
    pub fn none() -> Self {
        Self(None)
    }

    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// A deadline `d` from now (saturating far in the future on overflow).
    pub fn after(d: Duration) -> Self {
        let now = Instant::now();
        // An absurd duration (e.g. u64::MAX seconds) means "effectively none".
        Self(Some(now.checked_add(d).unwrap_or_else(|| far_future(now))))
    }

    /// The instant, if any.
    pub fn instant(&self) -> Option<Instant> {
        self.0
    }

    /// Time left (zero once expired), or `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.0.map(|i| i.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed (never, without one).
    pub fn is_expired(&self) -> bool {
        self.0.is_some_and(|i| Instant::now() >= i)
    }

    /// The sooner of two deadlines; no deadline counts as infinitely late.
    pub fn earliest(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Self(Some(a.min(b))),
            (a, b) => Self(a.or(b)),
        }
    }
}

impl From<Option<Instant>> for Deadline {
    fn from(i: Option<Instant>) -> Self {
        Self(i)
    }
}

/// About 30 years ahead: what tokio itself uses for "never".
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365 * 30)
}

/// The deadline passed before the future finished.
///
/// ```
/// use swarm_sched::util::Elapsed;
/// assert_eq!(Elapsed.to_string(), "deadline elapsed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Awaits `fut`, giving up (and dropping it) at `deadline`; without a
/// deadline this is a plain `.await`.
///
/// ```
/// use std::time::Duration;
/// use swarm_sched::util::{within, Deadline};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(within(Deadline::none(), async { "done" }).await, Ok("done"));
/// # }
/// ```
pub async fn within<F: Future>(deadline: Deadline, fut: F) -> Result<F::Output, Elapsed> {
    match deadline.instant() {
        None => Ok(fut.await),
        Some(at) => tokio::time::timeout_at(at, fut).await.map_err(|_| Elapsed),
    }
}

/// Runs all `futs` with at most `limit` (at least 1) polled at once and
/// returns their outputs in input order.
///
/// A new future starts as soon as any running one finishes, so one slow
/// future does not hold back the rest (unlike chunking). Futures are
/// created lazily from the iterator, only when a slot is free.
///
/// ```
/// use swarm_sched::util::join_bounded;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let out = join_bounded(3, ["a", "b"].map(|s| async move { s.len() })).await;
/// assert_eq!(out, [1, 1]);
/// # }
/// ```
pub async fn join_bounded<I, F>(limit: usize, futs: I) -> Vec<F::Output>
where
    I: IntoIterator<Item = F>,
    F: Future,
{
    let limit = limit.max(1);
    let mut pending = futs.into_iter().enumerate();
    let mut running = FuturesUnordered::new();
    let mut out: Vec<Option<F::Output>> = Vec::new();
    let start = |(i, f): (usize, F)| async move { (i, f.await) };
    for item in pending.by_ref().take(limit) {
        running.push(start(item));
        out.push(None);
    }
    while let Some((i, value)) = running.next().await {
        out[i] = Some(value);
        if let Some(item) = pending.next() {
            running.push(start(item));
            out.push(None);
        }
    }
    out.into_iter()
        .map(|v| v.expect("every started future completed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::sleep;

    #[tokio::test(start_paused = true)]
    async fn deadline_basics() {
        let start = Instant::now();
        let d = Deadline::after(Duration::from_secs(2));
        assert_eq!(d.instant(), Some(start + Duration::from_secs(2)));
        assert_eq!(d.remaining(), Some(Duration::from_secs(2)));
        assert!(!d.is_expired());
        sleep(Duration::from_secs(2)).await;
        assert!(d.is_expired());
        assert_eq!(d.remaining(), Some(Duration::ZERO));
        assert!(!Deadline::none().is_expired());
        assert_eq!(Deadline::default(), Deadline::none());
        assert_eq!(Deadline::from(Some(start)), Deadline::at(start));
        // Overflowing durations do not panic.
        assert!(!Deadline::after(Duration::MAX).is_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_picks_the_sooner() {
        let now = Instant::now();
        let a = Deadline::at(now + Duration::from_secs(1));
        let b = Deadline::at(now + Duration::from_secs(5));
        assert_eq!(a.earliest(b), a);
        assert_eq!(b.earliest(a), a);
        assert_eq!(a.earliest(Deadline::none()), a);
        assert_eq!(Deadline::none().earliest(b), b);
        assert_eq!(
            Deadline::none().earliest(Deadline::none()),
            Deadline::none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn within_fires_at_the_deadline() {
        let start = Instant::now();
        let r = within(
            Deadline::after(Duration::from_millis(100)),
            sleep(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_millis(100));

        let start = Instant::now();
        let r = within(Deadline::after(Duration::from_secs(1)), async {
            sleep(Duration::from_millis(10)).await;
            7
        })
        .await;
        assert_eq!(r, Ok(7));
        assert_eq!(start.elapsed(), Duration::from_millis(10));

        // No deadline: just waits.
        let r = within(Deadline::none(), sleep(Duration::from_secs(3600))).await;
        assert_eq!(r, Ok(()));
        // An already-expired deadline still yields Elapsed, not a hang.
        let past = Deadline::at(Instant::now());
        assert_eq!(
            within(past, std::future::pending::<()>()).await,
            Err(Elapsed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn join_bounded_limits_concurrency_and_keeps_order() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let futs = (0..20u64).map(|i| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Reverse-ish durations so completion order differs from input order.
                sleep(Duration::from_millis(1 + (20 - i) * 3 % 7)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                i
            }
        });
        let out = join_bounded(3, futs).await;
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn join_bounded_edge_cases() {
        let none: Vec<std::future::Ready<u8>> = Vec::new();
        assert!(join_bounded(4, none).await.is_empty());
        // limit 0 is treated as 1 instead of hanging.
        let out = join_bounded(0, (0..3).map(std::future::ready)).await;
        assert_eq!(out, [0, 1, 2]);
        // A slow first future does not block later ones from starting.
        let start = Instant::now();
        let out = join_bounded(
            2,
            [100u64, 10, 10, 10].map(|ms| async move {
                sleep(Duration::from_millis(ms)).await;
                ms
            }),
        )
        .await;
        assert_eq!(out, [100, 10, 10, 10]);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
