//! The task: what a client submits ([`TaskSpec`]), what is stored and returned
//! ([`Task`]), and the small types around them.
//!
//! A task moves `queued → running → succeeded | failed | timed_out | cancelled`;
//! a queued task may also end `cancelled` or `timed_out` (its deadline passed
//! before it started). Terminal states never change again.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::rfc3339;
use crate::error::FieldError;

/// A task's identifier: a UUIDv7, so ids sort by creation time and the
/// newest-first listing is an index scan on the primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ToSchema)]
#[schema(value_type = String, format = "uuid", example = "019abcde-0123-7def-8123-456789abcdef")]
pub struct TaskId(uuid::Uuid);

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id's 16 bytes; the last ones are random, good for sharding.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("unknown task status `{s}`")))
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Stored and waiting in its pool's queue.
    Queued,
    /// An agent instance is working on it.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error from the agent (see `error`).
    Failed,
    /// Its deadline passed, in the queue or while running (see `error.stage`).
    TimedOut,
    /// Cancelled by a client.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the task can no longer change.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                FieldError::invalid(
                    "status",
                    format!(
                        "unknown status `{s}`; expected one of queued, running, succeeded, failed, timed_out, cancelled"
                    ),
                )
            })
    }
}

impl Serialize for TaskStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Scheduling priority. `medium` is accepted on input as `normal`, as the
/// prototype used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Priority {
    /// Served before everything else.
    Critical,
    /// Served before normal and low.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served when nothing more urgent waits (but never starved).
    Low,
}

impl Priority {
    /// All priorities, most urgent first; `index()` is the position here.
    pub const ALL: [Priority; 4] = [Self::Critical, Self::High, Self::Normal, Self::Low];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// 0 (critical) to 3 (low): the stored form and the queue class.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The inverse of [`Priority::index`]; out-of-range values read as `low`.
    pub fn from_index(i: i64) -> Self {
        match i {
            0 => Self::Critical,
            1 => Self::High,
            2 => Self::Normal,
            _ => Self::Low,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "critical" => Ok(Self::Critical),
            "high" => Ok(Self::High),
            "normal" | "medium" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            _ => Err(FieldError::invalid(
                "priority",
                format!(
                    "unknown priority `{s}`; expected one of critical, high, normal (or medium), low"
                ),
            )),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: FieldError| de::Error::custom(e.message))
    }
}

/// The body of `POST /api/tasks` (and the prototype's `POST /task`).
///
/// Unknown fields are rejected so a typo (`timout_ms`) is an error, not a
/// silently ignored setting.
///
/// The OpenAPI schema states the checks of [`TaskSpec::validate`] that need
/// no configuration (lengths, the `type` alphabet, no NUL in text), so a
/// client can tell a valid body from the document alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// What kind of work this is; decides the department unless `agent` is set.
    #[serde(rename = "type")]
    #[schema(pattern = r"^[A-Za-z0-9_.\-]{1,64}$")]
    pub task_type: String,
    /// Input for the agent; a JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// Short human title; also read by the director's keyword rules.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\x00]*$")]
    pub title: Option<String>,
    /// Longer description; also read by the keyword rules.
    #[serde(default)]
    #[schema(max_length = 20000, pattern = r"^[^\x00]*$")]
    pub description: Option<String>,
    /// Scheduling priority, default `normal`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Names the agent (department) explicitly, bypassing routing.
    #[serde(default)]
    #[schema(min_length = 1, pattern = r"^[^\x00]+$")]
    pub agent: Option<String>,
    /// Deadline for the whole task (queue wait and run), from acceptance.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Hold the response up to this long for the task to finish (at most
    /// `server.max_wait_ms`).
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub wait_ms: Option<u64>,
    /// Makes retries safe: a second submission with the same key (per tenant)
    /// returns the first task instead of creating another.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub idempotency_key: Option<String>,
    /// Try the task again after a retryable failure (a timeout of the
    /// agent's own call, a backend's 429 or 5xx, a worker crash); bad input
    /// is never retried. Default: the department's `[pools.NAME.retry_task]`.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Start no earlier than this time (RFC 3339, any offset; at most 30
    /// days ahead; a time past means now). The deadline (`timeout_ms`)
    /// counts from then.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Start no earlier than this long after acceptance, ms (at most 30
    /// days). Not with `run_at`.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(maximum = 2592000000_u64)]
    pub delay_ms: Option<u64>,
    /// Where to POST the finished task (signed, retried until delivered);
    /// its host must be in `[webhooks] allow_hosts`. Default: the
    /// tenant's `[webhooks.tenants.NAME] url`, if any.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = r"^https?://")]
    pub callback_url: Option<String>,
}

