//! What to measure: a scenario, from a TOML file or from command-line flags.
//!
//! ```toml
//! name = "echo-closed"
//! description = "echo tasks, closed loop, SQLite defaults"
//!
//! [target]
//! launch = "swarmd"            # swarmd | hello | sim-backend | none (use `url`)
//! # url = "http://127.0.0.1:8080"
//! # config = "swarmd-fast.toml" # relative to this file
//! # database = "sqlite"        # or "postgres" (SWARMD_BENCH_PG_URL / SWARMD_TEST_PG_URL)
//!
//! [load]
//! mode = "closed"              # closed (concurrency) | open (rate per second)
//! steps = [1, 10, 100, 1000, 10000]
//! warmup = "2s"
//! duration = "10s"
//!
//! [request]
//! e2e = "none"                 # none | wait | poll | sse
//! [[request.mix]]
//! weight = 1
//! type = "echo"
//! args = { n = 1 }
//! ```
//!
//! Unknown keys are errors, so a typo is reported instead of ignored.
//!
//! # Per-label statistics
//!
//! A mix entry may carry `label = "..."`; it defaults to the entry's
//! `tenant`, if set. Every step then also reports, per label, requests sent,
//! accepted, refused (429/503), task outcomes, goodput and submit,
//! end-to-end and refusal latency (`by_label` in the JSON, a "per label"
//! table in the Markdown), e.g. to see whether one tenant starves another:
//!
//! ```toml
//! [[request.mix]]
//! type = "sim"
//! tenant = "heavy"             # label "heavy"
//! weight = 9
//! [[request.mix]]
//! type = "sim"
//! tenant = "light"
//! label = "light-tenant"       # overrides the tenant as the label
//! ```
//!
//! # Phased open-loop steps
//!
//! In open mode, `load.phases` turns each step into a sequence of phases run
//! back to back; the step's value is then a *base* rate per second:
//!
//! ```toml
//! [load]
//! mode = "open"
//! steps = [100]                # base rates
//! warmup = "2s"                # at the first phase's rate (and args)
//! phases = [
//!   { factor = 1.0,  duration = "10s", label = "normal" },
//!   { factor = 10.0, duration = "10s", args = { capacity = 10 }, label = "overload" },
//!   { factor = 1.0,  duration = "20s", label = "recovery" },
//! ]
//! ```
//!
//! Phase *i* sends at `step × factor` (`factor` above 0) for `duration`
//! (above 0; `load.duration` is then unused: the measured window is the sum
//! of the phases). Its `args` (a table), if any, are merged key by key into
//! the `args` of every task submitted during the phase (for `request.raw`,
//! into the JSON body), e.g. to change a `sim` agent's `capacity` mid-run.
//! `label` names the phase (default `phase N`). The schedule is one open
//! loop: every request's latency counts from its intended send time, across
//! phase boundaries too.
//!
//! A phased step reports, per phase (`phases` in the JSON): sent, accepted,
//! refused, goodput (requests that ended `succeeded` — with `e2e = "none"`,
//! answered 2xx — per second, by the time they ended), submit, end-to-end
//! and refusal latency of the requests *sent* in the phase, and for every
//! phase after the first `recovery_s`: the start (seconds after the phase
//! began) of the first 1-second window, slid by 100 ms, in which goodput is
//! at least 90% of the phase's steady goodput and the end-to-end p99 of the
//! requests sent in that window at most 1.25 × the steady p99 ("steady":
//! over the phase's last half); `null` if that never happens. A `timeline`
//! per 500 ms (sent, accepted, refused, succeeded, e2e p99) is kept for
//! charts.
//!
//! # Sampling one pool
//!
//! `target.pool = "sim"` makes the `/api/status` sampler record only that
//! pool's figures (instead of the sum over pools), and its concurrency limit
//! over time (`status.limit` in the JSON; min–max in the Markdown).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::BenchError;

