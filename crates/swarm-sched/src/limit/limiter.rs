//! The shrinkable FIFO semaphore that enforces a [`Law`]'s limit.
//!
//! One mutex guards the law, the counts and the waiter list, so a release,
//! a limit change and the grants they allow happen atomically. Waiters get
//! their [`Permit`] through a oneshot channel: a grant sent to a waiter that
//! has just been cancelled is dropped with the channel, and that drop
//! releases it, so cancellation never loses a permit.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::config::{Algorithm, LimitConfig};
use super::law::Law;
use super::sample::Sample;

/// An adaptive concurrency limiter: a semaphore whose size a control law
/// moves, under an optional external cap. Cloning shares it.
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: LimitConfig,
    state: Mutex<State>,
}

struct State {
    law: Law,
    cap: Option<usize>,
    /// This node's part of a limit shared with other nodes; unlike `cap` it
    /// may be 0 (the other nodes hold every permit).
    share: Option<usize>,
    in_flight: usize,
    waiters: VecDeque<Waiter>,
    next_id: u64,
    /// The releases at the latest instant that saw a grant or a release.
    burst: Arc<Burst>,
}

/// Releases at one instant. Completions often come in bursts (one timer
/// tick, one batch of responses) and are processed one by one, so a permit
/// granted by the first release of a burst counts, in its
/// `in_flight_at_start`, the calls the rest of the burst is about to
/// release: calls that never ran beside it. Each permit notes how many
/// releases its instant had seen when it was granted; the releases after
/// that are subtracted from the concurrency it reports to the law, or a
/// burst of 50 completions inflates every Little's-law estimate made from
/// the calls it starts by up to 50.
struct Burst {
    at: Instant,
    ends: AtomicUsize,
}

impl Burst {
    fn new(at: Instant) -> Arc<Self> {
        Arc::new(Self {
            at,
            ends: AtomicUsize::new(0),
        })
    }
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Permit>,
}

impl State {
    /// The burst of `now`, starting a new one if the instant moved on.
    fn burst_at(&mut self, now: Instant) -> Arc<Burst> {
        if self.burst.at != now {
            self.burst = Burst::new(now);
        }
        Arc::clone(&self.burst)
    }

    fn limit(&self) -> usize {
        let l = self.law.limit();
        let l = self.cap.map_or(l, |c| l.min(c));
        self.share.map_or(l, |s| l.min(s))
    }
}

/// A point-in-time view of a [`Limiter`] for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimiterSnapshot {
    /// The control law.
    pub algorithm: Algorithm,
    /// Effective limit: the law's limit under the cap.
    pub limit: usize,
    /// External ceiling, if any.
    pub cap: Option<usize>,
    /// Permits held now.
    pub in_flight: usize,
    /// Callers waiting for a permit.
    pub waiting: usize,
    /// Windowed minimum RTT (the no-load baseline), µs; 0 before any sample.
    pub min_rtt_us: u64,
    /// Recent (smoothed) RTT, µs; 0 before any sample.
    pub rtt_us: u64,
    /// Samples recorded (successes and drops).
    pub samples: u64,
    /// Drops recorded.
    pub drops: u64,
    /// Whether the law is in slow start.
    pub slow_start: bool,
}

impl Limiter {
    /// A limiter following `cfg`. Expects `cfg.validate()` to have passed,
    /// but clamps anything out of range instead of panicking.
    pub fn new(cfg: LimitConfig) -> Self {
        let law = Law::new(&cfg, Instant::now());
        Self {
            shared: Arc::new(Shared {
                cfg,
                state: Mutex::new(State {
                    law,
                    cap: None,
                    share: None,
                    in_flight: 0,
                    waiters: VecDeque::new(),
                    next_id: 0,
                    burst: Burst::new(Instant::now()),
                }),
            }),
        }
    }

    /// Waits for a permit, first come first served.
    ///
    /// Cancel-safe: dropping the future gives up its place, and a permit
    /// granted at that very moment is released, not lost.
    pub async fn acquire(&self) -> Permit {
        loop {
            let (id, rx) = {
                let mut st = self.shared.lock();
                if st.waiters.is_empty() && st.in_flight < st.limit() {
                    return self.shared.grant(&mut st);
                }
                let (tx, rx) = oneshot::channel();
                let id = st.next_id;
                st.next_id += 1;
                st.waiters.push_back(Waiter { id, tx });
                (id, rx)
            };
            let guard = WaitGuard {
                shared: &self.shared,
                id,
            };
            let got = rx.await;
            drop(guard);
            match got {
                Ok(p) => return p,
                // Only reachable if the waiter was removed without a grant,
                // which nothing does; queue again rather than panic.
                Err(_) => continue,
            }
        }
    }

