//! Health, readiness, status, outbox, and the JSON fallbacks.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use swarm_core::FieldError;
use swarm_core::clock::rfc3339;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// `GET /health`: the process answers.
pub(crate) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// `GET /ready`: the database answers too.
pub(crate) async fn ready(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    if app.closing.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    match tokio::time::timeout(Duration::from_secs(2), app.engine.ready()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" }))),
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

/// Keeps only `tenant`'s entry of a per-tenant map, if `v` is one.
fn only_tenant(v: &mut Value, tenant: &str) {
    if let Some(m) = v.as_object_mut() {
        m.retain(|k, _| k == tenant);
    }
}

/// `GET /api/status`: the engine's picture plus the HTTP connections. A
/// client sees only its own tenant's share of each queue.
pub(crate) async fn status(State(app): State<AppState>, caller: Caller) -> Json<Value> {
    let mut v = serde_json::to_value(app.engine.status()).unwrap_or_else(|_| json!({}));
    v["connections"] = serde_json::to_value(app.connections.snapshot()).unwrap_or_default();
    let (followed, reads) = app.engine.remote_watches();
    v["long_requests"] = json!({
        "streams": app.streams.counts(),
        "waiters": app.waiters.counts(),
        "remote_tasks_followed": followed,
        "remote_poller_reads": reads,
    });
    if !sees_all_tenants(&app, &caller)
        && let Some(pools) = v["pools"].as_array_mut()
    {
        for p in pools {
            only_tenant(&mut p["queued_by_tenant"], &caller.tenant);
        }
    }
    Json(v)
}

/// `GET /api/nodes`: the nodes sharing this database and their load. A
/// client sees only its own tenant's outstanding count elsewhere.
pub(crate) async fn nodes(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let mut v = app.engine.nodes().await?;
    if !sees_all_tenants(&app, &caller) {
        only_tenant(&mut v["this_node"]["tenants_elsewhere"], &caller.tenant);
    }
    Ok(Json(v))
}

/// `GET /api/alerts`: alerts firing now and recently, and how often each
/// has fired.
pub(crate) async fn alerts(State(app): State<AppState>, _caller: Caller) -> Json<Value> {
    Json(serde_json::to_value(app.engine.alerts()).unwrap_or_else(|_| json!({})))
}

/// `GET /metrics`: Prometheus text format. Open when no API keys are
/// configured (like the rest of the API); with keys, an admin key, since
/// tenant names appear in labels.
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
pub(crate) async fn outbox(
    State(app): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match params.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| FieldError::invalid("limit", "`limit` must be 1-500"))?,
    };
    let rows = app.engine.outbox(limit, caller.access()).await?;
    let messages: Vec<Value> = rows
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "task_id": m.task_id,
                "tenant": m.tenant,
                "from": m.sender,
                "to": m.recipients,
                "cc": m.cc,
                "subject": m.subject,
                "body": m.body,
                "created_at": rfc3339(m.created_at),
            })
        })
        .collect();
    Ok(Json(json!({ "messages": messages })))
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
