//! The two ways of offering load.
//!
//! **Closed loop** (`concurrency` clients): each client sends its next
//! request when the previous one is answered. Offered load adapts to the
//! server: it measures how much the server does with that many callers.
//!
//! **Open loop** (`rate` per second): request *i* is due at
//! `start + i / rate` whatever happened before, like users who do not wait
//! for each other. Latency is counted from that intended time, not from the
//! moment the request actually left, so when the server (or the generator)
//! stalls, every request that should have been sent during the stall is
//! charged for it. This is the correction wrk2 makes for "coordinated
//! omission" (Gil Tene, "How NOT to Measure Latency", 2015): a closed-loop
//! tool that only times requests it managed to send reports the stall once
//! instead of for every victim. At most `max_inflight` requests are
//! outstanding; beyond that, sends wait, and their lateness shows in both
//! the latency and the send-lag histogram.
//!
//! **Phased open loop** ([`open_loop_phased`]): phases with their own rates
//! run back to back on one schedule — phase *k* starts when the previous
//! ones' durations have passed, and its request *j* is due at
//! `phase start + j / rate_k` — so latency still counts from each request's
//! intended time across phase boundaries. Every request is also kept in a
//! compact trace, for per-phase figures and recovery times.
//!
//! Both run against an [`Exchange`], so the timing logic is tested with
//! paused `tokio::time` and a fake exchange, and used with the HTTP one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::recorder::{Observation, Outcome, Recorder};

/// Sends one request (and follows it, if configured).
pub trait Exchange: Send + Sync + 'static {
    /// Performs request number `seq`.
    fn exchange(&self, seq: u64) -> BoxFuture<'static, Observation>;

    /// Performs request number `seq` during phase `phase` of a phased step
    /// (whose settings, such as extra args, apply). By default the phase
    /// changes nothing.
    fn exchange_in_phase(&self, seq: u64, phase: usize) -> BoxFuture<'static, Observation> {
        let _ = phase;
        self.exchange(seq)
    }
}

/// One phase of a phased open-loop step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhasePlan {
    /// Requests per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
}

/// A step's time budget.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Closed loop: stop after this many measured requests.
    pub max_requests: Option<u64>,
}

/// Figures the progress display reads while a step runs.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests answered so far (warm-up included).
    pub done: AtomicU64,
    /// Of which 2xx.
    pub accepted: AtomicU64,
}

