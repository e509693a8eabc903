//! The axum routes: chat completions, the generic `/work` endpoint, stats
//! and health. Error bodies follow OpenAI's `{"error": {...}}` shape.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::chat::{self, ChatRequest, Invalid};
use crate::model::{Model, Outcome, Ready};
use crate::quota::Status;

/// All routes, sharing one model.
pub(crate) fn router(model: Arc<Model>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/work", post(work))
        .route("/stats", get(stats))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(model)
}

fn error_body(message: &str, kind: &str, extra: &[(&str, Value)]) -> Value {
    let mut err = json!({"message": message, "type": kind});
    if let Value::Object(map) = &mut err {
        for (k, v) in extra {
            map.insert((*k).to_owned(), v.clone());
        }
    }
    json!({ "error": err })
}

fn bad_request(model: &Model, invalid: Invalid) -> Response {
    model.note_bad_request();
    let param = invalid.param.map_or(Value::Null, Value::from);
    let body = error_body(
        &invalid.message,
        "invalid_request_error",
        &[("param", param), ("code", Value::Null)],
    );
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Checks the quotas for a request costing `tokens`: `Ok` with the
/// quota status for the headers (`None` without quotas), or the `429`.
fn check_quota(model: &Model, tokens: u64) -> Result<Option<Status>, Box<Response>> {
    let Some(status) = model.quotas.admit(tokens) else {
        return Ok(None);
    };
    let Some(quota) = status.exceeded else {
        return Ok(Some(status));
    };
    model.note_rate_limited();
    let now = tokio::time::Instant::now();
    let retry_after_s = status.retry_after_s(now);
    let message = format!(
        "rate limit exceeded: {quota} per {} ms used up; retry after {retry_after_s} s",
        model.config().window_ms
    );
    let body = error_body(
        &message,
        "rate_limit_exceeded",
        &[("code", Value::from("rate_limit_exceeded"))],
    );
    let retry = HeaderValue::from(retry_after_s);
    let resp = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry)],
        Json(body),
    )
        .into_response();
    Err(Box::new(with_quota(resp, Some(&status))))
}

/// Adds the `x-ratelimit-*` headers of `status`, if any, the reset
/// measured now.
fn with_quota(mut resp: Response, status: Option<&Status>) -> Response {
    if let Some(status) = status {
        resp.headers_mut()
            .extend(status.headers(tokio::time::Instant::now()));
    }
    resp
}

/// Runs the model; a refusal or an injected failure becomes the final
/// (plain JSON, never SSE) response.
async fn admit(model: &Arc<Model>) -> Result<Ready, Response> {
    match model.process().await {
        Outcome::Ready(ready) => Ok(ready),
        Outcome::Refused {
            inflight,
            limit,
            retry_after_s,
        } => {
            let message = format!(
                "rate limit exceeded: {inflight} requests in flight, hard limit {limit}; \
                 retry after {retry_after_s} s"
            );
            let body = error_body(
                &message,
                "rate_limit_exceeded",
                &[("code", Value::from("rate_limited"))],
            );
            let retry = HeaderValue::from(retry_after_s);
            Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry)],
                Json(body),
            )
                .into_response())
        }
        Outcome::Failed { status } => {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(StatusCode::is_server_error)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = error_body("injected failure", "server_error", &[]);
            Err((status, Json(body)).into_response())
        }
    }
}

async fn chat_completions(State(model): State<Arc<Model>>, body: Bytes) -> Response {
    let req = match ChatRequest::parse(&body) {
        Ok(req) => req,
        Err(invalid) => return bad_request(&model, invalid),
    };
    // The reply is known before it is generated, so its tokens count
    // against `tpm` at admission, as `usage` will report them.
    let reply = req.reply(model.config());
    let tokens = (req.prompt_tokens() + reply.tokens.len()) as u64;
    let quota = match check_quota(&model, tokens) {
        Ok(q) => q,
        Err(response) => return *response,
    };
    let resp = chat_admitted(&model, &req, reply).await;
    with_quota(resp, quota.as_ref())
}

async fn chat_admitted(model: &Arc<Model>, req: &ChatRequest, reply: chat::Reply) -> Response {
    let ready = match admit(model).await {
        Ok(ready) => ready,
        Err(response) => return response,
    };
    let cfg = model.config();
    let id = model.next_id();
    if req.stream {
        let gap = Duration::from_millis(cfg.token_ms);
        chat::stream_response(req, id, reply, gap, ready.guard)
    } else {
        ready.guard.complete();
        Json(chat::completion_body(req, id, &reply)).into_response()
    }
}

async fn work(State(model): State<Arc<Model>>, body: Bytes) -> Response {
    let echo: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let invalid = Invalid {
                message: format!("request body is not valid JSON: {e}"),
                param: None,
            };
            return bad_request(&model, invalid);
        }
    };
    // `/work` has no tokens: only `rpm` applies to it.
    let quota = match check_quota(&model, 0) {
        Ok(q) => q,
        Err(response) => return *response,
    };
    let resp = work_admitted(&model, echo).await;
    with_quota(resp, quota.as_ref())
}

async fn work_admitted(model: &Arc<Model>, echo: Value) -> Response {
    let ready = match admit(model).await {
        Ok(ready) => ready,
        Err(response) => return response,
    };
    let latency_ms = u64::try_from(ready.service.as_millis()).unwrap_or(u64::MAX);
    ready.guard.complete();
    // `result` repeats the figures so that `/work` is also a valid instance
    // URL for swarmd's `agent = "http"` pools, which read `result`.
    Json(json!({
        "ok": true,
        "echo": echo,
        "latency_ms": latency_ms,
        "inflight_at_arrival": ready.inflight_at_arrival,
        "stalled": ready.stalled,
        "result": {
            "latency_ms": latency_ms,
            "inflight_at_arrival": ready.inflight_at_arrival,
            "stalled": ready.stalled,
        },
    }))
    .into_response()
}

async fn stats(State(model): State<Arc<Model>>) -> Response {
    Json(model.stats()).into_response()
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn not_found() -> Response {
    let body = error_body(
        "unknown endpoint",
        "invalid_request_error",
        &[("code", Value::from("not_found"))],
    );
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
