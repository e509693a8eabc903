//! The drafter and reviewers with an LLM (`[llm]` configured): each asks
//! the model, streaming its tokens as progress (`source` `draft`, `tone`,
//! `structure`), and falls back to the built-in rules when the answer is
//! unusable or the call fails, saying so.
//!
//! - The **drafter** asks for the body rewritten in the requested tone,
//!   facts kept, and takes the answer as the body (a greeting or sign-off
//!   the model added anyway is cut off, since the draft keeps its own and
//!   the structure reviewer adds missing ones). An empty answer, or one cut
//!   off at `max_tokens`, keeps the rules' draft.
//! - The **reviewers** ask for edits in the same JSON edit format the
//!   rules produce (`{"edits": [{op, path, value, reason}], "notes"}`);
//!   the edits get the rule `llm`, which the merge treats as plain edits
//!   (first come, first served; no recomputing). An answer that is not
//!   that JSON (code fences around it are tolerated) is rejected as a
//!   whole, naming what was wrong, and the rules' review is used with a
//!   note. Rejecting a whole answer rather than keeping its good edits
//!   keeps a confused model from half-editing a message.
//!
//! Cancellation is never papered over: a cancelled task stops here.

use serde_json::{Value, json};

use super::args::{MAX_INPUT_BODY_BYTES, Tone};
use super::draft::{Draft, split_greeting, split_signoff};
use super::edit::{Edit, Op, PartPath, Review, Rule};
use super::structure::{STRUCTURE, StructureOptions, review_structure};
use super::tone::{TONE, review_tone};
use crate::agent::{AgentContext, AgentError};
use crate::openai::{ChatReply, ChatRequest, Message, OpenAiClient};

/// Most edits taken from one answer.
const MAX_EDITS: usize = 16;

/// Marks the drafter's system prompt (tests script replies by it).
pub const DRAFTER_ROLE: &str = "You are the drafter";
/// Marks the tone reviewer's system prompt.
pub const TONE_ROLE: &str = "You are the tone reviewer";
/// Marks the structure reviewer's system prompt.
pub const STRUCTURE_ROLE: &str = "You are the structure reviewer";

const EDIT_FORMAT: &str = "Answer with JSON only, no other text, exactly in this form: \
{\"edits\": [{\"op\": \"replace\", \"path\": \"/body\", \"value\": \"the new text\", \
\"reason\": \"why\"}], \"notes\": [\"observations that are not edits\"]}. \
`op` is \"add\" for a part that is empty (null) or \"replace\" for one that has a value; \
`path` is one of \"/subject\", \"/greeting\", \"/body\", \"/signoff\"; `value` is the \
whole new text of that part. If nothing needs changing, answer {\"edits\": [], \"notes\": []}.";

/// The error, unless it is the task's own cancellation (which must stop
/// the run rather than fall back).
fn unless_cancelled(ctx: &AgentContext, e: AgentError) -> Result<AgentError, AgentError> {
    if ctx.cancel.is_cancelled() {
        Err(AgentError::cancelled())
    } else {
        Ok(e)
    }
}

async fn ask(
    llm: &OpenAiClient,
    ctx: &AgentContext,
    source: &str,
    system: String,
    user: String,
) -> Result<ChatReply, AgentError> {
    let req = ChatRequest {
        messages: vec![Message::new("system", system), Message::new("user", user)],
        ..ChatRequest::default()
    };
    llm.complete(ctx, Some(source), &req).await
}

