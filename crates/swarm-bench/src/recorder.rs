//! What a step observed: HDR histograms of latency and counts of outcomes.
//!
//! Latencies are recorded in microseconds into HdrHistogram (Gil Tene's
//! High Dynamic Range histogram: fixed relative error — 3 significant digits
//! here, so 0.1% — over 1 µs to 1 h, in constant memory), so percentiles are
//! exact to that precision however many samples there are, and histograms
//! from many workers merge by adding counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Largest latency a histogram holds: one hour, in µs.
const MAX_US: u64 = 3_600_000_000;

/// A new latency histogram (µs, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    // Constant bounds hdrhistogram accepts (1 ≤ low, high ≥ 2·low, 3 digits),
    // so this cannot fail at run time.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Summarises `h` (µs) in ms; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            min: ms(h.min()),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// How one request went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Accepted(u16),
    /// 429 or 503: refused for load, the server's honest "not now".
    Rejected(u16),
    /// Any other status.
    Failed(u16),
    /// No HTTP answer (connect, reset, timeout).
    Transport(String),
}

/// One request's observation; instants are from `tokio::time`.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The first answer's status class.
    pub outcome: Outcome,
    /// When the acknowledgement arrived (`None` when the answer was held
    /// until the end, as with `wait_ms`).
    pub acked_at: Option<Instant>,
    /// When the task was seen to end, and how.
    pub finished: Option<(Instant, String)>,
    /// The mix entry's statistics label, if it has one.
    pub label: Option<Arc<str>>,
}

/// Counts and histograms for the requests of one label.
#[derive(Debug, Clone)]
pub struct LabelRecorder {
    /// Submission latency (until acknowledged).
    pub ack: Histogram<u64>,
    /// Until the task ended.
    pub e2e: Histogram<u64>,
    /// Latency of refusals (429/503).
    pub reject: Histogram<u64>,
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// 429/503 answers.
    pub rejected: u64,
    /// Final task states seen.
    pub outcomes: BTreeMap<String, u64>,
}

impl Default for LabelRecorder {
    fn default() -> Self {
        Self {
            ack: histogram(),
            e2e: histogram(),
            reject: histogram(),
            sent: 0,
            accepted: 0,
            rejected: 0,
            outcomes: BTreeMap::new(),
        }
    }
}

impl LabelRecorder {
    fn merge(&mut self, other: &LabelRecorder) {
        let _ = self.ack.add(&other.ack);
        let _ = self.e2e.add(&other.e2e);
        let _ = self.reject.add(&other.reject);
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
    }
}

/// An answer's class, in a [`TraceEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx.
    Accepted,
    /// 429 or 503.
    Rejected,
    /// Any other status.
    Failed,
    /// No HTTP answer.
    Transport,
}

impl From<&Outcome> for Class {
    fn from(o: &Outcome) -> Self {
        match o {
            Outcome::Accepted(_) => Class::Accepted,
            Outcome::Rejected(_) => Class::Rejected,
            Outcome::Failed(_) => Class::Failed,
            Outcome::Transport(_) => Class::Transport,
        }
    }
}

/// One request of a phased step, compactly: times in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// Intended send time, after the measured window began.
    pub at_us: u64,
    /// Phase index.
    pub phase: u32,
    /// How it was answered.
    pub class: Class,
    /// Acknowledgement, after the intended time.
    pub ack_us: Option<u32>,
    /// The task's end, after the intended time.
    pub done_us: Option<u32>,
    /// It ended `succeeded`.
    pub succeeded: bool,
}

impl TraceEntry {
    /// When the request was done, after the intended time, and whether it
    /// succeeded. With `ack_is_done` (no end-to-end following), a 2xx
    /// answer counts as done and successful.
    pub fn done(&self, ack_is_done: bool) -> Option<(u64, bool)> {
        match (self.done_us, self.ack_us) {
            (Some(d), _) => Some((u64::from(d), self.succeeded)),
            (None, Some(a)) if ack_is_done && self.class == Class::Accepted => {
                Some((u64::from(a), true))
            }
            _ => None,
        }
    }
}