/// A named measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name; names the output files.
    pub name: String,
    /// One line on what it shows.
    #[serde(default)]
    pub description: String,
    /// What is measured.
    #[serde(default)]
    pub target: TargetSpec,
    /// How load is offered.
    #[serde(default)]
    pub load: LoadSpec,
    /// What each request is.
    #[serde(default)]
    pub request: RequestSpec,
    /// The directory relative paths in this scenario are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// What to start (or where to go) for each step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TargetSpec {
    /// What to launch; `none` uses `url`.
    pub launch: Launch,
    /// Base URL when nothing is launched.
    pub url: Option<String>,
    /// `swarmd.toml` (launch = swarmd) or sim-backend TOML (launch =
    /// sim-backend), relative to the scenario file.
    pub config: Option<PathBuf>,
    /// Database for a launched swarmd.
    pub database: Database,
    /// API key sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// Sample the target's `/api/status` this often (swarmd only), ms.
    pub sample_ms: Option<u64>,
    /// Sample only this pool (department) and record its concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// What the bench starts before each step.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Launch {
    /// Nothing: measure `url`.
    #[default]
    None,
    /// `swarmd serve` on a fresh database.
    Swarmd,
    /// The minimal axum server in `bench/hello` (the ceiling).
    Hello,
    /// `swarmd sim-backend`.
    SimBackend,
}

/// Database of a launched swarmd.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// A SQLite file in a fresh temporary directory.
    #[default]
    Sqlite,
    /// A fresh database on the PostgreSQL server named by
    /// `SWARMD_BENCH_PG_URL` (else `SWARMD_TEST_PG_URL`).
    Postgres,
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `steps` are client counts; each sends its next request when the
    /// previous one is answered.
    #[default]
    Closed,
    /// `steps` are arrival rates per second, kept whatever the answers do;
    /// latency counts from the intended send time (no coordinated omission).
    Open,
}

/// How load is offered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSpec {
    /// Closed or open loop.
    pub mode: Mode,
    /// Concurrency levels (closed) or rates per second (open), one step each.
    pub steps: Vec<f64>,
    /// Load before measuring starts (e.g. `"2s"`).
    #[serde(with = "humantime_serde_compat")]
    pub warmup: Duration,
    /// Measured time per step.
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// Stop a step after this many measured requests (closed loop).
    pub requests: Option<u64>,
    /// Open loop: most requests in flight; beyond it sends wait (and their
    /// latency, counted from the intended time, shows it).
    pub max_inflight: usize,
    /// Seed for choosing among the request mix.
    pub seed: u64,
    /// Open loop: phases run back to back in each step (the step's value is
    /// then a base rate); empty for a plain step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

/// One phase of a phased open-loop step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Multiplies the step's base rate.
    pub factor: f64,
    /// How long the phase lasts.
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// Merged key by key into every request's `args` during the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Names the phase in reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl LoadSpec {
    /// The measured time of a step: the phases' sum, or `duration`.
    pub fn measured(&self) -> Duration {
        if self.phases.is_empty() {
            self.duration
        } else {
            self.phases.iter().map(|p| p.duration).sum()
        }
    }

    /// Phase `i`'s name: its `label`, else `phase {i + 1}`.
    pub fn phase_label(&self, i: usize) -> String {
        self.phases
            .get(i)
            .and_then(|p| p.label.clone())
            .unwrap_or_else(|| format!("phase {}", i + 1))
    }
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            mode: Mode::Closed,
            steps: vec![10.0],
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            requests: None,
            max_inflight: 10_000,
            seed: 1,
            phases: Vec::new(),
        }
    }
}

/// How a step ends its requests' lives: what "end-to-end" waits for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum E2e {
    /// Only the acknowledgement is measured.
    #[default]
    None,
    /// `wait_ms` in the body: the answer is the finished task.
    Wait,
    /// Poll `GET /api/tasks/{id}` until it ends.
    Poll,
    /// Follow `GET /api/tasks/{id}/events` until `result`.
    Sse,
}

