//! `communications`: the prototype's workflow. A drafter turns `args` into a
//! draft, two reviewers suggest edits in parallel, the drafter merges the
//! edits it agrees with, and the email agent delivers the result. Every step
//! is reported through [`Progress`](crate::agent::Progress) and kept in the
//! result.
//!
//! # Steps
//! 1. **Draft** ([`Draft::from_args`]): splits an opening greeting line
//!    ("Hi team,", "Dear Ms. Lee,") and a closing sign-off ("Thanks,",
//!    "Best regards,\nAna") out of the body, so reviewers and the merge can
//!    treat them as separate parts.
//! 2. **Review**: [`review_tone`] and [`review_structure`] run concurrently
//!    (`tokio::join!`). Each returns `{"reviewer", "edits", "notes"}`; edits
//!    are JSON-Patch style (`op` `add`/`replace`, `path` `/subject`,
//!    `/greeting`, `/body` or `/signoff`, `value`) plus a `reason` and the
//!    `rule` that produced them.
//!    - *tone* rewrites the body word by word: chat abbreviations are
//!      expanded (`db` → `database`, `1h` → `1 hour`), SHOUTED words of 5+
//!      letters are lowered (known acronyms excepted), `!!`/`??` runs are
//!      collapsed, sentence starts are capitalised and a closing full stop is
//!      added. All of it is one `replace /body` edit listing every reason.
//!      Tokens that look like addresses, URLs, paths or code are left alone.
//!      For a formal tone it also turns a "Hi"/"Hey" greeting into "Hello".
//!    - *structure* adds a missing greeting and sign-off, replaces a vague
//!      subject (empty, under 3 words, or generic like "update") with the old
//!      subject plus a summary of the body's first sentence, and proposes
//!      truncating a body over 2000 characters at a sentence boundary.
//! 3. **Merge** ([`merge`](fn@merge)): edits are taken in reviewer order (tone, then
//!    structure) and each one is applied or rejected with a reason:
//!    - an empty value is rejected;
//!    - `add` is rejected when the path already has a value, `replace` when
//!      an optional part (greeting, sign-off) is absent;
//!    - a path already changed by another reviewer is first come, first
//!      served: the later edit is rejected as conflicting, with one
//!      exception. Structure's truncation is *rebased*: it is recomputed on
//!      the body as tone rewrote it (and dropped if that body is short
//!      enough), since both edits can hold at once;
//!    - truncation is refused unless `allow_truncate` is true;
//!    - structure's subject summary is always recomputed from the merged
//!      body, so subject and body agree (the summary of "db down" becomes
//!      "Database down" once tone's rewrite is in).
//!
//!    The rules depend only on the edits and their order, so a merge is
//!    deterministic.
//! 4. **Final**: subject, and greeting, body and sign-off joined by blank
//!    lines, go to [`EmailAgent::send`].
//!
//! The result is `{"draft", "reviews", "applied", "rejected", "final",
//! "delivery"}`. The cancellation token is checked between steps; the send
//! itself races it.
//!
//! # With an LLM
//! With `[llm]` configured ([`CommunicationsAgent::with_llm`],
//! [`ReviewerAgent::with_llm`]) the drafter has the model rewrite the body
//! and the reviewers ask it for edits in the same JSON format, its tokens
//! streaming as `{"step": "token", "source", "text"}` progress; an
//! unusable answer or a failed call falls back to the rules above, saying
//! so in the review's `notes` (or the result's `drafter.note`). The merge
//! and everything after it are the same. The result then also has
//! `drafter: {"by": "llm"|"rules", "model"?, "note"?}`. See [`llm`].
//!
//! # Layout
//! - [`args`](CommsArgs): parsing and checking `args`;
//! - [`draft`](Draft): the drafter, splitting greeting and sign-off;
//! - [`edit`](Edit): edits and reviews;
//! - [`tone`](review_tone) and [`structure`](review_structure): the reviewers;
//! - [`merge`](fn@merge): the merge rules;
//! - this file: the agent, running the steps in order.

mod args;
mod draft;
mod edit;
pub mod llm;
mod merge;
mod reviewer;
mod structure;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod tone;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use swarm_core::FieldError;

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};
use crate::email::{EmailAgent, EmailMessage};
use crate::openai::OpenAiClient;

pub use args::{CommsArgs, MAX_INPUT_BODY_BYTES, MAX_NAME_CHARS, Tone};
pub use draft::{Draft, split_greeting, split_signoff};
pub use edit::{Edit, Op, PartPath, Review, Rule};
pub use merge::{Decision, Merged, merge};
pub use reviewer::ReviewerAgent;
pub use structure::{
    DEFAULT_SENDER_NAME, MAX_BODY_CHARS, MAX_SUMMARY_SUBJECT_CHARS, STRUCTURE, StructureOptions,
    first_sentence, review_structure, subject_is_unclear, summary_subject, truncate_body,
};
pub use tone::{TONE, review_tone, rewrite_tone};

