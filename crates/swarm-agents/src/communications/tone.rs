//! The tone reviewer: rewrites the body's wording and fits the greeting to
//! the tone.

use super::args::Tone;
use super::draft::{Draft, leading_phrase};
use super::edit::{Edit, Op, PartPath, Review, Rule};

/// The name of the tone reviewer.
pub const TONE: &str = "tone";

/// Chat abbreviations and their expansions (matched as whole words,
/// case-insensitively).
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("db", "database"),
    ("dbs", "databases"),
    ("asap", "as soon as possible"),
    ("pls", "please"),
    ("plz", "please"),
    ("thx", "thank you"),
    ("thnx", "thank you"),
    ("eta", "ETA"),
    ("fyi", "FYI"),
    ("u", "you"),
    ("ur", "your"),
    ("msg", "message"),
    ("msgs", "messages"),
    ("info", "information"),
    ("approx", "approximately"),
    ("btw", "by the way"),
    ("tmrw", "tomorrow"),
    ("ppl", "people"),
    ("i", "I"),
];

/// All-caps words of 5+ letters that are names, not shouting.
const ACRONYMS: &[&str] = &[
    "ASCII", "HTTPS", "HIPAA", "OAUTH", "NGINX", "MYSQL", "POSIX", "UNICEF", "NASDAQ", "COBOL",
    "FORTRAN", "SMTPS", "IMAPS", "JSONL", "ICANN", "CAPTCHA", "LIDAR", "FAANG", "NAACP", "OPSEC",
    "SONET",
];

/// Words whose trailing dot does not end a sentence.
pub(super) const NON_TERMINAL: &[&str] = &[
    "e.g.", "i.e.", "vs.", "cf.", "mr.", "mrs.", "ms.", "dr.", "approx.",
];

/// Tokens to leave untouched: addresses, URLs, paths, code, hashtags,
/// dotted names (`example.com`, `e.g.`).
fn is_verbatim(word: &str) -> bool {
    if word.contains([
        '@', '/', '\\', '_', '`', '<', '>', '=', '{', '}', '|', '~', '#',
    ]) {
        return true;
    }
    let chars: Vec<char> = word.chars().collect();
    chars
        .windows(3)
        .any(|w| w[1] == '.' && w[0].is_alphabetic() && w[2].is_alphabetic())
}

/// Splits a token into leading punctuation, core and trailing punctuation.
fn split_punct(word: &str) -> (&str, &str, &str) {
    let Some(start) = word.find(char::is_alphanumeric) else {
        return ("", "", word);
    };
    let end = word
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(word.len());
    (&word[..start], &word[start..end], &word[end..])
}

