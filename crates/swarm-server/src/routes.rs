//! The route table.

pub(crate) mod profile;
pub(crate) mod system;
pub(crate) mod tasks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::AppState;

/// When the request reached the router (admission latency starts here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

async fn stamp_arrival(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    next.run(req).await
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.engine.config().server.max_body_bytes;
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/api/tasks", post(tasks::submit).get(tasks::list))
        .route("/task", post(tasks::submit))
        .route("/api/tasks/{id}", get(tasks::get))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/tasks/{id}/events", get(tasks::events))
        .route("/api/outbox", get(system::outbox))
        .merge(profile::routes())
        .route("/api/status", get(system::status))
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(stamp_arrival))
        // A 503 that sheds load is the server working as designed; logging
        // each at ERROR would cost most at the worst moment. Real server
        // errors are logged where they happen (`ApiError`).
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