use structure::structure_reviewer;
use tone::tone_reviewer;

/// The communications department's workflow.
pub struct CommunicationsAgent {
    email: Arc<EmailAgent>,
    llm: Option<Arc<OpenAiClient>>,
}

impl CommunicationsAgent {
    /// Builds the agent around the email agent it hands drafts to.
    pub fn new(email: Arc<EmailAgent>) -> Self {
        Self { email, llm: None }
    }

    /// Has the drafter (and the inline reviewers, outside an engine) ask
    /// `llm` when given; see the module docs.
    pub fn with_llm(self, llm: Option<Arc<OpenAiClient>>) -> Self {
        Self { llm, ..self }
    }

    async fn run_inner(&self, ctx: AgentContext, args: CommsArgs) -> Result<Value, AgentError> {
        let check = |ctx: &AgentContext| {
            if ctx.cancel.is_cancelled() {
                Err(AgentError::cancelled())
            } else {
                Ok(())
            }
        };
        check(&ctx)?;

        let draft = Draft::from_args(&args);
        let (draft, drafter) = match &self.llm {
            Some(llm) => {
                let (d, info) = llm::llm_draft(llm, &ctx, draft, args.tone).await?;
                (d, Some(info))
            }
            None => (draft, None),
        };
        ctx.progress
            .report(json!({"step": "draft", "draft": draft.to_json()}));
        check(&ctx)?;

        let opts = StructureOptions {
            tone: args.tone,
            recipient_name: args.recipient_name.clone(),
            sender_name: args.sender_name.clone(),
        };
        let reviews = match (&ctx.children, &self.llm) {
            // Through the scheduler: each review is a child task in the
            // `reviewers` department, both in flight at once.
            (Some(children), _) => {
                let ask = |name: &str| {
                    children.run(
                        &ctx,
                        "reviewers",
                        reviewer::review_request(name, &draft, &opts),
                    )
                };
                let (tone, structure) = tokio::join!(ask(TONE), ask(STRUCTURE));
                let parse = |r: Result<Value, AgentError>| {
                    r.and_then(|v| {
                        Review::from_json(&v).ok_or_else(|| {
                            AgentError::failed("bad_review", format!("a reviewer answered {v}"))
                        })
                    })
                };
                [parse(tone)?, parse(structure)?]
            }
            // Outside an engine: the same two reviews, in parallel, inline.
            (None, Some(llm)) => {
                let (tone, structure) = tokio::join!(
                    llm::llm_review(llm, &ctx, TONE, &draft, &opts),
                    llm::llm_review(llm, &ctx, STRUCTURE, &draft, &opts)
                );
                [tone?, structure?]
            }
            (None, None) => {
                let (tone, structure) = tokio::join!(
                    tone_reviewer(&draft, args.tone),
                    structure_reviewer(&draft, &opts)
                );
                [tone, structure]
            }
        };
        let reviews_json: Vec<Value> = reviews.iter().map(Review::to_json).collect();
        ctx.progress
            .report(json!({"step": "review", "reviews": reviews_json}));
        check(&ctx)?;

        let merged = merge(&draft, &reviews, args.allow_truncate);
        let applied: Vec<Value> = merged.applied.iter().map(Decision::to_json).collect();
        let rejected: Vec<Value> = merged.rejected.iter().map(Decision::to_json).collect();
        ctx.progress
            .report(json!({"step": "merge", "applied": applied, "rejected": rejected}));
        check(&ctx)?;

        let fin = merged.draft;
        let subject = if fin.subject.trim().is_empty() {
            // Only when the body had nothing to summarise either.
            format!(
                "Message from {}",
                args.sender_name.as_deref().unwrap_or(DEFAULT_SENDER_NAME)
            )
        } else {
            fin.subject.clone()
        };
        let body = fin.compose_body();
        let final_json = json!({"to": fin.to, "cc": fin.cc, "subject": subject, "body": body});
        ctx.progress
            .report(json!({"step": "final", "final": final_json}));

        let delivery = self
            .email
            .send(
                &ctx,
                EmailMessage {
                    from: None,
                    to: fin.to.clone(),
                    cc: fin.cc.clone(),
                    subject,
                    body,
                },
            )
            .await?;
        ctx.progress
            .report(json!({"step": "delivered", "delivery": delivery}));

        let mut result = json!({
            "draft": draft.to_json(),
            "reviews": reviews_json,
            "applied": applied,
            "rejected": rejected,
            "final": final_json,
            "delivery": delivery,
        });
        if let Some(info) = drafter {
            result["drafter"] = info;
        }
        Ok(result)
    }
}

impl Agent for CommunicationsAgent {
    fn kind(&self) -> &'static str {
        "communications"
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        CommsArgs::parse(args).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let args = CommsArgs::parse(&input.args).map_err(AgentError::invalid_args)?;
            self.run_inner(ctx, args).await
        })
    }
}
