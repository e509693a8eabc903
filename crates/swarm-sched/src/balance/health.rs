//! Per-instance passive health: outlier detection feeding a circuit breaker.
//!
//! Closed → (consecutive failures ≥ N, or failure rate ≥ X over a sliding
//! window with at least M calls) → open for `base × 2^(k−1)` capped at
//! `max`, k counting ejections since the instance last stayed healthy for
//! `max` → half-open: `half_open_probes` calls let through; all succeed →
//! closed, any fails → open again, for longer. The transitions from open
//! are lazy (checked at the next pick or snapshot), so no timer runs.
//!
//! This is Envoy's outlier detection (consecutive 5xx, failure percentage,
//! ejection time growing per repeat, `max_ejection_percent`, which the
//! balancer enforces because it needs all instances) returning hosts
//! through a circuit breaker's half-open state (Nygard, "Release It!",
//! 2007) rather than all at once, so a still-broken instance fails a few
//! probes instead of a full share of traffic.

use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use super::config::OutlierConfig;

/// Where an instance stands, for snapshots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Takes calls (circuit closed).
    Healthy,
    /// Takes none until its ejection time is over (circuit open), or until
    /// [`mark_healthy`](super::Balancer::mark_healthy) after
    /// [`mark_unhealthy`](super::Balancer::mark_unhealthy).
    Ejected,
    /// Takes a few probe calls that decide whether it returns.
    HalfOpen,
    /// Takes no new calls; those in flight finish.
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed,
    /// `until: None` is an active check's verdict: only `mark_healthy` ends it.
    Open {
        until: Option<Instant>,
    },
    HalfOpen {
        admitted: u32,
        successes: u32,
    },
}

/// What can be done with an instance right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Avail {
    Yes,
    /// Half-open with a probe slot free.
    Probe,
    No,
}

const BUCKETS: usize = 10;

/// Calls and failures over a sliding window, in `BUCKETS` time slices.
#[derive(Debug, Clone)]
struct Window {
    origin: Instant,
    slice: Duration,
    /// (slice number, calls, failures)
    slots: [(u64, u32, u32); BUCKETS],
}

impl Window {
    fn new(len: Duration, origin: Instant) -> Self {
        Self {
            origin,
            slice: (len / BUCKETS as u32).max(Duration::from_millis(1)),
            slots: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn slice_no(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.slice.as_nanos()) as u64
    }

    fn record(&mut self, failed: bool, now: Instant) {
        let n = self.slice_no(now);
        let slot = &mut self.slots[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u32::from(failed);
    }

    /// (calls, failures) in the last `BUCKETS` slices, the current included.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let n = self.slice_no(now);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 + BUCKETS as u64 > n)
            .fold((0, 0), |(c, f), s| (c + s.1, f + s.2))
    }

    fn clear(&mut self) {
        self.slots = [(u64::MAX, 0, 0); BUCKETS];
    }
}

#[derive(Debug, Clone)]
pub(super) struct Health {
    circuit: Circuit,
    /// Bumped on entering half-open, so a probe from an earlier half-open
    /// period cannot count in this one.
    epoch: u64,
    consecutive: u32,
    window: Window,
    /// Outlier ejections in total, for snapshots.
    pub(super) ejections: u64,
    /// Ejections since the instance last stayed healthy for `max_ejection`:
    /// the exponent of the ejection time.
    streak: u32,
    closed_at: Instant,
}

impl Health {
    pub(super) fn new(cfg: &OutlierConfig, now: Instant) -> Self {
        Self {
            circuit: Circuit::Closed,
            epoch: 0,
            consecutive: 0,
            window: Window::new(Duration::from_millis(cfg.window_ms), now),
            ejections: 0,
            streak: 0,
            closed_at: now,
        }
    }

    /// Moves an open circuit whose time is over to half-open.
    pub(super) fn refresh(&mut self, now: Instant) {
        if let Circuit::Open { until: Some(t) } = self.circuit
            && now >= t
        {
            self.circuit = Circuit::HalfOpen {
                admitted: 0,
                successes: 0,
            };
            self.epoch += 1;
        }
    }

    pub(super) fn state(&self) -> InstanceState {
        match self.circuit {
            Circuit::Closed => InstanceState::Healthy,
            Circuit::Open { .. } => InstanceState::Ejected,
            Circuit::HalfOpen { .. } => InstanceState::HalfOpen,
        }
    }

