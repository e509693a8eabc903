//! The one error type of the HTTP edge and its JSON envelope:
//! `{"error_code": "...", "message": "...", "field": "..."}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use swarm_core::FieldError;
use swarm_engine::EngineError;
use tracing::{debug, error};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The offending field, if one is to blame.
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429/503).
    pub retry_after_s: Option<u64>,
}

/// The JSON body of every error answer (schema `Error` in the OpenAPI
/// document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Envelope<'a> {
    /// Stable machine-readable code: `invalid_field`, `missing_field`,
    /// `unknown_field`, `malformed_json`, `unauthorized`, `forbidden`,
    /// `not_found`, `queue_full`, `tenant_quota`, …
    error_code: &'a str,
    /// What went wrong, for people.
    message: &'a str,
    /// The offending field (a dotted path into the body, or a header or
    /// query parameter name), when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    /// The same error naming `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 404 for an unknown task (or another tenant's).
    pub fn task_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such task")
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: e.code,
            message: e.message,
            field: e.field,
            retry_after_s: None,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(f) => f.into(),
            EngineError::NotFound => Self::task_not_found(),
            EngineError::Missing { code, message } => {
                Self::new(StatusCode::NOT_FOUND, code, message)
            }
            EngineError::Conflict { code, message } => {
                Self::new(StatusCode::CONFLICT, code, message)
            }
            EngineError::Overloaded {
                code,
                message,
                retry_after_s,
            } => Self {
                retry_after_s: Some(retry_after_s),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            },
            EngineError::QuotaExceeded {
                code,
                message,
                retry_after_s,
            } => Self {
                retry_after_s: Some(retry_after_s),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
            },
            EngineError::Unavailable(detail) => {
                // The store logs the outage once; a line per request would
                // drown the log exactly when it matters.
                debug!(%detail, "database unavailable");
                Self {
                    retry_after_s: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "database_unavailable",
                        "the database is unavailable; retry shortly",
                    )
                }
            }
            EngineError::ShuttingDown => Self {
                retry_after_s: Some(5),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is shutting down; retry on another instance or shortly",
                )
            },
            EngineError::Internal(detail) => {
                // The detail goes to the log, not to the client.
                error!(%detail, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Envelope {
            error_code: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        })
        .unwrap_or_default();
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