/// The furthest ahead a task may be scheduled (`run_at`, `delay_ms`): 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3_600_000;

/// `retry` on submit: fields left out take the department's values (or
/// the defaults: 1000 ms backoff, 60000 ms at most).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included: 1 (no retries) to 100.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// The backoff ceiling before the first retry, doubled for each later
    /// one (full jitter: the wait is uniform between 0 and the ceiling).
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(maximum = 3600000)]
    pub backoff_ms: Option<u64>,
    /// The highest backoff ceiling.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(maximum = 3600000)]
    pub max_backoff_ms: Option<u64>,
}

/// Longest backoff a retry may ask for (one hour).
pub const MAX_RETRY_BACKOFF_MS: u64 = 3_600_000;
/// Most attempts a task may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

impl RetrySpec {
    /// Checks the ranges; the field is named `retry.<key>`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(n) = self.max_attempts
            && !(1..=MAX_RETRY_ATTEMPTS).contains(&n)
        {
            return Err(FieldError::invalid(
                "retry.max_attempts",
                format!("`retry.max_attempts` must be between 1 and {MAX_RETRY_ATTEMPTS}"),
            ));
        }
        for (field, v) in [
            ("retry.backoff_ms", self.backoff_ms),
            ("retry.max_backoff_ms", self.max_backoff_ms),
        ] {
            if v.is_some_and(|v| v > MAX_RETRY_BACKOFF_MS) {
                return Err(FieldError::invalid(
                    field,
                    format!("`{field}` must be at most {MAX_RETRY_BACKOFF_MS} (one hour)"),
                ));
            }
        }
        Ok(())
    }

    /// The policy this spec asks for over the department's `default`.
    pub fn over(&self, default: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts),
            backoff_ms: self.backoff_ms.unwrap_or(default.backoff_ms),
            max_backoff_ms: self.max_backoff_ms.unwrap_or(default.max_backoff_ms),
        }
    }
}

/// How a task is tried again, as resolved at admission and stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first retry's backoff ceiling, ms (doubled per retry).
    pub backoff_ms: u64,
    /// The highest ceiling, ms.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    /// One attempt: no retries.
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

/// One attempt of a task, as its `history` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// Its number, from 1.
    pub attempt: i32,
    /// The node that ran it.
    #[schema(required)]
    pub node: Option<String>,
    /// The instance that ran it.
    #[schema(required)]
    pub instance: Option<String>,
    /// `running` while it runs, else how it ended (`failed` for one that
    /// was retried).
    pub status: TaskStatus,
    /// When it started, RFC 3339.
    #[schema(required)]
    pub started_at: Option<String>,
    /// When it ended, RFC 3339.
    #[schema(required)]
    pub finished_at: Option<String>,
    /// Its run time, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<f64>,
    /// Why it did not succeed.
    #[schema(required)]
    pub error: Option<TaskError>,
}

/// One try of a completion webhook, as `GET /api/tasks/{id}/deliveries`
/// lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// This try's id.
    pub id: String,
    /// The `webhook-id` sent: the same for every try of one message, so a
    /// receiver can drop a repeat.
    pub message_id: String,
    /// Its number, from 1.
    pub attempt: i32,
    /// Where it went.
    pub url: String,
    /// The node that sent it.
    pub node: String,
    /// When, RFC 3339.
    pub at: String,
    /// How long it took, ms.
    pub duration_ms: f64,
    /// The receiver's HTTP status, if it answered.
    #[schema(required)]
    pub status: Option<i32>,
    /// Why the try failed, if it did (a status other than 2xx, no answer).
    #[schema(required)]
    pub error: Option<String>,
}

