//! The merge: the drafter applies the reviewers' edits it agrees with and
//! rejects the others, with a reason.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::draft::Draft;
use super::edit::{Edit, Op, PartPath, Review, Rule};
use super::structure::{MAX_BODY_CHARS, summary_subject, truncate_body};

/// What the drafter did with one edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Who suggested it.
    pub reviewer: &'static str,
    /// The edit; for an applied, rebased edit, `value` is what was applied.
    pub edit: Edit,
    /// For a rebased edit: the value the reviewer proposed.
    pub proposed: Option<String>,
    /// Why it was rejected (empty when applied).
    pub because: String,
}

impl Decision {
    /// The decision as JSON: the edit plus `reviewer`, and `proposed` (applied,
    /// rebased) or `rejected_because` (rejected).
    pub fn to_json(&self) -> Value {
        let mut v = self.edit.to_json();
        v["reviewer"] = json!(self.reviewer);
        if let Some(p) = &self.proposed {
            v["proposed"] = json!(p);
        }
        if !self.because.is_empty() {
            v["rejected_because"] = json!(self.because);
        }
        v
    }
}

/// The outcome of a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The draft with the applied edits.
    pub draft: Draft,
    /// Applied edits, in order.
    pub applied: Vec<Decision>,
    /// Rejected edits, in order, with reasons.
    pub rejected: Vec<Decision>,
}

