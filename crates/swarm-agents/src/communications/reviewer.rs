//! `reviewers`: one reviewer (tone or structure) as an agent of its own, so
//! the communications workflow's two reviews run as child tasks through the
//! scheduler (their own department, queue and limit) instead of inline.
//! With an LLM it asks the model first (see [`super::llm`]).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use swarm_core::FieldError;

use super::args::Tone;
use super::draft::Draft;
use super::llm::llm_review;
use super::structure::STRUCTURE;
use super::structure::{StructureOptions, review_structure};
use super::tone::{TONE, review_tone};
use crate::agent::{Agent, AgentContext, AgentError, AgentInput};
use crate::openai::OpenAiClient;

/// Reviews a draft: `args {reviewer: "tone"|"structure", draft, tone?,
/// recipient_name?, sender_name?}`; answers the review as JSON. By the
/// built-in rules, or (built [`with_llm`](Self::with_llm)) by an LLM with
/// the rules as fallback.
#[derive(Debug, Default)]
pub struct ReviewerAgent {
    llm: Option<Arc<OpenAiClient>>,
}

impl ReviewerAgent {
    /// A reviewer asking `llm` when given, else using the rules.
    pub fn with_llm(llm: Option<Arc<OpenAiClient>>) -> Self {
        Self { llm }
    }
}

/// What a reviewer is asked.
struct ReviewArgs {
    reviewer: String,
    draft: Draft,
    opts: StructureOptions,
}

/// Builds the child request for one reviewer.
pub(super) fn review_request(reviewer: &str, draft: &Draft, opts: &StructureOptions) -> Value {
    json!({
        "reviewer": reviewer,
        "draft": draft.to_json(),
        "tone": opts.tone.as_str(),
        "recipient_name": opts.recipient_name,
        "sender_name": opts.sender_name,
    })
}

fn parse(args: &Value) -> Result<ReviewArgs, FieldError> {
    let obj: &Map<String, Value> = args
        .as_object()
        .ok_or_else(|| FieldError::invalid("", "args must be an object"))?;
    for k in obj.keys() {
        if !["reviewer", "draft", "tone", "recipient_name", "sender_name"].contains(&k.as_str()) {
            return Err(FieldError::invalid(
                k.as_str(),
                format!("unknown field `{k}`"),
            ));
        }
    }
    let reviewer = match obj.get("reviewer").and_then(Value::as_str) {
        Some(r @ ("tone" | "structure")) => r.to_string(),
        Some(_) => {
            return Err(FieldError::invalid(
                "reviewer",
                "`reviewer` is `tone` or `structure`",
            ));
        }
        None => return Err(FieldError::missing("reviewer")),
    };
    let draft = obj.get("draft").and_then(Draft::from_json).ok_or_else(|| {
        FieldError::invalid(
            "draft",
            "`draft` must be {to, cc, subject, greeting, body, signoff}",
        )
    })?;
    let tone = match obj.get("tone").and_then(Value::as_str) {
        None | Some("formal") => Tone::Formal,
        Some("friendly") => Tone::Friendly,
        Some(_) => {
            return Err(FieldError::invalid(
                "tone",
                "`tone` is `formal` or `friendly`",
            ));
        }
    };
    let name = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(ReviewArgs {
        reviewer,
        draft,
        opts: StructureOptions {
            tone,
            recipient_name: name("recipient_name"),
            sender_name: name("sender_name"),
        },
    })
}

impl Agent for ReviewerAgent {
    fn kind(&self) -> &'static str {
        "reviewers"
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        parse(args).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let a = parse(&input.args).map_err(AgentError::invalid_args)?;
            let name = if a.reviewer == TONE { TONE } else { STRUCTURE };
            let review = match (&self.llm, name) {
                (Some(llm), _) => llm_review(llm, &ctx, name, &a.draft, &a.opts).await?,
                (None, TONE) => review_tone(&a.draft, a.opts.tone),
                (None, _) => review_structure(&a.draft, &a.opts),
            };
            Ok(review.to_json())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communications::Review;
    use crate::communications::test_support::{draft, opts};
    use crate::test_support::{ctx, input};

    #[tokio::test]
    async fn a_review_round_trips_through_json_as_a_child_would() {
        let d = draft("Outage", "db down, eta 1h");
        let o = opts(Tone::Formal);
        for (name, local) in [
            ("tone", review_tone(&d, o.tone)),
            ("structure", review_structure(&d, &o)),
        ] {
            let out = Arc::new(ReviewerAgent::default())
                .run(ctx(), input(review_request(name, &d, &o)))
                .await
                .unwrap();
            let back = Review::from_json(&out).expect("parses");
            assert_eq!(back, local, "{name}");
            assert!(!back.edits.is_empty(), "{name} suggests something");
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let field = |v: Value| parse(&v).err().and_then(|e| e.field);
        assert_eq!(field(json!({"draft": {}})), Some("reviewer".into()));
        assert_eq!(
            field(json!({"reviewer": "grammar", "draft": {}})),
            Some("reviewer".into())
        );
        assert_eq!(
            field(json!({"reviewer": "tone", "draft": {"to": 1}})),
            Some("draft".into())
        );
        assert_eq!(
            field(json!({"reviewer": "tone", "draft": {"body": "b"}, "x": 1})),
            Some("x".into())
        );
    }
}