/// Bounds a submission is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SpecLimits {
    /// Largest accepted `wait_ms`.
    pub max_wait_ms: u64,
}

impl TaskSpec {
    /// Checks the fields that do not depend on routing (those are the
    /// director's and the agent's to check). Normalises `args: null` to `{}`.
    pub fn validate(&mut self, limits: SpecLimits) -> Result<(), FieldError> {
        let t = &self.task_type;
        if t.is_empty() {
            return Err(FieldError::missing("type"));
        }
        if t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(FieldError::invalid(
                "type",
                "`type` must be 1-64 characters of letters, digits, `_`, `-` or `.`",
            ));
        }
        match &self.args {
            None | Some(Value::Null) => self.args = Some(Value::Object(Default::default())),
            Some(Value::Object(_)) => {}
            Some(_) => return Err(FieldError::invalid("args", "`args` must be a JSON object")),
        }
        check_len("title", self.title.as_deref(), 500)?;
        check_len("description", self.description.as_deref(), 20_000)?;
        if let Some(agent) = &self.agent
            && agent.is_empty()
        {
            return Err(FieldError::invalid("agent", "`agent` must not be empty"));
        }
        if self.timeout_ms == Some(0) {
            return Err(FieldError::invalid(
                "timeout_ms",
                "`timeout_ms` must be at least 1",
            ));
        }
        if let Some(w) = self.wait_ms
            && w > limits.max_wait_ms
        {
            return Err(FieldError::invalid(
                "wait_ms",
                format!(
                    "`wait_ms` must be at most {} (server.max_wait_ms)",
                    limits.max_wait_ms
                ),
            ));
        }
        if let Some(r) = &self.retry {
            r.validate()?;
        }
        self.start_after(crate::clock::now_ms())?;
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > 255 || k.chars().any(char::is_control))
        {
            return Err(FieldError::invalid(
                "idempotency_key",
                "`idempotency_key` must be 1-255 printable characters",
            ));
        }
        // PostgreSQL's text cannot hold NUL; refusing it here, on both
        // backends, keeps such a request from ever reaching a write batch.
        for (field, text) in [
            ("title", self.title.as_deref()),
            ("description", self.description.as_deref()),
            ("agent", self.agent.as_deref()),
        ] {
            if text.is_some_and(|t| t.contains('\0')) {
                return Err(nul_error(field.to_string()));
            }
        }
        if let Some(path) = self.args.as_ref().and_then(|a| find_nul(a, "args")) {
            return Err(nul_error(path));
        }
        Ok(())
    }

    /// When a delayed task may start (epoch ms), from `run_at` or
    /// `delay_ms`; `None` for a task that may start at once.
    pub fn start_after(&self, now_ms: i64) -> Result<Option<i64>, FieldError> {
        let max = i64::try_from(MAX_DELAY_MS).unwrap_or(i64::MAX);
        match (&self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => Err(FieldError::invalid(
                "delay_ms",
                "give `run_at` or `delay_ms`, not both",
            )),
            (None, None) | (None, Some(0)) => Ok(None),
            (None, Some(ms)) => {
                if ms > MAX_DELAY_MS {
                    return Err(FieldError::invalid(
                        "delay_ms",
                        format!("`delay_ms` must be at most {MAX_DELAY_MS} (30 days)"),
                    ));
                }
                Ok(Some(now_ms.saturating_add(ms as i64)))
            }
            (Some(at), None) => {
                let t = chrono::DateTime::parse_from_rfc3339(at.trim()).map_err(|e| {
                    FieldError::invalid(
                        "run_at",
                        format!(
                            "`run_at` must be an RFC 3339 time such as 2026-12-24T18:00:00Z ({e})"
                        ),
                    )
                })?;
                let at_ms = t.timestamp_millis();
                if at_ms - now_ms > max {
                    return Err(FieldError::invalid(
                        "run_at",
                        "`run_at` must be at most 30 days ahead",
                    ));
                }
                Ok((at_ms > now_ms).then_some(at_ms))
            }
        }
    }

    /// The agent input object (`{}` when none was given).
    pub fn args(&self) -> &Value {
        static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        self.args
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(|| Value::Object(Default::default())))
    }
}