    /// Out of normal rotation (open or half-open): counts against the
    /// ejection cap.
    pub(super) fn is_out(&self) -> bool {
        self.circuit != Circuit::Closed
    }

    pub(super) fn avail(&self, cfg: &OutlierConfig) -> Avail {
        match self.circuit {
            Circuit::Closed => Avail::Yes,
            Circuit::HalfOpen { admitted, .. } if admitted < cfg.half_open_probes => Avail::Probe,
            _ => Avail::No,
        }
    }

    /// Takes a probe slot; returns the epoch to hand back on completion.
    pub(super) fn start_probe(&mut self) -> u64 {
        if let Circuit::HalfOpen { admitted, .. } = &mut self.circuit {
            *admitted += 1;
        }
        self.epoch
    }

    /// A probe ended without an outcome: its slot is free again.
    pub(super) fn cancel_probe(&mut self, epoch: u64) {
        if epoch == self.epoch
            && let Circuit::HalfOpen { admitted, .. } = &mut self.circuit
        {
            *admitted = admitted.saturating_sub(1);
        }
    }

    /// Records a finished call. Returns true when the outlier rules ask for
    /// an ejection, which the caller grants with [`eject`](Self::eject) if
    /// the cap allows. `probe` is the epoch of a half-open probe.
    pub(super) fn on_outcome(
        &mut self,
        cfg: &OutlierConfig,
        outcome: Outcome,
        probe: Option<u64>,
        now: Instant,
    ) -> bool {
        match self.circuit {
            Circuit::Closed => {
                let failed = match outcome {
                    Outcome::Success => false,
                    Outcome::Failure | Outcome::Timeout => true,
                    // Overload is load, not breakage: p2c steers away from
                    // it through the RTT penalty. Ejecting for it would cut
                    // capacity exactly when it is short.
                    Outcome::Overloaded => return false,
                };
                if failed {
                    self.consecutive += 1;
                } else {
                    self.consecutive = 0;
                }
                self.window.record(failed, now);
                if cfg.consecutive_failures > 0 && self.consecutive >= cfg.consecutive_failures {
                    return true;
                }
                let (calls, failures) = self.window.totals(now);
                calls >= cfg.min_requests.max(1)
                    && f64::from(failures) >= cfg.failure_rate * f64::from(calls)
            }
            Circuit::HalfOpen {
                admitted,
                successes,
            } if probe == Some(self.epoch) => {
                if outcome == Outcome::Success {
                    let successes = successes + 1;
                    if successes >= cfg.half_open_probes {
                        self.close(now);
                    } else {
                        self.circuit = Circuit::HalfOpen {
                            admitted,
                            successes,
                        };
                    }
                } else {
                    // Half-open asks for proof the instance can serve; an
                    // overload is no proof.
                    self.eject(cfg, now);
                }
                false
            }
            // A call picked before the circuit opened, or a stale probe.
            _ => false,
        }
    }

