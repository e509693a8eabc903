//! Per-phase figures of a phased step, computed from its request trace:
//! counts, goodput by the time requests ended, latency of the requests sent
//! in each phase, recovery times, and a coarse timeline.
//!
//! A request is *done* when its task ended (end-to-end modes) or, with no
//! end-to-end following (`ack_is_done`), when it was answered 2xx; it counts
//! towards goodput when it ended `succeeded` (or was answered 2xx).

use std::time::Duration;

use crate::recorder::{Class, LatencySummary, TraceEntry, histogram};
use crate::result::{PhaseResult, Timeline};

/// Recovery looks at windows this long (µs)…
const WINDOW_US: u64 = 1_000_000;
/// …slid by this much (µs).
const SLIDE_US: u64 = 100_000;
/// Recovered: goodput at least this share of the steady goodput…
const GOODPUT_SHARE: f64 = 0.9;
/// …and e2e p99 at most this multiple of the steady p99.
const P99_SLACK: f64 = 1.25;
/// Timeline slices (µs).
const SLICE_US: u64 = 500_000;

/// One phase as planned.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSpan {
    /// Its name.
    pub label: String,
    /// Its factor on the base rate.
    pub factor: f64,
    /// Its rate per second.
    pub rate: f64,
    /// Its length.
    pub duration: Duration,
}

/// The trace, indexed: requests by intended time, and the times (µs into
/// the window) at which successful ones were done.
struct Index {
    by_send: Vec<TraceEntry>,
    successes: Vec<u64>,
    ack_is_done: bool,
}

impl Index {
    fn new(trace: &[TraceEntry], ack_is_done: bool) -> Self {
        let mut by_send = trace.to_vec();
        by_send.sort_unstable_by_key(|t| t.at_us);
        let mut successes: Vec<u64> = by_send
            .iter()
            .filter_map(|t| match t.done(ack_is_done) {
                Some((d, true)) => Some(t.at_us + d),
                _ => None,
            })
            .collect();
        successes.sort_unstable();
        Self {
            by_send,
            successes,
            ack_is_done,
        }
    }

    /// Requests due in `[a, b)`.
    fn sent_in(&self, a: u64, b: u64) -> &[TraceEntry] {
        let lo = self.by_send.partition_point(|t| t.at_us < a);
        let hi = self.by_send.partition_point(|t| t.at_us < b);
        &self.by_send[lo..hi.max(lo)]
    }

    /// Successful requests done in `[a, b)`.
    fn succeeded_in(&self, a: u64, b: u64) -> u64 {
        let lo = self.successes.partition_point(|t| *t < a);
        let hi = self.successes.partition_point(|t| *t < b);
        hi.saturating_sub(lo) as u64
    }

