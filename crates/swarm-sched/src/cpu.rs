//! A bounded pool of dedicated threads for blocking or CPU-heavy work.
//!
//! Async worker threads must never block: one long computation (parsing a
//! large document, hashing, running a local model) on a tokio worker stalls
//! every task scheduled there. The usual escape hatch, tokio's
//! `spawn_blocking`, is the wrong tool for *CPU* work under load: its pool
//! grows to 512 threads by default, its queue is unbounded, and it is shared
//! with tokio's file IO. A burst of heavy jobs then oversubscribes the cores
//! (hundreds of threads time-slicing, all slower) and delays file IO behind
//! them, with no signal back to the caller.
//!
//! `CpuPool` instead runs a fixed number of plain OS threads (usually the
//! number of cores set aside for such work) fed from a FIFO queue with a
//! fixed bound. When the queue is full, [`CpuPool::spawn`] fails at once with
//! [`CpuPoolFull`], which is back-pressure the caller can turn into a 429/503
//! or a retry, the same way a bounded channel does (see also "Fail at
//! Scale", Maurer, ACM Queue 2015, on bounded queues). It is the
//! thread-per-core worker pool of e.g. rayon's `ThreadPool`, minus work
//! stealing, plus a bound and cancellation.
//!
//! Jobs receive a [`CancelFlag`]; dropping the [`CpuJob`] handle sets it. A
//! job still queued is then skipped, and a running job may poll the flag to
//! stop early. Panics are caught and reported as [`CpuError::Panicked`]; the
//! thread survives.
//!
//! ```
//! use swarm_sched::cpu::CpuPool;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let pool = CpuPool::new(2, 16, "cpu");
//! let job = pool.spawn(|_cancel| (1..=10u64).product::<u64>()).unwrap();
//! assert_eq!(job.await.unwrap(), 3_628_800);
//! assert_eq!(pool.stats().completed, 1);
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use serde::Serialize;
use tokio::sync::oneshot;

/// Set when the job's result is no longer wanted.
///
/// ```
/// use swarm_sched::cpu::CpuPool;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = CpuPool::new(1, 4, "doc");
/// let job = pool.spawn(|cancel| cancel.is_cancelled()).unwrap();
/// assert_eq!(job.await.unwrap(), false);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Whether the caller dropped (or cancelled) the job.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Why a job produced no result.
///
/// ```
/// use swarm_sched::cpu::CpuError;
/// assert_eq!(CpuError::Panicked("boom".into()).to_string(), "CPU job panicked: boom");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuError {
    /// The job panicked with this message.
    Panicked(String),
    /// The job was cancelled before it ran.
    Cancelled,
    /// The pool shut down before the job ran.
    ShutDown,
}

impl std::fmt::Display for CpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Panicked(msg) => write!(f, "CPU job panicked: {msg}"),
            Self::Cancelled => f.write_str("CPU job cancelled"),
            Self::ShutDown => f.write_str("CPU pool shut down"),
        }
    }
}

impl std::error::Error for CpuError {}

/// The pool's queue is full; try later or shed the request.
///
/// ```
/// use swarm_sched::cpu::{CpuPool, CpuPoolFull};
///
/// // One thread and no waiting room.
/// let pool = CpuPool::new(1, 0, "tiny");
/// let (release, wait) = std::sync::mpsc::channel::<()>();
/// let _busy = pool.spawn(move |_| wait.recv()).unwrap();
/// assert_eq!(pool.spawn(|_| ()).err(), Some(CpuPoolFull));
/// assert_eq!(CpuPoolFull.to_string(), "CPU pool queue is full");
/// release.send(()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPoolFull;

impl std::fmt::Display for CpuPoolFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CPU pool queue is full")
    }
}

impl std::error::Error for CpuPoolFull {}

/// A snapshot of the pool, for status pages and metrics.
///
/// ```
/// use swarm_sched::cpu::CpuPool;
///
/// let stats = CpuPool::new(3, 10, "s").stats();
/// assert_eq!((stats.threads, stats.busy, stats.queued, stats.queue_capacity), (3, 0, 0, 10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CpuPoolStats {
    /// Worker threads configured (0 after shutdown).
    pub threads: usize,
    /// Threads running a job now.
    pub busy: usize,
    /// Jobs waiting for a thread.
    pub queued: usize,
    /// Jobs that may wait beyond the idle threads before `spawn` refuses.
    pub queue_capacity: usize,
    /// Jobs that ran to the end without panicking.
    pub completed: u64,
    /// `spawn` calls refused with [`CpuPoolFull`].
    pub rejected: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs dropped before they started (handle dropped, or pool shut down).
    pub cancelled: u64,
}

