//! The control laws: pure state moved by samples, with no locking and no IO,
//! so every rule can be unit-tested with a hand-made clock.

use std::time::Duration;

use tokio::time::Instant;

use super::config::{Algorithm, LimitConfig};
use super::sample::{Outcome, Sample};

/// Consecutive drops at the floor after which the next success re-enters
/// slow start (the backend was down; ramping additively would take minutes).
const COLLAPSE_DROPS: u32 = 3;
/// Samples averaged plainly before the long RTT turns exponential, so the
/// first sample does not dominate it (Netflix uses 10).
const LONG_WARMUP: u64 = 10;
/// Weight of a new sample in the short (recent) RTT. Decisions use this
/// average, not single samples, so jitter is not mistaken for queueing.
const SHORT_WEIGHT: f64 = 0.1;
/// Samples averaged plainly before the short RTT turns exponential; the
/// baseline ignores it until then, or one lucky first sample would set a
/// baseline the typical RTT never meets (pinning the limit under jitter).
const SHORT_WARMUP: u64 = 10;
/// Calls started during a probe that must finish before it ends: enough for
/// the short RTT (about ten samples deep) to reflect the lower concurrency.
const PROBE_SAMPLES: u32 = 10;
/// Shortest RTT taken seriously: a zero RTT would make every ratio infinite.
const MIN_RTT_S: f64 = 1e-6;
/// AIMD decides once per window of at least this many successes (and at
/// least a limit's worth, about one round trip), so a low limit still
/// averages enough samples for its mean to mean something.
const AIMD_MIN_WINDOW: u32 = 16;
/// Standard errors by which a window's mean RTT must exceed the threshold
/// before AIMD calls it queueing: a one-sided test at about 0.1%, so jitter
/// alone almost never cuts, while a real queue of a few calls does.
const AIMD_Z: f64 = 3.0;
/// In slow start a window also closes once a quarter of its fastest RTT has
/// passed since its first sample (with at least [`AIMD_EARLY_MIN`]), so the
/// first window of a burst holds the calls that met no queue (in a FIFO
/// backend they return first) rather than a mix that teaches the baseline
/// our own queueing.
const AIMD_EARLY_CLOSE: f64 = 0.25;
/// ...with at least this many samples, not [`AIMD_MIN_WINDOW`]: against a
/// knee of 10, a burst from 10× has only 10 calls that meet no queue, and
/// a first window of 16 mixed in 6 queued ones, so its upper bound taught
/// a baseline 1.36× the no-load RTT, and the limit settled 30-60% above
/// the knee. Eight still average out most of the jitter, and the baseline
/// is the minimum of upper bounds, which a short window widens rather
/// than lowers.
const AIMD_EARLY_MIN: u32 = 8;
/// With a limit below [`AIMD_MIN_WINDOW`] a window may close after a mean
/// RTT with this many samples; otherwise a limit of 2 would decide once per
/// 8 round trips. (Not above: short noisy windows drag the baseline down.)
const AIMD_MIN_TIMED: u32 = 4;
/// The deepest proportional cut in one round trip (Swift's `max_mdf`,
/// here loose): a tenfold overshoot is undone in one step, yet one absurd
/// window cannot take the limit to the floor.
const AIMD_MAX_CUT: f64 = 0.1;
/// Probes come at most once per this many no-load round trips (and at most
/// once per `probe_interval_ms`): each halves the limit for a round trip,
/// so against a 10 s backend a 30 s interval would cost a sixth of the
/// throughput. The baseline windows stretch the same way.
const PROBE_RTTS: f64 = 20.0;
/// AIMD's slow start adds this much per success that met no queue, in its
/// successive round trips: ×3, ×2, ×1.5, ×1.25, ×1.125 (about ×12 in all),
/// then the schedule starts again. Front-loaded, as RFC 3742's limited slow
/// start and HyStart++'s conservative phase (RFC 9406) slow the growth
/// where overshoot costs most: with a sharp knee, queueing shows a round
/// trip after the knee is crossed, so the limit overshoots by the factor
/// of the round trip that crossed it. A constant ×1.5 took 6 round trips
/// from a tenth of the knee; ×2 reached it in 3 but then overshot to 2×.
/// This reaches 0.9× in 3 round trips, and any later crossing overshoots
/// by at most 25%. The schedule starts again (×3) only after a round trip
/// none of whose calls queued: one that saw some queueing is next to the
/// knee, where ×3 would overshoot threefold before the signal returns.
const AIMD_SLOW_GAINS: [f64; 5] = [2.0, 1.0, 0.5, 0.25, 0.125];
/// In slow start, a success this many times over the bar...
const AIMD_SS_EXIT: f64 = 1.25;
/// ...this many times in a row ends slow start at once, with the limit cut
/// to the mean of in_flight_at_start × baseline ÷ RTT over them (Little's
/// law per call). A window takes several round trips to fill at a limit of
/// 2 or 3, and by then slow start has overshot past what one cut undoes;
/// three calls each 25% over the bar are rarely jitter (the confidence
/// test of a window still judges the milder cases).
const AIMD_SS_STREAK: u32 = 3;
/// Below this limit each call is a large step in load (one call over a
/// knee of 2 adds 50% to every RTT, far above ordinary jitter), and a
/// round trip holds too few calls for a streak: slow start there ends on
/// one clearly queued call, when the limit or the concurrency the call met
/// is below this (see [`Law::ss_streak_needed`]), and below this limit,
/// before any baseline, a call is clearly queued at [`AIMD_SS_EXIT`] ×
/// `queue_tolerance` × the fastest RTT (1.31×), not × `tolerance` (1.5)
/// as well (1.875×). With the loose bar and a streak of three, against a
/// knee of 2 the calls at 3 in flight (1.5× the no-load RTT) passed, the
/// limit climbed to 6-8 and was cut only in round trip 4-6 (p99 2.8-3.3×).
/// At larger limits calls cross the knee one by one, so the milder,
/// jitter-proof rule sees the queue in time. The price: at a small limit
/// in slow start, jitter over 31% of the fastest RTT reads as queueing.
const AIMD_SMALL: f64 = 8.0;