    /// A permit if one is free now and nobody is queued ahead.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut st = self.shared.lock();
        (st.waiters.is_empty() && st.in_flight < st.limit()).then(|| self.shared.grant(&mut st))
    }

    /// The effective limit: the law's limit under the cap.
    pub fn limit(&self) -> usize {
        self.shared.lock().limit()
    }

    /// Permits held now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Callers waiting in [`acquire`](Self::acquire).
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiters.len()
    }

    /// Sets an external ceiling (a resource governor's); `None` removes it.
    ///
    /// Takes effect at once. Lowering it revokes nothing: new grants stop
    /// until in-flight work falls below it. A cap of 0 is taken as 1, so
    /// work always drains.
    pub fn set_cap(&self, cap: Option<usize>) {
        let mut st = self.shared.lock();
        st.cap = cap.map(|c| c.max(1));
        self.shared.wake(&mut st);
    }

    /// Sets this limiter's part of a limit shared with other processes (a
    /// cluster-wide limit leased from a database); `None` removes it.
    ///
    /// Unlike [`set_cap`](Self::set_cap) a share may be 0: when the other
    /// holders have every permit this one must start nothing. Lowering it
    /// revokes nothing; new grants stop until in-flight work falls below it.
    pub fn set_share(&self, share: Option<usize>) {
        let mut st = self.shared.lock();
        st.share = share;
        self.shared.wake(&mut st);
    }

    /// The law's own limit, under the cap but before any share: what this
    /// limiter would run alone.
    pub fn own_limit(&self) -> usize {
        let st = self.shared.lock();
        let l = st.law.limit();
        st.cap.map_or(l, |c| l.min(c))
    }

    /// A point-in-time view.
    pub fn snapshot(&self) -> LimiterSnapshot {
        let st = self.shared.lock();
        let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros().min(u64::MAX as u128) as u64);
        LimiterSnapshot {
            algorithm: st.law.algorithm(),
            limit: st.limit(),
            cap: st.cap,
            in_flight: st.in_flight,
            waiting: st.waiters.len(),
            min_rtt_us: us(st.law.min_rtt()),
            rtt_us: us(st.law.rtt()),
            samples: st.law.samples(),
            drops: st.law.drops(),
            slow_start: st.law.in_slow_start(),
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &LimitConfig {
        &self.shared.cfg
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Limiter").field(&self.snapshot()).finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something ever does,
        // the counts are still consistent, so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn grant(self: &Arc<Self>, st: &mut State) -> Permit {
        st.in_flight += 1;
        let now = Instant::now();
        let burst = st.burst_at(now);
        Permit {
            shared: Some(Arc::clone(self)),
            in_flight_at_start: st.in_flight,
            started: now,
            // Under the lock, so Relaxed suffices.
            ends_at_grant: burst.ends.load(Ordering::Relaxed),
            burst,
        }
    }

    /// Grants to waiters, oldest first, while the limit allows.
    fn wake(self: &Arc<Self>, st: &mut State) {
        while st.in_flight < st.limit() {
            let Some(w) = st.waiters.pop_front() else {
                break;
            };
            let permit = self.grant(st);
            if let Err(mut p) = w.tx.send(permit) {
                // The waiter is gone: undo by hand, because dropping the
                // permit here would take this lock again.
                p.shared = None;
                st.in_flight -= 1;
            }
        }
    }

    fn release(self: &Arc<Self>, p: &Permit, sample: Option<Sample>) {
        let mut st = self.lock();
        let now = Instant::now();
        // Releases at the permit's instant after its grant (its own
        // included, if it ended there too): calls it never ran beside.
        let gone = p.burst.ends.load(Ordering::Relaxed) - p.ends_at_grant;
        let met = p.in_flight_at_start.saturating_sub(gone).max(1);
        st.burst_at(now).ends.fetch_add(1, Ordering::Relaxed);
        let at_end = st.in_flight;
        st.in_flight = st.in_flight.saturating_sub(1);
        if let Some(s) = sample {
            st.law.on_sample(now, p.started, met, at_end, s);
        }
        self.wake(&mut st);
    }
}

