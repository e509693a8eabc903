//! The pure load model, free of HTTP: admission (hard limit), failure and
//! stall injection, and the service time with its knee.
//!
//! Per request, in this order:
//!
//! 1. **Hard limit.** With `n` = requests in flight including this one, if
//!    `hard_limit > 0 && n > hard_limit` the request is refused at once
//!    (mimics a provider's rate limiting: `429` with `Retry-After`). A
//!    refused request never counts as in flight.
//! 2. **Failure.** With probability `error_rate` the request fails with
//!    `error_status` after the base latency.
//! 3. **Stall.** With probability `stall_rate` it hangs for `stall_ms`, then
//!    continues normally.
//! 4. **Service.** It takes `(latency_ms + jitter) × max(1, n / capacity)`
//!    when `capacity > 0` (mimics a saturated provider: past the knee,
//!    requests share a fixed throughput, so latency grows with load).
//!
//! `capacity`, `hard_limit`, `latency_ms` and `error_rate` follow the
//! schedule, evaluated at arrival against [`tokio::time::Instant`], as are
//! all sleeps, so the model runs under paused time in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::config::{SimConfig, Step};
use crate::stats::{Recorder, StatsSnapshot};

/// The values the schedule may change, as in effect at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    pub(crate) capacity: u64,
    pub(crate) hard_limit: u64,
    pub(crate) latency_ms: u64,
    pub(crate) error_rate: f64,
}

/// How one request ends, as decided by the model.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Over the hard limit: answer 429 now.
    Refused {
        /// Requests in flight including the refused one.
        inflight: u64,
        /// The hard limit in effect.
        limit: u64,
        /// Seconds for the `Retry-After` header.
        retry_after_s: u64,
    },
    /// Injected failure (already waited for the base latency).
    Failed {
        /// The status to answer with.
        status: u16,
    },
    /// Served: the service time has passed; the guard keeps the request in
    /// flight for as long as the response (e.g. a stream) needs it.
    Ready(Ready),
}

/// A request that passed the model and is still in flight.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) guard: InflightGuard,
    pub(crate) service: Duration,
    pub(crate) inflight_at_arrival: u64,
    pub(crate) stalled: bool,
}

/// The shared simulated provider.
#[derive(Debug)]
pub(crate) struct Model {
    cfg: SimConfig,
    start: Instant,
    recorder: Mutex<Recorder>,
    rng: Mutex<fastrand::Rng>,
    next_id: AtomicU64,
    /// The `rpm`/`tpm` quotas, checked before everything else.
    pub(crate) quotas: crate::quota::Quotas,
}

/// Keeps one request counted in flight; decrements on drop, on every path
/// including a dropped (cancelled) request future. Dropped without
/// [`InflightGuard::complete`], the request was abandoned: the client went
/// away (hyper drops a handler, or a response stream, whose connection
/// closed), which `disconnected` counts.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    model: Arc<Model>,
    completed: bool,
}

