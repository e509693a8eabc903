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
use swarm_core::{Blocker, FieldError, Task, TaskId, TaskSpec, TaskStatus};
use swarm_engine::{CancelOutcome, ListQuery, Submission, TaskEvent, Watch};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::Arrived;
use crate::routes::doc::{
    AdmissionErrors, BodyErrors, CallerErrors, CancelAnswers, OneTask, RetryAnswers, StoreErrors,
    StreamErrors, Submitted, TaskNotFound, TenantHeader,
};
use crate::slots::Slot;

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
#[allow(dead_code)] // documents the JSON that `Page` writes
pub(crate) struct TaskPage {
    /// The tasks, newest first, with `args` and `result` only when `fields`
    /// asks for them.
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
    // Checked even when the body's `timeout_ms` wins: a malformed header
    // is refused, not silently ignored.
    let header_timeout = request_timeout(&headers)?;
    if spec.timeout_ms.is_none() {
        spec.timeout_ms = header_timeout;
    }
    let wait_ms = spec.wait_ms.unwrap_or(0);
    // Taken before the submit: a waiter refused for its tenant's cap
    // submits nothing.
    let _waiting = if wait_ms > 0 {
        Some(app.waiters.take(&caller.tenant)?)
    } else {
        None
    };
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

/// The `Request-Timeout` header, milliseconds (a deadline for the
/// submissions that give no `timeout_ms`).
pub(crate) fn request_timeout(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(h) = headers.get("request-timeout") else {
        return Ok(None);
    };
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
    Ok(Some(ms))
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

/// Which of a listed task's large fields a list includes (`?fields=`).
#[derive(Debug, Clone, Copy, Default)]
struct ListFields {
    args: bool,
    result: bool,
}

impl ListFields {
    fn parse(v: Option<&String>) -> Result<Self, ApiError> {
        let mut f = Self::default();
        for name in v.map_or("", |s| s.as_str()).split(',').map(str::trim) {
            match name {
                "" => {}
                "args" => f.args = true,
                "result" => f.result = true,
                other => {
                    return Err(FieldError::invalid(
                        "fields",
                        format!("unknown field `{other}`: `fields` takes `args` and `result`"),
                    )
                    .into());
                }
            }
        }
        Ok(f)
    }
}

/// `GET /api/tasks?status=&department=&limit=&cursor=&fields=`.
///
/// A page holds at most `limit` tasks and at most `server.max_page_bytes`
/// of JSON (never less than one task); a page cut short by bytes still
/// has a `next_cursor`, so the last page is the one whose `next_cursor` is
/// null. `args` and `result`, the fields that can be large, are left out
/// unless `fields=args,result` asks for them.
#[utoipa::path(
    get,
    path = "/api/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    security(("bearer" = [])),
    params(
        ("status" = Option<TaskStatus>, Query, description = "Only tasks in this state."),
        ("department" = Option<String>, Query, description = "Only tasks of this department."),
        ("tenant" = Option<String>, Query, description = "Admins: only this tenant's tasks. A client's list is always its own tenant's, whatever this says."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, format = "uuid", description = "`next_cursor` of the previous page."),
        ("fields" = Option<String>, Query, pattern = r"^((args|result)(,(args|result))*)?$", description = "Large fields to include: `args`, `result`, comma-separated (default: neither)."),
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
) -> Result<Response, ApiError> {
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
    if let Some(t) = params.get("tenant").filter(|s| !s.is_empty()) {
        // The engine puts a client's own tenant in its place.
        q.tenant = Some(t.clone());
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
    let fields = ListFields::parse(params.get("fields"))?;
    q.skip_args = !fields.args;
    q.skip_result = !fields.result;
    let max_bytes = app.engine.config().server.max_page_bytes;
    // With the large fields asked for, rows are read a few at a time, as
    // many as the room left holds at the size seen so far (one at first),
    // and reading stops once the page is full: a request holds about a
    // page, not `limit` whole tasks.
    let large = fields.args || fields.result;
    let mut chunk = if large { 1 } else { q.limit };
    let mut page = Page::new(max_bytes);
    let mut left = q.limit;
    while left > 0 && !page.cut {
        let mut part = q.clone();
        part.limit = left.min(chunk);
        let tasks = app.engine.list(part.clone(), caller.access()).await?;
        for t in &tasks {
            if !page.add(t, fields) {
                break;
            }
        }
        left -= tasks.len() as u32;
        if tasks.len() < part.limit as usize {
            // The store has no more.
            break;
        }
        q.before = tasks.last().map(|t| t.id);
        if large {
            chunk = page.fitting().clamp(1, LARGE_CHUNK);
        }
    }
    let more = page.cut || left == 0;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        page.finish(more),
    )
        .into_response())
}

/// Most rows read at a time when a list includes `args` or `result`.
const LARGE_CHUNK: u32 = 64;

/// `{"tasks": [...], "next_cursor": ...}`, cut before `max_bytes`.
struct Page {
    out: Vec<u8>,
    max_bytes: usize,
    last: Option<TaskId>,
    count: usize,
    cut: bool,
}

impl Page {
    /// Room kept for the envelope and the cursor.
    const TAIL: usize = 64;