/// What each request is.
///
/// In TOML a mix entry may carry `label`; it is kept in [`Self::labels`]
/// (parallel to `mix`) so that [`MixEntry`] keeps its shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "RequestToml", into = "RequestToml")]
pub struct RequestSpec {
    /// End-to-end measurement.
    pub e2e: E2e,
    /// `wait_ms` for `e2e = "wait"`.
    pub wait_ms: u64,
    /// Poll period for `e2e = "poll"`, ms.
    pub poll_ms: u64,
    /// Task submissions, chosen by weight.
    pub mix: Vec<MixEntry>,
    /// Instead of tasks: one plain HTTP request (any endpoint, any server).
    pub raw: Option<RawRequest>,
    /// Explicit `label`s of the mix entries, by index (may be shorter than
    /// `mix`, or empty); see [`Self::label`].
    pub labels: Vec<Option<String>>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            e2e: E2e::None,
            wait_ms: 30_000,
            poll_ms: 20,
            mix: Vec::new(),
            raw: None,
            labels: Vec::new(),
        }
    }
}

impl RequestSpec {
    /// The statistics label of mix entry `i`: its `label`, else its
    /// `tenant`, else none.
    pub fn label(&self, i: usize) -> Option<&str> {
        // Explicit labels only count while they still describe the mix (a
        // command line may have replaced it).
        let explicit = (self.labels.len() <= self.mix.len())
            .then(|| self.labels.get(i).and_then(|l| l.as_deref()))
            .flatten();
        explicit.or_else(|| self.mix.get(i)?.tenant.as_deref())
    }
}

/// [`RequestSpec`] as written in TOML.
#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RequestToml {
    e2e: E2e,
    wait_ms: u64,
    poll_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mix: Vec<MixToml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<RawRequest>,
}

impl Default for RequestToml {
    fn default() -> Self {
        RequestSpec::default().into()
    }
}

/// [`MixEntry`] as written in TOML: with its `label`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixToml {
    #[serde(default = "one")]
    weight: u32,
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

impl From<RequestToml> for RequestSpec {
    fn from(t: RequestToml) -> Self {
        let labels: Vec<Option<String>> = t.mix.iter().map(|m| m.label.clone()).collect();
        Self {
            e2e: t.e2e,
            wait_ms: t.wait_ms,
            poll_ms: t.poll_ms,
            labels: if labels.iter().all(Option::is_none) {
                Vec::new()
            } else {
                labels
            },
            mix: t
                .mix
                .into_iter()
                .map(|m| MixEntry {
                    weight: m.weight,
                    task_type: m.task_type,
                    args: m.args,
                    priority: m.priority,
                    tenant: m.tenant,
                    timeout_ms: m.timeout_ms,
                    agent: m.agent,
                })
                .collect(),
            raw: t.raw,
        }
    }
}

impl From<RequestSpec> for RequestToml {
    fn from(r: RequestSpec) -> Self {
        let labels = r.labels;
        Self {
            e2e: r.e2e,
            wait_ms: r.wait_ms,
            poll_ms: r.poll_ms,
            mix: r
                .mix
                .into_iter()
                .enumerate()
                .map(|(i, m)| MixToml {
                    weight: m.weight,
                    task_type: m.task_type,
                    args: m.args,
                    priority: m.priority,
                    tenant: m.tenant,
                    timeout_ms: m.timeout_ms,
                    agent: m.agent,
                    label: labels.get(i).cloned().flatten(),
                })
                .collect(),
            raw: r.raw,
        }
    }
}

/// One kind of task submission in the mix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixEntry {
    /// Relative weight (≥ 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Agent input.
    #[serde(default)]
    pub args: Option<Value>,
    /// Priority.
    #[serde(default)]
    pub priority: Option<String>,
    /// Sent as `X-Tenant`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Deadline.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Explicit department.
    #[serde(default)]
    pub agent: Option<String>,
}

fn one() -> u32 {
    1
}

