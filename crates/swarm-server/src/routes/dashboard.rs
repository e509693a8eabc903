//! `GET /dashboard`: a live view of `/api/status` for people.
//!
//! The page, its script and its style are compiled into the binary and
//! served without auth: they hold no data. The script polls `/api/status`
//! once a second with the key the viewer gives it (`?key=` or the input
//! field), so the data stays behind the same auth as the API.
//!
//! Script and style are separate files rather than inline so the
//! Content-Security-Policy can forbid inline code outright: the page may
//! load only its own script and style and talk only to its own origin.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("../../assets/dashboard.html");
const JS: &str = include_str!("../../assets/dashboard.js");
const CSS: &str = include_str!("../../assets/dashboard.css");

/// Nothing from elsewhere, nothing inline, no framing, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidate every time: a new binary must not run an old script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // A key given as `?key=` must not leak through a Referer.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`.
#[utoipa::path(
    get,
    path = "/dashboard",
    operation_id = "dashboard",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard page (it asks for a key itself).", content_type = "text/html", body = String))
)]
pub(crate) async fn page() -> Response {
    asset(HTML, "text/html; charset=utf-8")
}

/// `GET /dashboard/dashboard.js`.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.js",
    operation_id = "dashboard_script",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's script.", content_type = "text/javascript", body = String))
)]
pub(crate) async fn script() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// `GET /dashboard/dashboard.css`.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.css",
    operation_id = "dashboard_style",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's style sheet.", content_type = "text/css", body = String))
)]
pub(crate) async fn style() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}