/// The result of a job; dropping it cancels the job.
///
/// ```
/// use swarm_sched::cpu::{CpuError, CpuPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = CpuPool::new(1, 4, "doc");
/// let job = pool.spawn(|_| -> u8 { panic!("bad input") }).unwrap();
/// assert_eq!(job.await, Err(CpuError::Panicked("bad input".into())));
/// # }
/// ```
#[derive(Debug)]
pub struct CpuJob<R> {
    rx: oneshot::Receiver<Result<R, CpuError>>,
    cancel: CancelFlag,
}

impl<R> CpuJob<R> {
    /// Sets the job's cancel flag without giving up the handle.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl<R> Drop for CpuJob<R> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl<R> Future for CpuJob<R> {
    type Output = Result<R, CpuError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(result) => result,
            // The job was dropped unrun: skipped after a cancel, or discarded
            // by shutdown.
            Err(_) if self.cancel.is_cancelled() => Err(CpuError::Cancelled),
            Err(_) => Err(CpuError::ShutDown),
        })
    }
}

/// A queued job: runs the closure (which reports to `Inner`), or is dropped
/// unrun.
struct Job {
    cancel: CancelFlag,
    run: Box<dyn FnOnce(&Inner) + Send>,
}

struct State {
    queue: VecDeque<Job>,
    busy: usize,
    shutdown: bool,
}

struct Inner {
    state: Mutex<State>,
    work: Condvar,
    threads: usize,
    queue_capacity: usize,
    completed: AtomicU64,
    rejected: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock and panics are caught, so poisoning can
        // only come from a bug in this file; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shutdown(&self) {
        let dropped = {
            let mut state = self.lock();
            state.shutdown = true;
            std::mem::take(&mut state.queue)
        };
        self.cancelled
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        self.work.notify_all();
        // Dropping the jobs drops their senders: handles see ShutDown.
        drop(dropped);
    }

    fn worker(&self) {
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return;
            }
            let Some(job) = state.queue.pop_front() else {
                state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            if job.cancel.is_cancelled() {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            state.busy += 1;
            drop(state);
            (job.run)(self);
            state = self.lock();
        }
    }

    /// Books a finished job; called before its result is sent, so a caller
    /// that has the result also sees it in the stats.
    fn finished(&self, ok: bool) {
        let counter = if ok { &self.completed } else { &self.panicked };
        counter.fetch_add(1, Ordering::Relaxed);
        self.lock().busy -= 1;
    }
}