/// AIMD's current window: the successes of calls that started at or after
/// `start` (the last cut or probe edge), so each decision judges the limit
/// in force, not the one before it.
#[derive(Debug, Clone, Copy, Default)]
struct RttWindow {
    start: Option<Instant>,
    /// Samples that close it: a limit's worth as of its first sample (in
    /// slow start the limit outgrows any later count).
    size: u32,
    n: u32,
    sum: f64,
    sum_sq: f64,
    /// Samples from calls that found the limit mostly used.
    busy: u32,
    /// When its first sample ended.
    opened: Option<Instant>,
    /// Its fastest sample, s.
    fastest: f64,
    /// Σ in_flight_at_start ÷ rtt: × the baseline, the mean concurrency
    /// the backend would have served without queueing (Little's law).
    load: f64,
}

/// A closed AIMD window: the lower confidence bound of its mean RTT, and
/// whether it mostly used the limit.
#[derive(Debug, Clone, Copy)]
struct Judged {
    low: f64,
    busy: bool,
    /// Mean of in_flight_at_start ÷ rtt over the window.
    load: f64,
    /// Samples in the window ÷ the round trip's worth it was sized for.
    share: f64,
}

impl RttWindow {
    fn reset(&mut self, start: Instant) {
        *self = Self {
            start: Some(start),
            ..Self::default()
        };
    }

