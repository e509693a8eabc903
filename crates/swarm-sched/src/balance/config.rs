//! Configuration of a balancer (meant for a department's `[balance]` table).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a [`Balancer`](super::Balancer) chooses among healthy instances.
///
/// ```
/// use swarm_sched::balance::Policy;
///
/// assert_eq!(Policy::default(), Policy::P2c);
/// let p: Policy = serde_json::from_str("\"least_outstanding\"").unwrap();
/// assert_eq!(p, Policy::LeastOutstanding);
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Power of two choices over peak-EWMA load: two distinct instances at
    /// random, the cheaper wins. The default: it avoids slow instances
    /// without the herding of a global minimum.
    #[default]
    P2c,
    /// The instance with the fewest calls in flight (ties at random).
    LeastOutstanding,
    /// Each instance in turn.
    RoundRobin,
    /// Smooth weighted round robin, as nginx: shares follow the weights and
    /// heavy instances are interleaved, not served in bursts.
    Weighted,
    /// Sticky by key (rendezvous hashing); without a key, as `p2c`.
    Hash,
}

/// Settings of one balancer. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalanceConfig {
    /// Which policy picks among healthy instances.
    pub policy: Policy,
    /// Time constant of the peak-EWMA round-trip estimate, ms (linkerd and
    /// Finagle use 10 s).
    pub decay_ms: u64,
    /// Round-trip estimate of an instance that has no samples yet, ms.
    pub default_rtt_ms: u64,
    /// Seed of the random choices; `None` seeds from the OS. Tests and
    /// simulations set it so runs repeat.
    pub seed: Option<u64>,
    /// Calls one instance serves at once without slowing down (its
    /// worker slots, its batch size). p2c's cost is the peak-EWMA latency
    /// × (1 + in flight / `slots`): with 1, the classic Finagle/linkerd
    /// cost, each call in flight counts as a whole extra wait; an instance
    /// known to serve 8 at once is not made to look 5× dearer by 4 calls
    /// in flight, so p2c keeps preferring it to an idle but 5× slower one.
    pub slots: u32,
    /// Passive health: when an instance is ejected and how it returns.
    pub outlier: OutlierConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            decay_ms: 10_000,
            default_rtt_ms: 100,
            seed: None,
            slots: 1,
            outlier: OutlierConfig::default(),
        }
    }
}

/// Passive outlier ejection and the circuit breaker that brings an instance
/// back (defaults close to Envoy's outlier detection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Eject after this many failures in a row; 0 disables the rule.
    pub consecutive_failures: u32,
    /// Eject when at least this share of the calls in the window failed
    /// (0–1]; a value above 1 disables the rule.
    pub failure_rate: f64,
    /// Length of the sliding window of the failure-rate rule, ms.
    pub window_ms: u64,
    /// Calls the window needs before its failure rate counts.
    pub min_requests: u32,
    /// First ejection time, ms; doubled on each repeat.
    pub base_ejection_ms: u64,
    /// Ceiling of the ejection time, ms. An instance that stays healthy this
    /// long after returning starts again from `base_ejection_ms`.
    pub max_ejection_ms: u64,
    /// At most this share of the (non-draining) instances is ejected by
    /// these rules at once, in percent; never all of them.
    pub max_ejected_percent: u32,
    /// Half-open: calls let through after an ejection; all must succeed to
    /// close the circuit, and any failure re-opens it.
    pub half_open_probes: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window_ms: 10_000,
            min_requests: 20,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejected_percent: 50,
            half_open_probes: 3,
        }
    }
}

impl BalanceConfig {
    /// Checks ranges; the message names the key.
    ///
    /// ```
    /// use swarm_sched::balance::BalanceConfig;
    ///
    /// let mut c = BalanceConfig::default();
    /// assert_eq!(c.validate(), Ok(()));
    /// c.outlier.half_open_probes = 0;
    /// assert!(c.validate().unwrap_err().contains("half_open_probes"));
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let o = &self.outlier;
        if self.decay_ms == 0 {
            return Err("`decay_ms` must be at least 1".into());
        }
        if self.slots == 0 {
            return Err("`slots` must be at least 1".into());
        }
        if self.default_rtt_ms == 0 {
            return Err("`default_rtt_ms` must be at least 1".into());
        }
        if o.failure_rate.is_nan() || o.failure_rate <= 0.0 {
            return Err("`outlier.failure_rate` must be above 0".into());
        }
        if o.window_ms < 10 {
            return Err("`outlier.window_ms` must be at least 10".into());
        }
        if o.base_ejection_ms == 0 || o.max_ejection_ms < o.base_ejection_ms {
            return Err(
                "`outlier.base_ejection_ms` must be at least 1 and at most `max_ejection_ms`"
                    .into(),
            );
        }
        if o.max_ejected_percent > 100 {
            return Err("`outlier.max_ejected_percent` must be at most 100".into());
        }
        if o.half_open_probes == 0 {
            return Err("`outlier.half_open_probes` must be at least 1".into());
        }
        Ok(())
    }

    pub(super) fn decay(&self) -> Duration {
        Duration::from_millis(self.decay_ms.max(1))
    }

    pub(super) fn default_rtt(&self) -> Duration {
        Duration::from_millis(self.default_rtt_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let c: BalanceConfig = toml::from_str(
            "policy = \"round_robin\"\nseed = 7\n[outlier]\nconsecutive_failures = 3\n",
        )
        .unwrap();
        assert_eq!(c.policy, Policy::RoundRobin);
        assert_eq!(c.seed, Some(7));
        assert_eq!(c.outlier.consecutive_failures, 3);
        assert_eq!(c.outlier.half_open_probes, 3, "unset keys keep defaults");
        let names: Vec<String> = [
            Policy::P2c,
            Policy::LeastOutstanding,
            Policy::RoundRobin,
            Policy::Weighted,
            Policy::Hash,
        ]
        .iter()
        .map(|p| {
            serde_json::to_value(p)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(
            names,
            [
                "p2c",
                "least_outstanding",
                "round_robin",
                "weighted",
                "hash"
            ]
        );
        assert!(toml::from_str::<BalanceConfig>("polcy = \"hash\"").is_err());
        assert!(toml::from_str::<BalanceConfig>("policy = \"random\"").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |f: fn(&mut BalanceConfig), key: &str| {
            let mut c = BalanceConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        };
        bad(|c| c.decay_ms = 0, "decay_ms");
        bad(|c| c.outlier.failure_rate = f64::NAN, "failure_rate");
        bad(|c| c.outlier.max_ejection_ms = 1, "base_ejection_ms");
        bad(
            |c| c.outlier.max_ejected_percent = 101,
            "max_ejected_percent",
        );
    }
}