    /// Exact p99 (nearest rank) of the done latencies of `entries`, µs.
    fn p99(&self, entries: &[TraceEntry]) -> Option<u64> {
        let mut v: Vec<u64> = entries
            .iter()
            .filter_map(|t| t.done(self.ack_is_done).map(|(d, _)| d))
            .collect();
        if v.is_empty() {
            return None;
        }
        let rank = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len());
        let (_, p, _) = v.select_nth_unstable(rank - 1);
        Some(*p)
    }

    fn goodput(&self, a: u64, b: u64) -> f64 {
        if b <= a {
            return 0.0;
        }
        self.succeeded_in(a, b) as f64 / ((b - a) as f64 / 1e6)
    }

    /// Steady goodput and p99 (µs) of the phase `[start, end)`: over its
    /// last half.
    fn steady(&self, start: u64, end: u64) -> (f64, Option<u64>) {
        let mid = start + (end - start) / 2;
        (self.goodput(mid, end), self.p99(self.sent_in(mid, end)))
    }

    fn recovery(&self, start: u64, end: u64) -> Option<f64> {
        if end <= start {
            return None;
        }
        let (steady_goodput, steady_p99) = self.steady(start, end);
        let win = WINDOW_US.min(end - start);
        let mut w = start;
        while w + win <= end {
            let goodput_ok = self.goodput(w, w + win) >= GOODPUT_SHARE * steady_goodput - 1e-9;
            let p99_ok = match (self.p99(self.sent_in(w, w + win)), steady_p99) {
                (Some(p), Some(s)) => p as f64 <= P99_SLACK * s as f64,
                // Nothing done now, though something is when steady.
                (None, Some(_)) => false,
                (_, None) => true,
            };
            if goodput_ok && p99_ok {
                return Some((w - start) as f64 / 1e6);
            }
            w += SLIDE_US;
        }
        None
    }

    fn summary(
        &self,
        entries: &[TraceEntry],
        pick: impl Fn(&TraceEntry) -> Option<u64>,
    ) -> Option<LatencySummary> {
        let mut h = histogram();
        for t in entries {
            if let Some(us) = pick(t) {
                let _ = h.record(us.max(1));
            }
        }
        LatencySummary::of(&h)
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Seconds from the start of the phase `[start, end)` of `trace` until it
/// recovered (see [`PhaseResult::recovery_s`]); `None` if it never did.
pub fn recovery_s(
    trace: &[TraceEntry],
    start: Duration,
    end: Duration,
    ack_is_done: bool,
) -> Option<f64> {
    Index::new(trace, ack_is_done).recovery(us(start), us(end))
}

/// Figures per phase; `spans` run back to back from the window's start.
pub fn phase_results(
    trace: &[TraceEntry],
    spans: &[PhaseSpan],
    ack_is_done: bool,
) -> Vec<PhaseResult> {
    let ix = Index::new(trace, ack_is_done);
    let mut start = 0u64;
    let mut out = Vec::with_capacity(spans.len());
    for (i, span) in spans.iter().enumerate() {
        let end = start + us(span.duration);
        let sent = ix.sent_in(start, end);
        let count = |c: Class| sent.iter().filter(|t| t.class == c).count() as u64;
        let (accepted, rejected) = (count(Class::Accepted), count(Class::Rejected));
        let (steady_goodput, steady_p99) = ix.steady(start, end);
        out.push(PhaseResult {
            label: span.label.clone(),
            factor: span.factor,
            rate: span.rate,
            start_s: start as f64 / 1e6,
            duration_s: span.duration.as_secs_f64(),
            sent: sent.len() as u64,
            accepted,
            rejected,
            errors: sent.len() as u64 - accepted - rejected,
            goodput: ix.goodput(start, end),
            steady_goodput,
            steady_e2e_p99: steady_p99.map(|p| p as f64 / 1000.0),
            submit: ix.summary(sent, |t| {
                (t.class == Class::Accepted)
                    .then_some(t.ack_us)
                    .flatten()
                    .map(u64::from)
            }),
            e2e: ix.summary(sent, |t| t.done(ack_is_done).map(|(d, _)| d)),
            rejection: ix.summary(sent, |t| {
                (t.class == Class::Rejected)
                    .then_some(t.ack_us)
                    .flatten()
                    .map(u64::from)
            }),
            recovery_s: if i == 0 {
                None
            } else {
                ix.recovery(start, end)
            },
        });
        start = end;
    }
    out
}

/// The window in 500 ms slices: requests due, accepted and refused by their
/// intended time, successes by the time they were done, and the e2e p99 of
/// the requests due in each slice.
pub fn timeline(trace: &[TraceEntry], window: Duration, ack_is_done: bool) -> Timeline {
    let ix = Index::new(trace, ack_is_done);
    let n = us(window).div_ceil(SLICE_US) as usize;
    let mut t = Timeline {
        slice_s: SLICE_US as f64 / 1e6,
        ..Timeline::default()
    };
    for k in 0..n as u64 {
        let (a, b) = (k * SLICE_US, (k + 1) * SLICE_US);
        let sent = ix.sent_in(a, b);
        let count = |c: Class| sent.iter().filter(|t| t.class == c).count() as u64;
        t.sent.push(sent.len() as u64);
        t.accepted.push(count(Class::Accepted));
        t.rejected.push(count(Class::Rejected));
        t.succeeded.push(ix.succeeded_in(a, b));
        t.e2e_p99.push(ix.p99(sent).map(|p| p as f64 / 1000.0));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rate` requests per second over `[from_ms, to_ms)` in `phase`, each
    /// with latency `lat_ms(at_ms)` and class `class(at_ms)`.
    fn requests(
        phase: u32,
        from_ms: u64,
        to_ms: u64,
        rate: u64,
        lat_ms: impl Fn(u64) -> u64,
        class: impl Fn(u64) -> Class,
    ) -> Vec<TraceEntry> {
        let step_us = 1_000_000 / rate;
        (from_ms * 1000..to_ms * 1000)
            .step_by(step_us as usize)
            .map(|at_us| {
                let c = class(at_us / 1000);
                let lat = (lat_ms(at_us / 1000) * 1000) as u32;
                TraceEntry {
                    at_us,
                    phase,
                    class: c,
                    ack_us: Some(if c == Class::Accepted { 1_000 } else { 500 }),
                    done_us: (c == Class::Accepted).then_some(lat),
                    succeeded: c == Class::Accepted,
                }
            })
            .collect()
    }

    fn ok(_: u64) -> Class {
        Class::Accepted
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn latency_recovery_is_the_first_window_whose_p99_is_steady() {
        // Phase 2 (2 s – 6 s): requests sent in its first 1.5 s take 500 ms,
        // later ones 10 ms. Windows starting before 1.5 s hold slow requests
        // (well over 1% of them); the one at 1.5 s is all fast.
        let mut trace = requests(0, 0, 2000, 100, |_| 10, ok);
        trace.extend(requests(
            1,
            2000,
            6000,
            100,
            |at| if at < 3500 { 500 } else { 10 },
            ok,
        ));
        let r = recovery_s(&trace, secs(2.0), secs(6.0), false).unwrap();
        assert!((r - 1.5).abs() < 1e-9, "{r}");
        // A phase that is steady from its start recovers at once.
        assert_eq!(recovery_s(&trace, secs(0.0), secs(2.0), false), Some(0.0));
    }

    #[test]
    fn goodput_recovery_waits_for_successes() {
        // Everything refused in the phase's first second, then 100/s
        // succeeding after 10 ms. The window [0.9 s, 1.9 s) holds 89
        // successes (< 90% of 100/s); [1.0 s, 2.0 s) holds 99.
        let trace = requests(
            0,
            0,
            4000,
            100,
            |_| 10,
            |at| {
                if at < 1000 {
                    Class::Rejected
                } else {
                    Class::Accepted
                }
            },
        );
        let r = recovery_s(&trace, secs(0.0), secs(4.0), false).unwrap();
        assert!((r - 1.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn recovery_needs_both_conditions_in_one_window() {
        // Refused until 2.5 s, then 100/s succeeding in 10 ms, except every
        // tenth request (no answer) and the one sent at 3.1 s, which takes
        // 900 ms. Steady (2 s – 4 s): 133 successes (66.5/s), and p99 10 ms
        // (the slow one is the largest of 135, beyond the 134th). Windows
        // before 2.2 s have under 60 successes; every later one holds the
        // slow request among at most 90, so it is their p99.
        let trace = requests(
            1,
            0,
            4000,
            100,
            |at| if at == 3100 { 900 } else { 10 },
            |at| {
                if at < 2500 {
                    Class::Rejected
                } else if at % 100 == 50 {
                    Class::Transport
                } else {
                    Class::Accepted
                }
            },
        );
        assert_eq!(recovery_s(&trace, secs(0.0), secs(4.0), false), None);
        // Without the slow request it recovers at the first window with
        // ≥ 90% of the steady 74.5/s: [2.2 s, 3.2 s) holds 69 successes.
        let fast = requests(
            1,
            0,
            4000,
            100,
            |_| 10,
            |at| {
                if at < 2500 {
                    Class::Rejected
                } else {
                    Class::Accepted
                }
            },
        );
        let r = recovery_s(&fast, secs(0.0), secs(4.0), false).unwrap();
        assert!((r - 2.2).abs() < 1e-9, "{r}");
        // Only transport errors until 3 s, then successes: steady
        // 99 / 2 s = 49.5/s, so [2.5 s, 3.5 s) with 49 successes is the
        // first window to pass.
        let dead = requests(
            1,
            0,
            4000,
            100,
            |_| 10,
            |at| {
                if at < 3000 {
                    Class::Transport
                } else {
                    Class::Accepted
                }
            },
        );
        let r = recovery_s(&dead, secs(0.0), secs(4.0), false).unwrap();
        assert!((r - 2.5).abs() < 1e-9, "{r}");
        // Nothing ever done: nothing to recover to.
        let none = requests(1, 0, 2000, 100, |_| 10, |_| Class::Rejected);
        assert_eq!(recovery_s(&none, secs(0.0), secs(2.0), false), Some(0.0));
    }

    #[test]
    fn phases_count_goodput_by_end_time_and_latency_by_send_time() {
        let mut trace = requests(0, 0, 1000, 100, |_| 10, ok);
        trace.extend(requests(
            1,
            1000,
            3000,
            200,
            |at| if at < 1500 { 200 } else { 20 },
            |at| {
                if at % 20 == 0 {
                    Class::Rejected
                } else {
                    Class::Accepted
                }
            },
        ));
        let spans = [
            PhaseSpan {
                label: "base".into(),
                factor: 1.0,
                rate: 100.0,
                duration: secs(1.0),
            },
            PhaseSpan {
                label: "burst".into(),
                factor: 2.0,
                rate: 200.0,
                duration: secs(2.0),
            },
        ];
        let p = phase_results(&trace, &spans, false);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].sent, p[0].accepted, p[0].rejected), (100, 100, 0));
        // The last base request (990 ms + 10 ms) ends in the burst.
        assert!((p[0].goodput - 99.0).abs() < 1e-9, "{}", p[0].goodput);
        assert_eq!(p[0].recovery_s, None, "the first phase has none");
        assert_eq!((p[1].sent, p[1].rejected), (400, 100));
        assert_eq!(p[1].accepted, 300);
        assert_eq!(p[1].start_s, 1.0);
        let e2e = p[1].e2e.unwrap();
        assert!((e2e.p99 - 200.0).abs() < 0.5, "{e2e:?}");
        assert!((p[1].steady_e2e_p99.unwrap() - 20.0).abs() < 1e-9);
        assert!(p[1].rejection.unwrap().count == 100);
        assert!(p[1].recovery_s.is_some());
        let t = timeline(&trace, secs(3.0), false);
        assert_eq!(t.sent, vec![50, 50, 100, 100, 100, 100]);
        assert_eq!(t.rejected, vec![0, 0, 25, 25, 25, 25]);
        assert_eq!(t.e2e_p99[0], Some(10.0));
        assert_eq!(t.e2e_p99[2], Some(200.0));
        assert_eq!(t.e2e_p99[3], Some(20.0));
        assert_eq!(t.succeeded.len(), 6);
    }

    #[test]
    fn without_end_to_end_a_2xx_answer_is_done() {
        let mut trace = requests(0, 0, 1000, 100, |_| 10, ok);
        for t in &mut trace {
            t.done_us = None;
            t.succeeded = false;
        }
        let spans = [PhaseSpan {
            label: "only".into(),
            factor: 1.0,
            rate: 100.0,
            duration: secs(1.0),
        }];
        assert_eq!(phase_results(&trace, &spans, false)[0].goodput, 0.0);
        let p = &phase_results(&trace, &spans, true)[0];
        assert_eq!(p.goodput, 100.0);
        assert!((p.e2e.unwrap().p50 - 1.0).abs() < 0.01);
    }
}
