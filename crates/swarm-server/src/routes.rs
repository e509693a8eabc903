//! The route table: [`api`] is the one list of routes. Each handler is
//! registered through `utoipa_axum::routes!`, which takes its method and
//! path from the handler's `#[utoipa::path]` annotation, so the router and
//! the OpenAPI document (`doc`) cannot disagree about what is served.

pub(crate) mod batch;
pub(crate) mod dashboard;
pub(crate) mod doc;
pub(crate) mod instances;
pub(crate) mod profile;
pub(crate) mod system;
pub(crate) mod tasks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiError;

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
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let resp = next.run(req).await;
    metrics.http(method, &route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The method as a metric label: the standard ones by name, anything else
/// `other` (a made-up method per request must not add series).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Longest `X-Request-Id` passed on; a longer (or unprintable) one is
/// replaced by a new id.
pub(crate) const MAX_REQUEST_ID: usize = 128;

/// Drops an `X-Request-Id` that is too long or not printable ASCII, so the
/// layer inside sets a fresh one (it goes on every log line and back to
/// the client).
async fn bound_request_id(mut req: Request, next: Next) -> Response {
    let bad = req.headers().get("x-request-id").is_some_and(|v| {
        v.len() > MAX_REQUEST_ID || !v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    });
    if bad {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// A path whose percent-escapes do not decode to UTF-8 (`/api/tasks/%ff`)
/// gets the JSON error envelope, like every other 400; left to the routes,
/// axum's path extractor would answer in plain text.
async fn utf8_path(req: Request, next: Next) -> Response {
    if percent_decodes_to_utf8(req.uri().path()) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the path is not valid UTF-8 once percent-decoded",
        )
        .into_response()
    }
}

fn percent_decodes_to_utf8(path: &str) -> bool {
    if !path.contains('%') {
        return true;
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            // A `%` not followed by two hex digits stays as it is, as the
            // path extractor keeps it.
            out.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// The URI for logs: the query's `key` (the dashboard's `?key=`) and any
/// other credential-like parameter is replaced by `REDACTED`.
pub(crate) fn redacted_uri(uri: &Uri) -> String {
    let Some(q) = uri.query() else {
        return uri.path().to_string();
    };
    let query: Vec<String> = q
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let secret = ["key", "token", "api_key", "password", "secret"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s));
            if secret {
                format!("{name}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

/// Every route, with the OpenAPI operation of each. Add a route here, with
/// `routes!` and an annotated handler, or it is neither served nor
/// documented.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::submit_prototype))
        .routes(routes!(batch::submit_batch))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::retry))
        .routes(routes!(tasks::deliveries))
        .routes(routes!(tasks::events))
        .routes(routes!(system::outbox))
        .routes(routes!(profile::profile))
        .routes(routes!(instances::list, instances::add))
        .routes(routes!(instances::remove))
        .routes(routes!(instances::drain))
        .routes(routes!(system::status))
        .routes(routes!(system::alerts))
        .routes(routes!(system::nodes))
        .routes(routes!(system::schedules))
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
        .layer(middleware::from_fn(utf8_path))
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
                        uri = %redacted_uri(req.uri()),
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
        .layer(middleware::from_fn(bound_request_id))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_decode_to_utf8() {
        assert!(percent_decodes_to_utf8("/api/tasks/abc"));
        assert!(percent_decodes_to_utf8(
            "/api/pools/p/instances/http%3A%2F%2Fh%3A1"
        ));
        assert!(percent_decodes_to_utf8("/caf%C3%A9"));
        assert!(percent_decodes_to_utf8("/100%"));
        assert!(percent_decodes_to_utf8("/a%zz"));
        assert!(!percent_decodes_to_utf8("/api/tasks/%ff"));
        assert!(!percent_decodes_to_utf8("/x%C3"));
    }

    #[test]
    fn secrets_leave_the_logged_uri() {
        let u: Uri = "/dashboard?key=s3cret&x=1&KEY=two".parse().unwrap();
        assert_eq!(redacted_uri(&u), "/dashboard?key=REDACTED&x=1&KEY=REDACTED");
        let u: Uri = "/api/tasks?status=failed".parse().unwrap();
        assert_eq!(redacted_uri(&u), "/api/tasks?status=failed");
    }

    #[test]
    fn made_up_methods_are_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let m = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&m), "other");
    }
}