    fn new(max_bytes: usize) -> Self {
        Self {
            out: b"{\"tasks\":[".to_vec(),
            max_bytes,
            last: None,
            count: 0,
            cut: false,
        }
    }

    /// Adds `t` unless the page would pass its bound (the first task always
    /// goes in); returns whether it went in.
    fn add(&mut self, t: &Task, fields: ListFields) -> bool {
        let mut v = serde_json::to_value(t).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            if !fields.args {
                o.remove("args");
            }
            if !fields.result {
                o.remove("result");
            }
        }
        let one = serde_json::to_vec(&v).unwrap_or_default();
        if self.last.is_some() {
            if self.out.len() + 1 + one.len() + Self::TAIL > self.max_bytes {
                self.cut = true;
                return false;
            }
            self.out.push(b',');
        }
        self.out.extend_from_slice(&one);
        self.last = Some(t.id);
        self.count += 1;
        true
    }

    /// How many more tasks of the average size so far fit.
    fn fitting(&self) -> u32 {
        let n = self.count.max(1);
        let avg = (self.out.len() / n).max(1);
        let room = self.max_bytes.saturating_sub(self.out.len() + Self::TAIL);
        u32::try_from(room / avg).unwrap_or(u32::MAX)
    }

    /// The JSON; `more`: whether a `next_cursor` is due.
    fn finish(mut self, more: bool) -> Vec<u8> {
        self.out.extend_from_slice(b"],\"next_cursor\":");
        match self.last.filter(|_| more) {
            Some(id) => self.out.extend_from_slice(format!("\"{id}\"}}").as_bytes()),
            None => self.out.extend_from_slice(b"null}"),
        }
        self.out
    }
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

/// The answer of `GET /api/tasks/{id}/deliveries`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveriesView {
    /// Every try of the task's completion webhook, oldest first.
    deliveries: Vec<swarm_core::Delivery>,
}