    /// Opens the circuit for the next ejection time.
    pub(super) fn eject(&mut self, cfg: &OutlierConfig, now: Instant) {
        let max = Duration::from_millis(cfg.max_ejection_ms);
        if self.circuit == Circuit::Closed && now.saturating_duration_since(self.closed_at) >= max {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        self.ejections += 1;
        let base = Duration::from_millis(cfg.base_ejection_ms);
        let factor = 1u32.checked_shl(self.streak - 1).unwrap_or(u32::MAX);
        let time = base.saturating_mul(factor).min(max);
        self.circuit = Circuit::Open {
            until: Some(now + time),
        };
        self.consecutive = 0;
        self.window.clear();
    }

    /// Closes the circuit (a passed half-open, or an active check).
    pub(super) fn close(&mut self, now: Instant) {
        self.circuit = Circuit::Closed;
        self.closed_at = now;
        self.consecutive = 0;
        self.window.clear();
    }

    /// An active check's verdict: out until [`close`](Self::close).
    pub(super) fn force_open(&mut self) {
        self.circuit = Circuit::Open { until: None };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window_ms: 1000,
            min_requests: 10,
            base_ejection_ms: 100,
            max_ejection_ms: 1000,
            max_ejected_percent: 50,
            half_open_probes: 2,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn consecutive_failures_ask_for_ejection_and_success_resets() {
        let c = cfg();
        let t0 = Instant::now();
        let mut h = Health::new(&c, t0);
        assert!(!h.on_outcome(&c, Outcome::Failure, None, t0));
        assert!(!h.on_outcome(&c, Outcome::Timeout, None, t0));
        assert!(!h.on_outcome(&c, Outcome::Success, None, t0));
        assert!(!h.on_outcome(&c, Outcome::Failure, None, t0));
        assert!(!h.on_outcome(&c, Outcome::Overloaded, None, t0));
        assert!(!h.on_outcome(&c, Outcome::Failure, None, t0));
        assert!(h.on_outcome(&c, Outcome::Failure, None, t0), "3 in a row");
    }

    #[test]
    fn failure_rate_needs_min_requests_and_slides() {
        let c = OutlierConfig {
            consecutive_failures: 0,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut h = Health::new(&c, t0);
        // Alternating: 50% but fewer than 10 calls, then the 10th asks.
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert!(!h.on_outcome(&c, o, None, t0 + MS * i));
        }
        assert!(h.on_outcome(&c, Outcome::Success, None, t0 + MS * 9));
        // 1.5 s later the window forgot them: 1 failure in 1 call is too few.
        let t1 = t0 + MS * 1500;
        assert_eq!(h.window.totals(t1), (0, 0));
        assert!(!h.on_outcome(&c, Outcome::Failure, None, t1));
        // 4 failures in 10 calls: 40% < 50%.
        for i in 0..9 {
            let o = if i < 3 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert!(!h.on_outcome(&c, o, None, t1));
        }
        assert_eq!(h.window.totals(t1), (10, 4));
    }

    #[test]
    fn ejection_time_doubles_up_to_max_and_half_open_decides() {
        let c = cfg();
        let t0 = Instant::now();
        let mut h = Health::new(&c, t0);
        let mut now = t0;
        let mut times = Vec::new();
        for _ in 0..6 {
            h.eject(&c, now);
            let Circuit::Open { until: Some(u) } = h.circuit else {
                panic!("open")
            };
            times.push((u - now).as_millis());
            h.refresh(u - MS);
            assert_eq!(h.state(), InstanceState::Ejected);
            h.refresh(u);
            assert_eq!(h.state(), InstanceState::HalfOpen);
            // One probe passes, the second fails: open again, longer.
            let e = h.start_probe();
            assert!(!h.on_outcome(&c, Outcome::Success, Some(e), u));
            assert_eq!(h.avail(&c), Avail::Probe);
            let e = h.start_probe();
            assert_eq!(h.avail(&c), Avail::No, "both probe slots taken");
            h.on_outcome(&c, Outcome::Failure, Some(e), u);
            assert_eq!(h.state(), InstanceState::Ejected);
            // Undo that re-open, as if it had passed; eject again below.
            h.circuit = Circuit::Closed;
            h.closed_at = u;
            now = u;
        }
        // The failed probes were ejections too, so the streak grew by two
        // per round: 100, 400, 1000 (capped), ...
        assert_eq!(times, [100, 400, 1000, 1000, 1000, 1000]);
        assert_eq!(h.ejections, 12);
    }

    #[test]
    fn probes_close_and_a_long_healthy_spell_resets_the_streak() {
        let c = cfg();
        let t0 = Instant::now();
        let mut h = Health::new(&c, t0);
        h.eject(&c, t0);
        h.refresh(t0 + MS * 100);
        let a = h.start_probe();
        let b = h.start_probe();
        // A cancelled probe frees its slot; a stale epoch does not count.
        h.cancel_probe(b);
        assert_eq!(h.avail(&c), Avail::Probe);
        assert!(!h.on_outcome(&c, Outcome::Failure, Some(a - 1), t0));
        assert_eq!(h.state(), InstanceState::HalfOpen);
        h.on_outcome(&c, Outcome::Success, Some(a), t0 + MS * 110);
        let b = h.start_probe();
        h.on_outcome(&c, Outcome::Success, Some(b), t0 + MS * 120);
        assert_eq!(h.state(), InstanceState::Healthy);
        // Ejected again soon: 200 ms. After a healthy spell of `max`: 100.
        h.eject(&c, t0 + MS * 200);
        assert_eq!(
            h.circuit,
            Circuit::Open {
                until: Some(t0 + MS * 400)
            }
        );
        h.close(t0 + MS * 400);
        h.eject(&c, t0 + MS * 1400);
        assert_eq!(
            h.circuit,
            Circuit::Open {
                until: Some(t0 + MS * 1500)
            }
        );
    }
}