    /// Mean and standard error of the mean.
    fn stats(&self) -> (f64, f64) {
        let n = f64::from(self.n.max(1));
        let mean = self.sum / n;
        let var = if self.n > 1 {
            ((self.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        (mean, (var / n).sqrt())
    }
}

/// The minimum RTT over the current and the previous window, so a baseline
/// learned at a better time expires instead of pinning the limit forever
/// (Envoy #38338), yet one noisy window does not erase it.
#[derive(Debug, Clone)]
struct WindowedMin {
    window: Duration,
    start: Option<Instant>,
    cur: Option<f64>,
    prev: Option<f64>,
}

impl WindowedMin {
    fn new(window: Duration) -> Self {
        Self {
            window,
            start: None,
            cur: None,
            prev: None,
        }
    }

    /// Expires windows that ended before `now`.
    fn roll(&mut self, now: Instant) {
        match self.start {
            None => self.start = Some(now),
            Some(s) => {
                let age = now.saturating_duration_since(s);
                if age >= self.window * 2 {
                    self.prev = None;
                    self.cur = None;
                    self.start = Some(now);
                } else if age >= self.window {
                    self.restart(now);
                }
            }
        }
    }

    /// Starts a new window now (a probe: what follows is the fresh view).
    fn restart(&mut self, now: Instant) {
        self.prev = self.cur.take();
        self.start = Some(now);
    }

    fn update(&mut self, now: Instant, rtt: f64) {
        self.roll(now);
        self.cur = Some(self.cur.map_or(rtt, |c| c.min(rtt)));
    }

    fn get(&self) -> Option<f64> {
        match (self.cur, self.prev) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A limit-halving probe in progress: samples of calls started during it
/// see the backend with less of our own queueing, so the windowed minimum
/// relearns the true no-load RTT.
#[derive(Debug, Clone, Copy)]
struct Probe {
    started: Instant,
    limit: f64,
    fresh: u32,
}

/// Sanitised settings plus the moving state of one control law.
#[derive(Debug, Clone)]
pub(crate) struct Law {
    algorithm: Algorithm,
    min: f64,
    max: f64,
    initial: f64,
    backoff: f64,
    tolerance: f64,
    queue_tolerance: f64,
    smoothing: f64,
    long_window: f64,
    probe_interval: Duration,
    slow_start_enabled: bool,

    limit: f64,
    slow_start: bool,
    baseline: WindowedMin,
    /// AIMD's baseline: the windowed minimum of each round trip's upper
    /// confidence bound (mean + [`AIMD_Z`] standard errors).
    aimd_base: WindowedMin,
    short_rtt: f64,
    short_count: u64,
    long_rtt: f64,
    long_count: u64,
    /// AIMD: the samples of the round trip being judged.
    window: RttWindow,
    drops_at_min: u32,
    at_min_since: Option<Instant>,
    /// When the last probe was due (at first: when the law was made).
    last_probe: Instant,
    probe: Option<Probe>,
    samples: u64,
    drops: u64,
    /// Fastest successful RTT ever seen, s (slow start's bar before any
    /// AIMD window has closed).
    fastest: f64,
    /// AIMD slow start: the round trip of the schedule (see
    /// [`AIMD_SLOW_GAINS`]) and the successes left in it.
    ss_round: usize,
    ss_left: f64,
    /// AIMD slow start: consecutive successes over [`AIMD_SS_EXIT`] × the
    /// bar, and the sum of their Little's-law estimates.
    ss_streak: u32,
    ss_est: f64,
    /// AIMD slow start: whether a success of this round trip was over the bar.
    ss_queued: bool,
}

impl Law {
    /// A law from `cfg`, clamping anything out of range instead of panicking.
    pub(crate) fn new(cfg: &LimitConfig, now: Instant) -> Self {
        let min = cfg.min.max(1) as f64;
        let max = (cfg.max as f64).max(min);
        let initial = (cfg.initial as f64).clamp(min, max);
        let unit = |x: f64, default: f64| {
            if x > 0.0 && x < 1.0 { x } else { default }
        };
        let probe_interval = Duration::from_millis(cfg.probe_interval_ms.max(1));
        Self {
            algorithm: cfg.algorithm,
            min,
            max,
            initial,
            backoff: unit(cfg.backoff_ratio, 0.9),
            tolerance: if cfg.tolerance.is_finite() && cfg.tolerance >= 1.0 {
                cfg.tolerance
            } else {
                1.5
            },
            queue_tolerance: if cfg.queue_tolerance.is_finite() && cfg.queue_tolerance >= 1.0 {
                cfg.queue_tolerance
            } else {
                1.05
            },
            smoothing: if cfg.smoothing > 0.0 && cfg.smoothing <= 1.0 {
                cfg.smoothing
            } else {
                0.2
            },
            long_window: cfg.long_window.max(1) as f64,
            probe_interval,
            slow_start_enabled: cfg.slow_start && cfg.algorithm != Algorithm::Fixed,
            limit: initial,
            slow_start: cfg.slow_start && cfg.algorithm != Algorithm::Fixed,
            baseline: WindowedMin::new(probe_interval),
            aimd_base: WindowedMin::new(probe_interval),
            short_rtt: 0.0,
            short_count: 0,
            long_rtt: 0.0,
            long_count: 0,
            window: RttWindow::default(),
            drops_at_min: 0,
            at_min_since: None,
            last_probe: now,
            probe: None,
            samples: 0,
            drops: 0,
            fastest: f64::INFINITY,
            ss_round: 0,
            ss_left: initial,
            ss_streak: 0,
            ss_est: 0.0,
            ss_queued: false,
        }
    }

    /// The limit the semaphore enforces (before the external cap).
    pub(crate) fn limit(&self) -> usize {
        let l = match self.probe {
            Some(p) => self.limit.min(p.limit),
            None => self.limit,
        };
        // `as` saturates; the clamp keeps it in [min, max] whatever the float.
        (l.floor().clamp(self.min, self.max)) as usize
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub(crate) fn in_slow_start(&self) -> bool {
        self.slow_start
    }
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }
    pub(crate) fn drops(&self) -> u64 {
        self.drops
    }
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        let aimd = (self.algorithm == Algorithm::Aimd)
            .then(|| self.aimd_base.get())
            .flatten();
        aimd.or(self.baseline.get()).map(Duration::from_secs_f64)
    }
    pub(crate) fn rtt(&self) -> Option<Duration> {
        (self.short_rtt > 0.0).then(|| Duration::from_secs_f64(self.short_rtt))
    }

    /// Feeds one finished call: it started at `started` with
    /// `in_flight_at_start` calls running (itself included), and
    /// `in_flight_at_end` were running as it ended (itself included).
    pub(crate) fn on_sample(
        &mut self,
        now: Instant,
        started: Instant,
        in_flight_at_start: usize,
        in_flight_at_end: usize,
        sample: Sample,
    ) {
        if sample.outcome == Outcome::Ignore {
            return;
        }
        self.samples += 1;
        if self.algorithm == Algorithm::Fixed {
            if sample.outcome == Outcome::Dropped {
                self.drops += 1;
            } else {
                self.observe_rtt(now, sample.rtt.as_secs_f64().max(MIN_RTT_S));
            }
            return;
        }
        self.end_probe_if_done(now, started);
        if sample.outcome == Outcome::Dropped {
            self.drops += 1;
            self.on_drop(now);
            return;
        }
        // A success after a collapse: the backend is back, so ramp quickly,
        // and judge it by what it does now, not by the recent RTT from
        // before the outage.
        let collapsed = self.drops_at_min >= COLLAPSE_DROPS
            || self
                .at_min_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.probe_every());
        self.drops_at_min = 0;
        if collapsed && self.slow_start_enabled {
            self.slow_start = true;
            self.ss_round = 0;
            self.ss_left = self.limit;
            self.ss_streak = 0;
            self.ss_est = 0.0;
            self.ss_queued = false;
            self.fastest = f64::INFINITY;
            self.at_min_since = None;
            self.short_count = 0;
        }
        self.observe_rtt(now, sample.rtt.as_secs_f64().max(MIN_RTT_S));
        let rtt = self.short_rtt;
        self.stretch_windows();
        self.maybe_start_probe(now);

        let base = self.baseline.get().unwrap_or(rtt);
        // App-limited: the limit was mostly unused, so a good RTT proves
        // nothing about a higher one (Netflix and vector both skip these).
        // In use: the most the call ran beside. Calls granted in one burst
        // get in_flight_at_start 1, 2, 3..., yet all ran at the burst's size.
        let in_use = in_flight_at_start.max(in_flight_at_end) as f64;
        let app_limited = in_use * 2.0 < self.limit.floor();
        // AIMD's windows run in slow start and probes too, so its baseline
        // sees the round trips at low concurrency.
        let raw = sample.rtt.as_secs_f64().max(MIN_RTT_S);
        self.fastest = self.fastest.min(raw);
        // AIMD slow start's bar and no-load RTT for this call, as known
        // before it (a window it closes must not judge it: at a small limit
        // the first window holds the first queued calls, and its upper
        // bound would pass them). A baseline from before an outage has
        // expired by now.
        let ss_bar = (self.slow_start && self.algorithm == Algorithm::Aimd).then(|| {
            self.aimd_base.roll(now);
            let bar = match self.aimd_base.get() {
                Some(b) => self.queue_tolerance * b,
                None => self.tolerance * self.fastest,
            };
            (bar, self.aimd_base.get().unwrap_or(self.fastest))
        });
        let judged = if self.algorithm == Algorithm::Aimd {
            self.aimd_window(now, started, raw, app_limited, in_flight_at_start)
        } else {
            None
        };

        // Slow start never grows past twice the concurrency the call met:
        // one doubling of what was actually in use, not of an unused limit.
        let grown = (self.limit + 1.0).min(2.0 * in_use);
        if self.slow_start && self.algorithm == Algorithm::Aimd {
            // AIMD judges slow start by round trips, as it judges the rest:
            // the first window that queues ends it with a proportional cut,
            // and so does a streak of calls that clearly queued (a window
            // fills too slowly at a small limit). Until then only a call
            // that met no queue vouches for growth (a round trip of feedback
            // delay already lets slow start overshoot by the round trip's
            // factor; calls that queued must not add to it). Before any
            // baseline, the fastest call so far, with `tolerance` for
            // jitter, stands in.
            let (bar, base) = ss_bar.unwrap_or((f64::INFINITY, self.fastest));
            self.ss_queued |= raw > bar;
            let clear = if self.limit < AIMD_SMALL {
                AIMD_SS_EXIT * self.queue_tolerance * base
            } else {
                AIMD_SS_EXIT * bar
            };
            let queued = raw > clear;
            if queued {
                // What the backend would have served without queueing, by
                // Little's law: the concurrency met × no-load RTT ÷ RTT.
                self.ss_streak += 1;
                self.ss_est += in_flight_at_start.max(1) as f64 * base / raw;
            } else {
                self.ss_streak = 0;
                self.ss_est = 0.0;
            }
            match judged {
                Some(j) if self.aimd_queueing(&j) => {
                    self.slow_start = false;
                    self.limit = self.aimd(now, judged);
                }
                _ if self.ss_streak >= self.ss_streak_needed(in_flight_at_start) => {
                    self.slow_start = false;
                    // To the nearest whole call: the limit in force is the
                    // floor, which at a knee of 2 would turn an estimate of
                    // 1.9 into half the knee.
                    let est = (self.ss_est / f64::from(self.ss_streak)).round();
                    self.limit = est.clamp(self.limit * AIMD_MAX_CUT, self.limit);
                    self.window.reset(now);
                }
                // Only while the limit binds: with the clients' demand
                // below it (a start far above the knee), raising it admits
                // nothing and only deepens the cut that follows.
                _ if in_use + 1.0 >= self.limit.floor() && raw <= bar && !queued => {
                    // At least one more than in use, or a limit of 1 would
                    // stop at 1.5.
                    let g = self.slow_gain();
                    let cap = ((1.0 + g) * in_use).max(in_use + 1.0);
                    let step = if self.limit < 4.0 { g.max(1.0) } else { g };
                    let grown = (self.limit + step).min(cap);
                    self.limit = self.limit.max(grown);
                }
                _ => {}
            }
            self.ss_count();
            self.clamp(now);
            return;
        }
        if self.slow_start {
            if rtt <= self.tolerance * base {
                if !app_limited {
                    // +1 per success doubles the limit per limit's worth.
                    self.limit = self.limit.max(grown);
                }
                self.clamp(now);
                return;
            }
            // First congestion signal ends slow start; the law takes over.
            self.slow_start = false;
        }

        let old = self.limit;
        let new = match self.algorithm {
            Algorithm::Fixed => old,
            Algorithm::Aimd => self.aimd(now, judged),
            Algorithm::Gradient2 => self.gradient2(rtt, base),
            Algorithm::Vegas => self.vegas(rtt, base),
        };
        self.limit = if app_limited { new.min(old) } else { new };
        self.clamp(now);
    }

    /// Clearly queued calls in a row that end AIMD's slow start:
    /// [`AIMD_SS_STREAK`], or one below [`AIMD_SMALL`] (the limit, or the
    /// concurrency the call met: a call that queued beside a few others
    /// places the knee below them).
    fn ss_streak_needed(&self, in_flight_at_start: usize) -> u32 {
        if self.limit < AIMD_SMALL || (in_flight_at_start as f64) < AIMD_SMALL {
            1
        } else {
            AIMD_SS_STREAK
        }
    }

    /// The gain per unqueued success in this round trip of slow start.
    fn slow_gain(&self) -> f64 {
        AIMD_SLOW_GAINS[self.ss_round % AIMD_SLOW_GAINS.len()]
    }

    /// Counts a success against the slow-start round trip.
    fn ss_count(&mut self) {
        self.ss_left -= 1.0;
        if self.ss_left <= 0.0 {
            let last = AIMD_SLOW_GAINS.len() - 1;
            // Near the knee the schedule holds its last, smallest gain.
            if !(self.ss_queued && self.ss_round % AIMD_SLOW_GAINS.len() == last) {
                self.ss_round += 1;
            }
            self.ss_queued = false;
            self.ss_left = self.limit.floor().max(1.0);
        }
    }

    fn observe_rtt(&mut self, now: Instant, rtt: f64) {
        self.short_count += 1;
        let w = (1.0 / self.short_count as f64).max(SHORT_WEIGHT);
        self.short_rtt = self.short_rtt * (1.0 - w) + rtt * w;
        // The minimum of the smoothed RTT: with jitter, the minimum of raw
        // samples sits far below the typical RTT and reads as queueing.
        if self.short_count >= SHORT_WARMUP {
            self.baseline.update(now, self.short_rtt);
        } else {
            self.baseline.roll(now);
        }
        self.long_count += 1;
        if self.long_count <= LONG_WARMUP {
            let n = self.long_count as f64;
            self.long_rtt = (self.long_rtt * (n - 1.0) + rtt) / n;
        } else {
            let w = 2.0 / (self.long_window + 1.0);
            self.long_rtt = self.long_rtt * (1.0 - w) + rtt * w;
        }
        // Netflix: when load falls sharply, let the long RTT catch up fast
        // instead of over a whole window, or the limit overshoots.
        if self.long_rtt / rtt > 2.0 {
            self.long_rtt *= 0.95;
        }
    }

    /// Back-pressure: multiplicative decrease for every adaptive law, and
    /// the timeout's RTT is never averaged in (a timed-out call's long RTT
    /// would make Gradient2 grow the limit: Netflix #137).
    fn on_drop(&mut self, now: Instant) {
        self.slow_start = false;
        self.baseline.roll(now);
        self.aimd_base.roll(now);
        self.decrease(now);
        if self.limit <= self.min {
            self.drops_at_min += 1;
        }
    }

    fn decrease(&mut self, now: Instant) {
        self.limit *= self.backoff;
        self.window.reset(now);
        self.clamp(now);
    }

    fn clamp(&mut self, now: Instant) {
        if !self.limit.is_finite() {
            self.limit = self.initial;
        }
        self.limit = self.limit.clamp(self.min, self.max);
        if self.limit < self.min + 1.0 {
            self.at_min_since.get_or_insert(now);
        } else {
            self.at_min_since = None;
        }
    }

    /// The effective probe interval: `probe_interval_ms`, or
    /// [`PROBE_RTTS`] no-load round trips when that is longer.
    fn probe_every(&self) -> Duration {
        let rtts = self
            .min_rtt()
            .map_or(Duration::ZERO, |r| r.mul_f64(PROBE_RTTS));
        self.probe_interval.max(rtts)
    }

    /// Stretches the baseline windows to the effective probe interval, so
    /// a baseline outlives the gap between two probes.
    fn stretch_windows(&mut self) {
        let every = self.probe_every();
        self.baseline.window = every;
        self.aimd_base.window = every;
    }

    fn maybe_start_probe(&mut self, now: Instant) {
        if now < self.last_probe + self.probe_every() {
            return;
        }
        self.last_probe = now;
        if self.slow_start || self.probe.is_some() || self.limit < 2.0 * self.min {
            return;
        }
        self.probe = Some(Probe {
            started: now,
            limit: (self.limit / 2.0).max(self.min),
            fresh: 0,
        });
        self.baseline.restart(now);
        self.aimd_base.restart(now);
        // Calls from before the probe ran at the full limit: not a sample
        // of either the probe or what follows it.
        self.window.reset(now);
    }

    fn end_probe_if_done(&mut self, now: Instant, started: Instant) {
        if let Some(p) = &mut self.probe {
            // Calls that started during the probe ran at the reduced
            // concurrency. A probe never outlives its interval.
            if started >= p.started {
                p.fresh += 1;
            }
            // AIMD's probe ends when its window closes (`aimd_window`).
            if (p.fresh >= PROBE_SAMPLES && self.algorithm != Algorithm::Aimd)
                || now.saturating_duration_since(p.started) >= self.probe_every()
            {
                self.probe = None;
                // Calls from the probe ran at half the limit and would vouch
                // for a limit they never met.
                self.window.reset(now);
            }
        }
    }

    /// Adds a success to AIMD's window; when the window holds a round
    /// trip's worth (a limit's worth of calls started since it opened, and
    /// at least [`AIMD_MIN_WINDOW`]), closes it, feeds its upper confidence
    /// bound to the baseline and returns it for judging (none during a
    /// probe, which the closing window ends).
    fn aimd_window(
        &mut self,
        now: Instant,
        started: Instant,
        rtt: f64,
        app_limited: bool,
        in_flight_at_start: usize,
    ) -> Option<Judged> {
        let limit = self.limit() as u32;
        let size = AIMD_MIN_WINDOW.max(limit);
        let slow_start = self.slow_start;
        let w = &mut self.window;
        if w.start.is_some_and(|s| started < s) {
            // Started under an older limit (before the last cut or probe edge).
            return None;
        }
        w.start.get_or_insert(started);
        if w.n == 0 {
            w.size = size;
            w.opened = Some(now);
            w.fastest = rtt;
        }
        w.n += 1;
        w.sum += rtt;
        w.sum_sq += rtt * rtt;
        w.fastest = w.fastest.min(rtt);
        w.load += in_flight_at_start.max(1) as f64 / rtt;
        if !app_limited {
            w.busy += 1;
        }
        let open_s = w
            .opened
            .map_or(0.0, |o| now.saturating_duration_since(o).as_secs_f64());
        // Early close only in slow start (a burst, from any start): in
        // steady state many short noisy windows would drag the minimum of
        // their upper bounds down until jitter reads as queueing.
        let full = w.n >= w.size
            || (slow_start && w.n >= AIMD_EARLY_MIN && open_s >= AIMD_EARLY_CLOSE * w.fastest)
            || (size > limit && w.n >= AIMD_MIN_TIMED && open_s >= w.sum / f64::from(w.n));
        if !full {
            return None;
        }
        let (mean, se) = w.stats();
        let busy = w.busy * 2 >= w.n;
        let load = w.load / f64::from(w.n);
        let share = f64::from(w.n) / f64::from(w.size.max(1));
        // The next window continues from here: an increase of one changes
        // too little to void the calls already running.
        *w = RttWindow {
            start: w.start,
            ..RttWindow::default()
        };
        // The baseline is the lowest RTT we are confident of: the minimum of
        // upper bounds, so noise does not drag it below the typical no-load
        // RTT (the minimum of noisy means does, and then jitter alone reads
        // as queueing and collapses the limit).
        self.aimd_base.update(now, mean + AIMD_Z * se);
        if self.probe.take().is_some() {
            // The probe's round trip is measured; what follows runs at the
            // full limit again.
            self.window.reset(now);
            return None;
        }
        Some(Judged {
            low: mean - AIMD_Z * se,
            busy,
            load,
            share,
        })
    }

    /// Whether a closed window is, with confidence, above
    /// `queue_tolerance` × the baseline.
    fn aimd_queueing(&self, j: &Judged) -> bool {
        j.low > self.queue_tolerance * self.aimd_base.get().unwrap_or(f64::INFINITY)
    }

    /// AIMD's law, decided per window: a queueing window cuts the limit to
    /// what the backend serves without queueing, baseline × mean(in flight
    /// ÷ RTT) (Little's law; Swift and Gradient2 likewise cut in proportion
    /// to the excess delay), by at least one and at most to
    /// [`AIMD_MAX_CUT`] × the limit; otherwise +1 per round trip's worth
    /// of samples if the window mostly used the limit.
    fn aimd(&mut self, now: Instant, judged: Option<Judged>) -> f64 {
        let Some(j) = judged else {
            return self.limit;
        };
        if self.aimd_queueing(&j) {
            let base = self.aimd_base.get().unwrap_or(f64::INFINITY);
            let floor = self.limit * AIMD_MAX_CUT;
            let target = (base * j.load).clamp(floor, (self.limit - 1.0).max(floor));
            self.limit = target;
            self.window.reset(now);
            self.clamp(now);
        } else if j.busy {
            return self.limit + j.share;
        }
        self.limit
    }

    /// Gradient2 (Netflix): gradient = clamp(tolerance × long / short, 0.5, 1),
    /// new = limit × gradient + √limit, smoothed.
    fn gradient2(&mut self, rtt: f64, base: f64) -> f64 {
        // Deviation: the long RTT is capped at the probed no-load RTT, or it
        // learns our own queueing as normal and the limit drifts upward.
        let long = self.long_rtt.min(base).max(MIN_RTT_S);
        let gradient = (self.tolerance * long / rtt).clamp(0.5, 1.0);
        let queue = self.limit.sqrt();
        let new = self.limit * gradient + queue;
        // Netflix updates once per window of samples; here each sample
        // moves 1/limit of the smoothed step, so one limit's worth of
        // samples (about one round trip) makes one step whatever the rate.
        let w = self.smoothing / self.limit.max(1.0);
        self.limit + (new - self.limit) * w
    }

    /// Vegas (Netflix VegasLimit): queue = limit × (1 − rtt_noload / rtt);
    /// grow fast when nearly empty, slowly below α, shrink above β.
    fn vegas(&mut self, rtt: f64, base: f64) -> f64 {
        let l = self.limit;
        let log = l.log10().max(1.0);
        let (threshold, alpha, beta) = (log, 3.0 * log, 6.0 * log);
        let queue = (l * (1.0 - base / rtt)).ceil();
        let new = if queue <= threshold {
            l + beta
        } else if queue < alpha {
            l + log
        } else if queue > beta {
            l - log
        } else {
            l
        };
        // One full step per round trip, as TCP Vegas adjusts once per RTT:
        // each sample moves 1/limit of it. (Stepping per sample, as Netflix
        // does, overshoots by a whole window's worth.)
        l + (new.clamp(self.min, self.max) - l) / l.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(algorithm: Algorithm) -> LimitConfig {
        LimitConfig {
            algorithm,
            initial: 10,
            min: 2,
            max: 100,
            slow_start: false,
            probe_interval_ms: 10_000,
            ..LimitConfig::default()
        }
    }

    const ALGOS: [Algorithm; 3] = [Algorithm::Aimd, Algorithm::Gradient2, Algorithm::Vegas];

    /// Feeds `n` samples of `rtt`, each from a call that used the whole limit.
    fn feed(law: &mut Law, now: &mut Instant, n: usize, s: Sample) {
        for _ in 0..n {
            *now += Duration::from_millis(1);
            let l = law.limit();
            law.on_sample(*now, *now, l, l, s);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fixed_never_moves() {
        let mut now = Instant::now();
        let mut law = Law::new(&LimitConfig::fixed(7), now);
        feed(&mut law, &mut now, 50, Sample::dropped(ms(10)));
        feed(&mut law, &mut now, 50, Sample::success(ms(1)));
        assert_eq!(law.limit(), 7);
        assert_eq!(law.drops(), 50);
    }

    #[test]
    fn every_law_grows_under_low_latency() {
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            feed(&mut law, &mut now, 300, Sample::success(ms(10)));
            assert!(law.limit() > 15, "{a:?}: {}", law.limit());
        }
    }

    #[test]
    fn every_law_backs_off_on_drops_and_stays_in_bounds() {
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            feed(&mut law, &mut now, 2000, Sample::success(ms(10)));
            assert!(law.limit() <= 100, "{a:?}");
            let high = law.limit();
            feed(&mut law, &mut now, 3, Sample::dropped(ms(10)));
            assert!(law.limit() < high, "{a:?}: {high} -> {}", law.limit());
            feed(&mut law, &mut now, 500, Sample::dropped(ms(1000)));
            assert_eq!(law.limit(), 2, "{a:?} stays at min");
        }
    }

    #[test]
    fn timeouts_never_grow_the_limit() {
        // Netflix #137: long timed-out RTTs made Gradient2 grow the limit.
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            let mut last = law.limit();
            for _ in 0..200 {
                feed(&mut law, &mut now, 1, Sample::dropped(ms(5000)));
                assert!(law.limit() <= last, "{a:?}");
                last = law.limit();
            }
        }
    }

    #[test]
    fn every_law_backs_off_on_rising_latency() {
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            feed(&mut law, &mut now, 500, Sample::success(ms(10)));
            let high = law.limit();
            feed(&mut law, &mut now, 200, Sample::success(ms(40)));
            assert!(law.limit() < high, "{a:?}: {high} -> {}", law.limit());
        }
    }

    #[test]
    fn app_limited_samples_do_not_raise_the_limit() {
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            for _ in 0..500 {
                now += ms(1);
                law.on_sample(now, now, 1, 1, Sample::success(ms(10)));
            }
            assert_eq!(law.limit(), 10, "{a:?}");
        }
    }

    #[test]
    fn slow_start_doubles_per_limits_worth() {
        for a in ALGOS {
            let mut now = Instant::now();
            let c = LimitConfig {
                slow_start: true,
                initial: 4,
                ..cfg(a)
            };
            let mut law = Law::new(&c, now);
            assert!(law.in_slow_start());
            // AIMD grows ×3, then ×2 per limit's worth (`AIMD_SLOW_GAINS`),
            // the others double.
            let (a1, a2, a3) = match a {
                Algorithm::Aimd => (12, 24, 21),
                _ => (8, 16, 14),
            };
            let l = law.limit();
            feed(&mut law, &mut now, l, Sample::success(ms(10)));
            assert_eq!(law.limit(), a1, "{a:?}");
            let l = law.limit();
            feed(&mut law, &mut now, l, Sample::success(ms(10)));
            assert_eq!(law.limit(), a2, "{a:?}");
            // Congestion ends it.
            feed(&mut law, &mut now, 1, Sample::dropped(ms(10)));
            assert!(!law.in_slow_start());
            assert_eq!(law.limit(), a3, "{a:?}");
        }
    }

    #[test]
    fn slow_start_ends_on_queueing_latency() {
        let mut now = Instant::now();
        let c = LimitConfig {
            slow_start: true,
            ..cfg(Algorithm::Aimd)
        };
        let mut law = Law::new(&c, now);
        // A round trip at 10 ms is the baseline; the first one over it ends
        // slow start (AIMD judges whole windows, so one window each).
        feed(
            &mut law,
            &mut now,
            2 * AIMD_MIN_WINDOW as usize,
            Sample::success(ms(10)),
        );
        assert!(law.in_slow_start());
        let before = law.limit();
        feed(
            &mut law,
            &mut now,
            2 * AIMD_MIN_WINDOW as usize,
            Sample::success(ms(30)),
        );
        assert!(!law.in_slow_start());
        // ...with a cut in proportion: a third of what ran, not ×0.9.
        assert!(law.limit() < before / 2, "{before} -> {}", law.limit());
    }

    /// AIMD in slow start from a limit of 1.
    fn small_aimd(now: Instant) -> Law {
        let c = LimitConfig {
            slow_start: true,
            initial: 1,
            min: 1,
            ..cfg(Algorithm::Aimd)
        };
        Law::new(&c, now)
    }

    #[test]
    fn slow_start_at_a_small_limit_ends_on_one_clearly_queued_call() {
        let mut now = Instant::now();
        let mut law = small_aimd(now);
        // One call at 100 ms: ×3.
        now += ms(100);
        law.on_sample(now, now - ms(100), 1, 1, Sample::success(ms(100)));
        assert_eq!(law.limit(), 3);
        // Against a knee of 2, the third call of the burst meets a queue:
        // 150 ms, 1.5× the fastest (over the jitter-proof 1.875× before a
        // baseline, but one call over a knee this small is plain). It ends
        // slow start at once, cut to 3 × 100 ÷ 150 = 2 by Little's law.
        now += ms(150);
        law.on_sample(now, now - ms(150), 3, 3, Sample::success(ms(150)));
        assert!(!law.in_slow_start());
        assert_eq!(law.limit(), 2);
    }

    #[test]
    fn slow_start_at_a_small_limit_rides_out_jitter() {
        let mut now = Instant::now();
        let mut law = small_aimd(now);
        // 100-125 ms whatever the concurrency: within 1.25 × 1.05 of the
        // fastest, never a queue, so slow start goes on past the small
        // limits.
        for i in 0..40u64 {
            now += ms(10);
            let l = law.limit();
            let rtt = ms(100 + (i * 7) % 26);
            law.on_sample(now, now - rtt, l, l, Sample::success(rtt));
        }
        assert!(law.in_slow_start());
        assert!(law.limit() >= AIMD_SMALL as usize, "{}", law.limit());
    }

    #[test]
    fn recovery_after_collapse_reenters_slow_start() {
        for a in ALGOS {
            let mut now = Instant::now();
            let c = LimitConfig {
                slow_start: true,
                ..cfg(a)
            };
            let mut law = Law::new(&c, now);
            feed(&mut law, &mut now, 100, Sample::success(ms(10)));
            feed(&mut law, &mut now, 100, Sample::dropped(ms(1000)));
            assert_eq!(law.limit(), 2);
            assert!(!law.in_slow_start());
            // The outage outlasts the baseline windows; the backend is back
            // and slower than before, which must not pin the limit.
            now += ms(30_000);
            feed(&mut law, &mut now, 1, Sample::success(ms(25)));
            assert!(law.in_slow_start(), "{a:?}");
            // About five round trips of doubling (AIMD's schedule, ×3 then
            // slower, about as many).
            let n = if a == Algorithm::Aimd { 100 } else { 60 };
            feed(&mut law, &mut now, n, Sample::success(ms(25)));
            assert!(law.limit() >= 32, "{a:?}: {}", law.limit());
        }
    }

    #[test]
    fn baseline_follows_a_permanently_slower_backend() {
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            feed(&mut law, &mut now, 300, Sample::success(ms(10)));
            // Three times slower for good: the limit first falls...
            for _ in 0..500 {
                now += ms(50);
                let l = law.limit();
                law.on_sample(now, now, l, l, Sample::success(ms(30)));
            }
            let min = law.min_rtt().unwrap().as_secs_f64();
            assert!((min - 0.030).abs() < 1e-6, "{a:?}: {min}");
            // ...then climbs again instead of staying pinned.
            for _ in 0..1000 {
                now += ms(10);
                let l = law.limit();
                law.on_sample(now, now, l, l, Sample::success(ms(30)));
            }
            assert!(law.limit() > 20, "{a:?}: {}", law.limit());
        }
    }

