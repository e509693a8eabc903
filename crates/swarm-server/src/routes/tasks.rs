//! `/api/tasks…` and the prototype's `POST /task`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::json;
use swarm_core::{FieldError, Task, TaskId, TaskSpec, TaskStatus};
use swarm_engine::{CancelOutcome, ListQuery, Submission, TaskEvent, Watch};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::Arrived;
use crate::routes::doc::{
    AdmissionErrors, BodyErrors, CallerErrors, CancelAnswers, OneTask, StoreErrors, Submitted,
    TaskNotFound, TenantHeader,
};

const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 50;

fn parse_id(s: &str) -> Result<TaskId, ApiError> {
    // A malformed id names no task: 404, like an unknown one.
    s.parse().map_err(|_| ApiError::task_not_found())
}

fn location(id: TaskId) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/tasks/{id}"))
        .unwrap_or(HeaderValue::from_static("/api/tasks"))
}

/// A page of [`list`]: newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TaskPage {
    /// The tasks, newest first.
    tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required, format = "uuid")]
    next_cursor: Option<String>,
}

/// The headers `submit` reads besides the caller's.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Documentation only: `submit` reads them from the `HeaderMap`.
struct SubmitHeaders {
    /// Same as `idempotency_key` in the body (they must agree when both are
    /// given).
    #[param(rename = "Idempotency-Key", pattern = r"^[!-~]([ -~]{0,253}[!-~])?$")]
    idempotency_key: Option<String>,
    /// Same as `timeout_ms` in the body, which wins when both are given.
    #[param(rename = "Request-Timeout", minimum = 1)]
    request_timeout: Option<u64>,
}

/// `POST /api/tasks`: submit a task.
#[utoipa::path(
    post,
    path = "/api/tasks",
    operation_id = "submit_task",
    tag = "tasks",
    security(("bearer" = [])),
    request_body = TaskSpec,
    params(SubmitHeaders, TenantHeader),
    responses(Submitted, BodyErrors, CallerErrors, AdmissionErrors)
)]
pub(crate) async fn submit(
    State(app): State<AppState>,
    arrived: Option<axum::Extension<Arrived>>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(mut spec): JsonBody<TaskSpec>,
) -> Result<Response, ApiError> {
    let received_at = arrived.map(|a| a.0.0).unwrap_or_else(Instant::now);
    if let Some(h) = headers.get("idempotency-key") {
        let key = h
            .to_str()
            .map_err(|_| FieldError::invalid("Idempotency-Key", "must be printable ASCII"))?
            .to_string();
        match &spec.idempotency_key {
            Some(body_key) if *body_key != key => {
                return Err(FieldError::invalid(
                    "idempotency_key",
                    "the `Idempotency-Key` header and `idempotency_key` in the body differ",
                )
                .into());
            }
            _ => spec.idempotency_key = Some(key),
        }
    }
    if spec.timeout_ms.is_none()
        && let Some(h) = headers.get("request-timeout")
    {
        let ms = h
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                FieldError::invalid(
                    "Request-Timeout",
                    "must be a whole number of milliseconds, at least 1",
                )
            })?;
        spec.timeout_ms = Some(ms);
    }
    let wait_ms = spec.wait_ms.unwrap_or(0);
    let submitted = app
        .engine
        .submit(Submission {
            spec,
            tenant: caller.tenant.clone(),
            received_at,
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
        .await?;
    let mut task = submitted.task;
    if wait_ms > 0 && !task.status.is_terminal() {
        let wait = app
            .engine
            .wait(task.id, caller.access(), Duration::from_millis(wait_ms));
        tokio::select! {
            r = wait => task = r?,
            _ = app.closing.cancelled() => {}
        }
    }
    let status = if task.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut resp = (status, [(header::LOCATION, location(task.id))], Json(&task)).into_response();
    if !submitted.created {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// `POST /task`: the prototype's spelling of [`submit`].
#[utoipa::path(
    post,
    path = "/task",
    operation_id = "submit_task_prototype",
    tag = "tasks",
    security(("bearer" = [])),
    request_body = TaskSpec,
    params(SubmitHeaders, TenantHeader),
    responses(Submitted, BodyErrors, CallerErrors, AdmissionErrors)
)]
pub(crate) async fn submit_prototype(
    state: State<AppState>,
    arrived: Option<axum::Extension<Arrived>>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<TaskSpec>,
) -> Result<Response, ApiError> {
    submit(state, arrived, caller, headers, body).await
}

/// `GET /api/tasks/{id}`.
#[utoipa::path(
    get,
    path = "/api/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The task's id (a malformed one names no task: 404)."), TenantHeader),
    responses(OneTask, TaskNotFound, CallerErrors, StoreErrors)
)]
pub(crate) async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(app.engine.get(id, caller.access()).await?))
}