/// A plain HTTP request, for `--raw` runs against any server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// Method (`GET`, `POST`, …).
    #[serde(default = "get")]
    pub method: String,
    /// Path and query.
    #[serde(default = "root")]
    pub path: String,
    /// JSON body.
    #[serde(default)]
    pub body: Option<Value>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// `"2s"`, `"500ms"` ↔ `Duration`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration like \"2s\" or \"500ms\": {e}"
            ))
        })
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::Scenario {
            path: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        let mut s = Self::from_toml(&text).map_err(|message| BenchError::Scenario {
            path: path.display().to_string(),
            message,
        })?;
        s.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(s)
    }

    /// Parses and checks scenario text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("`name` must be letters, digits, `-`, `_` or `.` (it names files)".into());
        }
        let l = &self.load;
        if l.steps.is_empty() {
            return Err("`load.steps` must list at least one concurrency or rate".into());
        }
        for s in &l.steps {
            let ok = match l.mode {
                Mode::Closed => *s >= 1.0 && s.fract() == 0.0 && *s <= 100_000.0,
                Mode::Open => *s > 0.0 && *s <= 1_000_000.0,
            };
            if !ok {
                return Err(match l.mode {
                    Mode::Closed => {
                        format!("`load.steps`: {s} is not a concurrency (a whole number 1-100000)")
                    }
                    Mode::Open => format!(
                        "`load.steps`: {s} is not a rate (per second, above 0, at most 1000000)"
                    ),
                });
            }
        }
        if l.duration.is_zero() {
            return Err("`load.duration` must be above zero".into());
        }
        if l.max_inflight == 0 {
            return Err("`load.max_inflight` must be at least 1".into());
        }
        let r = &self.request;
        match (&r.raw, r.mix.is_empty()) {
            (Some(_), false) => {
                return Err("use either `request.raw` or `request.mix`, not both".into());
            }
            (None, true) => {
                return Err("`request.mix` needs at least one entry (or use `request.raw`)".into());
            }
            _ => {}
        }
        if r.raw.is_some() && r.e2e != E2e::None {
            return Err("`request.e2e` applies to task submissions, not `request.raw`".into());
        }
        for (i, m) in r.mix.iter().enumerate() {
            if m.weight == 0 {
                return Err(format!("`request.mix[{i}].weight` must be at least 1"));
            }
            if m.task_type.is_empty() {
                return Err(format!("`request.mix[{i}].type` must not be empty"));
            }
            if let Some(a) = &m.args
                && !a.is_object()
            {
                return Err(format!(
                    "`request.mix[{i}].args` must be a table (JSON object)"
                ));
            }
        }
        for (i, lab) in r.labels.iter().enumerate() {
            if lab.as_deref().is_some_and(str::is_empty) {
                return Err(format!("`request.mix[{i}].label` must not be empty"));
            }
        }
        if !l.phases.is_empty() && l.mode != Mode::Open {
            return Err("`load.phases` needs `load.mode = \"open\"`".into());
        }
        for (i, p) in l.phases.iter().enumerate() {
            if !(p.factor > 0.0 && p.factor.is_finite()) {
                return Err(format!("`load.phases[{i}].factor` must be above 0"));
            }
            if p.duration.is_zero() {
                return Err(format!("`load.phases[{i}].duration` must be above zero"));
            }
            if let Some(a) = &p.args
                && !a.is_object()
            {
                return Err(format!(
                    "`load.phases[{i}].args` must be a table (JSON object)"
                ));
            }
            if p.label.as_deref().is_some_and(str::is_empty) {
                return Err(format!("`load.phases[{i}].label` must not be empty"));
            }
            for s in &l.steps {
                if s * p.factor > 1_000_000.0 {
                    return Err(format!(
                        "`load.phases[{i}].factor`: step {s} × {} is above 1000000 per second",
                        p.factor
                    ));
                }
            }
        }
        if self.target.pool.as_deref().is_some_and(str::is_empty) {
            return Err("`target.pool` must not be empty".into());
        }
        if let Some(raw) = &r.raw
            && !raw.path.starts_with('/')
        {
            return Err("`request.raw.path` must start with `/`".into());
        }
        if self.target.launch == Launch::None && self.target.url.is_none() {
            return Err("`target.url` is needed when `target.launch` is \"none\"".into());
        }
        if self.target.config.is_some()
            && !matches!(self.target.launch, Launch::Swarmd | Launch::SimBackend)
        {
            return Err("`target.config` applies to launch = \"swarmd\" or \"sim-backend\"".into());
        }
        Ok(())
    }

    /// A path from the scenario, resolved against its file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Parses `"1,10,100"` into steps.