impl InflightGuard {
    /// The response is complete: the request leaves the in-flight count
    /// without counting as a disconnect.
    pub(crate) fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let gone = !self.completed;
        self.model.update(|c| {
            c.inflight = c.inflight.saturating_sub(1);
            if gone {
                c.disconnected += 1;
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn every later request into a panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `base × max(1, inflight / capacity)` in milliseconds, without overflow.
pub(crate) fn scaled_ms(base_ms: u64, inflight: u64, capacity: u64) -> u64 {
    if capacity == 0 || inflight <= capacity {
        return base_ms;
    }
    let ms = u128::from(base_ms) * u128::from(inflight) / u128::from(capacity);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl Model {
    pub(crate) fn new(mut cfg: SimConfig) -> Arc<Self> {
        cfg.schedule.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        let rng = match cfg.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Arc::new(Self {
            quotas: crate::quota::Quotas::new(cfg.rpm, cfg.tpm, cfg.window_ms),
            recorder: Mutex::new(Recorder::new(cfg.sample_ms)),
            cfg,
            start: Instant::now(),
            rng: Mutex::new(rng),
            next_id: AtomicU64::new(1),
        })
    }

    pub(crate) fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// A fresh number for response ids.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Changes counters under the lock, after recording the samples due.
    fn update<R>(&self, f: impl FnOnce(&mut crate::stats::Counters) -> R) -> R {
        let now = self.elapsed_ms();
        let mut rec = lock(&self.recorder);
        rec.catch_up(now);
        f(&mut rec.counters)
    }

    /// The parameters in effect `elapsed` after start.
    pub(crate) fn params_at(&self, elapsed: Duration) -> Params {
        let mut t = elapsed.as_secs_f64();
        if let Some(period) = self.cfg.repeat_s
            && period.is_finite()
            && period > 0.0
        {
            t %= period;
        }
        let mut p = Params {
            capacity: self.cfg.capacity,
            hard_limit: self.cfg.hard_limit,
            latency_ms: self.cfg.latency_ms,
            error_rate: self.cfg.error_rate,
        };
        for step in self.cfg.schedule.iter().take_while(|s| s.at_s <= t) {
            apply(&mut p, step);
        }
        p
    }

    /// The parameters in effect now.
    pub(crate) fn params_now(&self) -> Params {
        self.params_at(self.elapsed())
    }

    /// Counts a request rejected before it reached the model (bad body).
    pub(crate) fn note_bad_request(&self) {
        self.update(|c| c.bad_requests += 1);
    }

    /// Counts a request refused by a quota (`rpm`, `tpm`).
    pub(crate) fn note_rate_limited(&self) {
        self.update(|c| {
            c.received += 1;
            c.rate_limited += 1;
        });
    }

    /// Runs one request through the model; see the module docs.
    pub(crate) async fn process(self: &Arc<Self>) -> Outcome {
        let params = self.params_now();
        let admitted = self.update(|c| {
            c.received += 1;
            let n = c.inflight + 1;
            if params.hard_limit > 0 && n > params.hard_limit {
                c.refused += 1;
                return Err(n);
            }
            c.inflight = n;
            c.inflight_max = c.inflight_max.max(n);
            Ok(n)
        });
        let n = match admitted {
            Ok(n) => n,
            Err(n) => {
                return Outcome::Refused {
                    inflight: n,
                    limit: params.hard_limit,
                    retry_after_s: self.cfg.retry_after_s,
                };
            }
        };
        let guard = InflightGuard {
            model: Arc::clone(self),
            completed: false,
        };
        let (fail, stall, jitter) = {
            let mut rng = lock(&self.rng);
            let fail = params.error_rate > 0.0 && rng.f64() < params.error_rate;
            let stall = !fail && self.cfg.stall_rate > 0.0 && rng.f64() < self.cfg.stall_rate;
            let jitter = match self.cfg.jitter_ms {
                0 => 0,
                j => rng.u64(0..=j),
            };
            (fail, stall, jitter)
        };
        if fail {
            sleep(Duration::from_millis(params.latency_ms)).await;
            self.update(|c| c.errors += 1);
            guard.complete();
            return Outcome::Failed {
                status: self.cfg.error_status,
            };
        }
        if stall {
            self.update(|c| c.stalled += 1);
            sleep(Duration::from_millis(self.cfg.stall_ms)).await;
        }
        let base = params.latency_ms.saturating_add(jitter);
        let service = Duration::from_millis(scaled_ms(base, n, params.capacity));
        sleep(service).await;
        self.update(|c| c.served += 1);
        Outcome::Ready(Ready {
            guard,
            service,
            inflight_at_arrival: n,
            stalled: stall,
        })
    }

    /// The counters, the timeline and the parameters in effect now.
    pub(crate) fn stats(&self) -> StatsSnapshot {
        let elapsed = self.elapsed();
        let p = self.params_at(elapsed);
        let now_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let mut rec = lock(&self.recorder);
        rec.catch_up(now_ms);
        let c = &rec.counters;
        StatsSnapshot {
            received: c.received,
            served: c.served,
            refused: c.refused,
            rate_limited: c.rate_limited,
            errors: c.errors,
            stalled: c.stalled,
            bad_requests: c.bad_requests,
            disconnected: c.disconnected,
            inflight: c.inflight,
            inflight_max: c.inflight_max,
            uptime_s: elapsed.as_secs_f64(),
            capacity: p.capacity,
            hard_limit: p.hard_limit,
            latency_ms: p.latency_ms,
            timeline: rec.timeline(),
        }
    }
}

fn apply(p: &mut Params, step: &Step) {
    if let Some(v) = step.capacity {
        p.capacity = v;
    }
    if let Some(v) = step.hard_limit {
        p.hard_limit = v;
    }
    if let Some(v) = step.latency_ms {
        p.latency_ms = v;
    }
    if let Some(v) = step.error_rate {
        p.error_rate = v;
    }
}

#[cfg(test)]
mod tests;