/// Counts and histograms for one measured window.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Submission latency (until acknowledged).
    pub ack: Histogram<u64>,
    /// Until the task ended.
    pub e2e: Histogram<u64>,
    /// Latency of refusals (429/503).
    pub reject: Histogram<u64>,
    /// Open loop: how late sends left against their schedule.
    pub lag: Histogram<u64>,
    /// Requests sent in the window.
    pub sent: u64,
    /// Answers by status code.
    pub codes: BTreeMap<u16, u64>,
    /// Requests with no HTTP answer.
    pub transport_errors: u64,
    /// Final task states seen (end-to-end modes).
    pub outcomes: BTreeMap<String, u64>,
    /// One transport error message, as an example.
    pub first_transport_error: Option<String>,
    /// Per statistics label (requests whose mix entry has one).
    pub labels: BTreeMap<Arc<str>, LabelRecorder>,
    /// Phased steps: every request, in no particular order.
    pub trace: Vec<TraceEntry>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            ack: histogram(),
            e2e: histogram(),
            reject: histogram(),
            lag: histogram(),
            sent: 0,
            codes: BTreeMap::new(),
            transport_errors: 0,
            outcomes: BTreeMap::new(),
            first_transport_error: None,
            labels: BTreeMap::new(),
            trace: Vec::new(),
        }
    }
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

