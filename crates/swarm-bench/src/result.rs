//! What a run produced, as written to `<name>.json` and read back by the
//! report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::recorder::LatencySummary;
use crate::scenario::{E2e, Mode};

/// One scenario's results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// The command that produced it.
    pub command: String,
    /// `git describe`-style commit of the measured build.
    pub commit: String,
    /// Where it ran.
    pub machine: Machine,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// What was measured (`swarmd (sqlite)`, `hello`, a URL).
    pub target: String,
    /// Closed or open loop.
    pub mode: Mode,
    /// End-to-end measurement.
    pub e2e: E2e,
    /// Warm-up per step, seconds.
    pub warmup_s: f64,
    /// Measured window per step, seconds.
    pub duration_s: f64,
    /// One entry per concurrency or rate.
    pub steps: Vec<StepResult>,
}

/// The machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

/// Server state over a step, from `/api/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusSeries {
    /// Seconds since the measured window began.
    pub t_s: Vec<f64>,
    /// Queued tasks, all pools.
    pub queued: Vec<u64>,
    /// Running tasks, all pools.
    pub running: Vec<u64>,
    /// Database connections in use.
    pub db_in_use: Vec<u64>,
    /// Succeeded tasks since the server started.
    pub succeeded: Vec<u64>,
    /// With `target.pool`: that pool's concurrency limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limit: Vec<u64>,
}

impl StatusSeries {
    /// Largest queue seen.
    pub fn max_queued(&self) -> u64 {
        self.queued.iter().copied().max().unwrap_or(0)
    }

    /// Smallest and largest concurrency limit seen, if sampled.
    pub fn limit_range(&self) -> Option<(u64, u64)> {
        Some((
            self.limit.iter().copied().min()?,
            self.limit.iter().copied().max()?,
        ))
    }

    /// Succeeded per second over the sampled span, if there are two samples.
    pub fn goodput(&self) -> Option<f64> {
        let (t0, t1) = (self.t_s.first()?, self.t_s.last()?);
        let (s0, s1) = (self.succeeded.first()?, self.succeeded.last()?);
        (t1 > t0).then(|| s1.saturating_sub(*s0) as f64 / (t1 - t0))
    }
}

/// One step: one concurrency level or rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepResult {
    /// The concurrency or rate.
    pub x: f64,
    /// Measured window, seconds.
    pub window_s: f64,
    /// Requests sent in the window.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// 429/503 answers.
    pub rejected: u64,
    /// Other statuses and transport errors.
    pub errors: u64,
    /// Answers by status code.
    pub codes: BTreeMap<String, u64>,
    /// Accepted per second.
    pub throughput: f64,
    /// Succeeded per second (end-to-end modes: seen; otherwise from the
    /// server's counters).
    pub goodput: Option<f64>,
    /// Submission latency (until acknowledged).
    pub submit: Option<LatencySummary>,
    /// Until the task ended.
    pub e2e: Option<LatencySummary>,
    /// Latency of refusals.
    pub rejection: Option<LatencySummary>,
    /// Open loop: lateness of sends against the schedule.
    pub send_lag: Option<LatencySummary>,
    /// Final task states seen.
    pub outcomes: BTreeMap<String, u64>,
    /// Cores the generator used.
    pub generator_cores: f64,
    /// Cores the launched server used.
    pub server_cores: Option<f64>,
    /// Machine busy fraction.
    pub machine_busy: f64,
    /// The generator may have been the bottleneck.
    pub generator_bound: bool,
    /// Anything a reader should know about this step.
    pub notes: Vec<String>,
    /// Server state over the step.
    pub status: Option<StatusSeries>,
    /// Per statistics label of the request mix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_label: BTreeMap<String, LabelResult>,
    /// Phased steps: one entry per phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseResult>,
    /// Phased steps: the window in 500 ms slices, for charts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
}

/// The requests of one statistics label in a step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LabelResult {
    /// Requests sent in the window.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// 429/503 answers.
    pub rejected: u64,
    /// Other statuses and transport errors.
    pub errors: u64,
    /// Succeeded per second (end-to-end modes).
    pub goodput: Option<f64>,
    /// Submission latency.
    pub submit: Option<LatencySummary>,
    /// Until the task ended.
    pub e2e: Option<LatencySummary>,
    /// Latency of refusals.
    pub rejection: Option<LatencySummary>,
    /// Final task states seen.
    pub outcomes: BTreeMap<String, u64>,
}

/// One phase of a phased step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PhaseResult {
    /// The phase's label.
    pub label: String,
    /// Its factor on the step's base rate.
    pub factor: f64,
    /// Offered rate, per second.
    pub rate: f64,
    /// When it began, seconds into the measured window.
    pub start_s: f64,
    /// How long it lasted, seconds.
    pub duration_s: f64,
    /// Requests sent (due) in the phase.
    pub sent: u64,
    /// Of which 2xx.
    pub accepted: u64,
    /// Of which 429/503.
    pub rejected: u64,
    /// Of which other statuses and transport errors.
    pub errors: u64,
    /// Requests that ended `succeeded` (with `e2e = "none"`: answered 2xx)
    /// per second, by the time they ended, within the phase.
    pub goodput: f64,
    /// Goodput over the phase's last half.
    pub steady_goodput: f64,
    /// End-to-end p99 (ms) of the requests sent in the phase's last half.
    pub steady_e2e_p99: Option<f64>,
    /// Submission latency of the requests sent in the phase.
    pub submit: Option<LatencySummary>,
    /// Until done (the task's end, or with `e2e = "none"` the 2xx answer),
    /// of the requests sent in the phase.
    pub e2e: Option<LatencySummary>,
    /// Latency of refusals of the requests sent in the phase.
    pub rejection: Option<LatencySummary>,
    /// Phases after the first: seconds from the phase's start to the first
    /// 1 s window (slid by 100 ms) with goodput ≥ 90% of the steady goodput
    /// and e2e p99 ≤ 1.25 × the steady p99; `None` if never.
    pub recovery_s: Option<f64>,
}

/// A phased step in fixed slices.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timeline {
    /// Slice length, seconds.
    pub slice_s: f64,
    /// Requests due per slice.
    pub sent: Vec<u64>,
    /// Of which answered 2xx.
    pub accepted: Vec<u64>,
    /// Of which answered 429/503.
    pub rejected: Vec<u64>,
    /// Requests that ended `succeeded` (with `e2e = "none"`: 2xx answers)
    /// in the slice.
    pub succeeded: Vec<u64>,
    /// End-to-end p99 (ms) of the requests due in the slice.
    pub e2e_p99: Vec<Option<f64>>,
}
