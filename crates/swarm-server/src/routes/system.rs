//! Health, readiness, status, outbox, and the JSON fallbacks.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use swarm_core::FieldError;
use swarm_core::clock::rfc3339;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::doc::{CallerErrors, ErrorBody, StoreErrors, TenantHeader};

/// `GET /health`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    status: &'static str,
    /// The server's version.
    version: &'static str,
}

/// `GET /ready`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Ready {
    /// Always `ready`.
    #[schema(pattern = "^ready$")]
    status: &'static str,
}

/// `GET /api/status`: the engine's picture and the HTTP connections.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct StatusView {
    #[serde(flatten)]
    engine: swarm_engine::Status,
    /// The HTTP connections.
    connections: crate::conn::ConnCounts,
    /// Event streams and waiters held, and the shared poller of tasks held
    /// elsewhere.
    long_requests: LongRequests,
}

/// Long-lived requests (`GET /api/status` → `long_requests`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LongRequests {
    /// Event streams.
    streams: crate::slots::SlotCounts,
    /// `wait_ms` waiters.
    waiters: crate::slots::SlotCounts,
    /// Tasks held on other nodes that watches here follow.
    remote_tasks_followed: usize,
    /// Statements the shared poller of those has run since start.
    remote_poller_reads: u64,
}

/// `GET /api/outbox`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct OutboxPage {
    /// Newest first.
    messages: Vec<OutboxMessage>,
}

/// A message the email department sent (or would have, without SMTP).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct OutboxMessage {
    /// Its id.
    id: String,
    /// The task that wrote it.
    task_id: String,
    /// The task's tenant.
    tenant: String,
    /// Sender.
    from: String,
    /// Recipients.
    to: Vec<String>,
    /// Copy recipients.
    cc: Vec<String>,
    /// Subject.
    subject: String,
    /// Body.
    body: String,
    /// When it was stored (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
}

