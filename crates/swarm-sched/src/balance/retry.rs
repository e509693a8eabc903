//! Retry helpers: which failures to retry, how long to wait, and a budget
//! that keeps retries from multiplying load during an outage.
//!
//! - **Classification** ([`CallError::retryable`]): a connect error never
//!   reached the backend, and a 429/503 is a refusal before work, so both
//!   are safe to repeat; a timeout or a 500/502/504 may have done the work,
//!   so only idempotent calls are retried; other 4xx are the caller's fault
//!   and fail again, so never.
//! - **Backoff** ([`Backoff`]): exponential with *full jitter*,
//!   `uniform(0, min(max, base × 2^attempt))` (Brooker, "Exponential Backoff
//!   And Jitter", AWS Architecture Blog, 2015), which spreads a crowd of
//!   retrying clients best of the variants measured there. A backend's
//!   `Retry-After` is a floor: never sooner; past `max_retry_after` the
//!   retry is not worth waiting for and the call fails.
//! - **Budget** ([`RetryBudget`]): tower's `TpsBudget` (Finagle's
//!   `RetryBudget`): every original call deposits, every retry withdraws,
//!   over a sliding `ttl`, so retries add at most `ratio` of the load plus
//!   `min_per_sec`. Per-call attempt limits alone let an outage triple the
//!   load when every call retries twice. tower quantises the ratio: for
//!   ratios up to 1 each retry costs `⌊1/ratio⌋` deposits.
//!
//! ```
//! use std::time::Duration;
//! use swarm_sched::balance::{CallError, RetryBudget, RetryConfig, RetryPolicy};
//!
//! let policy = RetryPolicy::new(RetryConfig::default());
//! let budget = RetryBudget::new(&RetryConfig { min_per_sec: 0, ..RetryConfig::default() });
//! let mut rng = fastrand::Rng::with_seed(1);
//! for _ in 0..10 {
//!     budget.deposit(); // ten original calls
//! }
//! let busy = CallError::Status { code: 503, retry_after: Some(Duration::from_secs(2)) };
//! let wait = policy.decide(0, &busy, false, &budget, &mut rng).expect("retry");
//! assert!(wait >= Duration::from_secs(2), "never sooner than Retry-After");
//! // 10% of ten calls: one retry, and the budget is spent.
//! assert_eq!(policy.decide(0, &busy, false, &budget, &mut rng), None);
//! let bad_request = CallError::Status { code: 400, retry_after: None };
//! assert!(!bad_request.retryable(true));
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::retry::budget::{Budget, TpsBudget};

use super::Outcome;

/// Retry settings. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts after the first, at most.
    pub max_retries: u32,
    /// First backoff ceiling, ms; doubles per retry.
    pub base_backoff_ms: u64,
    /// Highest backoff ceiling, ms.
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this fails the call instead, ms.
    pub max_retry_after_ms: u64,
    /// Retries allowed per original call, over the budget's window (0–1;
    /// tower quantises it, see the module docs).
    pub ratio: f32,
    /// Retries allowed per second regardless of traffic, so a quiet
    /// service can still retry.
    pub min_per_sec: u32,
    /// The budget's window, s (1–60).
    pub ttl_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_backoff_ms: 50,
            max_backoff_ms: 5_000,
            max_retry_after_ms: 30_000,
            ratio: 0.1,
            min_per_sec: 10,
            ttl_secs: 10,
        }
    }
}

impl RetryConfig {
    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err("`ratio` must be between 0 and 1".into());
        }
        if !(1..=60).contains(&self.ttl_secs) {
            return Err("`ttl_secs` must be between 1 and 60".into());
        }
        if self.base_backoff_ms == 0 || self.max_backoff_ms < self.base_backoff_ms {
            return Err("`base_backoff_ms` must be at least 1 and at most `max_backoff_ms`".into());
        }
        Ok(())
    }
}

/// Why a call failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No connection: the request never reached the instance.
    Connect,
    /// No answer in time; the instance may have done the work.
    Timeout,
    /// An HTTP status (or an equivalent code) with its `Retry-After`, if any.
    Status {
        /// The status code.
        code: u16,
        /// The backend's `Retry-After`, parsed.
        retry_after: Option<Duration>,
    },
}