/// Applies the reviewers' edits to `draft` by the rules in the
/// [module docs](super).
/// `reviews` are taken in the order given (tone, then structure).
pub fn merge(draft: &Draft, reviews: &[Review], allow_truncate: bool) -> Merged {
    let mut merged = draft.clone();
    let mut applied = Vec::new();
    let mut rejected = Vec::new();
    // Which reviewer first changed each path.
    let mut owner: HashMap<PartPath, &'static str> = HashMap::new();

    for review in reviews {
        for edit in &review.edits {
            let reject = |because: String| Decision {
                reviewer: review.reviewer,
                edit: edit.clone(),
                proposed: None,
                because,
            };
            let path = edit.path;
            if edit.value.trim().is_empty() {
                rejected.push(reject("empty value".into()));
                continue;
            }
            match edit.op {
                Op::Add if merged.get(path).is_some() => {
                    rejected.push(reject(format!("{} already has a value", path.as_str())));
                    continue;
                }
                Op::Replace if path.optional() && merged.get(path).is_none() => {
                    rejected.push(reject(format!("nothing to replace at {}", path.as_str())));
                    continue;
                }
                _ => {}
            }
            if edit.rule == Rule::Truncate && !allow_truncate {
                rejected.push(reject(
                    "length: truncation not allowed (set allow_truncate to true)".into(),
                ));
                continue;
            }
            let other = owner.get(&path).copied().filter(|&o| o != review.reviewer);
            let value = match (&edit.rule, other) {
                // Truncation composes with another reviewer's rewrite: cut the
                // rewritten body instead, if it is still too long.
                (Rule::Truncate, Some(o)) => match truncate_body(&merged.body) {
                    Some(v) => v,
                    None => {
                        rejected.push(reject(format!(
                            "no longer needed: the body after {o}'s edit fits in {MAX_BODY_CHARS} characters"
                        )));
                        continue;
                    }
                },
                (_, Some(o)) => {
                    rejected.push(reject(format!("conflicts with {o}'s edit")));
                    continue;
                }
                // The summary follows the body as merged so far.
                (Rule::SubjectSummary { prefix }, None) => {
                    summary_subject(prefix.as_deref(), &merged.body)
                }
                _ => edit.value.clone(),
            };
            if value.trim().is_empty() {
                rejected.push(reject("empty value".into()));
                continue;
            }
            let proposed = (value != edit.value).then(|| edit.value.clone());
            merged.set(path, value.clone());
            owner.entry(path).or_insert(review.reviewer);
            applied.push(Decision {
                reviewer: review.reviewer,
                edit: Edit {
                    value,
                    ..edit.clone()
                },
                proposed,
                because: String::new(),
            });
        }
    }
    Merged {
        draft: merged,
        applied,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communications::test_support::{draft, opts};
    use crate::communications::{STRUCTURE, TONE, Tone, review_structure, review_tone};

    fn edit(op: Op, path: PartPath, value: &str, rule: Rule) -> Edit {
        Edit {
            op,
            path,
            value: value.into(),
            reason: "test".into(),
            rule,
        }
    }

    fn review(reviewer: &'static str, edits: Vec<Edit>) -> Review {
        Review {
            reviewer,
            edits,
            notes: vec![],
        }
    }

    #[test]
    fn merge_rejects_conflicts_first_come_wins() {
        let d = draft("Database outage tonight", "All good.");
        let tone = review(
            TONE,
            vec![edit(
                Op::Replace,
                PartPath::Subject,
                "Tone subject",
                Rule::Tone,
            )],
        );
        let structure = review(
            STRUCTURE,
            vec![edit(
                Op::Replace,
                PartPath::Subject,
                "Structure subject",
                Rule::Tone,
            )],
        );
        let m = merge(&d, &[tone, structure], false);
        assert_eq!(m.draft.subject, "Tone subject");
        assert_eq!(m.applied.len(), 1);
        assert_eq!(m.rejected.len(), 1);
        assert_eq!(m.rejected[0].reviewer, STRUCTURE);
        assert_eq!(m.rejected[0].because, "conflicts with tone's edit");
        let j = m.rejected[0].to_json();
        assert_eq!(j["reviewer"], "structure");
        assert_eq!(j["rejected_because"], "conflicts with tone's edit");
        assert_eq!(j["path"], "/subject");
    }

    #[test]
    fn merge_rejects_add_over_a_value_empty_values_and_missing_targets() {
        let d = draft("Database outage tonight", "Hi Ana,\nAll good.");
        let structure = review(
            STRUCTURE,
            vec![
                edit(Op::Add, PartPath::Greeting, "Hello,", Rule::Greeting),
                edit(Op::Add, PartPath::Signoff, "  ", Rule::Signoff),
                edit(Op::Replace, PartPath::Signoff, "Bye", Rule::Signoff),
                edit(Op::Add, PartPath::Signoff, "Regards,\nBo", Rule::Signoff),
            ],
        );
        let m = merge(&d, &[structure], false);
        let because: Vec<&str> = m.rejected.iter().map(|r| r.because.as_str()).collect();
        assert_eq!(
            because,
            vec![
                "/greeting already has a value",
                "empty value",
                "nothing to replace at /signoff"
            ]
        );
        assert_eq!(m.draft.greeting.as_deref(), Some("Hi Ana,"));
        assert_eq!(m.draft.signoff.as_deref(), Some("Regards,\nBo"));
        assert_eq!(m.applied.len(), 1);
    }

    #[test]
    fn merge_truncation_needs_permission() {
        let body = "A fine sentence to repeat here. ".repeat(100);
        let d = draft("Database outage tonight", &body);
        let reviews = [
            review_tone(&d, Tone::Formal),
            review_structure(&d, &opts(Tone::Formal)),
        ];
        let refused = merge(&d, &reviews, false);
        assert!(refused.draft.body.chars().count() > MAX_BODY_CHARS);
        let r = refused
            .rejected
            .iter()
            .find(|r| r.edit.rule == Rule::Truncate)
            .unwrap();
        assert!(r.because.contains("allow_truncate"), "{}", r.because);

        let allowed = merge(&d, &reviews, true);
        assert!(allowed.draft.body.chars().count() <= MAX_BODY_CHARS);
        assert!(allowed.draft.body.contains("[Truncated"));
        assert!(allowed.rejected.is_empty(), "{:?}", allowed.rejected);
    }

    #[test]
    fn merge_rebases_truncation_on_the_tone_rewrite() {
        // Abbreviations that expand push the body past the limit only after
        // the rewrite; a body that shrinks below it no longer needs cutting.
        let d = Draft {
            to: vec!["a@b.com".into()],
            cc: vec![],
            subject: "Database outage tonight".into(),
            greeting: Some("Hi,".into()),
            body: "x".into(),
            signoff: Some("Thanks".into()),
        };
        let long = "Long sentence here. ".repeat(150);
        let tone = review(
            TONE,
            vec![edit(Op::Replace, PartPath::Body, &long, Rule::Tone)],
        );
        let structure = review(
            STRUCTURE,
            vec![edit(
                Op::Replace,
                PartPath::Body,
                "stale cut",
                Rule::Truncate,
            )],
        );
        let m = merge(&d, &[tone.clone(), structure.clone()], true);
        assert_eq!(m.applied.len(), 2);
        assert_eq!(m.applied[1].proposed.as_deref(), Some("stale cut"));
        assert_eq!(m.draft.body, truncate_body(&long).unwrap());

        let short_tone = review(
            TONE,
            vec![edit(Op::Replace, PartPath::Body, "Short now.", Rule::Tone)],
        );
        let m = merge(&d, &[short_tone, structure], true);
        assert_eq!(m.draft.body, "Short now.");
        assert!(
            m.rejected[0].because.starts_with("no longer needed"),
            "{}",
            m.rejected[0].because
        );
    }

    #[test]
    fn merge_recomputes_the_subject_summary_from_the_merged_body() {
        let d = draft("Outage", "db down, eta 1h");
        let reviews = [
            review_tone(&d, Tone::Formal),
            review_structure(&d, &opts(Tone::Formal)),
        ];
        assert_eq!(
            reviews[1].edits.last().unwrap().value,
            "Outage: Db down, eta 1h"
        );
        let m = merge(&d, &reviews, false);
        assert_eq!(m.draft.subject, "Outage: Database down, ETA 1 hour");
        let applied = m
            .applied
            .iter()
            .find(|a| a.edit.path == PartPath::Subject)
            .unwrap();
        assert_eq!(applied.proposed.as_deref(), Some("Outage: Db down, eta 1h"));
        assert!(m.rejected.is_empty());
    }
}
