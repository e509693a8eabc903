//! The structure reviewer: adds a missing greeting and sign-off, replaces a
//! vague subject with a summary and proposes cutting an over-long body.

use super::args::Tone;
use super::draft::Draft;
use super::edit::{Edit, Op, PartPath, Review, Rule};
use super::tone::{NON_TERMINAL, capitalise};

/// Bodies longer than this (in characters) get a truncation edit.
pub const MAX_BODY_CHARS: usize = 2000;
/// Longest subject the structure reviewer proposes, in characters.
pub const MAX_SUMMARY_SUBJECT_CHARS: usize = 70;
/// Sign-off name used when `sender_name` is not given.
pub const DEFAULT_SENDER_NAME: &str = "SwarmDirector";
/// The name of the structure reviewer.
pub const STRUCTURE: &str = "structure";

/// What the structure reviewer needs besides the draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructureOptions {
    /// Tone for the added greeting and sign-off.
    pub tone: Tone,
    /// Name for the greeting.
    pub recipient_name: Option<String>,
    /// Name for the sign-off.
    pub sender_name: Option<String>,
}

/// Subjects that say nothing about the message.
const GENERIC_SUBJECTS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "hi there",
    "hello there",
    "update",
    "quick update",
    "question",
    "quick question",
    "urgent",
    "important",
    "fyi",
    "help",
    "info",
    "news",
    "status",
    "follow up",
    "follow-up",
    "followup",
    "note",
    "test",
    "re",
    "fwd",
    "no subject",
    "(no subject)",
];

/// Generic subjects that are greetings: dropped rather than kept as a prefix.
const GREETING_SUBJECTS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "hi there",
    "hello there",
    "no subject",
    "(no subject)",
];

fn subject_key(subject: &str) -> String {
    subject
        .trim()
        .trim_end_matches(['!', '?', '.', ':', ','])
        .trim()
        .to_lowercase()
}

/// Whether a subject is too vague: empty, under 3 words, or generic.
pub fn subject_is_unclear(subject: &str) -> bool {
    let key = subject_key(subject);
    key.is_empty() || key.split_whitespace().count() < 3 || GENERIC_SUBJECTS.contains(&key.as_str())
}

/// The body's first sentence (up to `.`, `!`, `?` before a space, or the
/// first line break), without its closing punctuation.
pub fn first_sentence(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or("").trim();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut end = line.len();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if matches!(c, '.' | '!' | '?') {
            let next_is_space = chars.get(k + 1).is_none_or(|&(_, n)| n.is_whitespace());
            // Whitespace may be multi-byte (U+3000): step over the whole char.
            let word_start = line[..i]
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
                .map_or(0, |(p, c)| p + c.len_utf8());
            let word = line[word_start..=i].to_lowercase();
            if next_is_space && !NON_TERMINAL.contains(&word.as_str()) {
                end = i;
                break;
            }
        }
    }
    line[..end]
        .trim_end_matches(['.', '!', '?', ',', ';', ':'])
        .trim()
        .to_string()
}

/// Cuts `s` to at most `max` characters at a word boundary, ending in `…`
/// when cut.
fn cut_at_word(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let limit = s
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(s.len(), |(i, _)| i);
    let head = &s[..limit];
    let cut = head
        .rfind(char::is_whitespace)
        .filter(|&p| p > 0)
        .unwrap_or(limit);
    format!(
        "{}…",
        head[..cut]
            .trim_end()
            .trim_end_matches([',', ';', ':', '-', '–'])
    )
}

/// `prefix: summary` (or just the summary), at most 70 characters. Empty
/// when the body has no first sentence.
pub fn summary_subject(prefix: Option<&str>, body: &str) -> String {
    let summary = capitalise(&first_sentence(body));
    if summary.is_empty() {
        return String::new();
    }
    let subject = match prefix {
        // Do not repeat the prefix when the summary already starts with it.
        Some(p) if !summary.to_lowercase().starts_with(&p.to_lowercase()) => {
            format!("{p}: {summary}")
        }
        _ => summary,
    };
    cut_at_word(&subject, MAX_SUMMARY_SUBJECT_CHARS)
}