impl CallError {
    /// Whether repeating the call can help and is safe.
    ///
    /// ```
    /// use swarm_sched::balance::CallError;
    ///
    /// let s = |code| CallError::Status { code, retry_after: None };
    /// assert!(CallError::Connect.retryable(false));
    /// assert!(s(429).retryable(false) && s(503).retryable(false));
    /// assert!(!CallError::Timeout.retryable(false) && CallError::Timeout.retryable(true));
    /// assert!(!s(502).retryable(false) && s(502).retryable(true));
    /// assert!(!s(404).retryable(true) && !s(501).retryable(true));
    /// ```
    pub fn retryable(&self, idempotent: bool) -> bool {
        match *self {
            Self::Connect => true,
            Self::Timeout => idempotent,
            Self::Status { code, .. } => match code {
                429 | 503 => true,
                500 | 502 | 504 => idempotent,
                // 4xx: the request is wrong and will be again; 501, 505…: so
                // is the server's answer.
                _ => false,
            },
        }
    }

    /// The backend's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match *self {
            Self::Status { retry_after, .. } => retry_after,
            _ => None,
        }
    }

    /// What the failure says about the instance, for
    /// [`Pick::complete`](super::Pick::complete). A client error says the
    /// instance is working, so it counts as a success.
    ///
    /// ```
    /// use swarm_sched::balance::{CallError, Outcome};
    ///
    /// let s = |code| CallError::Status { code, retry_after: None };
    /// assert_eq!(s(429).outcome(), Outcome::Overloaded);
    /// assert_eq!(s(500).outcome(), Outcome::Failure);
    /// assert_eq!(s(404).outcome(), Outcome::Success);
    /// assert_eq!(CallError::Timeout.outcome(), Outcome::Timeout);
    /// ```
    pub fn outcome(&self) -> Outcome {
        match *self {
            Self::Connect => Outcome::Failure,
            Self::Timeout => Outcome::Timeout,
            Self::Status {
                code: 429 | 503, ..
            } => Outcome::Overloaded,
            Self::Status { code, .. } if code >= 500 => Outcome::Failure,
            Self::Status { .. } => Outcome::Success,
        }
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's wait.
    pub base: Duration,
    /// Highest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (0 for the first retry):
    /// uniform in `[0, min(max, base × 2^attempt)]`, and never less than
    /// `retry_after`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use swarm_sched::balance::Backoff;
    ///
    /// let ms = Duration::from_millis;
    /// let b = Backoff { base: ms(100), max: ms(1000) };
    /// let mut rng = fastrand::Rng::with_seed(3);
    /// assert!(b.delay(2, None, &mut rng) <= ms(400));
    /// assert!(b.delay(9, None, &mut rng) <= ms(1000));
    /// assert!(b.delay(0, Some(ms(1500)), &mut rng) >= ms(1500));
    /// ```
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        let ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rng.u64(..=ns));
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// The retry budget: deposit per original call, withdraw per retry.
/// Shared by every caller of a service (wrap it in an `Arc`).
pub struct RetryBudget {
    inner: TpsBudget,
}

impl RetryBudget {
    /// A budget following `cfg` (window clamped to 1–60 s, ratio to 0–1).
    pub fn new(cfg: &RetryConfig) -> Self {
        Self {
            inner: TpsBudget::new(
                Duration::from_secs(cfg.ttl_secs.clamp(1, 60)),
                cfg.min_per_sec.min(i32::MAX as u32 - 1),
                cfg.ratio.clamp(0.0, 1.0),
            ),
        }
    }

    /// Records an original (first-attempt) call.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes the right to one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// Classification, backoff and budget together: [`decide`](Self::decide).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    cfg: RetryConfig,
    backoff: Backoff,
}

impl RetryPolicy {
    /// A policy following `cfg`.
    pub fn new(cfg: RetryConfig) -> Self {
        let backoff = Backoff {
            base: Duration::from_millis(cfg.base_backoff_ms),
            max: Duration::from_millis(cfg.max_backoff_ms),
        };
        Self { cfg, backoff }
    }

    /// Whether to retry after `err`, and how long to wait first. `attempt`
    /// counts retries already made (0 after the first failure). Takes from
    /// `budget` only when everything else allows the retry.
    pub fn decide(
        &self,
        attempt: u32,
        err: &CallError,
        idempotent: bool,
        budget: &RetryBudget,
        rng: &mut fastrand::Rng,
    ) -> Option<Duration> {
        self.decide_within(attempt, err, idempotent, budget, rng, Duration::MAX)
    }

