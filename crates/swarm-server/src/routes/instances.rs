//! `/api/pools/{pool}/instances`: a department's instances, and adding,
//! draining and removing them at runtime. Reading is open to any caller
//! (like `/api/status`); changing is admin only.
//!
//! An instance is named in the path by its id (an HTTP instance's URL,
//! percent-encoded) or by the `host:port` of exactly one instance's URL.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use swarm_engine::instances::{InstanceSnapshot, InstanceSpec};

use crate::AppState;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::doc::{
    AdminErrors, BodyErrors, CallerErrors, InstanceAdded, InstancesFixed, PoolNotFound,
    TenantHeader,
};

/// `GET`: the balancer's view of each instance (state, calls in flight,
/// latency estimate, outcomes, share of picks), or the worker processes.
#[utoipa::path(
    get,
    path = "/api/pools/{pool}/instances",
    operation_id = "list_instances",
    tag = "instances",
    security(("bearer" = [])),
    params(("pool" = String, Path, description = "The department."), TenantHeader),
    responses(
        (status = 200, description = "The department's instances.", body = swarm_engine::instances::InstancesView),
        PoolNotFound,
        CallerErrors,
    )
)]
pub(crate) async fn list(
    State(app): State<AppState>,
    _caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = app.engine.pool_instances(&pool)?;
    Ok(Json(json!(view)))
}

/// `POST {"url": …, "weight": …}` (HTTP pools) or `{"id": …}` (replicas):
/// `201` with the new instance, `200` if it was there (its weight set,
/// its draining ended).
#[utoipa::path(
    post,
    path = "/api/pools/{pool}/instances",
    operation_id = "add_instance",
    tag = "instances",
    security(("bearer" = [])),
    params(("pool" = String, Path, description = "The department."), TenantHeader),
    request_body = InstanceSpec,
    responses(
        InstanceAdded,
        PoolNotFound,
        InstancesFixed,
        BodyErrors,
        AdminErrors,
    )
)]
pub(crate) async fn add(
    State(app): State<AppState>,
    admin: Admin,
    Path(pool): Path<String>,
    JsonBody(spec): JsonBody<InstanceSpec>,
) -> Result<Response, ApiError> {
    let r = app
        .engine
        .add_instance(&pool, &spec)
        .map_err(ApiError::from);
    admin.audit(
        "add_instance",
        &subject(&pool, r.as_ref().map(|r| &r.0)),
        &r,
    );
    let (inst, created) = r?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(inst))).into_response())
}

/// `POST …/{id}/drain`: no new calls; calls in flight finish.
#[utoipa::path(
    post,
    path = "/api/pools/{pool}/instances/{id}/drain",
    operation_id = "drain_instance",
    tag = "instances",
    security(("bearer" = [])),
    params(
        ("pool" = String, Path, description = "The department."),
        ("id" = String, Path, description = "The instance: its id (an HTTP instance's URL, percent-encoded) or the `host:port` of one instance's URL."),
        TenantHeader,
    ),
    responses(
        (status = 200, description = "The instance, now draining.", body = swarm_engine::instances::InstanceSnapshot),
        PoolNotFound,
        InstancesFixed,
        AdminErrors,
    )
)]
pub(crate) async fn drain(
    State(app): State<AppState>,
    admin: Admin,
    Path((pool, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let r = app
        .engine
        .drain_instance(&pool, &id)
        .map_err(ApiError::from);
    admin.audit("drain_instance", &subject(&pool, r.as_ref()), &r);
    Ok(Json(json!(r?)))
}

/// `DELETE …/{id}`: `202`; drained now, gone once its calls in flight
/// have finished (listed as `draining` until then).
#[utoipa::path(
    delete,
    path = "/api/pools/{pool}/instances/{id}",
    operation_id = "remove_instance",
    tag = "instances",
    security(("bearer" = [])),
    params(
        ("pool" = String, Path, description = "The department."),
        ("id" = String, Path, description = "The instance, as for draining."),
        TenantHeader,
    ),
    responses(
        (status = 202, description = "The instance, draining; it leaves once its calls in flight end.", body = swarm_engine::instances::InstanceSnapshot),
        PoolNotFound,
        InstancesFixed,
        AdminErrors,
    )
)]
pub(crate) async fn remove(
    State(app): State<AppState>,
    admin: Admin,
    Path((pool, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let r = app
        .engine
        .remove_instance(&pool, &id)
        .map_err(ApiError::from);
    admin.audit("remove_instance", &subject(&pool, r.as_ref()), &r);
    Ok((StatusCode::ACCEPTED, Json(json!(r?))).into_response())
}

/// What an audit line names: the department and, once the engine has
/// vouched for it, the instance (a refused URL may carry anything).
/// Names from the path are escaped and cut short: a log line is one line.
fn subject(pool: &str, inst: Result<&InstanceSnapshot, &ApiError>) -> String {
    let pool: String = pool.chars().take(64).collect();
    let pool = pool.escape_debug();
    match inst {
        Ok(i) => format!("instance `{}` of department `{pool}`", i.id.escape_debug()),
        Err(_) => format!("an instance of department `{pool}`"),
    }
}
