//! Fixtures shared by the communications unit tests.

use serde_json::{Value, json};

use super::{CommsArgs, Draft, StructureOptions, Tone};

/// Parses `args`, which must be valid.
pub(super) fn args(v: Value) -> CommsArgs {
    CommsArgs::parse(&v).unwrap()
}

/// The drafter's view of a message to `ops@example.com`.
pub(super) fn draft(subject: &str, body: &str) -> Draft {
    Draft::from_args(&args(
        json!({"to": "ops@example.com", "subject": subject, "body": body}),
    ))
}

/// Structure options for `tone`, without names.
pub(super) fn opts(tone: Tone) -> StructureOptions {
    StructureOptions {
        tone,
        recipient_name: None,
        sender_name: None,
    }
}
