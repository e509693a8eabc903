//! Peak-EWMA round-trip estimate (Finagle's `PeakEwma`, linkerd,
//! `tower::load::PeakEwma`).
//!
//! A sample above the current estimate replaces it at once (the peak), so a
//! slow instance is avoided after one slow reply; a lower sample is blended
//! in with weight `1 − e^(−Δt/τ)`, so the estimate falls back over about τ.
//! Between samples the estimate decays toward zero, as tower's does: an
//! instance that stopped getting work looks cheaper and cheaper, so it is
//! tried again and a recovered instance is noticed. Unlike tower, reading
//! the estimate does not move its timestamp, so a read just before a sample
//! does not shrink that sample's weight.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(super) struct PeakEwma {
    est_ns: f64,
    stamp: Instant,
    tau_ns: f64,
}

impl PeakEwma {
    pub(super) fn new(initial: Duration, tau: Duration, now: Instant) -> Self {
        Self {
            est_ns: initial.as_nanos() as f64,
            stamp: now,
            tau_ns: (tau.as_nanos() as f64).max(1.0),
        }
    }

    fn decay(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        (-dt / self.tau_ns).exp()
    }

    /// The estimate at `now`, ns.
    pub(super) fn get(&self, now: Instant) -> f64 {
        self.est_ns * self.decay(now)
    }

    pub(super) fn update(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let d = self.decay(now);
        let cur = self.est_ns * d;
        self.est_ns = if rtt > cur {
            rtt
        } else {
            cur + rtt * (1.0 - d)
        };
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[test]
    fn peak_is_taken_at_once_and_decays_back() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = PeakEwma::new(ms(20), Duration::from_secs(1), t0);
        e.update(ms(20), t0);
        assert_eq!(e.get(t0), 20.0 * MS);
        e.update(ms(200), t0 + ms(10));
        assert_eq!(e.get(t0 + ms(10)), 200.0 * MS, "one slow reply is the peak");
        // 20 ms replies every 10 ms for one τ: most of the way back.
        for i in 1..=100 {
            e.update(ms(20), t0 + ms(10 + 10 * i));
        }
        let v = e.get(t0 + ms(1010)) / MS;
        assert!((80.0..95.0).contains(&v), "{v}");
        // 200·e⁻¹ + 20·(1 − e⁻¹) = 86.2 ms exactly, whatever the step.
        assert!((v - 86.2).abs() < 0.5, "{v}");
        // Idle: decays toward zero, so the instance is tried again.
        let idle = e.get(t0 + ms(1010 + 3000)) / MS;
        assert!((idle - v * (-3.0f64).exp()).abs() < 0.01, "{idle}");
    }
}
