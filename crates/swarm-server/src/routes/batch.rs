//! `POST /api/tasks/batch`: many tasks in one request, stored in one commit.
//!
//! Each item is the body of `POST /api/tasks` (without `wait_ms`). A body
//! that does not match the document (an item of the wrong shape, a field
//! out of range) is refused whole, `422` naming `tasks[i].field`, and
//! nothing is stored: that is a client's bug, and half a batch stored would
//! hide it. The rest is decided per item, as if it were submitted alone
//! (routing, the agent's check of `args`, quota, queue bound, shedding,
//! idempotency), so a refused item fails only itself; the answer lists
//! every item in order with the status it would have had alone (202
//! stored, 200 an idempotent replay of a finished task, or its error with
//! `retry_after`). The items that pass
//! admission are written in one transaction of the group-commit writer, so
//! they share one commit, and are acknowledged only after it. Idempotency
//! keys are per item (`idempotency_key` in each); a key repeated within the
//! batch replays the first item, as across requests. `Request-Timeout` sets
//! the deadline of the items that do not give `timeout_ms`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use swarm_core::task::SpecLimits;
use swarm_core::{FieldError, Task, TaskSpec};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, parse_value};
use crate::routes::Arrived;
use crate::routes::doc::{BodyErrors, CallerErrors, StoreErrors, TenantHeader};
use crate::routes::tasks::request_timeout;

/// Most tasks in one batch.
pub(crate) const MAX_BATCH: usize = 1000;

/// The body of `POST /api/tasks/batch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// The tasks, 1 to 1,000, each as the body of `POST /api/tasks`
    /// without `wait_ms`. The whole body is bound by `server.max_body_bytes`.
    #[schema(value_type = Vec<TaskSpec>, min_items = 1, max_items = 1000)]
    tasks: Vec<serde_json::Value>,
}

/// The answer of `POST /api/tasks/batch`: one item per task, in order.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchAnswer {
    /// One answer per submitted task, in the order given.
    items: Vec<BatchItem>,
}

/// One task's answer in a batch.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchItem {
    /// The status the task would have had submitted alone: `202` stored
    /// and queued, `200` an idempotent replay of a task that ended, or the
    /// error's status (`422`, `409`, `429`, `503`).
    status: u16,
    /// The task, when it was stored (or replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<Task>,
    /// True when an idempotency key returned an earlier task.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    /// Why the task was not stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BatchItemError>,
    /// Seconds to wait before submitting this task again (a refusal).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// An item's error: the envelope a single submit would have answered.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchItemError {
    /// Stable machine-readable code (`invalid_field`, `tenant_quota`, `token_budget`, …).
    error_code: String,
    /// What went wrong, for people.
    message: String,
    /// The offending field within the item, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl BatchItem {
    fn failed(e: ApiError) -> Self {
        Self {
            status: e.status.as_u16(),
            task: None,
            replayed: false,
            retry_after: e.retry_after_s,
            error: Some(BatchItemError {
                error_code: e.code.to_string(),
                message: e.message,
                field: e.field,
            }),
        }
    }
}

/// `POST /api/tasks/batch`: submit up to 1,000 tasks, stored in one commit.
#[utoipa::path(
    post,
    path = "/api/tasks/batch",
    operation_id = "submit_batch",
    tag = "tasks",
    security(("bearer" = [])),
    request_body = BatchRequest,
    params(TenantHeader),
    responses(
        (status = 200, body = BatchAnswer, description = "Every item's answer, in order: its task (`202` stored, `200` a replay of one that ended) or its error."),
        BodyErrors, CallerErrors, StoreErrors
    )
)]
pub(crate) async fn submit_batch(
    State(app): State<AppState>,
    arrived: Option<axum::Extension<Arrived>>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BatchRequest>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let received_at = arrived.map(|a| a.0.0).unwrap_or_else(Instant::now);
    if headers.contains_key("idempotency-key") {
        return Err(FieldError::invalid(
            "Idempotency-Key",
            "a batch takes no `Idempotency-Key` header: give each task its own `idempotency_key`",
        )
        .into());
    }
    let n = body.tasks.len();
    if n == 0 || n > MAX_BATCH {
        return Err(FieldError::invalid(
            "tasks",
            format!("a batch holds 1 to {MAX_BATCH} tasks, not {n}"),
        )
        .into());
    }
    let timeout_ms = request_timeout(&headers)?;
    // The shape of every item first: a malformed batch stores nothing.
    let limits = SpecLimits {
        max_wait_ms: app.engine.config().server.max_wait_ms,
    };
    let mut specs = Vec::with_capacity(n);
    for (i, v) in body.tasks.into_iter().enumerate() {
        let spec = whole_timeout(&v)
            .and_then(|()| parse_value::<TaskSpec>(v))
            .and_then(|s| batch_spec(s, timeout_ms, limits))
            .map_err(|e| in_item(e, i))?;
        specs.push(spec);
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let answers = app
        .engine
        .submit_batch(specs, &caller.tenant, received_at, request_id)
        .await?;
    let items = answers
        .into_iter()
        .map(|answer| match answer {
            Ok(s) => BatchItem {
                status: if s.task.status.is_terminal() {
                    StatusCode::OK.as_u16()
                } else {
                    StatusCode::ACCEPTED.as_u16()
                },
                replayed: !s.created,
                task: Some(s.task),
                error: None,
                retry_after: None,
            },
            Err(e) => BatchItem::failed(e.into()),
        })
        .collect();
    Ok(Json(BatchAnswer { items }))
}

/// `timeout_ms` must be a whole number the document allows (at most
/// `i64::MAX`, the stored deadline's range): a larger one is a malformed item, refused with the
/// batch, not read as some other deadline.
fn whole_timeout(v: &serde_json::Value) -> Result<(), ApiError> {
    match v.get("timeout_ms") {
        Some(t) if !t.is_null() && t.as_u64().is_none_or(|ms| ms > i64::MAX as u64) => {
            Err(FieldError::invalid(
                "timeout_ms",
                "`timeout_ms` must be a whole number of milliseconds, at least 1",
            )
            .into())
        }
        _ => Ok(()),
    }
}

/// `e`, found in item `i`, naming its field within the request.
fn in_item(mut e: ApiError, i: usize) -> ApiError {
    e.field = Some(match e.field.take() {
        Some(f) => format!("tasks[{i}].{f}"),
        None => format!("tasks[{i}]"),
    });
    e.message = format!("tasks[{i}]: {}", e.message);
    e
}

/// A batch item's spec, checked as a single submit's is: no `wait_ms` (a
/// batch answers at once), and the request's deadline where the item gives
/// none.
fn batch_spec(
    mut spec: TaskSpec,
    timeout_ms: Option<u64>,
    limits: SpecLimits,
) -> Result<TaskSpec, ApiError> {
    spec.validate(limits)?;
    if spec.wait_ms.is_some() {
        return Err(FieldError::invalid(
            "wait_ms",
            "a batch answers at once: wait for each task with `GET /api/tasks/{id}` or its events",
        )
        .into());
    }
    if spec.timeout_ms.is_none() {
        spec.timeout_ms = timeout_ms;
    }
    Ok(spec)
}