/// `body` cut at a sentence boundary so that it plus a truncation note fits
/// in [`MAX_BODY_CHARS`]; `None` when it already fits.
pub fn truncate_body(body: &str) -> Option<String> {
    let total = body.chars().count();
    if total <= MAX_BODY_CHARS {
        return None;
    }
    let note = format!("\n\n[Truncated: the full message was {total} characters.]");
    let budget = MAX_BODY_CHARS.saturating_sub(note.chars().count());
    let limit = body
        .char_indices()
        .nth(budget)
        .map_or(body.len(), |(i, _)| i);
    let head = &body[..limit];
    // The last sentence end ('.', '!' or '?' followed by whitespace) in the
    // budget, if it keeps at least half of it; otherwise a word boundary.
    let chars: Vec<(usize, char)> = head.char_indices().collect();
    let sentence_end = chars
        .windows(2)
        .rev()
        .find(|w| matches!(w[0].1, '.' | '!' | '?') && w[1].1.is_whitespace())
        .map(|w| w[1].0)
        .filter(|&end| head[..end].chars().count() >= budget / 2);
    let cut = match sentence_end {
        Some(end) => head[..end].trim_end().to_string(),
        None => {
            let word = head
                .rfind(char::is_whitespace)
                .unwrap_or(limit.saturating_sub(3));
            let word = (0..=word)
                .rev()
                .find(|&i| head.is_char_boundary(i))
                .unwrap_or(0);
            format!("{}…", head[..word].trim_end())
        }
    };
    Some(format!("{cut}{note}"))
}

/// The structure reviewer.
pub fn review_structure(draft: &Draft, opts: &StructureOptions) -> Review {
    let mut edits = Vec::new();
    let mut notes = Vec::new();

    if draft.get(PartPath::Greeting).is_none() {
        let word = match opts.tone {
            Tone::Formal => "Hello",
            Tone::Friendly => "Hi",
        };
        let value = match (&opts.recipient_name, opts.tone) {
            (Some(name), _) => format!("{word} {name},"),
            (None, Tone::Formal) => "Hello,".to_string(),
            (None, Tone::Friendly) => "Hi there,".to_string(),
        };
        edits.push(Edit {
            op: Op::Add,
            path: PartPath::Greeting,
            value,
            reason: "the message has no greeting".to_string(),
            rule: Rule::Greeting,
        });
    } else {
        notes.push("greeting present".to_string());
    }

    if draft.get(PartPath::Signoff).is_none() {
        let closing = match opts.tone {
            Tone::Formal => "Best regards,",
            Tone::Friendly => "Cheers,",
        };
        let name = opts.sender_name.as_deref().unwrap_or(DEFAULT_SENDER_NAME);
        edits.push(Edit {
            op: Op::Add,
            path: PartPath::Signoff,
            value: format!("{closing}\n{name}"),
            reason: "the message has no sign-off".to_string(),
            rule: Rule::Signoff,
        });
    } else {
        notes.push("sign-off present".to_string());
    }

    if let Some(cut) = truncate_body(&draft.body) {
        let n = draft.body.chars().count();
        notes.push(format!(
            "body has {n} characters; over {MAX_BODY_CHARS} is hard to read in mail"
        ));
        edits.push(Edit {
            op: Op::Replace,
            path: PartPath::Body,
            value: cut,
            reason: format!("length: {n} characters, over the {MAX_BODY_CHARS} limit; cut at a sentence boundary"),
            rule: Rule::Truncate,
        });
    }

    if subject_is_unclear(&draft.subject) {
        let key = subject_key(&draft.subject);
        let prefix = (!key.is_empty() && !GREETING_SUBJECTS.contains(&key.as_str())).then(|| {
            draft
                .subject
                .trim()
                .trim_end_matches(['!', '?', '.', ':', ','])
                .trim()
                .to_string()
        });
        let value = summary_subject(prefix.as_deref(), &draft.body);
        if value.is_empty() {
            notes.push("subject is vague, but the body has no sentence to summarise".to_string());
        } else {
            let why = if key.is_empty() {
                "the subject is empty".to_string()
            } else {
                format!(
                    "the subject \"{}\" does not say what the message is about",
                    draft.subject.trim()
                )
            };
            edits.push(Edit {
                op: Op::Replace,
                path: PartPath::Subject,
                value,
                reason: format!("{why}; added a summary of the first sentence"),
                rule: Rule::SubjectSummary { prefix },
            });
        }
    } else {
        notes.push("subject is clear".to_string());
    }

    Review {
        reviewer: STRUCTURE,
        edits,
        notes,
    }
}