    /// [`decide`](Self::decide) for a call with `time_left` before its
    /// deadline: a retry whose wait would not end before then is refused
    /// without spending a budget token.
    pub fn decide_within(
        &self,
        attempt: u32,
        err: &CallError,
        idempotent: bool,
        budget: &RetryBudget,
        rng: &mut fastrand::Rng,
        time_left: Duration,
    ) -> Option<Duration> {
        if attempt >= self.cfg.max_retries || !err.retryable(idempotent) {
            return None;
        }
        let retry_after = err.retry_after();
        if retry_after.is_some_and(|r| r > Duration::from_millis(self.cfg.max_retry_after_ms)) {
            return None;
        }
        let wait = self.backoff.delay(attempt, retry_after, rng);
        (wait < time_left && budget.withdraw()).then_some(wait)
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &RetryConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_jitter_fills_the_range_and_grows() {
        let b = Backoff {
            base: ms(100),
            max: ms(1000),
        };
        let mut rng = fastrand::Rng::with_seed(9);
        for (attempt, ceiling) in [
            (0, 100.0),
            (1, 200.0),
            (3, 800.0),
            (4, 1000.0),
            (40, 1000.0),
        ] {
            let xs: Vec<f64> = (0..4000)
                .map(|_| b.delay(attempt, None, &mut rng).as_secs_f64() * 1e3)
                .collect();
            let max = xs.iter().copied().fold(0.0, f64::max);
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!(max <= ceiling && max > 0.98 * ceiling, "{attempt}: {max}");
            // Uniform: the mean is half the ceiling.
            assert!((mean / ceiling - 0.5).abs() < 0.03, "{attempt}: {mean}");
        }
        // Retry-After is a floor, jitter may still add on top of nothing.
        for _ in 0..100 {
            let d = b.delay(0, Some(ms(250)), &mut rng);
            assert_eq!(d, ms(250), "ceiling 100 ms < Retry-After 250 ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_plus_floor_and_expires() {
        let b = RetryBudget::new(&RetryConfig {
            min_per_sec: 0,
            ttl_secs: 1,
            ..RetryConfig::default()
        });
        assert!(!b.withdraw(), "nothing deposited");
        for _ in 0..100 {
            b.deposit();
        }
        let n = (0..100).take_while(|_| b.withdraw()).count();
        assert_eq!(n, 10, "10% of 100 calls");
        // Deposits age out with the window.
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(!b.withdraw());
        // The floor: 5/s over a 2 s window is 10 retries with no traffic.
        let floor = RetryBudget::new(&RetryConfig {
            min_per_sec: 5,
            ttl_secs: 2,
            ..RetryConfig::default()
        });
        assert_eq!((0..100).take_while(|_| floor.withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn policy_checks_attempts_class_retry_after_then_budget() {
        let p = RetryPolicy::new(RetryConfig {
            min_per_sec: 0,
            ..RetryConfig::default()
        });
        let budget = RetryBudget::new(&RetryConfig {
            min_per_sec: 0,
            ..RetryConfig::default()
        });
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20 {
            budget.deposit();
        }
        let busy = |s| CallError::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(s)),
        };
        // Refusals for other reasons leave the budget (2 retries) untouched.
        assert_eq!(
            p.decide(2, &CallError::Connect, true, &budget, &mut rng),
            None
        );
        assert_eq!(
            p.decide(0, &CallError::Timeout, false, &budget, &mut rng),
            None
        );
        assert_eq!(p.decide(0, &busy(60), true, &budget, &mut rng), None);
        // A wait that would outlast the deadline spends nothing either.
        let left = Duration::from_secs(2);
        assert_eq!(
            p.decide_within(1, &busy(3), false, &budget, &mut rng, left),
            None
        );
        let d = p.decide(1, &busy(3), false, &budget, &mut rng).unwrap();
        assert_eq!(d, Duration::from_secs(3));
        let d = p
            .decide(1, &CallError::Connect, false, &budget, &mut rng)
            .unwrap();
        assert!(d <= ms(100));
        assert_eq!(
            p.decide(0, &CallError::Connect, false, &budget, &mut rng),
            None
        );
    }
}