/// Collapses runs of `!`/`?`: `!!!` → `!`, `??` → `?`, mixed runs → `?`.
fn collapse_marks(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if matches!(chars[i], '!' | '?') {
            let mut j = i;
            while j < chars.len() && matches!(chars[j], '!' | '?') {
                j += 1;
            }
            let run = &chars[i..j];
            if run.iter().all(|&c| c == '!') {
                out.push('!');
            } else if run.iter().all(|&c| c == '?') || run.len() > 2 {
                out.push('?');
            } else {
                // A lone "?!" is an interrobang, not repetition.
                out.extend(run);
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// `1h` → `1 hour`, `30m` → `30 minutes`, `1h30m` → `1 hour 30 minutes`.
fn expand_duration(core: &str) -> Option<String> {
    const UNITS: &[(&str, &str)] = &[
        ("hrs", "hour"),
        ("hr", "hour"),
        ("h", "hour"),
        ("mins", "minute"),
        ("min", "minute"),
        ("m", "minute"),
        ("secs", "second"),
        ("sec", "second"),
        ("s", "second"),
        ("d", "day"),
        ("wks", "week"),
        ("wk", "week"),
        ("w", "week"),
    ];
    let mut rest = core;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let num_len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
            .map(|(i, _)| i)?;
        let num = &rest[..num_len];
        if num.is_empty()
            || num.starts_with('.')
            || num.ends_with('.')
            || num.matches('.').count() > 1
        {
            return None;
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_lowercase())
            .unwrap_or(rest.len());
        let (_, unit) = UNITS.iter().find(|(u, _)| *u == &rest[..unit_len])?;
        rest = &rest[unit_len..];
        let plural = if num == "1" { "" } else { "s" };
        parts.push(format!("{num} {unit}{plural}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The expansion of an abbreviation, keeping the writer's capitalisation.
fn expand_abbreviation(core: &str) -> Option<String> {
    let lower = core.to_lowercase();
    // "i'm", "i'll", "i'd", "i've"
    if let Some(rest) = lower
        .strip_prefix("i'")
        .or_else(|| lower.strip_prefix("i’"))
        && ["m", "ll", "d", "ve"].contains(&rest)
        && core.starts_with('i')
    {
        return Some(format!("I{}", &core[1..]));
    }
    let (_, exp) = ABBREVIATIONS.iter().find(|(a, _)| *a == lower)?;
    if exp.chars().any(char::is_uppercase) {
        return (core != *exp).then(|| exp.to_string());
    }
    let all_caps = core.chars().count() > 1 && core.chars().all(|c| !c.is_lowercase());
    let first_upper = core.chars().next().is_some_and(char::is_uppercase);
    Some(if first_upper && !all_caps {
        capitalise(exp)
    } else {
        exp.to_string()
    })
}

fn is_shouted(core: &str) -> bool {
    let letters = core.chars().filter(|c| c.is_alphabetic()).count();
    letters >= 5
        && core
            .chars()
            .all(|c| c.is_alphabetic() || c == '\'' || c == '’')
        && core.chars().all(|c| !c.is_lowercase())
        && !ACRONYMS.contains(&core)
}

pub(super) fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Splits text into alternating whitespace and non-whitespace runs.
fn tokens(s: &str) -> Vec<(bool, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut state: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let space = c.is_whitespace();
        match state {
            Some(prev) if prev != space => {
                out.push((prev, &s[start..i]));
                start = i;
                state = Some(space);
            }
            None => state = Some(space),
            _ => {}
        }
    }
    if let Some(space) = state {
        out.push((space, &s[start..]));
    }
    out
}

fn ends_sentence(token_lower: &str, trail: &str) -> bool {
    let ellipsis = trail.ends_with("...") || trail.ends_with('…');
    trail.contains(['.', '!', '?']) && !ellipsis && !NON_TERMINAL.contains(&token_lower)
}

/// The tone reviewer's body rewrite. Returns the new text and the reasons.
pub fn rewrite_tone(body: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(body.len() + 16);
    let mut expanded: Vec<String> = Vec::new();
    let mut shouted: Vec<String> = Vec::new();
    let mut capitalised = 0usize;
    let mut collapsed = false;
    let mut sentence_start = true;

    for (space, tok) in tokens(body.trim()) {
        if space {
            if tok.contains('\n') {
                sentence_start = true;
            }
            out.push_str(tok);
            continue;
        }
        if is_verbatim(tok) {
            out.push_str(tok);
            if tok.chars().any(char::is_alphanumeric) {
                let (_, _, trail) = split_punct(tok);
                sentence_start = ends_sentence(&tok.to_lowercase(), trail);
            }
            continue;
        }
        let (lead, core, trail) = split_punct(tok);
        let mut lead = lead.to_string();
        let mut trail = trail.to_string();
        for part in [&mut lead, &mut trail] {
            let c = collapse_marks(part);
            if c != *part {
                collapsed = true;
                *part = c;
            }
        }
        let original_lower = format!("{}{}", core.to_lowercase(), trail);
        let mut word = core.to_string();
        if let Some(exp) = expand_duration(core).or_else(|| expand_abbreviation(core)) {
            push_unique(&mut expanded, format!("{core} → {exp}"));
            // "approx." loses the abbreviation's dot, which is not a full stop.
            if core.eq_ignore_ascii_case("approx")
                && trail.starts_with('.')
                && !trail.starts_with("..")
            {
                trail.remove(0);
            }
            word = exp;
        } else if is_shouted(core) {
            push_unique(&mut shouted, core.to_string());
            word = core.to_lowercase();
        }
        if sentence_start && !word.is_empty() {
            if word.chars().next().is_some_and(char::is_lowercase) {
                word = capitalise(&word);
                capitalised += 1;
            }
            sentence_start = false;
        }
        if !word.is_empty() || !trail.is_empty() {
            if ends_sentence(&original_lower, &trail) {
                sentence_start = true;
            } else if !word.is_empty() {
                sentence_start = false;
            }
        }
        out.push_str(&lead);
        out.push_str(&word);
        out.push_str(&trail);
    }

    let mut reasons = Vec::new();
    if !expanded.is_empty() {
        reasons.push(format!("expanded abbreviations ({})", expanded.join(", ")));
    }
    if !shouted.is_empty() {
        reasons.push(format!("lowered shouted words ({})", shouted.join(", ")));
    }
    if collapsed {
        reasons.push("collapsed repeated punctuation".to_string());
    }
    if capitalised > 0 {
        reasons.push(format!("capitalised {capitalised} sentence start(s)"));
    }
    if let Some(fixed) = with_terminal_punctuation(&out) {
        out = fixed;
        reasons.push("added closing punctuation".to_string());
    }
    (out, reasons)
}

/// The text with a closing full stop, or `None` if it already has one.
fn with_terminal_punctuation(text: &str) -> Option<String> {
    let t = text.trim_end();
    if t.is_empty() {
        return None;
    }
    let inner = t.trim_end_matches([')', '"', '\'', '”', '’', '»', ']']);
    if inner.ends_with(['.', '!', '?', '…']) {
        return None;
    }
    if inner.len() == t.len() && t.ends_with([',', ';', ':']) {
        let mut s = t.to_string();
        s.pop();
        s.push('.');
        return Some(s);
    }
    Some(format!("{t}."))
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The tone reviewer: one `replace /body` edit for the rewrite, and for a
/// formal tone a `replace /greeting` turning "Hi"/"Hey" into "Hello".
pub fn review_tone(draft: &Draft, tone: Tone) -> Review {
    let mut edits = Vec::new();
    let mut notes = vec![format!("tone: {}", tone.as_str())];

    if !draft.body.trim().is_empty() {
        let (rewritten, reasons) = rewrite_tone(&draft.body);
        if rewritten != draft.body && !reasons.is_empty() {
            edits.push(Edit {
                op: Op::Replace,
                path: PartPath::Body,
                value: rewritten,
                reason: reasons.join("; "),
                rule: Rule::Tone,
            });
        } else {
            notes.push("body wording is fine".to_string());
        }
    }

    if let Some(greeting) = &draft.greeting {
        let casual = leading_phrase(greeting, &["hiya", "hey", "hi"]);
        match (tone, casual) {
            (Tone::Formal, Some(n)) => {
                let rest = greeting[n..]
                    .trim_end_matches(['!', ',', ':', '.'])
                    .trim_end();
                edits.push(Edit {
                    op: Op::Replace,
                    path: PartPath::Greeting,
                    value: format!("Hello{rest},"),
                    reason: format!("formal tone: \"{}\" → \"Hello\"", &greeting[..n]),
                    rule: Rule::Tone,
                });
            }
            _ if greeting.chars().next().is_some_and(char::is_lowercase) => {
                edits.push(Edit {
                    op: Op::Replace,
                    path: PartPath::Greeting,
                    value: capitalise(greeting),
                    reason: "capitalised the greeting".to_string(),
                    rule: Rule::Tone,
                });
            }
            _ => {}
        }
    }
    Review {
        reviewer: TONE,
        edits,
        notes,
    }
}

pub(super) async fn tone_reviewer(draft: &Draft, tone: Tone) -> Review {
    review_tone(draft, tone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communications::test_support::draft;

    #[test]
    fn tone_expands_abbreviations_as_whole_words() {
        let (out, reasons) = rewrite_tone("db down, eta 1h");
        assert_eq!(out, "Database down, ETA 1 hour.");
        assert!(
            reasons[0].contains("db → database") && reasons[0].contains("1h → 1 hour"),
            "{reasons:?}"
        );
        assert_eq!(
            rewrite_tone("pls send the info asap, thx").0,
            "Please send the information as soon as possible, thank you."
        );
        assert_eq!(
            rewrite_tone("u can ping me, i'm around for approx. 30m or 2h").0,
            "You can ping me, I'm around for approximately 30 minutes or 2 hours."
        );
        assert_eq!(
            rewrite_tone("plz check ur msg").0,
            "Please check your message."
        );
        assert_eq!(
            rewrite_tone("restore took 1h30m").0,
            "Restore took 1 hour 30 minutes."
        );
        // Whole words only; addresses, URLs and code stay as written.
        assert_eq!(rewrite_tone("dbadmin is down").0, "Dbadmin is down.");
        assert_eq!(
            rewrite_tone("mail info@example.com or see https://x.io/db for u").0,
            "Mail info@example.com or see https://x.io/db for you."
        );
        assert_eq!(rewrite_tone("run `db` now").0, "Run `db` now.");
    }

    #[test]
    fn tone_fixes_sentences_punctuation_and_shouting() {
        assert_eq!(
            rewrite_tone("the db is DOWN. we are on it!! any news??").0,
            "The database is DOWN. We are on it! Any news?"
        );
        let (out, reasons) = rewrite_tone("URGENT: the server is BROKEN again");
        assert_eq!(out, "Urgent: the server is broken again.");
        assert!(
            reasons.iter().any(|r| r.contains("URGENT, BROKEN")),
            "{reasons:?}"
        );
        // Known acronyms stay shouted; short all-caps words are not shouting.
        assert_eq!(
            rewrite_tone("HTTPS and API are fine").0,
            "HTTPS and API are fine."
        );
        // Lines start sentences; e.g. does not end one.
        assert_eq!(
            rewrite_tone("steps:\n- restart db\n- check logs, e.g. the api ones").0,
            "Steps:\n- Restart database\n- Check logs, e.g. the api ones."
        );
        assert_eq!(rewrite_tone("is it done?!").0, "Is it done?!");
        assert_eq!(rewrite_tone("done;").0, "Done.");
        assert_eq!(rewrite_tone("(see above)").0, "(See above).");
        assert_eq!(rewrite_tone("\"All good.\"").0, "\"All good.\"");
        let (out, reasons) = rewrite_tone("All good.");
        assert_eq!(out, "All good.");
        assert!(reasons.is_empty());
    }

    #[test]
    fn tone_review_is_one_consolidated_body_edit() {
        let r = review_tone(&draft("x", "db down!! eta 1h"), Tone::Formal);
        assert_eq!(r.reviewer, TONE);
        assert_eq!(r.edits.len(), 1);
        let e = &r.edits[0];
        assert_eq!((e.op, e.path), (Op::Replace, PartPath::Body));
        assert_eq!(e.value, "Database down! ETA 1 hour.");
        for part in [
            "expanded abbreviations",
            "collapsed repeated punctuation",
            "capitalised",
            "closing punctuation",
        ] {
            assert!(e.reason.contains(part), "{part} missing from {}", e.reason);
        }
        // Nothing to fix: no edit.
        assert!(
            review_tone(&draft("x", "All good."), Tone::Formal)
                .edits
                .is_empty()
        );
    }

    #[test]
    fn tone_adjusts_greeting_to_the_tone() {
        let d = draft("x", "Hey team!\nAll good.");
        let formal = review_tone(&d, Tone::Formal);
        assert_eq!(formal.edits.len(), 1);
        assert_eq!(formal.edits[0].path, PartPath::Greeting);
        assert_eq!(formal.edits[0].value, "Hello team,");
        assert!(
            review_tone(&d, Tone::Friendly).edits.is_empty(),
            "friendly keeps Hi/Hey"
        );
        let lower = review_tone(&draft("x", "hi all,\nAll good."), Tone::Friendly);
        assert_eq!(lower.edits[0].value, "Hi all,");
        assert!(
            review_tone(&draft("x", "Dear Ana,\nAll good."), Tone::Formal)
                .edits
                .is_empty()
        );
    }
}