/// The drafter with an LLM: the draft with the body the model wrote, and
/// `{"by": "llm"|"rules", "model"?, "note"?}` saying which was used.
pub(super) async fn llm_draft(
    llm: &OpenAiClient,
    ctx: &AgentContext,
    draft: Draft,
    tone: Tone,
) -> Result<(Draft, Value), AgentError> {
    let system = format!(
        "{DRAFTER_ROLE} of an email in a communications department. Rewrite the message \
         body you are given so that it is clear, correct and {} in tone. Keep every fact, \
         name, number, address and link. Answer with the rewritten body only: no subject, \
         no greeting, no sign-off, no commentary.",
        tone.as_str()
    );
    let user = format!("Subject: {}\n\nBody:\n{}", draft.subject, draft.body);
    let fallback = |note: String| json!({"by": "rules", "note": note});
    let reply = match ask(llm, ctx, "draft", system, user).await {
        Ok(r) => r,
        Err(e) => {
            let e = unless_cancelled(ctx, e)?;
            let note = format!("LLM failed ({}: {e}); kept the body as given", e.code());
            return Ok((draft, fallback(note)));
        }
    };
    if reply.finish_reason.as_deref() == Some("length") {
        let note = "LLM answer cut off at max_tokens; kept the body as given".to_string();
        return Ok((draft, fallback(note)));
    }
    // The draft keeps its own greeting and sign-off.
    let (_, rest) = split_greeting(&reply.content);
    let (body, _) = split_signoff(&rest);
    if body.trim().is_empty() || body.len() > MAX_INPUT_BODY_BYTES {
        let note = "LLM answer unusable (empty or too long); kept the body as given".to_string();
        return Ok((draft, fallback(note)));
    }
    let info = json!({"by": "llm", "model": reply.model});
    Ok((Draft { body, ..draft }, info))
}

/// One reviewer with an LLM; the rules' review, with a note, when the LLM
/// fails or its answer is unusable.
pub(super) async fn llm_review(
    llm: &OpenAiClient,
    ctx: &AgentContext,
    reviewer: &'static str,
    draft: &Draft,
    opts: &StructureOptions,
) -> Result<Review, AgentError> {
    let (role, task) = if reviewer == TONE {
        (
            TONE_ROLE,
            format!(
                "Review the wording for a {} message: expand chat abbreviations, lower \
                 shouting, fix punctuation and capitalisation, keep every fact. Change the \
                 greeting only if it does not fit the tone.",
                opts.tone.as_str()
            ),
        )
    } else {
        (
            STRUCTURE_ROLE,
            format!(
                "Check that the message has a greeting{}, a sign-off{}, and a subject that \
                 says what the message is about. Do not reword the body.",
                opts.recipient_name
                    .as_deref()
                    .map(|n| format!(" addressing {n}"))
                    .unwrap_or_default(),
                opts.sender_name
                    .as_deref()
                    .map(|n| format!(" from {n}"))
                    .unwrap_or_default(),
            ),
        )
    };
    let system = format!("{role} of an email in a communications department. {task} {EDIT_FORMAT}");
    let parts = json!({
        "subject": draft.subject,
        "greeting": draft.greeting,
        "body": draft.body,
        "signoff": draft.signoff,
    });
    let user = format!(
        "The draft, by part:\n{}",
        serde_json::to_string_pretty(&parts).unwrap_or_default()
    );
    let rules = || {
        if reviewer == TONE {
            review_tone(draft, opts.tone)
        } else {
            review_structure(draft, opts)
        }
    };
    let with_note = |note: String| {
        let mut r = rules();
        r.notes.insert(0, note);
        r
    };
    let reply = match ask(llm, ctx, reviewer, system, user).await {
        Ok(r) => r,
        Err(e) => {
            let e = unless_cancelled(ctx, e)?;
            return Ok(with_note(format!(
                "LLM failed ({}: {e}); used the built-in rules",
                e.code()
            )));
        }
    };
    if reply.finish_reason.as_deref() == Some("length") {
        return Ok(with_note(
            "LLM answer cut off at max_tokens; used the built-in rules".into(),
        ));
    }
    match parse_edits(&reply.content) {
        Ok((edits, mut notes)) => {
            notes.push(format!("edits suggested by the LLM ({})", reply.model));
            Ok(Review {
                reviewer: if reviewer == TONE { TONE } else { STRUCTURE },
                edits,
                notes,
            })
        }
        Err(why) => Ok(with_note(format!(
            "LLM answer unusable ({why}); used the built-in rules"
        ))),
    }
}