fn us32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Recorder {
    /// Records a request sent (or due) at `intended`.
    pub fn record(&mut self, intended: Instant, obs: &Observation) {
        self.sent += 1;
        match &obs.outcome {
            Outcome::Accepted(c) | Outcome::Rejected(c) | Outcome::Failed(c) => {
                *self.codes.entry(*c).or_default() += 1;
            }
            Outcome::Transport(e) => {
                self.transport_errors += 1;
                if self.first_transport_error.is_none() {
                    self.first_transport_error = Some(e.clone());
                }
            }
        }
        if let Some(at) = obs.acked_at {
            let d = us(at.saturating_duration_since(intended));
            match obs.outcome {
                Outcome::Accepted(_) => {
                    let _ = self.ack.record(d);
                }
                Outcome::Rejected(_) => {
                    let _ = self.reject.record(d);
                }
                _ => {}
            }
        }
        if let Some((at, status)) = &obs.finished {
            let _ = self.e2e.record(us(at.saturating_duration_since(intended)));
            *self.outcomes.entry(status.clone()).or_default() += 1;
        }
        if let Some(label) = &obs.label {
            self.record_label(label, intended, obs);
        }
    }

    fn record_label(&mut self, label: &Arc<str>, intended: Instant, obs: &Observation) {
        let l = match self.labels.get_mut(label) {
            Some(l) => l,
            None => self.labels.entry(label.clone()).or_default(),
        };
        l.sent += 1;
        let ack = obs
            .acked_at
            .map(|at| us(at.saturating_duration_since(intended)));
        match obs.outcome {
            Outcome::Accepted(_) => {
                l.accepted += 1;
                if let Some(d) = ack {
                    let _ = l.ack.record(d);
                }
            }
            Outcome::Rejected(_) => {
                l.rejected += 1;
                if let Some(d) = ack {
                    let _ = l.reject.record(d);
                }
            }
            _ => {}
        }
        if let Some((at, status)) = &obs.finished {
            let _ = l.e2e.record(us(at.saturating_duration_since(intended)));
            match l.outcomes.get_mut(status.as_str()) {
                Some(n) => *n += 1,
                None => {
                    l.outcomes.insert(status.clone(), 1);
                }
            }
        }
    }

    /// Adds request `obs`, due at `intended` in phase `phase` of a window
    /// that began at `from`, to the trace.
    pub fn trace(&mut self, from: Instant, intended: Instant, phase: usize, obs: &Observation) {
        let after = |at: Instant| us32(at.saturating_duration_since(intended));
        self.trace.push(TraceEntry {
            at_us: intended.saturating_duration_since(from).as_micros() as u64,
            phase: u32::try_from(phase).unwrap_or(u32::MAX),
            class: Class::from(&obs.outcome),
            ack_us: obs.acked_at.map(after),
            done_us: obs.finished.as_ref().map(|(at, _)| after(*at)),
            succeeded: obs.finished.as_ref().is_some_and(|(_, s)| s == "succeeded"),
        });
    }

    /// Records how late an open-loop send left.
    pub fn record_lag(&mut self, lag: Duration) {
        let _ = self.lag.record(us(lag));
    }

    /// Adds another recorder's counts.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.ack.add(&other.ack);
        let _ = self.e2e.add(&other.e2e);
        let _ = self.reject.add(&other.reject);
        let _ = self.lag.add(&other.lag);
        self.sent += other.sent;
        for (k, v) in &other.codes {
            *self.codes.entry(*k).or_default() += v;
        }
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
        self.transport_errors += other.transport_errors;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error.clone();
        }
        for (k, v) in &other.labels {
            self.labels.entry(k.clone()).or_default().merge(v);
        }
        self.trace.extend_from_slice(&other.trace);
    }

    /// 2xx answers.
    pub fn accepted(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| (200..300).contains(*c))
            .map(|(_, n)| n)
            .sum()
    }

    /// 429/503 answers.
    pub fn rejected(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| matches!(**c, 429 | 503))
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(
        outcome: Outcome,
        ack_ms: Option<u64>,
        done: Option<(u64, &str)>,
        t0: Instant,
    ) -> Observation {
        Observation {
            outcome,
            acked_at: ack_ms.map(|m| t0 + Duration::from_millis(m)),
            finished: done.map(|(m, s)| (t0 + Duration::from_millis(m), s.to_string())),
            label: None,
        }
    }

    fn labelled(mut o: Observation, label: &str) -> Observation {
        o.label = Some(Arc::from(label));
        o
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v * 100).unwrap(); // 0.1 ms … 1000 ms
        }
        let s = LatencySummary::of(&h).unwrap();
        assert_eq!(s.count, 10_000);
        // Three significant digits: within 0.1% of the exact value.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.p50, 500.0), "{s:?}");
        assert!(close(s.p90, 900.0), "{s:?}");
        assert!(close(s.p99, 990.0), "{s:?}");
        assert!(close(s.p999, 999.0), "{s:?}");
        assert!(close(s.max, 1000.0) && close(s.min, 0.1), "{s:?}");
        assert!(close(s.mean, 500.05), "{s:?}");
        assert!(LatencySummary::of(&histogram()).is_none());
    }

    #[test]
    fn one_slow_request_in_a_hundred_is_the_p99() {
        let mut h = histogram();
        for _ in 0..990 {
            h.record(1_000).unwrap();
        }
        for _ in 0..10 {
            h.record(500_000).unwrap();
        }
        let s = LatencySummary::of(&h).unwrap();
        assert!((s.p50 - 1.0).abs() < 0.01);
        assert!((s.p99 - 1.0).abs() < 0.01, "99% are fast: {s:?}");
        assert!((s.p999 - 500.0).abs() < 1.0, "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn recording_classifies_and_measures_from_the_intended_time() {
        let t0 = Instant::now();
        let mut r = Recorder::default();
        r.record(
            t0,
            &obs(Outcome::Accepted(202), Some(4), Some((30, "succeeded")), t0),
        );
        r.record(t0, &obs(Outcome::Rejected(503), Some(1), None, t0));
        r.record(t0, &obs(Outcome::Failed(422), Some(2), None, t0));
        r.record(
            t0,
            &obs(Outcome::Transport("refused".into()), None, None, t0),
        );
        r.record(
            t0,
            &obs(Outcome::Accepted(200), None, Some((50, "failed")), t0),
        );
        assert_eq!(r.sent, 5);
        assert_eq!((r.accepted(), r.rejected(), r.transport_errors), (2, 1, 1));
        assert_eq!(r.ack.len(), 1, "a held answer is not an acknowledgement");
        assert!(r.ack.equivalent(r.ack.max(), 4_000), "{}", r.ack.max());
        assert_eq!(r.reject.len(), 1);
        assert_eq!(r.e2e.len(), 2);
        assert_eq!(r.outcomes["succeeded"], 1);
        assert_eq!(r.outcomes["failed"], 1);
        assert_eq!(r.first_transport_error.as_deref(), Some("refused"));
    }

    #[tokio::test(start_paused = true)]
    async fn merging_adds_everything() {
        let t0 = Instant::now();
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(t0, &obs(Outcome::Accepted(202), Some(1), None, t0));
        b.record(t0, &obs(Outcome::Accepted(202), Some(9), None, t0));
        b.record_lag(Duration::from_millis(2));
        a.merge(&b);
        assert_eq!(a.sent, 2);
        assert_eq!(a.codes[&202], 2);
        assert_eq!(a.ack.len(), 2);
        assert_eq!(a.lag.len(), 1);
        let s = LatencySummary::of(&a.ack).unwrap();
        assert!((s.max - 9.0).abs() < 0.01 && (s.min - 1.0).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn labels_are_counted_apart_and_merged() {
        let t0 = Instant::now();
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(
            t0,
            &labelled(
                obs(Outcome::Accepted(202), Some(2), Some((40, "succeeded")), t0),
                "gold",
            ),
        );
        a.record(
            t0,
            &labelled(obs(Outcome::Rejected(429), Some(1), None, t0), "free"),
        );
        a.record(t0, &obs(Outcome::Accepted(202), Some(3), None, t0));
        b.record(
            t0,
            &labelled(
                obs(Outcome::Accepted(202), Some(8), Some((90, "failed")), t0),
                "gold",
            ),
        );
        b.record(
            t0,
            &labelled(obs(Outcome::Failed(500), Some(1), None, t0), "free"),
        );
        a.merge(&b);
        assert_eq!(a.sent, 5, "labelled or not, all count overall");
        assert_eq!(a.labels.len(), 2);
        let gold = &a.labels["gold"];
        assert_eq!((gold.sent, gold.accepted, gold.rejected), (2, 2, 0));
        assert_eq!(gold.ack.len(), 2);
        assert_eq!(gold.e2e.len(), 2);
        assert_eq!(gold.outcomes["succeeded"], 1);
        assert_eq!(gold.outcomes["failed"], 1);
        let e2e = LatencySummary::of(&gold.e2e).unwrap();
        assert!((e2e.min - 40.0).abs() < 0.1 && (e2e.max - 90.0).abs() < 0.1);
        let free = &a.labels["free"];
        assert_eq!((free.sent, free.accepted, free.rejected), (2, 0, 1));
        assert_eq!(free.reject.len(), 1);
        assert!(free.ack.is_empty() && free.e2e.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn traces_keep_times_after_the_intended_send() {
        let from = Instant::now();
        let due = from + Duration::from_millis(250);
        let mut a = Recorder::default();
        a.trace(
            from,
            due,
            1,
            &obs(
                Outcome::Accepted(202),
                Some(5),
                Some((30, "succeeded")),
                due,
            ),
        );
        let mut b = Recorder::default();
        b.trace(
            from,
            due,
            2,
            &obs(Outcome::Rejected(503), Some(1), None, due),
        );
        a.merge(&b);
        assert_eq!(a.trace.len(), 2);
        let t = a.trace[0];
        assert_eq!((t.at_us, t.phase, t.class), (250_000, 1, Class::Accepted));
        assert_eq!(
            (t.ack_us, t.done_us, t.succeeded),
            (Some(5_000), Some(30_000), true)
        );
        assert_eq!(t.done(false), Some((30_000, true)));
        let r = a.trace[1];
        assert_eq!((r.class, r.done(true)), (Class::Rejected, None));
        let acked = TraceEntry {
            done_us: None,
            succeeded: false,
            ..t
        };
        assert_eq!(acked.done(false), None);
        assert_eq!(acked.done(true), Some((5_000, true)));
    }
}
