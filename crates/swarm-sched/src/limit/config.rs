//! Configuration of a concurrency limiter (`[pools.NAME.limit]`).

use serde::{Deserialize, Serialize};

/// The control law that moves a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// A constant limit (`initial`).
    Fixed,
    /// Additive increase, multiplicative decrease on back-pressure. The
    /// default: in BENCHMARKS.md and the scenario harness it keeps full
    /// goodput at 10× overload, and it is the most robust of the adaptive
    /// laws to what LLM providers do (429s without rising latency, jitter).
    #[default]
    Aimd,
    /// Netflix's Gradient2: limit follows the ratio of long-term to
    /// short-term round-trip time.
    Gradient2,
    /// TCP Vegas: queue-size estimate from no-load versus current RTT.
    Vegas,
}

/// Where a limit holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Each process has the whole limit.
    #[default]
    Node,
    /// One limit for every process sharing the database: each holds a
    /// part of it (`Limiter::set_share`), which whoever runs the
    /// processes leases and rebalances. With an adaptive law the cluster's
    /// limit is `max` (`initial` for `fixed`); each process's law can only
    /// lower its own part.
    Cluster,
}

/// Settings of one limiter. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConfig {
    /// Which control law.
    pub algorithm: Algorithm,
    /// Limit at start (and the constant limit of `fixed`).
    pub initial: usize,
    /// Floor: the limit never goes below it.
    pub min: usize,
    /// Ceiling: the limit never goes above it.
    pub max: usize,
    /// Multiplicative decrease per drop (every adaptive law). AIMD's cut on
    /// queueing latency is proportional to the excess instead.
    pub backoff_ratio: f64,
    /// An RTT above `tolerance` × the baseline counts as queueing
    /// (Gradient2's tolerance; ends slow start for every law).
    pub tolerance: f64,
    /// AIMD: a round trip whose mean RTT is, with confidence, above
    /// `queue_tolerance` × the baseline counts as queueing. The default 1.05
    /// holds in flight about 5–10% above what the backend serves without
    /// queueing; the confidence bounds, not this margin, absorb jitter.
    pub queue_tolerance: f64,
    /// Weight of a new estimate in the limit's moving average (0–1].
    pub smoothing: f64,
    /// Samples in Gradient2's long-term RTT average.
    pub long_window: usize,
    /// How often the no-load RTT estimate is refreshed, ms (Vegas, and the
    /// baselines of the other laws).
    pub probe_interval_ms: u64,
    /// Grow multiplicatively from `initial` until the first congestion
    /// signal, and again after a collapse (TCP slow start).
    pub slow_start: bool,
    /// One limit per process (`node`, the default) or one for all
    /// processes on the database (`cluster`).
    pub scope: Scope,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            initial: 16,
            min: 1,
            max: 1024,
            backoff_ratio: 0.9,
            tolerance: 1.5,
            queue_tolerance: 1.05,
            smoothing: 0.2,
            long_window: 600,
            probe_interval_ms: 30_000,
            slow_start: true,
            scope: Scope::Node,
        }
    }
}

impl LimitConfig {
    /// A fixed limit of `n`.
    pub fn fixed(n: usize) -> Self {
        Self {
            algorithm: Algorithm::Fixed,
            initial: n,
            min: 1,
            max: n.max(1),
            ..Self::default()
        }
    }

    /// The cluster-wide limit of a `scope = "cluster"` limiter: the
    /// constant of a fixed law, else the ceiling.
    pub fn cluster_limit(&self) -> usize {
        match self.algorithm {
            Algorithm::Fixed => self.initial,
            _ => self.max,
        }
    }

    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 {
            return Err("`min` must be at least 1".into());
        }
        if self.max < self.min {
            return Err("`max` must be at least `min`".into());
        }
        if self.initial < self.min || self.initial > self.max {
            return Err("`initial` must lie between `min` and `max`".into());
        }
        if !(self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0) {
            return Err("`backoff_ratio` must be between 0 and 1 (exclusive)".into());
        }
        if self.tolerance.is_nan() || self.tolerance < 1.0 {
            return Err("`tolerance` must be at least 1.0".into());
        }
        if !(self.queue_tolerance.is_finite() && self.queue_tolerance >= 1.0) {
            return Err("`queue_tolerance` must be a number of at least 1.0".into());
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err("`smoothing` must be in (0, 1]".into());
        }
        if self.long_window == 0 {
            return Err("`long_window` must be at least 1".into());
        }
        if self.probe_interval_ms == 0 {
            return Err("`probe_interval_ms` must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_tolerance_is_validated() {
        assert_eq!(LimitConfig::default().validate(), Ok(()));
        for bad in [0.9, f64::NAN, f64::INFINITY] {
            let c = LimitConfig {
                queue_tolerance: bad,
                ..LimitConfig::default()
            };
            let err = c.validate().unwrap_err();
            assert!(err.contains("queue_tolerance"), "{bad}: {err}");
        }
    }
}