/// Shuts the pool down when the last user handle goes (workers hold only
/// `Inner`, so they do not keep it alive).
struct Handle {
    inner: Arc<Inner>,
    joins: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// A fixed set of named threads with a bounded FIFO queue (see the
/// [module docs](self)). Cheap to clone; the last clone dropped shuts the
/// pool down.
///
/// ```
/// use swarm_sched::cpu::CpuPool;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = CpuPool::new(2, 8, "hash");
/// let jobs: Vec<_> = (0..4u64).map(|i| pool.spawn(move |_| i * i).unwrap()).collect();
/// let mut sum = 0;
/// for job in jobs { sum += job.await.unwrap(); }
/// assert_eq!(sum, 14);
/// pool.shutdown();
/// # }
/// ```
#[derive(Clone)]
pub struct CpuPool {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl CpuPool {
    /// Starts `threads` (at least 1) threads named `"{name}-{i}"`; up to
    /// `queue` jobs may wait beyond the idle threads.
    ///
    /// # Panics
    /// If the OS refuses to create a thread, like `std::thread::spawn`.
    pub fn new(threads: usize, queue: usize, name: &str) -> Self {
        let threads = threads.max(1);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                busy: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            threads,
            queue_capacity: queue,
            completed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        });
        let joins = (0..threads)
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || inner.worker())
                    .expect("spawning a CPU pool thread")
            })
            .collect();
        Self {
            handle: Arc::new(Handle {
                inner,
                joins: Mutex::new(joins),
            }),
        }
    }

    /// Queues `f`, or refuses with [`CpuPoolFull`] when `queue` jobs are
    /// already waiting with no idle thread to take them. After
    /// [`shutdown`](Self::shutdown) the job is accepted but resolves to
    /// [`CpuError::ShutDown`] without running.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce(&CancelFlag) -> R + Send + 'static,
    ) -> Result<CpuJob<R>, CpuPoolFull> {
        let inner = &self.handle.inner;
        let cancel = CancelFlag::default();
        let (tx, rx) = oneshot::channel();
        let flag = cancel.clone();
        let run = Box::new(move |inner: &Inner| {
            let result = catch_unwind(AssertUnwindSafe(|| f(&flag)))
                .map_err(|payload| CpuError::Panicked(panic_message(&*payload)));
            inner.finished(result.is_ok());
            // The caller may be gone; the work is done either way.
            let _ = tx.send(result);
        });
        let job = Job {
            cancel: cancel.clone(),
            run,
        };
        {
            let mut state = inner.lock();
            if state.shutdown {
                return Ok(CpuJob { rx, cancel });
            }
            // Jobs an idle thread is about to take are not "waiting".
            let idle = inner.threads - state.busy;
            let would_wait = |len: usize| (len + 1).saturating_sub(idle);
            if would_wait(state.queue.len()) > inner.queue_capacity {
                // Jobs whose handles are gone should not hold places.
                let before = state.queue.len();
                state.queue.retain(|job| !job.cancel.is_cancelled());
                let purged = before - state.queue.len();
                inner.cancelled.fetch_add(purged as u64, Ordering::Relaxed);
                if would_wait(state.queue.len()) > inner.queue_capacity {
                    inner.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(CpuPoolFull);
                }
            }
            state.queue.push_back(job);
        }
        inner.work.notify_one();
        Ok(CpuJob { rx, cancel })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CpuPoolStats {
        let inner = &self.handle.inner;
        let (busy, queued, shutdown) = {
            let state = inner.lock();
            (state.busy, state.queue.len(), state.shutdown)
        };
        CpuPoolStats {
            threads: if shutdown { 0 } else { inner.threads },
            busy,
            queued,
            queue_capacity: inner.queue_capacity,
            completed: inner.completed.load(Ordering::Relaxed),
            rejected: inner.rejected.load(Ordering::Relaxed),
            panicked: inner.panicked.load(Ordering::Relaxed),
            cancelled: inner.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Stops the threads once their current jobs end; queued jobs are
    /// dropped unrun (their handles resolve to [`CpuError::ShutDown`]).
    /// Does not block; see [`join`](Self::join).
    pub fn shutdown(&self) {
        self.handle.inner.shutdown();
    }

    /// Shuts down and blocks until every thread has exited. Call it from
    /// synchronous code or `spawn_blocking`, never on an async worker.
    pub fn join(&self) {
        self.shutdown();
        let joins =
            std::mem::take(&mut *self.handle.joins.lock().unwrap_or_else(|e| e.into_inner()));
        for join in joins {
            // Workers catch job panics, so a join error cannot carry news.
            let _ = join.join();
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Guards against a hang if the pool is broken; not a timing assertion.
    async fn guard<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("test hung")
    }

    #[tokio::test]
    async fn runs_jobs_and_returns_results() {
        let pool = CpuPool::new(2, 100, "t");
        let jobs: Vec<_> = (0..50u64)
            .map(|i| pool.spawn(move |_| i * 2).unwrap())
            .collect();
        for (i, job) in jobs.into_iter().enumerate() {
            assert_eq!(guard(job).await, Ok(i as u64 * 2));
        }
        let name = pool
            .spawn(|_| std::thread::current().name().map(str::to_string))
            .unwrap();
        let name = guard(name).await.unwrap().unwrap();
        assert!(name == "t-0" || name == "t-1", "{name}");
        let stats = pool.stats();
        assert_eq!(stats.completed, 51);
        assert_eq!((stats.busy, stats.queued), (0, 0));
    }

    #[tokio::test]
    async fn two_threads_run_two_jobs_at_once() {
        let pool = CpuPool::new(2, 10, "par");
        let barrier = Arc::new(Barrier::new(2));
        // Each job waits for the other: only completes if both run at once.
        let jobs: Vec<_> = (0..2)
            .map(|_| {
                let barrier = barrier.clone();
                pool.spawn(move |_| barrier.wait().is_leader()).unwrap()
            })
            .collect();
        let mut leaders = 0;
        for job in jobs {
            leaders += guard(job).await.unwrap() as u32;
        }
        assert_eq!(leaders, 1);
    }

    #[tokio::test]
    async fn full_queue_is_refused() {
        let pool = CpuPool::new(1, 1, "full");
        let (release, wait) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let first = pool
            .spawn(move |_| {
                started_tx.send(()).unwrap();
                wait.recv().unwrap();
            })
            .unwrap();
        started.recv().unwrap();
        let second = pool.spawn(|_| 2).unwrap();
        assert_eq!(pool.spawn(|_| 3).err(), Some(CpuPoolFull));
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.queued, stats.rejected), (1, 1, 1));
        release.send(()).unwrap();
        guard(first).await.unwrap();
        assert_eq!(guard(second).await, Ok(2));
        // Room again.
        assert_eq!(guard(pool.spawn(|_| 4).unwrap()).await, Ok(4));
    }

    #[tokio::test]
    async fn zero_queue_still_uses_idle_threads() {
        let pool = CpuPool::new(1, 0, "zero");
        assert_eq!(guard(pool.spawn(|_| 1).unwrap()).await, Ok(1));
    }

    #[tokio::test]
    async fn panic_is_reported_and_thread_survives() {
        let pool = CpuPool::new(1, 10, "panic");
        let job = pool.spawn(|_| -> () { panic!("boom {}", 42) }).unwrap();
        assert_eq!(guard(job).await, Err(CpuError::Panicked("boom 42".into())));
        let job = pool.spawn(|_| std::panic::panic_any(7u8)).unwrap();
        assert!(matches!(guard(job).await, Err(CpuError::Panicked(_))));
        assert_eq!(guard(pool.spawn(|_| "alive").unwrap()).await, Ok("alive"));
        let stats = pool.stats();
        assert_eq!((stats.panicked, stats.completed, stats.threads), (2, 1, 1));
    }

    #[tokio::test]
    async fn dropped_job_is_cancelled() {
        let pool = CpuPool::new(1, 10, "cancel");
        // A running job sees its flag once the handle is dropped.
        let saw_cancel = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = mpsc::channel::<()>();
        let seen = saw_cancel.clone();
        let running = pool
            .spawn(move |cancel| {
                started_tx.send(()).unwrap();
                while !cancel.is_cancelled() {
                    std::thread::yield_now();
                }
                seen.store(true, Ordering::SeqCst);
            })
            .unwrap();
        started.recv().unwrap();
        // A job queued behind it and dropped never runs.
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let skipped = pool
            .spawn(move |_| r.store(true, Ordering::SeqCst))
            .unwrap();
        drop(skipped);
        drop(running);
        // FIFO on one thread: once this returns, both earlier jobs are done.
        guard(pool.spawn(|_| ()).unwrap()).await.unwrap();
        assert!(saw_cancel.load(Ordering::SeqCst));
        assert!(!ran.load(Ordering::SeqCst));
        let stats = pool.stats();
        assert_eq!((stats.cancelled, stats.completed), (1, 2));
    }

    #[tokio::test]
    async fn cancelled_jobs_free_queue_places() {
        let pool = CpuPool::new(1, 2, "purge");
        let (release, wait) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let blocker = pool
            .spawn(move |_| {
                started_tx.send(()).unwrap();
                wait.recv().unwrap();
            })
            .unwrap();
        started.recv().unwrap();
        let a = pool.spawn(|_| 1).unwrap();
        let b = pool.spawn(|_| 2).unwrap();
        assert!(pool.spawn(|_| 3).is_err());
        b.cancel();
        let c = pool.spawn(|_| 4).unwrap();
        release.send(()).unwrap();
        guard(blocker).await.unwrap();
        assert_eq!(guard(a).await, Ok(1));
        assert_eq!(guard(b).await, Err(CpuError::Cancelled));
        assert_eq!(guard(c).await, Ok(4));
        let stats = pool.stats();
        assert_eq!(
            (stats.completed, stats.cancelled, stats.rejected),
            (3, 1, 1)
        );
    }

    #[tokio::test]
    async fn shutdown_finishes_current_and_drops_queued() {
        let pool = CpuPool::new(1, 10, "stop");
        let (release, wait) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let current = pool
            .spawn(move |_| {
                started_tx.send(()).unwrap();
                wait.recv().unwrap();
                "finished"
            })
            .unwrap();
        started.recv().unwrap();
        let queued = pool.spawn(|_| "never").unwrap();
        pool.shutdown();
        assert_eq!(guard(queued).await, Err(CpuError::ShutDown));
        release.send(()).unwrap();
        assert_eq!(guard(current).await, Ok("finished"));
        let late = pool.spawn(|_| "late").unwrap();
        assert_eq!(guard(late).await, Err(CpuError::ShutDown));
        let p = pool.clone();
        guard(tokio::task::spawn_blocking(move || p.join()))
            .await
            .unwrap();
        let stats = pool.stats();
        assert_eq!((stats.threads, stats.completed, stats.cancelled), (0, 1, 1));
    }

    #[tokio::test]
    async fn dropping_last_handle_stops_threads() {
        let pool = CpuPool::new(2, 10, "drop");
        let counter = Arc::new(AtomicUsize::new(0));
        let c = counter.clone();
        let job = pool
            .spawn(move |_| c.fetch_add(1, Ordering::SeqCst))
            .unwrap();
        assert_eq!(guard(job).await, Ok(0));
        let inner = Arc::downgrade(&pool.handle.inner);
        let clone = pool.clone();
        drop(pool);
        assert_eq!(clone.stats().threads, 2);
        drop(clone);
        // Threads hold `Inner` until they exit; wait for them (bounded by the guard).
        guard(async {
            while inner.strong_count() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }

    #[test]
    fn stats_serialize() {
        let stats = CpuPool::new(1, 3, "ser").stats();
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["queue_capacity"], 3);
        assert_eq!(json["threads"], 1);
    }
}
