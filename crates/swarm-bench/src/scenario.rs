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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
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
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            e2e: E2e::None,
            wait_ms: 30_000,
            poll_ms: 20,
            mix: Vec::new(),
            raw: None,
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
}