/// `GET /health`: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "system",
    responses((status = 200, description = "The process answers.", body = Health))
)]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /ready`: the database answers too.
#[utoipa::path(
    get,
    path = "/ready",
    operation_id = "ready",
    tag = "system",
    responses(
        (status = 200, description = "The database answers.", body = Ready),
        (status = 503, description = "The database does not answer (`not_ready`) or the server is shutting down (`shutting_down`).", body = ErrorBody),
    )
)]
pub(crate) async fn ready(State(app): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if app.closing.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    match tokio::time::timeout(Duration::from_secs(2), app.engine.ready()).await {
        Ok(Ok(())) => Ok(Json(Ready { status: "ready" })),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("database not reachable: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "database did not answer within 2 s",
        )),
    }
}

/// Whether `caller` may see other tenants' figures. With keys configured,
/// only an admin key; without keys any caller may name any tenant
/// (`X-Tenant`), so there is nothing to hide.
fn sees_all_tenants(app: &AppState, caller: &Caller) -> bool {
    caller.admin || app.keys.is_empty()
}

/// `GET /api/status`: the engine's picture plus the HTTP connections. A
/// client sees only its own tenant's share of each queue.
#[utoipa::path(
    get,
    path = "/api/status",
    operation_id = "status",
    tag = "system",
    security(("bearer" = [])),
    params(TenantHeader),
    responses(
        (status = 200, description = "Pools, database, resources, connections.", body = StatusView),
        CallerErrors,
    )
)]
pub(crate) async fn status(State(app): State<AppState>, caller: Caller) -> Json<StatusView> {
    let mut engine = app.engine.status();
    if !sees_all_tenants(&app, &caller) {
        for p in &mut engine.pools {
            p.queued_by_tenant.retain(|t, _| *t == caller.tenant);
        }
    }
    let (followed, reads) = app.engine.remote_watches();
    Json(StatusView {
        engine,
        connections: app.connections.snapshot(),
        long_requests: LongRequests {
            streams: app.streams.counts(),
            waiters: app.waiters.counts(),
            remote_tasks_followed: followed,
            remote_poller_reads: reads,
        },
    })
}

/// `GET /api/nodes`: the nodes sharing this database and their load. A
/// client sees only its own tenant's outstanding count elsewhere.
#[utoipa::path(
    get,
    path = "/api/nodes",
    operation_id = "nodes",
    tag = "system",
    security(("bearer" = [])),
    params(TenantHeader),
    responses(
        (status = 200, description = "The nodes sharing this database.", body = swarm_engine::NodesView),
        CallerErrors,
        StoreErrors,
    )
)]
pub(crate) async fn nodes(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<swarm_engine::NodesView>, ApiError> {
    let mut v = app.engine.nodes().await?;
    if !sees_all_tenants(&app, &caller) {
        v.this_node
            .tenants_elsewhere
            .retain(|t, _| *t == caller.tenant);
    }
    Ok(Json(v))
}

/// The answer of `GET /api/schedules`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SchedulesView {
    /// Every `[[schedules]]` entry (a caller who is not an admin sees its
    /// own tenant's only).
    schedules: Vec<swarm_engine::timetable::ScheduleView>,
}

/// `GET /api/schedules`: each schedule's next and last runs.
#[utoipa::path(
    get,
    path = "/api/schedules",
    operation_id = "schedules",
    tag = "system",
    security(("bearer" = [])),
    params(TenantHeader),
    responses(
        (status = 200, description = "The configured schedules.", body = SchedulesView),
        CallerErrors,
        StoreErrors,
    )
)]
pub(crate) async fn schedules(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<SchedulesView>, ApiError> {
    let mut schedules = app.engine.schedule_views().await?;
    if !sees_all_tenants(&app, &caller) {
        schedules.retain(|s| s.tenant == caller.tenant);
    }
    Ok(Json(SchedulesView { schedules }))
}

/// `GET /api/alerts`: alerts firing now and recently, and how often each
/// has fired.
#[utoipa::path(
    get,
    path = "/api/alerts",
    operation_id = "alerts",
    tag = "system",
    security(("bearer" = [])),
    params(TenantHeader),
    responses(
        (status = 200, description = "Alerts firing now and recently.", body = swarm_engine::AlertsView),
        CallerErrors,
    )
)]
pub(crate) async fn alerts(
    State(app): State<AppState>,
    _caller: Caller,
) -> Json<swarm_engine::AlertsView> {
    Json(app.engine.alerts())
}

/// `GET /metrics`: Prometheus text format. Open when no API keys are
/// configured (like the rest of the API); with keys, an admin key, since
/// tenant names appear in labels.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format.", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 403, description = "Keys are configured and this one is not an admin's (`forbidden`).", body = ErrorBody),
        (status = 404, description = "Metrics are turned off (`metrics_disabled`).", body = ErrorBody),
        CallerErrors,
    )
)]
pub(crate) async fn metrics(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Response, ApiError> {
    if !app.keys.is_empty() && !caller?.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "`/metrics` needs an admin key",
        ));
    }
    let c = app.connections.snapshot();
    let m = app.engine.metrics();
    m.gauge("swarmd_http_connections_open", &[])
        .set(c.open as f64);
    for (name, n) in [
        ("swarmd_http_connections_accepted_total", c.accepted),
        ("swarmd_http_header_timeouts_total", c.closed_header_timeout),
        ("swarmd_http_idle_timeouts_total", c.closed_idle_timeout),
        ("swarmd_http_body_timeouts_total", c.body_timeouts),
        ("swarmd_http_write_timeouts_total", c.closed_write_timeout),
        ("swarmd_http_early_413_total", c.early_too_large),
        ("swarmd_http_accept_errors_total", c.accept_errors),
    ] {
        m.counter_at(name, &[], n);
    }
    // Rendering walks every series: keep it off the async workers' hot path.
    let engine = app.engine.clone();
    let text = tokio::task::spawn_blocking(move || engine.render_metrics())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "metrics_disabled",
                "metrics are turned off (`monitor.metrics = false`)",
            )
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /api/outbox?limit=`.
#[utoipa::path(
    get,
    path = "/api/outbox",
    operation_id = "outbox",
    tag = "system",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "How many (default 50)."),
        TenantHeader,
    ),
    responses(
        (status = 200, description = "The caller's outbox messages (an admin's: every tenant's), newest first.", body = OutboxPage),
        CallerErrors,
        StoreErrors,
    )
)]
pub(crate) async fn outbox(
    State(app): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<OutboxPage>, ApiError> {
    let limit = match params.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| FieldError::invalid("limit", "`limit` must be 1-500"))?,
    };
    let rows = app.engine.outbox(limit, caller.access()).await?;
    let messages = rows
        .into_iter()
        .map(|m| OutboxMessage {
            id: m.id,
            task_id: m.task_id,
            tenant: m.tenant,
            from: m.sender,
            to: m.recipients,
            cc: m.cc,
            subject: m.subject,
            body: m.body,
            created_at: rfc3339(m.created_at),
        })
        .collect();
    Ok(Json(OutboxPage { messages }))
}

/// Unknown paths.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}

/// Known paths, wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path",
    )
}
