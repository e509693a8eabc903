//! Adaptive concurrency limits.
//!
//! A [`Limiter`] is a FIFO semaphore whose size a control law moves from the
//! round-trip times and back-pressure of the calls it admits. The caller
//! acquires a [`Permit`], runs the call, and records a [`Sample`]; the law
//! knows nothing of HTTP or agents, because the caller maps its results to an
//! [`Outcome`] (see [`Classify`]).
//!
//! ```
//! use std::time::Duration;
//! use swarm_sched::limit::{Algorithm, LimitConfig, Limiter, Sample};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let limiter = Limiter::new(LimitConfig {
//!     algorithm: Algorithm::Aimd,
//!     initial: 4,
//!     ..LimitConfig::default()
//! });
//! let permit = limiter.acquire().await;
//! assert_eq!(limiter.in_flight(), 1);
//! let started = tokio::time::Instant::now();
//! // ... call the backend ...
//! permit.record(Sample::success(started.elapsed().max(Duration::from_millis(1))));
//! assert_eq!(limiter.in_flight(), 0);
//! // A resource governor can cap it from outside.
//! limiter.set_cap(Some(2));
//! assert_eq!(limiter.limit(), 2);
//! # });
//! ```
//!
//! # Control laws
//!
//! Every law is clamped to `[min, max]` and then to the cap, and every
//! adaptive law treats [`Outcome::Dropped`] (timeouts, 429/503) as
//! congestion: `limit × backoff_ratio`, without feeding the timed-out RTT
//! into any average. Samples from calls that started with fewer than half
//! the limit in flight never raise the limit (the limit was not used, so a
//! good RTT says nothing about a higher one; Netflix and vector both do
//! this).
//!
//! - **Fixed**: the constant `initial`; samples only update the statistics.
//! - **AIMD** (additive increase; Chiu & Jain 1989, TCP Reno, Netflix
//!   `AIMDLimit`, vector's adaptive request concurrency), decided once per
//!   round trip: +1, or, when the round trip was queueing (below), a cut
//!   *in proportion to the excess*: to baseline × mean(in flight ÷ RTT)
//!   over the window, the concurrency the backend serves without queueing
//!   (Little's law: in flight × baseline ÷ RTT is the knee when latency
//!   grows with the crowd), by at least one and at most tenfold per round
//!   trip. A fixed ratio (×0.9) took dozens of round trips to come down
//!   from a start above the knee; Swift (Kumar et al., "Swift: Delay is
//!   Simple and Effective for Congestion Control in the Datacenter",
//!   SIGCOMM 2020: `cwnd × (1 − β·(delay − target)/delay)`, bounded by
//!   `max_mdf`, at most once per RTT) and Netflix concurrency-limits'
//!   `Gradient2Limit` (`limit × long RTT ÷ short RTT`) cut by the measured
//!   excess the same way. Drops (429s, timeouts) still cut × `backoff_ratio`
//!   each. Goal: hold in flight just above the backend's knee, because
//!   each call beyond it adds queueing to every call's time in the backend.
//! - **Gradient2** (Netflix concurrency-limits `Gradient2Limit`):
//!   `gradient = clamp(tolerance × long_rtt / rtt, 0.5, 1)`,
//!   `new = limit × gradient + √limit`, smoothed by `smoothing`. The long RTT
//!   is an exponential average over `long_window` samples that decays toward
//!   the short one when it is more than twice as large, as Netflix's does.
//!   Two fixes: drops decrease multiplicatively and their RTT is not averaged
//!   (Netflix issue #137, where timeouts grew the limit), and the long RTT is
//!   capped at the probed no-load RTT, because otherwise it learns the
//!   limiter's own queueing as normal and the limit drifts up.
//! - **Vegas** (Brakmo & Peterson 1995, TCP Vegas; Netflix `VegasLimit`):
//!   `queue = limit × (1 − rtt_noload / rtt)`, `α = 3·log10(limit)`,
//!   `β = 6·log10(limit)` (log at least 1): +β when the queue is at most
//!   log10(limit), +log10(limit) below α, −log10(limit) above β, smoothed.
//!   `rtt_noload` is the windowed minimum below, so it is refreshed every
//!   `probe_interval_ms`.
//!
//! # RTT estimates
//!
//! Gradient2 and Vegas decide on the short RTT, an exponential average of
//! about ten samples (plain mean while warming up), so jitter is not
//! mistaken for queueing. They move once per round trip in aggregate: each
//! sample applies 1/limit of the law's step (Netflix batches samples into
//! windows for the same reason; stepping per sample overshoots by a
//! window's worth).
//!
//! AIMD judges windows instead: the successes of a limit's worth of calls
//! (at least 16) that started since the last cut or probe edge, about one
//! round trip, so each verdict is about the limit in force (TCP Vegas and
//! BBR likewise decide per round trip). In slow start a window also closes
//! a quarter of its fastest RTT after its first sample: the first window of
//! a burst then holds the calls that met no queue (in a FIFO backend they
//! return first) instead of teaching the baseline our own queueing. Below
//! a limit of 16 a window may close after one mean RTT with 4 samples. A window is queueing when the lower
//! confidence bound of its mean RTT (mean − 3 standard errors) exceeds
//! `queue_tolerance` × the baseline, and the baseline is the windowed
//! minimum of the windows' *upper* bounds (mean + 3 standard errors).
//! Why: the minimum of noisy averages sits below the typical no-load RTT
//! by a few of their standard deviations, so with jitter a tolerance
//! below that gap reads every round trip as queueing and the limit
//! collapses (a tolerance of 1.25 on the old per-sample average did, at
//! 5% goodput, in the `jittery` scenario). Putting the noise into the
//! bounds instead lets the tolerance be small (1.05): with little jitter
//! the limit settles ~5–15% above the knee (`knee_tight`: 1.07×, where a
//! per-sample average with tolerance 1.5 held 1.4×); with a lot it backs
//! off only when the queueing is beyond doubt, and never collapses.
//!
//! # Baseline, probes and recovery
//!
//! The no-load RTT is the minimum of the short RTT over the current and
//! previous `probe_interval_ms` windows, not over all time, so when a backend becomes
//! slower for good the baseline follows and the limit is not pinned at the
//! floor (Envoy issue #38338). Every `probe_interval_ms` a probe halves the
//! limit until ten calls started during it complete, so the minimum is
//! measured without our own queueing (Envoy's gradient controller does the
//! same, down to its minimum concurrency; half is gentler). Against a slow
//! backend the interval stretches to 20 no-load round trips, and the
//! baseline windows with it: a 30 s interval at a 10 s RTT halved the limit
//! every third round trip. AIMD's probe
//! lasts one window of calls started during it, which feeds its baseline.
//!
//! # Slow start
//!
//! With `slow_start`, the limit starts at `initial` and grows by one per
//! success whose short RTT is within `tolerance` × baseline, doubling per limit's
//! worth (TCP slow start); the first congestion signal ends it. It never
//! grows past twice the concurrency a call actually ran beside (the larger
//! of in flight at its start and at its end), so an unused limit does not
//! double. AIMD's slow start is judged by its windows: only a call whose
//! own RTT shows no queue vouches for growth (before any window has
//! closed, the fastest RTT × `tolerance` is the bar), and the first window
//! that queues ends it with the proportional cut. AIMD grows by half a
//! call per such success, ×1.5 per round trip rather than ×2: a round trip
//! passes between crossing the knee and seeing its queue, so the limit
//! overshoots to about the growth factor × the knee before the cut; at ×2
//! the calls of that round trip took twice the unloaded latency, at ×1.5
//! it is 1.4–1.5× at knees ≥ 50 and bases ≥ 100 ms (`tests/limit_scenarios/sweeps/`;
//! the price is 6 round trips instead of 3 to climb from 0.1× the knee).
//! HyStart's delay-increase exit (Ha & Rhee 2011) would not help against a
//! sharp knee: nothing rises before the knee is crossed. After a
//! collapse (three drops at the floor, or the floor held for a probe
//! interval), the next success re-enters it, so recovery after an outage
//! takes a few round trips instead of minutes (vector issue #3255, where the
//! limit started at 1 and climbed linearly).

mod config;
mod law;
mod limiter;
mod sample;

pub use config::{Algorithm, LimitConfig, Scope};
pub use limiter::{Limiter, LimiterSnapshot, Permit};
pub use sample::{Classify, Outcome, Sample};