/// `GET /api/tasks?status=&department=&limit=&cursor=`.
#[utoipa::path(
    get,
    path = "/api/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    security(("bearer" = [])),
    params(
        ("status" = Option<TaskStatus>, Query, description = "Only tasks in this state."),
        ("department" = Option<String>, Query, description = "Only tasks of this department."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, format = "uuid", description = "`next_cursor` of the previous page."),
        TenantHeader,
    ),
    responses(
        (status = 200, description = "The caller's tasks (an admin's: every tenant's), newest first.", body = TaskPage),
        CallerErrors,
        StoreErrors,
    )
)]
pub(crate) async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<TaskPage>, ApiError> {
    let mut q = ListQuery {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    if let Some(s) = params.get("status").filter(|s| !s.is_empty()) {
        q.status = Some(s.parse::<TaskStatus>()?);
    }
    if let Some(d) = params.get("department").filter(|s| !s.is_empty()) {
        if !app.engine.config().pools.contains_key(d) {
            return Err(
                FieldError::invalid("department", format!("unknown department `{d}`")).into(),
            );
        }
        q.department = Some(d.clone());
    }
    if let Some(l) = params.get("limit") {
        q.limit = l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| FieldError::invalid("limit", format!("`limit` must be 1-{MAX_PAGE}")))?;
    }
    if let Some(c) = params.get("cursor").filter(|s| !s.is_empty()) {
        q.before = Some(c.parse::<TaskId>().map_err(|_| {
            FieldError::invalid(
                "cursor",
                "`cursor` must be a `next_cursor` from a previous page",
            )
        })?);
    }
    let limit = q.limit as usize;
    let tasks = app.engine.list(q, caller.access()).await?;
    let next = (tasks.len() == limit)
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(TaskPage {
        tasks,
        next_cursor: next,
    }))
}

/// `POST /api/tasks/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/api/tasks/{id}/cancel",
    operation_id = "cancel_task",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The task's id."), TenantHeader),
    responses(CancelAnswers, TaskNotFound, CallerErrors, StoreErrors)
)]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(match app.engine.cancel(id, caller.access()).await? {
        CancelOutcome::Done(t) => (StatusCode::OK, Json(t)).into_response(),
        CancelOutcome::Requested(t) => (StatusCode::ACCEPTED, Json(t)).into_response(),
    })
}

enum Phase {
    First,
    Follow,
    Result,
    Done,
}

/// One event of [`events`] as an event-stream frame: `event:` names it,
/// `data:` holds its JSON. (For the document: the handler writes frames
/// with axum's `Event`.)
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TaskEventFrame {
    /// `state`, `progress` or `result`.
    event: TaskEventName,
    /// JSON: for `state` the task's `id`, `status`, `instance`, `attempts`
    /// and `error`; for `progress` the agent's step; for `result` the whole
    /// `Task`.
    data: String,
}

/// The names of [`TaskEventFrame`]s.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum TaskEventName {
    State,
    Progress,
    Result,
}

/// `GET /api/tasks/{id}/events`: `state` on each change (starting with the
/// current one), `progress` for agent steps, then `result` with the whole
/// task; then the stream ends.
#[utoipa::path(
    get,
    path = "/api/tasks/{id}/events",
    operation_id = "task_events",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The task's id."), TenantHeader),
    responses(
        (status = 200, description = "Server-sent events: `state` (`id`, `status`, `instance`, `attempts`, `error`) on each change, `progress` for agent steps, then `result` with the whole `Task`; then the stream ends.", content_type = "text/event-stream", body = TaskEventFrame),
        TaskNotFound,
        CallerErrors,
        StoreErrors,
    )
)]
pub(crate) async fn events(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    let watch = app.engine.watch(id, caller.access()).await?;
    let closing = app.closing.clone();
    let stream = stream::unfold(
        (watch, Phase::First),
        move |(mut watch, phase): (Watch, Phase)| {
            let closing = closing.clone();
            async move {
                match phase {
                    Phase::Done => None,
                    Phase::First => {
                        let ev = state_event(watch.current());
                        let next = if watch.current().status.is_terminal() {
                            Phase::Result
                        } else {
                            Phase::Follow
                        };
                        Some((Ok(ev), (watch, next)))
                    }
                    Phase::Result => {
                        let ev = Event::default()
                            .event("result")
                            .json_data(watch.current())
                            .unwrap_or_else(|_| Event::default().event("result"));
                        Some((Ok(ev), (watch, Phase::Done)))
                    }
                    Phase::Follow => {
                        let next = tokio::select! {
                            n = watch.next() => n,
                            _ = closing.cancelled() => None,
                        };
                        match next {
                            Some(TaskEvent::State(t)) => {
                                let ev = state_event(&t);
                                let phase = if t.status.is_terminal() {
                                    Phase::Result
                                } else {
                                    Phase::Follow
                                };
                                Some((Ok(ev), (watch, phase)))
                            }
                            Some(TaskEvent::Progress(v)) => {
                                let ev = Event::default()
                                    .event("progress")
                                    .json_data(&v)
                                    .unwrap_or_default();
                                Some((Ok(ev), (watch, Phase::Follow)))
                            }
                            None => None,
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn state_event(t: &Task) -> Event {
    Event::default()
        .event("state")
        .json_data(json!({
            "id": t.id,
            "status": t.status,
            "instance": t.instance,
            "attempts": t.attempts,
            "error": t.error,
        }))
        .unwrap_or_default()
}