/// Reads an LLM's answer in the edit format; the error says what is wrong,
/// naming the field (`edits[1].path`).
pub(super) fn parse_edits(answer: &str) -> Result<(Vec<Edit>, Vec<String>), String> {
    // Models like to wrap JSON in ```json fences or a sentence: take the
    // outermost object.
    let (Some(start), Some(end)) = (answer.find('{'), answer.rfind('}')) else {
        return Err("no JSON object".into());
    };
    if end < start {
        return Err("no JSON object".into());
    }
    let v: Value =
        serde_json::from_str(&answer[start..=end]).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(list) = v.get("edits").and_then(Value::as_array) else {
        return Err("`edits` must be a list".into());
    };
    if list.len() > MAX_EDITS {
        return Err(format!("more than {MAX_EDITS} edits"));
    }
    let mut edits = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let field = |k: &str| format!("edits[{i}].{k}");
        let op = match e.get("op").and_then(Value::as_str) {
            Some("add") => Op::Add,
            Some("replace") => Op::Replace,
            _ => return Err(format!("{}: must be \"add\" or \"replace\"", field("op"))),
        };
        let path = e
            .get("path")
            .and_then(Value::as_str)
            .and_then(PartPath::parse)
            .ok_or_else(|| {
                format!(
                    "{}: must be /subject, /greeting, /body or /signoff",
                    field("path")
                )
            })?;
        let value = match e.get("value").and_then(Value::as_str) {
            Some(v) if v.len() <= MAX_INPUT_BODY_BYTES => v.to_string(),
            Some(_) => return Err(format!("{}: too long", field("value"))),
            None => return Err(format!("{}: must be a string", field("value"))),
        };
        let reason = match e.get("reason") {
            None | Some(Value::Null) => "suggested by the LLM".to_string(),
            Some(Value::String(r)) => r.clone(),
            Some(_) => return Err(format!("{}: must be a string", field("reason"))),
        };
        edits.push(Edit {
            op,
            path,
            value,
            reason,
            rule: Rule::Llm,
        });
    }
    let notes = match v.get("notes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(n)) => n
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("`notes` must be a list of strings")?,
        Some(_) => return Err("`notes` must be a list of strings".into()),
    };
    Ok((edits, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_parse_from_plain_or_fenced_json() {
        let answer = "Here you go:\n```json\n{\"edits\": [{\"op\": \"replace\", \"path\": \
                      \"/body\", \"value\": \"Database down.\", \"reason\": \"tone\"}, \
                      {\"op\": \"add\", \"path\": \"/signoff\", \"value\": \"Regards\"}], \
                      \"notes\": [\"short\"]}\n```";
        let (edits, notes) = parse_edits(answer).unwrap();
        assert_eq!(edits.len(), 2);
        assert_eq!(
            (edits[0].op, edits[0].path, edits[0].value.as_str()),
            (Op::Replace, PartPath::Body, "Database down.")
        );
        assert_eq!(edits[1].reason, "suggested by the LLM");
        assert!(edits.iter().all(|e| e.rule == Rule::Llm));
        assert_eq!(notes, ["short"]);
        assert_eq!(parse_edits("{\"edits\": []}").unwrap(), (vec![], vec![]));
    }

    #[test]
    fn unusable_answers_say_why() {
        let why = |a: &str| parse_edits(a).unwrap_err();
        assert_eq!(why("Looks fine to me."), "no JSON object");
        assert!(why("{edits: [}").starts_with("not valid JSON"));
        assert_eq!(why("{\"changes\": []}"), "`edits` must be a list");
        assert!(
            why("{\"edits\": [{\"op\": \"delete\", \"path\": \"/body\", \"value\": \"\"}]}")
                .starts_with("edits[0].op")
        );
        assert!(
            why(
                "{\"edits\": [{\"op\": \"add\", \"path\": \"/body\", \"value\": \"x\"}, \
             {\"op\": \"add\", \"path\": \"/footer\", \"value\": \"x\"}]}"
            )
            .starts_with("edits[1].path")
        );
        assert!(
            why("{\"edits\": [{\"op\": \"add\", \"path\": \"/body\", \"value\": 1}]}")
                .starts_with("edits[0].value")
        );
        assert!(why("{\"edits\": [], \"notes\": [1]}").contains("notes"));
    }
}