/// `GET /api/tasks/{id}/deliveries`: each try of the task's webhook.
#[utoipa::path(
    get,
    path = "/api/tasks/{id}/deliveries",
    operation_id = "task_deliveries",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The task's id."), TenantHeader),
    responses(
        (status = 200, description = "The tries, oldest first (empty before the task ends, or without a callback).", body = DeliveriesView),
        TaskNotFound,
        CallerErrors,
        StoreErrors
    )
)]
pub(crate) async fn deliveries(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveriesView>, ApiError> {
    let id = parse_id(&id)?;
    let deliveries = app.engine.deliveries(id, caller.access()).await?;
    Ok(Json(DeliveriesView { deliveries }))
}

/// `POST /api/tasks/{id}/retry`: runs a failed, timed-out or cancelled task
/// again as a new attempt (its earlier attempts stay in `history`).
#[utoipa::path(
    post,
    path = "/api/tasks/{id}/retry",
    operation_id = "retry_task",
    tag = "tasks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The task's id."), TenantHeader),
    responses(RetryAnswers, TaskNotFound, CallerErrors, StoreErrors)
)]
pub(crate) async fn retry(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let task = app.engine.retry(id, caller.access()).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location(task.id))],
        Json(task),
    )
        .into_response())
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
        (status = 200, description = "Server-sent events: `state` (`id`, `status`, `instance`, `attempts`, `error`, and `waiting_for` while queued on the node answering) on each change, and when what a queued task waits for changes, `progress` for agent steps, then `result` with the whole `Task`; then the stream ends.", content_type = "text/event-stream", body = TaskEventFrame),
        TaskNotFound,
        StreamErrors,
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
    let slot = app.streams.take(&caller.tenant)?;
    let watch = app.engine.watch(id, caller.access()).await?;
    let waiting = Waiting::new(app.engine.waiting_watch(watch.current()));
    let closing = app.closing.clone();
    // The slot lives in the stream's state: it is freed when the stream
    // ends or the client goes away.
    let stream = stream::unfold(
        (watch, Phase::First, slot, waiting),
        move |(mut watch, phase, slot, mut waiting): (Watch, Phase, Slot, Waiting)| {
            let closing = closing.clone();
            async move {
                let (ev, phase) = match phase {
                    Phase::Done => return None,
                    Phase::First => {
                        let next = if watch.current().status.is_terminal() {
                            Phase::Result
                        } else {
                            Phase::Follow
                        };
                        (state_event(watch.current(), waiting.shown), next)
                    }
                    Phase::Result => {
                        let ev = Event::default()
                            .event("result")
                            .json_data(watch.current())
                            .unwrap_or_else(|_| Event::default().event("result"));
                        (ev, Phase::Done)
                    }
                    Phase::Follow => {
                        let next = tokio::select! {
                            n = watch.next() => n,
                            _ = closing.cancelled() => None,
                            Some(b) = waiting.changed() => {
                                let ev = state_event(watch.current(), Some(b));
                                return Some((Ok(ev), (watch, Phase::Follow, slot, waiting)));
                            }
                        };
                        match next {
                            Some(TaskEvent::State(t)) => {
                                let phase = if t.status.is_terminal() {
                                    Phase::Result
                                } else {
                                    Phase::Follow
                                };
                                if t.status != TaskStatus::Queued {
                                    waiting.stop();
                                }
                                (state_event(&t, waiting.shown), phase)
                            }
                            Some(TaskEvent::Progress(v)) => {
                                let ev = Event::default()
                                    .event("progress")
                                    .json_data(&*v)
                                    .unwrap_or_default();
                                (ev, Phase::Follow)
                            }
                            None => return None,
                        }
                    }
                };
                Some((Ok(ev), (watch, phase, slot, waiting)))
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn state_event(t: &Task, waiting_for: Option<Blocker>) -> Event {
    let mut v = json!({
        "id": t.id,
        "status": t.status,
        "instance": t.instance,
        "attempts": t.attempts,
        "error": t.error,
    });
    if let Some(b) = waiting_for {
        v["waiting_for"] = json!(b);
    }
    Event::default()
        .event("state")
        .json_data(v)
        .unwrap_or_default()
}

/// What a stream's queued task waits for, as last sent. Its department's
/// blocker may change at every start under load; a change is sent once it
/// has held for [`WAITING_SETTLE`], so a stream carries a few of these a
/// second at most, and only real changes.
struct Waiting {
    rx: Option<tokio::sync::watch::Receiver<Blocker>>,
    shown: Option<Blocker>,
}

/// How long a new blocker must hold before a stream reports it.
const WAITING_SETTLE: Duration = Duration::from_millis(100);

impl Waiting {
    fn new(mut rx: Option<tokio::sync::watch::Receiver<Blocker>>) -> Self {
        let shown = rx.as_mut().map(|r| *r.borrow_and_update());
        Self { rx, shown }
    }

    /// The task left the queue: nothing to follow.
    fn stop(&mut self) {
        self.rx = None;
        self.shown = None;
    }

    /// Resolves with a settled change (never, once stopped). Cancel-safe:
    /// a change seen but not yet sent is looked at again on the next call.
    async fn changed(&mut self) -> Option<Blocker> {
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return std::future::pending().await;
            };
            if Some(*rx.borrow_and_update()) != self.shown {
                tokio::time::sleep(WAITING_SETTLE).await;
                let now = *rx.borrow_and_update();
                if Some(now) != self.shown {
                    self.shown = Some(now);
                    return Some(now);
                }
                continue;
            }
            if rx.changed().await.is_err() {
                self.rx = None;
            }
        }
    }
}