fn nul_error(field: String) -> FieldError {
    let message = format!("`{field}` contains a NUL character (\\u0000), which text cannot hold");
    FieldError::invalid(field, message)
}

/// The path of the first string (or object key) in `v` holding a NUL
/// character: `args.to[2]`, `args.meta.note`.
fn find_nul(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            let here = format!("{path}.{}", k.replace('\0', "\\u0000"));
            if k.contains('\0') {
                Some(here)
            } else {
                find_nul(item, &here)
            }
        }),
        _ => None,
    }
}

fn check_len(field: &str, v: Option<&str>, max: usize) -> Result<(), FieldError> {
    match v {
        Some(s) if s.chars().count() > max => Err(FieldError::invalid(
            field,
            format!("`{field}` must be at most {max} characters"),
        )),
        _ => Ok(()),
    }
}

/// Why a task did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    /// Stable code: `agent_error`, `timeout`, `cancelled`, `panic`, …
    pub code: String,
    /// What happened, for humans.
    pub message: String,
    /// The stage the task was in: `queue` or `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

impl TaskError {
    /// An error with the given code, message and stage.
    pub fn new(code: impl Into<String>, message: impl Into<String>, stage: Option<&str>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            stage: stage.map(str::to_string),
        }
    }
}

/// Milliseconds each stage of a task took. Absent stages were not reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    /// Parsing, validation and routing, before the store was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_ms: Option<f64>,
    /// Until the task's row was committed (group commit included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_ms: Option<f64>,
    /// From acceptance until an instance started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    /// The agent's own run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<f64>,
    /// Storing the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_ms: Option<f64>,
    /// From acceptance to the stored outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
}

/// What a queued task is waiting for: the step of its department's
/// dispatcher that cannot go on yet. A tenant over its quota is refused at
/// admission (`429 tenant_quota`), so no queued task waits for a quota.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Blocker {
    /// The department's concurrency limit (fixed or adaptive, per node or
    /// cluster-wide) is in use: it starts when a running task ends.
    DepartmentLimit,
    /// The process-wide cap (`admission.global_max_inflight`, lowered while
    /// CPU or memory is high) is in use.
    GlobalCap,
    /// The database takes no writes, and a start is a write.
    Database,
    /// This node is shutting down: the task waits for another node (or the
    /// next start) to take it.
    Shutdown,
    /// The department's token budget (`tokens_per_minute`,
    /// `tokens_per_day`) is spent: starts wait until it refills.
    TokenBudget,
    /// The provider said its quota is spent (a `429` with `Retry-After`, or
    /// rate-limit headers with nothing remaining): starts wait until its
    /// reset rather than probing into refusals.
    ProviderPause,
}

impl Blocker {
    /// Every blocker.
    pub const ALL: [Blocker; 6] = [
        Self::DepartmentLimit,
        Self::GlobalCap,
        Self::Database,
        Self::Shutdown,
        Self::TokenBudget,
        Self::ProviderPause,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DepartmentLimit => "department_limit",
            Self::GlobalCap => "global_cap",
            Self::Database => "database",
            Self::Shutdown => "shutdown",
            Self::TokenBudget => "token_budget",
            Self::ProviderPause => "provider_pause",
        }
    }
}

