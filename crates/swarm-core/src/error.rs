//! The one shape bad input is reported in, from the HTTP edge to the agents.

use std::fmt;

/// Bad input, pointing at the field that caused it.
///
/// `code` is a stable machine-readable identifier (`invalid_field`,
/// `unknown_type`, …); `message` is for humans; `field` is a dotted path into
/// the request body (`args.to`), absent when the error is about the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Stable machine-readable error code.
    pub code: &'static str,
    /// Human-readable explanation, naming the accepted values where useful.
    pub message: String,
    /// Dotted path of the offending field, if one is to blame.
    pub field: Option<String>,
}

impl FieldError {
    /// An `invalid_field` error on `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A `missing_field` error on `field`.
    pub fn missing(field: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            code: "missing_field",
            message: format!("`{field}` is required"),
            field: Some(field),
        }
    }

    /// The same error with its field nested under `prefix` (`to` → `args.to`).
    pub fn nested_under(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field {
            Some(f) if !f.is_empty() => format!("{prefix}.{f}"),
            _ => prefix.to_string(),
        });
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({}): {}", self.code, field, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for FieldError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_prefixes_the_field() {
        let e = FieldError::missing("to").nested_under("args");
        assert_eq!(e.field.as_deref(), Some("args.to"));
        assert_eq!(e.code, "missing_field");
        assert_eq!(e.to_string(), "missing_field (args.to): `to` is required");
    }
}
