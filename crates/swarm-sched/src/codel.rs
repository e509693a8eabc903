//! CoDel overload detection: shed new work at admission when a pool's queue
//! has a *standing* delay, never drop work already accepted.
//!
//! CoDel (Nichols & Jacobson, "Controlling Queue Delay", ACM Queue 2012)
//! observes that queue *length* is a poor overload signal — a burst makes a
//! long queue that drains harmlessly — while the *minimum* time items spend
//! queued (their sojourn) over a window tells a good queue from a bad one:
//! if even the luckiest item of the last `interval` waited more than
//! `target`, the queue never drained during that window, so work arrives
//! faster than it leaves.
//!
//! Facebook's "Fail at Scale" (Maurer, ACM Queue 2015) and folly's `Codel`
//! adapted this from packets to RPC servers: they use the detection only,
//! and shed requests while overloaded. SwarmDirector's tasks are durable, so
//! this detector goes one step further and sheds only at **admission**: while
//! [`CoDel::on_admission`] says overloaded, new tasks get a 503 with
//! `Retry-After`, and everything already queued still runs.
//!
//! # How the window is tracked
//!
//! Like CoDel's `first_above_time`, the detector remembers since when every
//! sample has been above `target`. Overloaded means that run of bad samples
//! has lasted at least one `interval`, i.e. the minimum over the sliding
//! window ending now is above target. A single sample below target ends the
//! run at once, so overload ends promptly when the queue drains.
//!
//! Samples come from two places:
//! - [`CoDel::on_dequeue`]: the sojourn of each item leaving the queue.
//! - [`CoDel::on_admission`]: the current age of the queue head. A stalled
//!   queue (everything in flight, nothing dequeued) produces no dequeue
//!   samples at all, yet its head keeps aging; the head age is a lower bound
//!   on that item's sojourn, so using it as a sample is safe (it can only
//!   make the minimum smaller). The head age also dates the run of bad
//!   delay: the head has been above target since `now - (age - target)`
//!   (or since the last good sample, if later), so a quiet standing queue is
//!   recognised on the first admission that finds it, not one interval
//!   later. An empty queue (`None`) counts as a zero sojourn: nothing is
//!   waiting, so nothing is overloaded.
//!
//! ```
//! use std::time::Duration;
//! use swarm_sched::codel::CoDel;
//! use tokio::time::Instant;
//!
//! let ms = Duration::from_millis;
//! let mut codel = CoDel::new(ms(100), ms(1000));
//! let t0 = Instant::now();
//! // Every item waits 300 ms: a standing queue.
//! codel.on_dequeue(ms(300), t0);
//! assert!(!codel.on_admission(Some(ms(350)), t0 + ms(500)));
//! codel.on_dequeue(ms(320), t0 + ms(900));
//! assert!(codel.on_admission(Some(ms(400)), t0 + ms(1000)));
//! // The queue drains: overload ends at once.
//! assert!(!codel.on_admission(None, t0 + ms(1100)));
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// Queue-delay overload detector (see the [module docs](self)).
///
/// ```
/// use std::time::Duration;
/// use swarm_sched::codel::CoDel;
/// use tokio::time::Instant;
///
/// let mut codel = CoDel::new(Duration::from_secs(2), Duration::from_secs(20));
/// let now = Instant::now();
/// codel.on_dequeue(Duration::from_millis(300), now);
/// assert!(!codel.on_admission(Some(Duration::from_secs(1)), now));
/// assert!(!codel.is_overloaded());
/// assert_eq!(codel.min_sojourn(), Some(Duration::from_millis(300)));
/// ```
#[derive(Debug, Clone)]
pub struct CoDel {
    target: Duration,
    interval: Duration,
    /// Time of the first sample of the current unbroken run above target.
    above_since: Option<Instant>,
    /// Time of the last sample at or below target.
    last_good: Option<Instant>,
    overloaded: bool,
    /// Fixed status windows: minimum of the current one and of the last one.
    window_start: Option<Instant>,
    window_min: Option<Duration>,
    last_window_min: Option<Duration>,
}