/// A task as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// The tenant that submitted it; only that tenant (or an admin) reads it.
    pub tenant: String,
    /// The submitted `type`.
    pub task_type: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// Scheduling priority.
    pub priority: Priority,
    /// The department (pool) the director chose.
    pub department: String,
    /// The agent kind that runs in that department.
    pub agent: String,
    /// The instance that ran (or runs) it.
    pub instance: Option<String>,
    /// Submitted title.
    pub title: Option<String>,
    /// Submitted description.
    pub description: Option<String>,
    /// Agent input.
    pub args: Value,
    /// The agent's output, when succeeded.
    pub result: Option<Value>,
    /// Why it did not succeed.
    pub error: Option<TaskError>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// The deadline budget it was given.
    pub timeout_ms: i64,
    /// Absolute deadline, epoch ms (`created_at + timeout_ms`).
    pub deadline_at: i64,
    /// Accepted, epoch ms.
    pub created_at: i64,
    /// Last started, epoch ms.
    pub started_at: Option<i64>,
    /// Finished, epoch ms.
    pub finished_at: Option<i64>,
    /// How many times an instance started it (more than one after recovery).
    pub attempts: i32,
    /// The node that started each attempt, oldest first (on a cluster, a
    /// task taken over after its node died names both).
    pub nodes: Vec<String>,
    /// Per-stage latencies.
    pub timings: Timings,
    /// While queued on the node answering: what it waits for. Not stored;
    /// filled in when the task is read.
    pub waiting_for: Option<Blocker>,
    /// How it is retried (`None`: one attempt).
    pub retry: Option<RetryPolicy>,
    /// A queued task does not start before this (epoch ms): a retry's
    /// backoff.
    pub run_after: Option<i64>,
    /// Every attempt that has ended or runs, oldest first.
    pub history: Vec<Attempt>,
    /// Where the finished task is delivered.
    pub callback_url: Option<String>,
    /// The delivery: `pending` (finished, not yet delivered), `delivered`
    /// or `failed` (given up); `None` before the task ends or without a
    /// callback.
    pub callback_state: Option<String>,
}

/// A [`Task`] on the wire: times as RFC 3339, `type` for `task_type`,
/// absent `title`, `description` and `idempotency_key` left out, the other
/// optional fields `null`. The OpenAPI schema `Task` is derived from this
/// struct, so the document describes exactly what is sent.
#[derive(Serialize, ToSchema)]
#[schema(as = Task)]
struct TaskView<'a> {
    id: TaskId,
    #[serde(rename = "type")]
    task_type: &'a str,
    status: TaskStatus,
    priority: Priority,
    tenant: &'a str,
    department: &'a str,
    agent: &'a str,
    #[schema(required)]
    instance: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// The agent input (a JSON object). Always sent for one task; a list
    /// sends it only when `fields` asks for it.
    #[schema(value_type = Object, required = false)]
    args: &'a Value,
    /// The agent's output, when succeeded (else `null`). Always sent for one
    /// task; a list sends it only when `fields` asks for it.
    #[schema(value_type = Option<Object>, required = false)]
    result: Option<&'a Value>,
    #[schema(required)]
    error: Option<&'a TaskError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    timeout_ms: i64,
    #[schema(format = DateTime)]
    deadline_at: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required)]
    started_at: Option<String>,
    #[schema(format = DateTime, required)]
    finished_at: Option<String>,
    attempts: i32,
    nodes: &'a [String],
    timings: &'a Timings,
    /// While queued on the node answering: what it waits for (absent
    /// otherwise, and for a task queued on another node).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<Blocker>,
    /// How it is retried after a retryable failure (`null`: one attempt).
    #[schema(required)]
    retry: Option<&'a RetryPolicy>,
    /// A queued retry does not start before this time (its backoff).
    #[schema(format = DateTime, required)]
    run_after: Option<String>,
    /// Every attempt, oldest first: its number, node, instance, outcome,
    /// times and error.
    history: Vec<Attempt>,
    /// Where the finished task is delivered (absent without a callback).
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a str>,
    /// The delivery's state: `pending`, `delivered` or `failed` (absent
    /// before the task ends, or without a callback); each try is in
    /// `GET /api/tasks/{id}/deliveries`.
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_state: Option<&'a str>,
}

