//! What reviewers return: [`Edit`]s to parts of the draft ([`PartPath`]),
//! gathered in a [`Review`].

use serde_json::{Value, json};

/// A part of the draft an edit targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartPath {
    /// `/subject`
    Subject,
    /// `/greeting`
    Greeting,
    /// `/body`
    Body,
    /// `/signoff`
    Signoff,
}

impl PartPath {
    /// The JSON Pointer.
    pub fn as_str(self) -> &'static str {
        match self {
            PartPath::Subject => "/subject",
            PartPath::Greeting => "/greeting",
            PartPath::Body => "/body",
            PartPath::Signoff => "/signoff",
        }
    }

    /// Greeting and sign-off may be absent; subject and body always exist.
    pub(super) fn optional(self) -> bool {
        matches!(self, PartPath::Greeting | PartPath::Signoff)
    }
}

/// JSON-Patch operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Put a value where there is none.
    Add,
    /// Change an existing value.
    Replace,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Replace => "replace",
        }
    }
}

/// Which reviewer rule produced an edit; the merge treats some specially.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Tone's wording changes.
    Tone,
    /// A missing greeting.
    Greeting,
    /// A missing sign-off.
    Signoff,
    /// A vague subject, replaced by `prefix: <summary of the first sentence>`;
    /// the merge recomputes the summary from the merged body.
    SubjectSummary {
        /// The old subject kept in front, if it said anything.
        prefix: Option<String>,
    },
    /// An over-long body cut at a sentence boundary; the merge recomputes it
    /// on the merged body and needs `allow_truncate`.
    Truncate,
}

impl Rule {
    fn as_str(&self) -> &'static str {
        match self {
            Rule::Tone => "tone",
            Rule::Greeting => "greeting",
            Rule::Signoff => "signoff",
            Rule::SubjectSummary { .. } => "subject_summary",
            Rule::Truncate => "length",
        }
    }
}

/// One suggested edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// `add` or `replace`.
    pub op: Op,
    /// Target part.
    pub path: PartPath,
    /// New value.
    pub value: String,
    /// Why the reviewer wants it.
    pub reason: String,
    /// The rule behind it.
    pub rule: Rule,
}

impl Edit {
    /// The edit as JSON (`op`, `path`, `value`, `reason`, `rule`).
    pub fn to_json(&self) -> Value {
        json!({
            "op": self.op.as_str(),
            "path": self.path.as_str(),
            "value": self.value,
            "reason": self.reason,
            "rule": self.rule.as_str(),
        })
    }
}

/// A reviewer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// Reviewer name.
    pub reviewer: &'static str,
    /// Suggested edits.
    pub edits: Vec<Edit>,
    /// Observations that are not edits.
    pub notes: Vec<String>,
}

impl Review {
    /// The review as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "reviewer": self.reviewer,
            "edits": self.edits.iter().map(Edit::to_json).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}