/// Removes a cancelled waiter from the queue.
struct WaitGuard<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(i) = st.waiters.iter().position(|w| w.id == self.id) {
            st.waiters.remove(i);
        }
    }
}

/// The right to run one call. Release it with [`record`](Self::record); a
/// plain drop (any path, panics included) releases without a sample.
pub struct Permit {
    shared: Option<Arc<Shared>>,
    in_flight_at_start: usize,
    started: Instant,
    /// The releases at `started` (see [`Burst`]), and how many it had seen
    /// at the grant.
    burst: Arc<Burst>,
    ends_at_grant: usize,
}

impl Permit {
    /// Feeds `sample` to the control law and releases the permit.
    pub fn record(mut self, sample: Sample) {
        if let Some(s) = self.shared.take() {
            s.release(&self, Some(sample));
        }
    }

    /// Permits in flight when this one was granted, itself included.
    pub fn in_flight_at_start(&self) -> usize {
        self.in_flight_at_start
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.release(self, None);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("in_flight_at_start", &self.in_flight_at_start)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn fixed(n: usize) -> Limiter {
        Limiter::new(LimitConfig::fixed(n))
    }

    /// Polls `fut` once without a runtime.
    fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_and_release() {
        let l = fixed(2);
        let a = l.acquire().await;
        let b = l.try_acquire().expect("second permit");
        assert_eq!((a.in_flight_at_start(), b.in_flight_at_start()), (1, 2));
        assert_eq!(l.in_flight(), 2);
        assert!(l.try_acquire().is_none());
        drop(a);
        assert_eq!(l.in_flight(), 1);
        b.record(Sample::success(Duration::from_millis(5)));
        assert_eq!(l.in_flight(), 0);
        let snap = l.snapshot();
        // The baseline waits for a few samples; the recent RTT does not.
        assert_eq!(
            (snap.samples, snap.limit, snap.min_rtt_us, snap.rtt_us),
            (1, 2, 0, 5000)
        );
        for _ in 0..9 {
            l.acquire()
                .await
                .record(Sample::success(Duration::from_millis(5)));
        }
        assert_eq!(l.snapshot().min_rtt_us, 5000);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order() {
        let l = fixed(1);
        let held = l.acquire().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = l.acquire().await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(p);
            }));
            // Let each task queue before the next one is spawned.
            tokio::task::yield_now().await;
        }
        assert_eq!(l.waiting(), 5);
        // A newcomer does not barge ahead of the queue.
        drop(held);
        assert!(l.try_acquire().is_none());
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!((l.in_flight(), l.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_acquire_loses_no_permit() {
        let l = fixed(1);
        let held = l.acquire().await;
        {
            let mut fut = pin!(l.acquire());
            assert!(poll_once(fut.as_mut()).is_pending());
            assert_eq!(l.waiting(), 1);
        }
        assert_eq!(l.waiting(), 0);
        // Granted and then cancelled before it was polled again.
        {
            let mut fut = pin!(l.acquire());
            assert!(poll_once(fut.as_mut()).is_pending());
            drop(held);
            assert_eq!((l.in_flight(), l.waiting()), (1, 0));
        }
        assert_eq!(l.in_flight(), 0);
        let p = l.try_acquire().expect("the permit came back");
        drop(p);
        // With tokio's timeout, the usual way to cancel.
        let held = l.acquire().await;
        let r = tokio::time::timeout(Duration::from_millis(10), l.acquire()).await;
        assert!(r.is_err());
        drop(held);
        assert_eq!((l.in_flight(), l.waiting()), (0, 0));
        assert!(l.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_zero_grants_nothing_until_raised() {
        let l = fixed(4);
        l.set_share(Some(0));
        assert_eq!((l.limit(), l.own_limit()), (0, 4));
        assert!(l.try_acquire().is_none(), "a zero share starts nothing");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::task::yield_now().await;
        assert_eq!((l.in_flight(), l.waiting()), (0, 1));
        l.set_share(Some(1));
        let p = waiter.await.unwrap();
        assert_eq!(l.in_flight(), 1);
        assert!(
            l.try_acquire().is_none(),
            "the share, not the law, bounds it"
        );
        l.set_share(None);
        assert!(l.try_acquire().is_some());
        drop(p);
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_stops_grants_until_below_the_limit() {
        let l = fixed(4);
        let mut held: Vec<_> = (0..4).map(|_| l.try_acquire().unwrap()).collect();
        l.set_cap(Some(2));
        assert_eq!(l.limit(), 2);
        assert_eq!(l.in_flight(), 4, "held permits are not revoked");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::task::yield_now().await;
        held.pop();
        held.pop();
        tokio::task::yield_now().await;
        assert_eq!(
            (l.in_flight(), l.waiting()),
            (2, 1),
            "at the cap: still no grant"
        );
        held.pop();
        let p = waiter.await.unwrap();
        assert_eq!(l.in_flight(), 2);
        drop((p, held));
        assert_eq!(l.snapshot().cap, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn growing_wakes_waiters_at_once() {
        let l = fixed(4);
        l.set_cap(Some(1));
        let _held = l.acquire().await;
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(l.waiting(), 3);
        l.set_cap(None);
        assert_eq!((l.in_flight(), l.waiting(), l.limit()), (4, 0, 4));
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(l.in_flight(), 1);
        l.set_cap(Some(0));
        assert_eq!(l.limit(), 1, "a zero cap still lets work drain");
    }

    #[tokio::test(start_paused = true)]
    async fn law_growth_wakes_waiters() {
        let l = Limiter::new(LimitConfig {
            algorithm: Algorithm::Aimd,
            initial: 1,
            max: 8,
            ..LimitConfig::default()
        });
        let p = l.acquire().await;
        let w = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(l.waiting(), 1);
        // Slow start: a success at the limit raises it (AIMD's first round
        // trip triples it, to 3), and the release plus the growth let the
        // waiter in.
        p.record(Sample::success(Duration::from_millis(10)));
        assert_eq!(l.limit(), 3);
        let _w = w.await.unwrap();
        assert!(l.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn permit_released_when_its_task_panics() {
        let l = fixed(1);
        let t = tokio::spawn({
            let l = l.clone();
            async move {
                let _p = l.acquire().await;
                panic!("boom");
            }
        });
        assert!(t.await.unwrap_err().is_panic());
        assert_eq!(l.in_flight(), 0);
        let l2 = l.clone();
        let r = std::panic::catch_unwind(move || {
            let _p = l2.try_acquire().unwrap();
            panic!("boom");
        });
        assert!(r.is_err());
        assert_eq!(l.in_flight(), 0);
        assert!(l.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_release_and_cancel_keep_counts_exact() {
        let l = fixed(3);
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let wait = Duration::from_millis(i % 7);
                if let Ok(p) = tokio::time::timeout(wait, l.acquire()).await {
                    tokio::time::sleep(Duration::from_millis(i % 3)).await;
                    if i % 2 == 0 {
                        p.record(Sample::success(Duration::from_millis(1)));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!((l.in_flight(), l.waiting()), (0, 0));
        let all: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert!(l.try_acquire().is_none());
        drop(all);
    }

    #[test]
    fn multi_threaded_stress() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let l = fixed(4);
        let peak = Arc::new(Mutex::new(0usize));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..400u64 {
                let (l, peak) = (l.clone(), peak.clone());
                tasks.push(tokio::spawn(async move {
                    let fut = l.acquire();
                    let p = if i % 5 == 0 {
                        match tokio::time::timeout(Duration::from_micros(50), fut).await {
                            Ok(p) => p,
                            Err(_) => return,
                        }
                    } else {
                        fut.await
                    };
                    {
                        let mut pk = peak.lock().unwrap();
                        *pk = (*pk).max(l.in_flight());
                    }
                    tokio::task::yield_now().await;
                    drop(p);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert!(*peak.lock().unwrap() <= 4);
        assert_eq!((l.in_flight(), l.waiting()), (0, 0));
    }

    #[test]
    fn permit_and_futures_are_send_and_static() {
        fn is_send_static<T: Send + 'static>(_: &T) {}
        fn is_send<T: Send>(_: &T) {}
        let l = fixed(1);
        let p = l.try_acquire().unwrap();
        is_send_static(&p);
        is_send_static(&l);
        is_send(&l.acquire());
        let json = serde_json::to_value(l.snapshot()).unwrap();
        assert_eq!(json["in_flight"], 1);
        assert_eq!(json["algorithm"], "fixed");
    }
}
