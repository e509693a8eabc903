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

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

const HTML: &str = include_str!("../../assets/dashboard.html");
const JS: &str = include_str!("../../assets/dashboard.js");
const CSS: &str = include_str!("../../assets/dashboard.css");

/// Nothing from elsewhere, nothing inline, no framing, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, merged into the main router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/dashboard.css", get(style))
}

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

async fn page() -> Response {
    asset(HTML, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}