impl CoDel {
    /// A detector with the given target delay and window; `interval` is
    /// clamped to at least 1 ms so the window is never empty.
    ///
    /// Nichols & Jacobson suggest a target of 5–10 % of the interval; for
    /// agent work (seconds per task) a target of a few seconds over an
    /// interval of tens of seconds is a sensible start.
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval: interval.max(Duration::from_millis(1)),
            above_since: None,
            last_good: None,
            overloaded: false,
            window_start: None,
            window_min: None,
            last_window_min: None,
        }
    }

    /// The target delay.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// The window length.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records the queueing delay of an item that left the queue.
    pub fn on_dequeue(&mut self, sojourn: Duration, now: Instant) {
        self.sample(sojourn, now);
    }

    /// Decides whether to admit new work: `true` means overloaded, reject.
    ///
    /// `head_age` is the age of the oldest queued item, `None` when the queue
    /// is empty.
    pub fn on_admission(&mut self, head_age: Option<Duration>, now: Instant) -> bool {
        let age = head_age.unwrap_or(Duration::ZERO);
        // The head has waited above target since `now - (age - target)`: a
        // quiet queue (no dequeues, few admissions) has stood that long
        // already, not just since this sample, unless a good sample came
        // after that.
        if age > self.target
            && self.above_since.is_none()
            && let Some(began) = now.checked_sub(age - self.target)
        {
            let began = self.last_good.map_or(began, |g| g.max(began));
            self.above_since = Some(began);
        }
        self.sample(age, now);
        self.overloaded
    }

    /// The last verdict.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded
    }

    /// Since when samples have stayed above target, if they currently do
    /// (overload starts one interval after this).
    pub fn above_target_since(&self) -> Option<Instant> {
        self.above_since
    }

    /// Minimum sample of the current status window, or of the last one when
    /// the current window has none yet (for status pages).
    pub fn min_sojourn(&self) -> Option<Duration> {
        self.window_min.or(self.last_window_min)
    }

    fn sample(&mut self, sojourn: Duration, now: Instant) {
        self.roll_window(now);
        self.window_min = Some(self.window_min.map_or(sojourn, |m| m.min(sojourn)));
        if sojourn <= self.target {
            // One good sample proves the queue drained to below target.
            self.last_good = Some(now);
            self.above_since = None;
            self.overloaded = false;
            return;
        }
        let since = *self.above_since.get_or_insert(now);
        self.overloaded = now.saturating_duration_since(since) >= self.interval;
    }

    fn roll_window(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.interval => {}
            Some(start) => {
                // A window with no samples leaves the last minimum standing.
                if self.window_min.is_some() {
                    self.last_window_min = self.window_min.take();
                }
                // Realign to the window containing `now`, skipping empty ones.
                let elapsed = now.saturating_duration_since(start).as_nanos();
                let whole = elapsed / self.interval.as_nanos();
                let skip = u32::try_from(whole).unwrap_or(u32::MAX);
                self.window_start = Some(start + self.interval.saturating_mul(skip));
            }
            None => self.window_start = Some(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn below_target_is_never_overloaded() {
        let mut c = CoDel::new(ms(100), ms(1000));
        let t0 = Instant::now();
        for i in 0..100 {
            let now = t0 + ms(i * 50);
            c.on_dequeue(ms(99), now);
            assert!(!c.on_admission(Some(ms(90)), now));
        }
        assert_eq!(c.min_sojourn(), Some(ms(90)));
        assert!(!c.is_overloaded());
    }

    #[tokio::test(start_paused = true)]
    async fn standing_queue_for_one_interval_overloads() {
        let mut c = CoDel::new(ms(100), ms(1000));
        let t0 = Instant::now();
        for i in 0..20 {
            c.on_dequeue(ms(250), t0 + ms(i * 50));
        }
        assert!(!c.is_overloaded(), "only 950 ms above target");
        assert_eq!(c.above_target_since(), Some(t0));
        assert!(c.on_admission(Some(ms(300)), t0 + ms(1000)));
        assert!(c.is_overloaded());
        // Accepted work is not affected; dequeues above target keep it on.
        c.on_dequeue(ms(280), t0 + ms(1200));
        assert!(c.is_overloaded());
    }

    #[tokio::test(start_paused = true)]
    async fn burst_that_drains_within_an_interval_is_fine() {
        let mut c = CoDel::new(ms(100), ms(1000));
        let t0 = Instant::now();
        // A burst: early items wait long, then the queue catches up.
        for (i, wait) in [400, 350, 300, 200, 120, 60, 10].into_iter().enumerate() {
            c.on_dequeue(ms(wait), t0 + ms(i as u64 * 100));
        }
        assert!(!c.is_overloaded());
        assert!(!c.on_admission(None, t0 + ms(1500)));
        assert!(!c.on_admission(Some(ms(50)), t0 + ms(2500)));
        assert_eq!(c.above_target_since(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_as_soon_as_the_queue_drains() {
        let mut c = CoDel::new(ms(100), ms(1000));
        let t0 = Instant::now();
        c.on_dequeue(ms(500), t0);
        c.on_dequeue(ms(500), t0 + ms(1000));
        assert!(c.is_overloaded());
        // A fast dequeue in the same instant ends the overload.
        c.on_dequeue(ms(20), t0 + ms(1000));
        assert!(!c.is_overloaded());
        // And an empty queue at admission does too.
        c.on_dequeue(ms(500), t0 + ms(1100));
        c.on_dequeue(ms(500), t0 + ms(2200));
        assert!(c.is_overloaded());
        assert!(!c.on_admission(None, t0 + ms(2300)));
        // Overload has to build up again over a full interval: a head
        // queued at 2350 ms crosses the target at 2450 ms.
        assert!(!c.on_admission(Some(ms(50)), t0 + ms(2400)));
        assert!(!c.on_admission(Some(ms(950)), t0 + ms(3300)));
        assert!(!c.on_admission(Some(ms(1040)), t0 + ms(3390)));
        assert!(c.on_admission(Some(ms(1110)), t0 + ms(3460)));
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_queue_counts_via_head_age() {
        let mut c = CoDel::new(ms(100), ms(1000));
        let t0 = Instant::now();
        // Nothing is dequeued (everything in flight); only admissions look.
        assert!(!c.on_admission(Some(ms(150)), t0));
        assert!(!c.on_admission(Some(ms(650)), t0 + ms(500)));
        assert!(c.on_admission(Some(ms(1150)), t0 + ms(1000)));
        // Sparse admissions still see it: the head never got younger.
        assert!(c.on_admission(Some(ms(9150)), t0 + ms(9000)));
    }

    #[tokio::test(start_paused = true)]
    async fn min_sojourn_reports_current_or_last_window() {
        let mut c = CoDel::new(ms(100), ms(1000));
        let t0 = Instant::now();
        assert_eq!(c.min_sojourn(), None);
        c.on_dequeue(ms(300), t0);
        c.on_dequeue(ms(200), t0 + ms(500));
        assert_eq!(c.min_sojourn(), Some(ms(200)));
        // Next window: first sample replaces the minimum.
        c.on_dequeue(ms(700), t0 + ms(1200));
        assert_eq!(c.min_sojourn(), Some(ms(700)));
        // After empty windows, a new sample starts a fresh minimum.
        c.on_dequeue(ms(50), t0 + ms(5500));
        assert_eq!(c.min_sojourn(), Some(ms(50)));
        assert_eq!(c.target(), ms(100));
        assert_eq!(c.interval(), ms(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_standing_queue_is_caught_by_its_head_age() {
        let mut c = CoDel::new(ms(20), ms(20));
        let t0 = Instant::now();
        assert!(!c.on_admission(None, t0));
        // Nothing dequeued or admitted for 200 ms; the head has waited 200
        // ms, so it has stood above target for 180 ms, many intervals.
        assert!(c.on_admission(Some(ms(200)), t0 + ms(200)));
        // A good sample after the head crossed the target dates the run.
        let mut d = CoDel::new(ms(20), ms(100));
        d.on_dequeue(ms(5), t0 + ms(150));
        assert!(
            !d.on_admission(Some(ms(200)), t0 + ms(200)),
            "only 50 ms since the last good sample"
        );
        assert!(d.on_admission(Some(ms(300)), t0 + ms(300)));
    }
}