pub(super) async fn structure_reviewer(draft: &Draft, opts: &StructureOptions) -> Review {
    review_structure(draft, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communications::test_support::{draft, opts};

    #[test]
    fn structure_adds_missing_greeting_and_signoff() {
        let r = review_structure(
            &draft("Database outage tonight", "All good."),
            &opts(Tone::Formal),
        );
        let values: Vec<(Op, PartPath, &str)> = r
            .edits
            .iter()
            .map(|e| (e.op, e.path, e.value.as_str()))
            .collect();
        assert_eq!(
            values,
            vec![
                (Op::Add, PartPath::Greeting, "Hello,"),
                (Op::Add, PartPath::Signoff, "Best regards,\nSwarmDirector"),
            ]
        );
        let named = StructureOptions {
            tone: Tone::Friendly,
            recipient_name: Some("Ana".into()),
            sender_name: Some("Bo".into()),
        };
        let r = review_structure(&draft("Database outage tonight", "All good."), &named);
        assert_eq!(r.edits[0].value, "Hi Ana,");
        assert_eq!(r.edits[1].value, "Cheers,\nBo");
        let r = review_structure(
            &draft("Database outage tonight", "Hi,\nAll good.\nThanks"),
            &opts(Tone::Formal),
        );
        assert!(r.edits.is_empty(), "{r:?}");
    }

    #[test]
    fn structure_replaces_unclear_subjects() {
        assert!(subject_is_unclear(""));
        assert!(subject_is_unclear("Outage"));
        assert!(subject_is_unclear("Quick question"));
        assert!(subject_is_unclear("hello!"));
        assert!(!subject_is_unclear("Database outage tonight"));

        let subject_edit = |subject: &str, body: &str| {
            review_structure(&draft(subject, body), &opts(Tone::Formal))
                .edits
                .into_iter()
                .find(|e| e.path == PartPath::Subject)
                .map(|e| e.value)
        };
        assert_eq!(
            subject_edit("Outage", "db down, eta 1h").as_deref(),
            Some("Outage: Db down, eta 1h")
        );
        assert_eq!(
            subject_edit("hi", "The backup finished. All good.").as_deref(),
            Some("The backup finished")
        );
        assert_eq!(
            subject_edit("", "Backup finished!").as_deref(),
            Some("Backup finished")
        );
        assert_eq!(subject_edit("Database outage tonight", "x"), None);
        let long = subject_edit(
            "Update",
            "The quarterly migration of every customer database to the new storage cluster starts on Monday.",
        )
        .unwrap();
        assert!(long.chars().count() <= MAX_SUMMARY_SUBJECT_CHARS, "{long}");
        assert_eq!(
            long,
            "Update: The quarterly migration of every customer database to the…"
        );
    }

    #[test]
    fn structure_truncates_long_bodies_at_a_sentence() {
        let sentence = "This sentence is exactly fifty characters long ok. ";
        assert_eq!(sentence.len(), 51);
        let body = sentence.repeat(60);
        let r = review_structure(
            &draft("Database outage tonight", &body),
            &opts(Tone::Formal),
        );
        let e = r.edits.iter().find(|e| e.path == PartPath::Body).unwrap();
        assert_eq!(e.rule, Rule::Truncate);
        assert!(e.reason.starts_with("length"));
        assert!(e.value.chars().count() <= MAX_BODY_CHARS);
        let (kept, note) = e.value.split_once("\n\n[Truncated").unwrap();
        assert!(kept.ends_with("ok."), "cut at a sentence end: {kept:?}");
        assert!(kept.chars().count() > MAX_BODY_CHARS - 100);
        assert!(
            note.contains(&format!("was {} characters", body.trim().chars().count())),
            "{note}"
        );
        assert!(truncate_body(&"x".repeat(MAX_BODY_CHARS)).is_none());
        // No sentence end: cut at a word.
        let words = "word ".repeat(600);
        let cut = truncate_body(&words).unwrap();
        assert!(
            cut.starts_with("word word") && cut.contains("word…"),
            "{cut}"
        );
        // Multi-byte text is cut on character boundaries.
        let cut = truncate_body(&"é".repeat(3000)).unwrap();
        assert!(cut.chars().count() <= MAX_BODY_CHARS);
    }
}
