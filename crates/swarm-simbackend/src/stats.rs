//! Counters and the sampled timeline behind `GET /stats`.
//!
//! The timeline is filled lazily: before every change of a counter (and on
//! every read) the samples due since the last one are appended with the
//! values that held until that moment. Counters only change at those
//! events, so the lazily written samples are exact, and no background task
//! is needed (which keeps [`crate::app`] usable outside a runtime).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Most samples kept in the timeline (one hour at the default 100 ms).
pub const MAX_SAMPLES: usize = 36_000;

/// What the simulated provider has done so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Requests that reached the model: everything below except
    /// `bad_requests`, counted on arrival (so one whose client went away
    /// before its answer counts here and nowhere else).
    #[serde(default)]
    pub received: u64,
    /// Requests answered with a success status.
    pub served: u64,
    /// Requests refused with `429` by the hard limit.
    pub refused: u64,
    /// Requests answered `429` by a quota (`rpm`, `tpm`); they count in
    /// `received` and nowhere else. Absent from older servers' snapshots: 0.
    #[serde(default)]
    pub rate_limited: u64,
    /// Requests answered with an injected `5xx`.
    pub errors: u64,
    /// Requests that stalled for `stall_ms` (they count as served too once
    /// answered).
    pub stalled: u64,
    /// Requests rejected with `400` (malformed or invalid bodies).
    pub bad_requests: u64,
    /// Admitted requests whose client went away before the response was
    /// complete (during the service time, or mid-stream). Absent from
    /// older servers' snapshots: 0.
    #[serde(default)]
    pub disconnected: u64,
    /// Requests admitted and not yet finished (streams count until their
    /// last event or the client's disconnect).
    pub inflight: u64,
    /// Highest `inflight` seen.
    pub inflight_max: u64,
    /// Seconds since the simulated provider started.
    pub uptime_s: f64,
    /// Knee in effect now (after the schedule); `0` = none.
    pub capacity: u64,
    /// Hard limit in effect now; `0` = none.
    pub hard_limit: u64,
    /// Base latency in effect now, in milliseconds.
    pub latency_ms: u64,
    /// Samples taken every `sample_ms` since start (the most recent
    /// [`MAX_SAMPLES`]).
    pub timeline: Vec<Sample>,
}

/// One point of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since start.
    pub t_ms: u64,
    /// Requests in flight at that moment.
    pub inflight: u64,
    /// Cumulative successes at that moment.
    pub served: u64,
    /// Cumulative `429` answers at that moment.
    pub refused: u64,
    /// Cumulative injected failures at that moment.
    pub errors: u64,
}

/// The mutable counters, kept under one lock by the model.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: u64,
    pub(crate) served: u64,
    pub(crate) refused: u64,
    pub(crate) rate_limited: u64,
    pub(crate) errors: u64,
    pub(crate) stalled: u64,
    pub(crate) bad_requests: u64,
    pub(crate) disconnected: u64,
    pub(crate) inflight: u64,
    pub(crate) inflight_max: u64,
}

/// Counters plus the timeline.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) counters: Counters,
    sample_ms: u64,
    /// Index of the next sample due (its time is `next * sample_ms`).
    next: u64,
    timeline: VecDeque<Sample>,
}

impl Recorder {
    pub(crate) fn new(sample_ms: u64) -> Self {
        Self {
            counters: Counters::default(),
            sample_ms: sample_ms.max(1),
            next: 0,
            timeline: VecDeque::new(),
        }
    }

    /// Appends the samples due at or before `elapsed_ms` with the current
    /// values. Call before changing a counter.
    pub(crate) fn catch_up(&mut self, elapsed_ms: u64) {
        let last_due = elapsed_ms / self.sample_ms;
        if last_due < self.next {
            return;
        }
        // Only the newest MAX_SAMPLES would survive; skip the rest.
        let keep = MAX_SAMPLES as u64;
        if last_due - self.next >= keep {
            self.next = last_due - (keep - 1);
        }
        let c = &self.counters;
        for k in self.next..=last_due {
            if self.timeline.len() == MAX_SAMPLES {
                self.timeline.pop_front();
            }
            self.timeline.push_back(Sample {
                t_ms: k.saturating_mul(self.sample_ms),
                inflight: c.inflight,
                served: c.served,
                refused: c.refused,
                errors: c.errors,
            });
        }
        self.next = last_due.saturating_add(1);
    }

    pub(crate) fn timeline(&self) -> Vec<Sample> {
        self.timeline.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_hold_values_until_the_change() {
        let mut r = Recorder::new(100);
        r.catch_up(0);
        r.counters.inflight = 1;
        r.catch_up(250);
        r.counters.served = 1;
        r.counters.inflight = 0;
        r.catch_up(300);
        let t = r.timeline();
        let pts: Vec<(u64, u64, u64)> = t.iter().map(|s| (s.t_ms, s.inflight, s.served)).collect();
        assert_eq!(pts, vec![(0, 0, 0), (100, 1, 0), (200, 1, 0), (300, 0, 1)]);
    }

    #[test]
    fn timeline_is_capped() {
        let mut r = Recorder::new(1);
        r.catch_up(10);
        r.counters.served = 5;
        r.catch_up(10 * MAX_SAMPLES as u64);
        let t = r.timeline();
        assert_eq!(t.len(), MAX_SAMPLES);
        assert_eq!(t.last().unwrap().t_ms, 10 * MAX_SAMPLES as u64);
        assert!(t.windows(2).all(|w| w[1].t_ms == w[0].t_ms + 1));
        r.catch_up(u64::MAX);
        assert_eq!(r.timeline().len(), MAX_SAMPLES);
    }
}