    #[test]
    fn probe_halves_the_limit_until_a_fresh_sample() {
        for a in ALGOS {
            let mut now = Instant::now();
            let mut law = Law::new(&cfg(a), now);
            feed(&mut law, &mut now, 10, Sample::success(ms(10)));
            let l = law.limit();
            now += ms(10_000);
            let before = now - ms(100);
            law.on_sample(now, before, l, l, Sample::success(ms(10)));
            assert_eq!(law.limit(), (l / 2).max(2), "{a:?}");
            // Old calls do not end it; enough calls started during it do
            // (AIMD: a window's worth, so its baseline sees the probe).
            for _ in 0..20 {
                law.on_sample(now, before, l, l, Sample::success(ms(10)));
            }
            assert_eq!(law.limit(), (l / 2).max(2), "{a:?}");
            let fresh = match a {
                Algorithm::Aimd => AIMD_MIN_WINDOW,
                _ => PROBE_SAMPLES,
            };
            now += ms(5);
            for _ in 0..fresh {
                assert_eq!(law.limit(), (l / 2).max(2), "{a:?}");
                // Less than an RTT apart: a window closes by count here
                // (spaced an RTT apart it would close by time, after
                // AIMD_MIN_TIMED samples).
                now += Duration::from_micros(500);
                law.on_sample(now, now - ms(5), l / 2, l / 2, Sample::success(ms(10)));
            }
            assert!(law.limit() >= l, "{a:?}");
        }
    }