impl Task {
    /// Every attempt, oldest first: the stored ones that ended with a
    /// retry, attempts whose outcome was lost (their node stopped while
    /// they ran, and the task was taken up again), and the current or last
    /// one, built from the task itself.
    pub fn all_attempts(&self) -> Vec<Attempt> {
        let mut out = self.history.clone();
        let started = self.attempts.max(0);
        let recorded = out.last().map_or(0, |a| a.attempt);
        // The last attempt is the task's own unless it is queued again (a
        // retry in its backoff, or an attempt handed back).
        let current = if self.status == TaskStatus::Queued {
            None
        } else {
            Some(started)
        };
        for n in recorded + 1..=started {
            let node = self.nodes.get((n - 1) as usize).cloned();
            if Some(n) == current {
                out.push(Attempt {
                    attempt: n,
                    node,
                    instance: self.instance.clone(),
                    status: self.status,
                    started_at: self.started_at.map(rfc3339),
                    finished_at: self.finished_at.map(rfc3339),
                    run_ms: self.timings.run_ms,
                    error: self.error.clone(),
                });
            } else {
                out.push(Attempt {
                    attempt: n,
                    node,
                    instance: None,
                    status: TaskStatus::Failed,
                    started_at: None,
                    finished_at: None,
                    run_ms: None,
                    error: Some(TaskError::new(
                        "attempt_lost",
                        "the attempt did not end on its node (it stopped, or handed the task back); the task was taken up again",
                        Some("run"),
                    )),
                });
            }
        }
        out
    }
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TaskView {
            id: self.id,
            task_type: &self.task_type,
            status: self.status,
            priority: self.priority,
            tenant: &self.tenant,
            department: &self.department,
            agent: &self.agent,
            instance: self.instance.as_deref(),
            title: self.title.as_deref(),
            description: self.description.as_deref(),
            args: &self.args,
            result: self.result.as_ref(),
            error: self.error.as_ref(),
            idempotency_key: self.idempotency_key.as_deref(),
            timeout_ms: self.timeout_ms,
            deadline_at: rfc3339(self.deadline_at),
            created_at: rfc3339(self.created_at),
            started_at: self.started_at.map(rfc3339),
            finished_at: self.finished_at.map(rfc3339),
            attempts: self.attempts,
            nodes: &self.nodes,
            timings: &self.timings,
            waiting_for: self.waiting_for,
            retry: self.retry.as_ref(),
            run_after: self.run_after.map(rfc3339),
            history: self.all_attempts(),
            callback_url: self.callback_url.as_deref(),
            callback_state: self.callback_state.as_deref(),
        }
        .serialize(s)
    }
}

impl utoipa::PartialSchema for Task {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        TaskView::schema()
    }
}

