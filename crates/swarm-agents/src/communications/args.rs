//! The `communications` arguments: [`CommsArgs`] and its [`Tone`], parsed and
//! checked from `args`.

use serde_json::Value;
use swarm_core::FieldError;

use crate::email::{MAX_SUBJECT_CHARS, args_object, optional_str, parse_recipients};

/// Largest accepted `body`/`message`, in bytes (leaves room for greeting and
/// sign-off under the email agent's 1 MiB limit).
pub const MAX_INPUT_BODY_BYTES: usize = 1_000_000;
/// Longest `recipient_name` / `sender_name`, in characters.
pub const MAX_NAME_CHARS: usize = 100;

const KNOWN_KEYS: &[&str] = &[
    "to",
    "cc",
    "subject",
    "body",
    "message",
    "recipient_name",
    "sender_name",
    "tone",
    "allow_truncate",
];

/// How the message should sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// "Hello …," and "Best regards,".
    Formal,
    /// "Hi …," and "Cheers,".
    Friendly,
}

impl Tone {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Tone::Formal => "formal",
            Tone::Friendly => "friendly",
        }
    }
}

/// Parsed `communications` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct CommsArgs {
    /// Recipients (normalised mailboxes).
    pub to: Vec<String>,
    /// Copied recipients.
    pub cc: Vec<String>,
    /// Subject as given (may be empty).
    pub subject: String,
    /// Body as given in `body` or `message` (may be empty).
    pub body: String,
    /// Name for the greeting.
    pub recipient_name: Option<String>,
    /// Name for the sign-off.
    pub sender_name: Option<String>,
    /// Tone.
    pub tone: Tone,
    /// Whether an over-long body may be truncated.
    pub allow_truncate: bool,
}

impl CommsArgs {
    /// Parses and checks `args`; errors name the field relative to `args`.
    pub fn parse(args: &Value) -> Result<Self, FieldError> {
        let obj = args_object(args, KNOWN_KEYS)?;
        let to = parse_recipients(obj.get("to"), "to")?;
        if to.is_empty() {
            return Err(FieldError::missing("to"));
        }
        let cc = parse_recipients(obj.get("cc"), "cc")?;

        let subject = optional_str(obj, "subject")?.unwrap_or_default();
        if subject.chars().any(char::is_control) {
            return Err(FieldError::invalid(
                "subject",
                "must be a single line (no CR, LF or other control characters)",
            ));
        }
        if subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(FieldError::invalid(
                "subject",
                format!("at most {MAX_SUBJECT_CHARS} characters"),
            ));
        }

        let (body_field, body) = match (optional_str(obj, "body")?, optional_str(obj, "message")?) {
            (Some(_), Some(_)) => {
                return Err(FieldError::invalid(
                    "message",
                    "give `body` or `message`, not both",
                ));
            }
            (Some(b), None) => ("body", b),
            (None, Some(m)) => ("message", m),
            (None, None) => ("body", String::new()),
        };
        if body.len() > MAX_INPUT_BODY_BYTES {
            return Err(FieldError::invalid(
                body_field,
                format!("at most {MAX_INPUT_BODY_BYTES} bytes"),
            ));
        }
        if subject.trim().is_empty() && body.trim().is_empty() {
            return Err(FieldError {
                code: "missing_field",
                message: "one of `subject`, `body` or `message` is required".into(),
                field: Some("body".into()),
            });
        }

        let name = |field: &str| -> Result<Option<String>, FieldError> {
            let Some(n) = optional_str(obj, field)? else {
                return Ok(None);
            };
            if n.chars().any(char::is_control) || n.chars().count() > MAX_NAME_CHARS {
                return Err(FieldError::invalid(
                    field,
                    format!("must be one line of at most {MAX_NAME_CHARS} characters"),
                ));
            }
            let n = n.trim();
            Ok((!n.is_empty()).then(|| n.to_string()))
        };
        let recipient_name = name("recipient_name")?;
        let sender_name = name("sender_name")?;

        let tone = match optional_str(obj, "tone")?.as_deref() {
            None | Some("formal") => Tone::Formal,
            Some("friendly") => Tone::Friendly,
            Some(_) => {
                return Err(FieldError::invalid(
                    "tone",
                    "must be \"formal\" or \"friendly\"",
                ));
            }
        };
        let allow_truncate = match obj.get("allow_truncate") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(FieldError::invalid(
                    "allow_truncate",
                    "must be true or false",
                ));
            }
        };
        Ok(Self {
            to,
            cc,
            subject,
            body,
            recipient_name,
            sender_name,
            tone,
            allow_truncate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communications::test_support::args;
    use serde_json::json;

    #[test]
    fn validation_names_fields() {
        let field = |v: Value| CommsArgs::parse(&v).unwrap_err().field.unwrap();
        assert_eq!(field(json!({"subject": "Hello world today"})), "to");
        assert_eq!(field(json!({"to": "nope", "body": "x"})), "to");
        assert_eq!(field(json!({"to": "a@b.com"})), "body");
        assert_eq!(
            field(json!({"to": "a@b.com", "subject": " ", "body": ""})),
            "body"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "message": "y"})),
            "message"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "tone": "rude"})),
            "tone"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "allow_truncate": "yes"})),
            "allow_truncate"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "subject": "a\r\nBcc: x@y.z"})),
            "subject"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "cc": ["bad"]})),
            "cc"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "sender_name": "a\nb"})),
            "sender_name"
        );
        assert_eq!(field(json!({"to": "a@b.com", "body": 5})), "body");
        assert_eq!(
            field(json!({"to": "a@b.com", "body": "x", "tonne": "formal"})),
            "tonne"
        );
        assert_eq!(
            field(json!({"to": "a@b.com", "message": "x".repeat(MAX_INPUT_BODY_BYTES + 1)})),
            "message"
        );

        let a = args(
            json!({"to": ["a@b.com"], "message": "hi", "tone": "friendly", "allow_truncate": true,
            "recipient_name": " Ana ", "sender_name": ""}),
        );
        assert_eq!(a.body, "hi");
        assert_eq!(a.tone, Tone::Friendly);
        assert!(a.allow_truncate);
        assert_eq!(a.recipient_name.as_deref(), Some("Ana"));
        assert_eq!(a.sender_name, None);
        // A subject alone is enough.
        args(json!({"to": "a@b.com", "subject": "Maintenance window tonight"}));
    }
}
