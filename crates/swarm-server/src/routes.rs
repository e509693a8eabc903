//! The route table: [`api`] is the one list of routes. Each handler is
//! registered through `utoipa_axum::routes!`, which takes its method and
//! path from the handler's `#[utoipa::path]` annotation, so the router and
//! the OpenAPI document (`doc`) cannot disagree about what is served.

pub(crate) mod dashboard;
pub(crate) mod doc;
pub(crate) mod instances;
pub(crate) mod profile;
pub(crate) mod system;
pub(crate) mod tasks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// When the request reached the router (admission latency starts here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

async fn stamp_arrival(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    next.run(req).await
}

/// Counts and times each request by its route template (a bounded label
/// set: never the raw path, which holds task ids).
async fn record_http(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let metrics = app.engine.metrics();
    if !metrics.enabled() {
        return next.run(req).await;
    }
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let resp = next.run(req).await;
    metrics.http(
        method.as_str(),
        &route,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// Every route, with the OpenAPI operation of each. Add a route here, with
/// `routes!` and an annotated handler, or it is neither served nor
/// documented.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::submit_prototype))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::events))
        .routes(routes!(system::outbox))
        .routes(routes!(profile::profile))
        .routes(routes!(instances::list, instances::add))
        .routes(routes!(instances::remove))
        .routes(routes!(instances::drain))
        .routes(routes!(system::status))
        .routes(routes!(system::alerts))
        .routes(routes!(system::nodes))
        .routes(routes!(system::metrics))
        .routes(routes!(system::health))
        .routes(routes!(system::ready))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
        .routes(routes!(doc::openapi_json))
}

/// The OpenAPI document of a server with configuration `cfg`.
pub fn openapi(cfg: &swarm_core::config::Config) -> utoipa::openapi::OpenApi {
    doc::document(api().into_openapi(), cfg)
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.engine.config().server.max_body_bytes;
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let (routes, document) = api().split_for_parts();
    let document = doc::serialized(&doc::document(document, state.engine.config()));
    routes
        .layer(axum::Extension(document))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(stamp_arrival))
        .layer(middleware::from_fn_with_state(state.clone(), record_http))
        // A 503 that sheds load is the server working as designed; logging
        // each at ERROR would cost most at the worst moment. Real server
        // errors are logged where they happen (`ApiError`).
        .layer(
            TraceLayer::new_for_http()
                // The request id (set or passed on by the layers outside)
                // goes on every log line of the request.
                .make_span_with(|req: &Request| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        uri = %req.uri(),
                        request_id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                    )
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
