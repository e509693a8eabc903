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

    /// The part a JSON Pointer names.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Subject, Self::Greeting, Self::Body, Self::Signoff]
            .into_iter()
            .find(|p| p.as_str() == s)
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
    fn parse(s: &str) -> Option<Self> {
        match s {
            "add" => Some(Op::Add),
            "replace" => Some(Op::Replace),
            _ => None,
        }
    }

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
    /// Suggested by the LLM (`[llm]` configured); merged as it is.
    Llm,
}

impl Rule {
    fn as_str(&self) -> &'static str {
        match self {
            Rule::Tone => "tone",
            Rule::Greeting => "greeting",
            Rule::Signoff => "signoff",
            Rule::SubjectSummary { .. } => "subject_summary",
            Rule::Truncate => "length",
            Rule::Llm => "llm",
        }
    }

    fn parse(s: &str, prefix: Option<String>) -> Option<Self> {
        Some(match s {
            "tone" => Rule::Tone,
            "greeting" => Rule::Greeting,
            "signoff" => Rule::Signoff,
            "subject_summary" => Rule::SubjectSummary { prefix },
            "length" => Rule::Truncate,
            "llm" => Rule::Llm,
            _ => return None,
        })
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
    /// The edit as JSON (`op`, `path`, `value`, `reason`, `rule`, and the
    /// kept `prefix` of a subject summary).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "op": self.op.as_str(),
            "path": self.path.as_str(),
            "value": self.value,
            "reason": self.reason,
            "rule": self.rule.as_str(),
        });
        if let Rule::SubjectSummary { prefix: Some(p) } = &self.rule {
            v["prefix"] = json!(p);
        }
        v
    }

    /// Reads an edit written by [`Edit::to_json`] (a child task's answer).
    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            op: Op::parse(v["op"].as_str()?)?,
            path: PartPath::parse(v["path"].as_str()?)?,
            value: v["value"].as_str()?.to_string(),
            reason: v["reason"].as_str().unwrap_or_default().to_string(),
            rule: Rule::parse(
                v["rule"].as_str()?,
                v["prefix"].as_str().map(str::to_string),
            )?,
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

    /// Reads a review written by [`Review::to_json`] from a known reviewer.
    pub fn from_json(v: &Value) -> Option<Self> {
        let reviewer = match v["reviewer"].as_str()? {
            "tone" => super::TONE,
            "structure" => super::STRUCTURE,
            _ => return None,
        };
        let edits = v["edits"]
            .as_array()?
            .iter()
            .map(Edit::from_json)
            .collect::<Option<Vec<_>>>()?;
        let notes = v["notes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            reviewer,
            edits,
            notes,
        })
    }
}