pub fn parse_steps(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .map(|p| {
            p.trim().parse::<f64>().map_err(|_| {
                format!(
                    "`{}` is not a number (expected a list like 1,10,100)",
                    p.trim()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "echo-closed"
description = "echo"
[target]
launch = "swarmd"
[load]
mode = "closed"
steps = [1, 10, 100]
warmup = "500ms"
duration = "3s"
[request]
e2e = "poll"
[[request.mix]]
type = "echo"
args = { n = 1 }
[[request.mix]]
weight = 3
type = "sim"
priority = "high"
tenant = "b"
"#;

    #[test]
    fn parses_a_full_scenario() {
        let s = Scenario::from_toml(GOOD).unwrap();
        assert_eq!(s.name, "echo-closed");
        assert_eq!(s.target.launch, Launch::Swarmd);
        assert_eq!(s.load.steps, vec![1.0, 10.0, 100.0]);
        assert_eq!(s.load.warmup, Duration::from_millis(500));
        assert_eq!(s.load.duration, Duration::from_secs(3));
        assert_eq!(s.request.e2e, E2e::Poll);
        assert_eq!(s.request.mix.len(), 2);
        assert_eq!(s.request.mix[0].weight, 1);
        assert_eq!(s.request.mix[1].weight, 3);
        assert_eq!(s.request.mix[1].tenant.as_deref(), Some("b"));
        assert_eq!(s.request.mix[0].args, Some(serde_json::json!({"n": 1})));
    }

    fn err(text: &str) -> String {
        Scenario::from_toml(text).unwrap_err()
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        assert!(err("name = \"x\"\n[load]\nstepz = [1]\n").contains("stepz"));
        assert!(err(&GOOD.replace("\"3s\"", "\"soon\"")).contains("not a duration"));
        assert!(err(&GOOD.replace("[1, 10, 100]", "[0.5]")).contains("not a concurrency"));
        assert!(err(&GOOD.replace("[1, 10, 100]", "[]")).contains("at least one"));
        assert!(err(&GOOD.replace("name = \"echo-closed\"", "name = \"a b\"")).contains("`name`"));
        assert!(err(&GOOD.replace("weight = 3", "weight = 0")).contains("weight"));
        assert!(
            err(&GOOD.replace("launch = \"swarmd\"", "launch = \"none\"")).contains("target.url")
        );
        assert!(
            err(&GOOD.replace("launch = \"swarmd\"", "launch = \"rocket\"")).contains("rocket")
        );
        let no_mix = "name = \"x\"\n[target]\nurl = \"http://h\"\n";
        assert!(err(no_mix).contains("request.mix"));
        let raw_with_e2e = "name = \"x\"\n[target]\nurl = \"http://h\"\n[request]\ne2e = \"wait\"\n[request.raw]\npath = \"/\"\n";
        assert!(err(raw_with_e2e).contains("e2e"));
    }

    #[test]
    fn open_loop_rates_may_be_fractional() {
        let s = Scenario::from_toml(
            &GOOD
                .replace("mode = \"closed\"", "mode = \"open\"")
                .replace("[1, 10, 100]", "[0.5, 250]"),
        )
        .unwrap();
        assert_eq!(s.load.mode, Mode::Open);
        assert_eq!(s.load.steps, vec![0.5, 250.0]);
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = Scenario::from_file(Path::new("/nonexistent/dir/s.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/dir/s.toml") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn step_lists() {
        assert_eq!(parse_steps("1, 10,100").unwrap(), vec![1.0, 10.0, 100.0]);
        assert!(parse_steps("1,x").unwrap_err().contains("`x`"));
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let mut s = Scenario::from_toml(GOOD).unwrap();
        s.base_dir = PathBuf::from("/a/b");
        assert_eq!(s.resolve(Path::new("c.toml")), PathBuf::from("/a/b/c.toml"));
        assert_eq!(s.resolve(Path::new("/x.toml")), PathBuf::from("/x.toml"));
    }

    const PHASED: &str = r#"
name = "recovery"
[target]
launch = "swarmd"
pool = "sim"
[load]
mode = "open"
steps = [100]
warmup = "1s"
phases = [
  { factor = 1.0, duration = "5s", label = "normal" },
  { factor = 10.0, duration = "10s", args = { capacity = 10 }, label = "overload" },
  { factor = 1.0, duration = "500ms" },
]
[request]
e2e = "poll"
[[request.mix]]
type = "sim"
tenant = "a"
[[request.mix]]
type = "sim"
tenant = "b"
label = "bee"
[[request.mix]]
type = "echo"
"#;

    #[test]
    fn phases_labels_and_pool_parse() {
        let s = Scenario::from_toml(PHASED).unwrap();
        assert_eq!(s.target.pool.as_deref(), Some("sim"));
        let p = &s.load.phases;
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].factor, 10.0);
        assert_eq!(p[1].duration, Duration::from_secs(10));
        assert_eq!(p[1].args, Some(serde_json::json!({"capacity": 10})));
        assert_eq!(p[2].duration, Duration::from_millis(500));
        assert_eq!(s.load.measured(), Duration::from_millis(15_500));
        assert_eq!(s.load.phase_label(1), "overload");
        assert_eq!(s.load.phase_label(2), "phase 3");
        assert_eq!(s.request.label(0), Some("a"), "the tenant by default");
        assert_eq!(s.request.label(1), Some("bee"));
        assert_eq!(s.request.label(2), None);
        assert_eq!(s.request.mix[1].tenant.as_deref(), Some("b"));
        // Without phases the measured time is `duration`, labels are none.
        let plain = Scenario::from_toml(GOOD).unwrap();
        assert!(plain.load.phases.is_empty() && plain.request.labels.is_empty());
        assert_eq!(plain.load.measured(), Duration::from_secs(3));
        assert_eq!(plain.request.label(1), Some("b"));
        // A command line replacing the mix drops stale explicit labels.
        let mut replaced = s.clone();
        replaced.request.mix.truncate(1);
        assert_eq!(replaced.request.label(0), Some("a"));
    }

    #[test]
    fn scenarios_round_trip_with_their_labels_and_phases() {
        let s = Scenario::from_toml(PHASED).unwrap();
        let text = toml::to_string(&s).unwrap();
        let back = Scenario::from_toml(&text).unwrap();
        assert_eq!(back, s, "{text}");
    }

    #[test]
    fn bad_phases_labels_and_pools_name_the_key() {
        let bad = |from: &str, to: &str| err(&PHASED.replace(from, to));
        assert!(
            bad("factor = 10.0", "factor = 0.0")
                .contains("`load.phases[1].factor` must be above 0")
        );
        assert!(bad("factor = 10.0", "factor = -2.0").contains("`load.phases[1].factor`"));
        assert!(
            bad("\"500ms\"", "\"0s\"").contains("`load.phases[2].duration` must be above zero")
        );
        assert!(
            bad("args = { capacity = 10 }", "args = 10")
                .contains("`load.phases[1].args` must be a table")
        );
        assert!(bad("label = \"normal\"", "label = \"\"").contains("`load.phases[0].label`"));
        assert!(bad("label = \"normal\"", "lable = \"x\"").contains("lable"));
        assert!(bad("mode = \"open\"", "mode = \"closed\"").contains("`load.phases` needs"));
        assert!(bad("factor = 10.0", "factor = 20000.0").contains("above 1000000"));
        assert!(bad(", duration = \"500ms\"", "").contains("duration"));
        assert!(bad("label = \"bee\"", "label = \"\"").contains("`request.mix[1].label`"));
        assert!(bad("label = \"bee\"", "labl = \"x\"").contains("labl"));
        assert!(bad("pool = \"sim\"", "pool = \"\"").contains("`target.pool`"));
    }
}
