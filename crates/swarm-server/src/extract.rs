//! Extractors that turn bad requests into clear [`ApiError`]s.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body, parsed with the path of any bad field reported:
/// wrong content type → 415, too large → 413, not JSON → 400, JSON of the
/// wrong shape → 422 naming the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn is_json(ct: Option<&axum::http::HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is larger than server.max_body_bytes",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("could not read the request body: {e}"),
        )
    }
}

/// Parses JSON, mapping syntax errors to 400 and shape errors to 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        // Valid JSON that is not an object is a shape error; anything else
        // falls through to the syntax error below.
        if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the request body must be a JSON object",
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        shape_error(&path, e.inner())
    })?;
    // Bytes after the value are a syntax error too.
    de.end().map_err(|e| shape_error(".", &e))?;
    Ok(value)
}

/// Reads an already-parsed JSON object as `T`, shape errors as in
/// [`parse_json`] (a batch item: one bad item fails only itself).
pub(crate) fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "each task must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        shape_error(&path, e.inner())
    })
}

fn shape_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            let message = if e.is_eof() && e.line() == 1 && e.column() == 0 {
                "request body is empty; expected a JSON object".to_string()
            } else {
                format!("malformed JSON: {e}")
            };
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
        }
        Category::Data => {
            let full = e.to_string();
            // "… at line 1 column 9" locates bytes; the field path says more.
            let msg = match full.rfind(" at line ") {
                Some(i) => full[..i].to_string(),
                None => full,
            };
            let (code, field) = if let Some(name) = between(&msg, "missing field `", "`") {
                ("missing_field", Some(join(path, name)))
            } else if let Some(name) = between(&msg, "unknown field `", "`") {
                ("unknown_field", Some(join(path, name)))
            } else if path == "." || path.is_empty() {
                ("invalid_field", None)
            } else {
                ("invalid_field", Some(path.to_string()))
            };
            let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, msg);
            err.field = field;
            err
        }
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

fn join(path: &str, name: &str) -> String {
    // serde_path_to_error already ends the path with an unknown field's name.
    if path == name || path.ends_with(&format!(".{name}")) {
        path.to_string()
    } else if path == "." || path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::TaskSpec;

    fn err(body: &str) -> ApiError {
        parse_json::<TaskSpec>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn syntax_errors_are_400() {
        for body in [
            "",
            "{",
            "{\"type\":}",
            "nope",
            "{\"type\":\"echo\"} trailing",
        ] {
            let e = err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}: {e:?}");
            assert_eq!(e.code, "malformed_json");
        }
        assert!(err("").message.contains("empty"));
    }

    #[test]
    fn shape_errors_name_the_field() {
        let e = err(r#"{"args":{}}"#);
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                Some("type")
            )
        );
        let e = err(r#"{"type":"echo","timeout_ms":"soon"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_field", Some("timeout_ms"))
        );
        assert!(!e.message.contains("line 1"), "{}", e.message);
        let e = err(r#"{"type":"echo","priority":"urgent"}"#);
        assert_eq!(e.field.as_deref(), Some("priority"));
        assert!(e.message.contains("critical"));
        let e = err(r#"{"type":"echo","timout_ms":5}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("timout_ms"))
        );
        let e = err("[1,2]");
        assert_eq!(
            (e.status, e.field.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, None)
        );
    }

    #[test]
    fn good_json_parses() {
        let s: TaskSpec = parse_json(br#" {"type":"echo","args":{"a":1}} "#).unwrap();
        assert_eq!(s.task_type, "echo");
    }

    #[test]
    fn content_types() {
        let v = |s: &'static str| axum::http::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(is_json(Some(&v("application/vnd.api+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/x-www-form-urlencoded"))));
        assert!(!is_json(None));
    }
}