impl Live {
    fn note(&self, obs: &Observation) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if matches!(obs.outcome, Outcome::Accepted(_)) {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a step measured.
#[derive(Debug)]
pub struct Measured {
    /// Counts and histograms of the measured window.
    pub recorder: Recorder,
    /// When measuring began.
    pub from: Instant,
    /// The measured window's length.
    pub window: Duration,
}

fn lock(m: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Recorders shared by the workers. A recorder holds four histograms of
/// about 200 KB each, so one per worker would cost gigabytes at 10,000
/// clients; a few shards, each behind its own lock, keep contention low and
/// memory flat.
struct Shards(Vec<Mutex<Recorder>>);

impl Shards {
    fn new() -> Self {
        let n = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
        Self((0..n).map(|_| Mutex::new(Recorder::default())).collect())
    }

    fn get(&self, i: usize) -> std::sync::MutexGuard<'_, Recorder> {
        lock(&self.0[i % self.0.len()])
    }

    fn merged(&self) -> Recorder {
        let mut all = Recorder::default();
        for s in &self.0 {
            all.merge(&lock(s));
        }
        all
    }
}

/// Runs `concurrency` clients for the window.
pub async fn closed_loop(
    ex: Arc<dyn Exchange>,
    concurrency: usize,
    w: Window,
    live: Arc<Live>,
) -> Measured {
    let start = Instant::now();
    let from = start + w.warmup;
    let end = from + w.duration;
    let seq = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let shards = Arc::new(Shards::new());
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency.max(1) {
        let (ex, seq, measured, live, shards) = (
            ex.clone(),
            seq.clone(),
            measured.clone(),
            live.clone(),
            shards.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let counts = now >= from;
                if counts
                    && let Some(max) = w.max_requests
                    && measured.fetch_add(1, Ordering::Relaxed) >= max
                {
                    break;
                }
                let obs = ex.exchange(seq.fetch_add(1, Ordering::Relaxed)).await;
                live.note(&obs);
                if counts {
                    shards.get(worker).record(now, &obs);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let window = match w.max_requests {
        Some(_) => Instant::now()
            .saturating_duration_since(from)
            .min(w.duration),
        None => w.duration,
    };
    Measured {
        recorder: shards.merged(),
        from,
        window,
    }
}

/// Sends at `rate` per second for the window, at most `max_inflight` at once.
pub async fn open_loop(
    ex: Arc<dyn Exchange>,
    rate: f64,
    max_inflight: usize,
    w: Window,
    live: Arc<Live>,
) -> Measured {
    let start = Instant::now();
    let from = start + w.warmup;
    let end = from + w.duration;
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-9));
    let rec = Arc::new(Shards::new());
    let permits = Arc::new(Semaphore::new(max_inflight.max(1)));
    let mut i: u64 = 0;
    loop {
        let intended = start + period.mul_f64(i as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let counts = intended >= from;
        if counts {
            rec.get(i as usize)
                .record_lag(Instant::now().saturating_duration_since(intended));
        }
        let (ex, rec, live) = (ex.clone(), rec.clone(), live.clone());
        tokio::spawn(async move {
            let obs = ex.exchange(i).await;
            live.note(&obs);
            if counts {
                rec.get(i as usize).record(intended, &obs);
            }
            drop(permit);
        });
        i += 1;
    }
    // Every permit back means every request answered (bounded, in case a
    // target never answers).
    let all = u32::try_from(max_inflight.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(120), permits.acquire_many(all)).await;
    let recorder = rec.merged();
    Measured {
        recorder,
        from,
        window: w.duration,
    }
}

/// Runs `phases` back to back in one open-loop schedule, at most
/// `max_inflight` at once, keeping every request in the trace. Nothing is
/// warm-up: the window is the phases' sum.
pub async fn open_loop_phased(
    ex: Arc<dyn Exchange>,
    phases: &[PhasePlan],
    max_inflight: usize,
    live: Arc<Live>,
) -> Measured {
    let from = Instant::now();
    let rec = Arc::new(Shards::new());
    let permits = Arc::new(Semaphore::new(max_inflight.max(1)));
    let mut i: u64 = 0;
    let mut phase_start = from;
    'phases: for (phase, plan) in phases.iter().enumerate() {
        let rate = plan.rate.max(1e-9);
        let phase_end = phase_start + plan.duration;
        let mut j: u64 = 0;
        loop {
            // `j / rate` from the phase's start: no drift from adding, and
            // exactly `rate × duration` sends when that is whole.
            let intended = phase_start + Duration::from_secs_f64(j as f64 / rate);
            if intended >= phase_end {
                break;
            }
            tokio::time::sleep_until(intended).await;
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break 'phases;
            };
            rec.get(i as usize)
                .record_lag(Instant::now().saturating_duration_since(intended));
            let (ex, rec, live) = (ex.clone(), rec.clone(), live.clone());
            tokio::spawn(async move {
                let obs = ex.exchange_in_phase(i, phase).await;
                live.note(&obs);
                let mut r = rec.get(i as usize);
                r.record(intended, &obs);
                r.trace(from, intended, phase, &obs);
                drop(r);
                drop(permit);
            });
            i += 1;
            j += 1;
        }
        phase_start = phase_end;
    }
    let all = u32::try_from(max_inflight.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(120), permits.acquire_many(all)).await;
    Measured {
        recorder: rec.merged(),
        from,
        window: phase_start.saturating_duration_since(from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::LatencySummary;

    /// An exchange whose every request takes `service` and succeeds.
    struct Fixed {
        service: Duration,
        inflight: Arc<AtomicU64>,
        max_seen: Arc<AtomicU64>,
    }

    impl Fixed {
        fn new(ms: u64) -> Arc<Self> {
            Arc::new(Self {
                service: Duration::from_millis(ms),
                inflight: Arc::default(),
                max_seen: Arc::default(),
            })
        }
    }

    impl Exchange for Fixed {
        fn exchange(&self, _seq: u64) -> BoxFuture<'static, Observation> {
            let (service, inflight, max_seen) =
                (self.service, self.inflight.clone(), self.max_seen.clone());
            Box::pin(async move {
                let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(service).await;
                inflight.fetch_sub(1, Ordering::SeqCst);
                Observation {
                    outcome: Outcome::Accepted(202),
                    acked_at: Some(Instant::now()),
                    finished: None,
                    label: None,
                }
            })
        }
    }

    /// Sees the phase of every request: takes `service_ms[phase]` and
    /// counts requests per phase; the last phase's requests end `failed`.
    struct Phased {
        service_ms: Vec<u64>,
        seen: Arc<Mutex<Vec<usize>>>,
    }

    impl Exchange for Phased {
        fn exchange(&self, seq: u64) -> BoxFuture<'static, Observation> {
            self.exchange_in_phase(seq, usize::MAX)
        }

        fn exchange_in_phase(&self, _seq: u64, phase: usize) -> BoxFuture<'static, Observation> {
            self.seen.lock().unwrap().push(phase);
            let ms = self.service_ms.get(phase).copied().unwrap_or(1);
            let last = phase + 1 == self.service_ms.len();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let at = Instant::now();
                Observation {
                    outcome: Outcome::Accepted(202),
                    acked_at: Some(at),
                    finished: Some((at, if last { "failed" } else { "succeeded" }.into())),
                    label: Some(Arc::from(if last { "late" } else { "early" })),
                }
            })
        }
    }

    fn window(secs: u64) -> Window {
        Window {
            warmup: Duration::ZERO,
            duration: Duration::from_secs(secs),
            max_requests: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_throughput_is_clients_over_latency() {
        let ex = Fixed::new(10);
        let m = closed_loop(ex.clone(), 5, window(1), Arc::default()).await;
        // 5 clients × (1000 ms / 10 ms) = 500 requests, each 10 ms.
        assert_eq!(m.recorder.sent, 500);
        let s = LatencySummary::of(&m.recorder.ack).unwrap();
        assert!(
            (s.p50 - 10.0).abs() < 0.02 && (s.max - 10.0).abs() < 0.02,
            "{s:?}"
        );
        assert_eq!(ex.max_seen.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn warmup_is_not_measured_and_request_caps_apply() {
        let ex = Fixed::new(10);
        let w = Window {
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(1),
            max_requests: None,
        };
        let live = Arc::new(Live::default());
        let m = closed_loop(ex.clone(), 2, w, live.clone()).await;
        assert_eq!(m.recorder.sent, 200, "only the measured second");
        assert_eq!(live.done.load(Ordering::Relaxed), 300, "warm-up ran too");
        let capped = closed_loop(
            ex,
            4,
            Window {
                max_requests: Some(37),
                ..window(10)
            },
            Arc::default(),
        )
        .await;
        assert_eq!(capped.recorder.sent, 37);
        assert!(capped.window < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_schedule() {
        let ex = Fixed::new(10);
        let m = open_loop(ex.clone(), 100.0, 1000, window(1), Arc::default()).await;
        assert_eq!(m.recorder.sent, 100);
        let s = LatencySummary::of(&m.recorder.ack).unwrap();
        assert!(
            (s.p50 - 10.0).abs() < 0.02 && (s.max - 10.0).abs() < 0.02,
            "{s:?}"
        );
        let lag = LatencySummary::of(&m.recorder.lag).unwrap();
        assert!(lag.max < 0.01, "no send was late: {lag:?}");
        // A 10 ms service at 100/s keeps about one request in flight.
        assert!(ex.max_seen.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_charges_stalls_to_every_request_due_during_them() {
        // Service takes 20 ms but one may be in flight: sends fall behind a
        // 10 ms schedule. Request i leaves at 20·i and ends at 20·i + 20,
        // but was due at 10·i, so its latency is 10·i + 20 ms.
        let ex = Fixed::new(20);
        let m = open_loop(ex, 100.0, 1, window(1), Arc::default()).await;
        assert_eq!(m.recorder.sent, 100);
        let s = LatencySummary::of(&m.recorder.ack).unwrap();
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.02;
        assert!(close(s.min, 20.0), "{s:?}");
        assert!(close(s.max, 1010.0), "{s:?}");
        assert!(close(s.p50, 510.0), "{s:?}");
        let lag = LatencySummary::of(&m.recorder.lag).unwrap();
        assert!(close(lag.max, 990.0), "sends fell behind: {lag:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn phases_run_back_to_back_on_one_schedule() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ex = Arc::new(Phased {
            service_ms: vec![5, 40],
            seen: seen.clone(),
        });
        let phases = [
            PhasePlan {
                rate: 100.0,
                duration: Duration::from_secs(1),
            },
            PhasePlan {
                rate: 300.0,
                duration: Duration::from_secs(1),
            },
        ];
        let m = open_loop_phased(ex, &phases, 1000, Arc::default()).await;
        assert_eq!(m.window, Duration::from_secs(2));
        assert_eq!(m.recorder.sent, 400);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.iter().filter(|p| **p == 0).count(), 100);
        assert_eq!(seen.iter().filter(|p| **p == 1).count(), 300);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "phases in order");
        let mut trace = m.recorder.trace.clone();
        trace.sort_by_key(|t| t.at_us);
        assert_eq!(trace.len(), 400);
        assert_eq!((trace[0].at_us, trace[0].phase), (0, 0));
        assert_eq!((trace[99].at_us, trace[99].phase), (990_000, 0));
        // The second phase starts at 1 s sharp, every 3.33 ms.
        assert_eq!((trace[100].at_us, trace[100].phase), (1_000_000, 1));
        assert!((trace[103].at_us as i64 - 1_010_000).abs() <= 1);
        assert!(trace[..100].iter().all(|t| t.done_us == Some(5_000)));
        // Timers fire on whole milliseconds: 3.33 ms slots leave up to 1 ms
        // late, and that lateness counts.
        assert!(
            trace[100..]
                .iter()
                .all(|t| (40_000..41_000).contains(&t.done_us.unwrap()))
        );
        assert_eq!(m.recorder.outcomes["succeeded"], 100);
        assert_eq!(m.recorder.outcomes["failed"], 300);
        assert_eq!(m.recorder.labels["early"].sent, 100);
        assert_eq!(m.recorder.labels["late"].sent, 300);
        let lag = LatencySummary::of(&m.recorder.lag).unwrap();
        assert!(lag.max < 1.0, "no send was late but for the timer: {lag:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn phased_latency_counts_from_the_schedule_across_boundaries() {
        // One request in flight, 20 ms each, 100/s due then 50/s: the first
        // phase falls behind and its backlog delays the second's sends,
        // which are charged for it from their intended times.
        let ex = Fixed::new(20);
        let phases = [
            PhasePlan {
                rate: 100.0,
                duration: Duration::from_millis(500),
            },
            PhasePlan {
                rate: 50.0,
                duration: Duration::from_millis(500),
            },
        ];
        let m = open_loop_phased(ex, &phases, 1, Arc::default()).await;
        assert_eq!(m.recorder.sent, 75);
        let mut trace = m.recorder.trace.clone();
        trace.sort_by_key(|t| t.at_us);
        // Request 50 (the first of phase 2) was due at 500 ms but left at
        // 50 × 20 = 1000 ms: 520 ms.
        assert_eq!(trace[50].phase, 1);
        assert_eq!(trace[50].at_us, 500_000);
        assert!((i64::from(trace[50].ack_us.unwrap()) - 520_000).abs() < 100);
    }
}