impl ToSchema for Task {
    fn name() -> std::borrow::Cow<'static, str> {
        TaskView::name()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        TaskView::schemas(schemas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<TaskSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    const LIMITS: SpecLimits = SpecLimits {
        max_wait_ms: 60_000,
    };

    #[test]
    fn medium_is_normal_and_priorities_order() {
        assert_eq!("medium".parse::<Priority>().unwrap(), Priority::Normal);
        assert_eq!("HIGH".parse::<Priority>().unwrap(), Priority::High);
        assert!(Priority::Critical < Priority::Low);
        for p in Priority::ALL {
            assert_eq!(Priority::from_index(p.index() as i64), p);
        }
    }

    #[test]
    fn unknown_priority_names_the_choices() {
        let err = spec(r#"{"type":"echo","priority":"urgent"}"#).unwrap_err();
        assert!(
            err.to_string().contains("expected one of critical"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = spec(r#"{"type":"echo","timout_ms":5}"#).unwrap_err();
        assert!(err.to_string().contains("timout_ms"), "{err}");
    }

    #[test]
    fn validate_normalises_args_and_checks_fields() {
        let mut s = spec(r#"{"type":"echo"}"#).unwrap();
        s.validate(LIMITS).unwrap();
        assert_eq!(s.args(), &serde_json::json!({}));

        let mut s = spec(r#"{"type":"echo","args":[1]}"#).unwrap();
        assert_eq!(
            s.validate(LIMITS).unwrap_err().field.as_deref(),
            Some("args")
        );

        let mut s = spec(r#"{"type":"a b"}"#).unwrap();
        assert_eq!(
            s.validate(LIMITS).unwrap_err().field.as_deref(),
            Some("type")
        );

        let mut s = spec(r#"{"type":""}"#).unwrap();
        assert_eq!(s.validate(LIMITS).unwrap_err().code, "missing_field");

        let mut s = spec(r#"{"type":"echo","wait_ms":60001}"#).unwrap();
        assert_eq!(
            s.validate(LIMITS).unwrap_err().field.as_deref(),
            Some("wait_ms")
        );

        let mut s = spec(r#"{"type":"echo","timeout_ms":0}"#).unwrap();
        assert_eq!(
            s.validate(LIMITS).unwrap_err().field.as_deref(),
            Some("timeout_ms")
        );

        let mut s = spec(r#"{"type":"echo","idempotency_key":""}"#).unwrap();
        assert_eq!(
            s.validate(LIMITS).unwrap_err().field.as_deref(),
            Some("idempotency_key")
        );
    }

    #[test]
    fn nul_characters_are_refused_with_their_field() {
        let field = |body: &str| {
            let mut s = spec(body).unwrap();
            s.validate(LIMITS).unwrap_err().field
        };
        assert_eq!(
            field(r#"{"type":"echo","title":"a\u0000b"}"#).as_deref(),
            Some("title")
        );
        assert_eq!(
            field(r#"{"type":"echo","description":"\u0000"}"#).as_deref(),
            Some("description")
        );
        assert_eq!(
            field(r#"{"type":"echo","args":{"to":["x","y\u0000"]}}"#).as_deref(),
            Some("args.to[1]")
        );
        assert_eq!(
            field(r#"{"type":"echo","args":{"m":{"n\u0000":1}}}"#).as_deref(),
            Some("args.m.n\\u0000")
        );
        let mut fine = spec(r#"{"type":"echo","args":{"text":"tab\tok"}}"#).unwrap();
        fine.validate(LIMITS).unwrap();
    }

    #[test]
    fn status_round_trips_and_terminality() {
        for st in TaskStatus::ALL {
            assert_eq!(st.as_str().parse::<TaskStatus>().unwrap(), st);
        }
        assert!(!TaskStatus::Queued.is_terminal());
        assert!(!TaskStatus::Running.is_terminal());
        assert!(TaskStatus::TimedOut.is_terminal());
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn task_ids_sort_by_creation() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<TaskId>().unwrap(), a);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn task_serialises_with_rfc3339_times() {
        let t = Task {
            id: TaskId::new(),
            tenant: "default".into(),
            task_type: "echo".into(),
            status: TaskStatus::Succeeded,
            priority: Priority::High,
            department: "echo".into(),
            agent: "echo".into(),
            instance: Some("echo-0".into()),
            title: None,
            description: None,
            args: serde_json::json!({"x": 1}),
            result: Some(serde_json::json!({"x": 1})),
            error: None,
            idempotency_key: None,
            timeout_ms: 1000,
            deadline_at: 1000,
            created_at: 0,
            started_at: Some(1),
            finished_at: None,
            attempts: 1,
            nodes: Vec::new(),
            waiting_for: None,
            retry: None,
            run_after: None,
            history: Vec::new(),
            callback_url: None,
            callback_state: None,
            timings: Timings {
                run_ms: Some(1.5),
                ..Default::default()
            },
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["type"], "echo");
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["priority"], "high");
        assert_eq!(v["created_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["finished_at"], Value::Null);
        assert_eq!(v["timings"], serde_json::json!({"run_ms": 1.5}));
        assert!(v.get("title").is_none());
    }
}