    /// Feeds a backend whose RTT is `base` up to `knee` in flight and grows
    /// in proportion above it, plus uniform jitter; every call uses the
    /// whole limit. Returns the mean limit over the last half.
    fn run_knee(law: &mut Law, now: &mut Instant, n: usize, knee: f64, jitter: f64) -> f64 {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut sum = 0.0;
        for i in 0..n {
            *now += ms(1);
            let l = law.limit();
            let rtt = 100.0 * (l as f64 / knee).max(1.0) + rng.f64() * jitter;
            law.on_sample(*now, *now, l, l, Sample::success(ms(rtt as u64)));
            if i >= n / 2 {
                sum += l as f64;
            }
        }
        sum / (n - n / 2) as f64
    }

    #[test]
    fn aimd_settles_near_the_knee() {
        let mut now = Instant::now();
        let mut law = Law::new(&cfg(Algorithm::Aimd), now);
        let mean = run_knee(&mut law, &mut now, 20_000, 40.0, 10.0);
        assert!((38.0..46.0).contains(&mean), "{mean}");
    }

    #[test]
    fn aimd_does_not_mistake_jitter_for_queueing() {
        // RTT 100-300 ms whatever the concurrency: the limit must not
        // collapse (a low tolerance on a noisy average did: goodput 5%).
        let mut now = Instant::now();
        let mut law = Law::new(&cfg(Algorithm::Aimd), now);
        let mean = run_knee(&mut law, &mut now, 20_000, 1e9, 200.0);
        assert!(mean > 50.0, "{mean}");
    }

    #[test]
    fn out_of_range_config_is_clamped() {
        let now = Instant::now();
        let bad = LimitConfig {
            initial: 0,
            min: 0,
            max: 0,
            backoff_ratio: f64::NAN,
            tolerance: -1.0,
            smoothing: 7.0,
            long_window: 0,
            probe_interval_ms: 0,
            ..LimitConfig::default()
        };
        let mut law = Law::new(&bad, now);
        assert_eq!(law.limit(), 1);
        law.on_sample(now, now, 1, 1, Sample::success(Duration::ZERO));
        law.on_sample(now, now, 1, 1, Sample::dropped(Duration::MAX));
        assert_eq!(law.limit(), 1);
    }
}
