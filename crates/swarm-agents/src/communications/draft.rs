//! The drafter: a [`Draft`] in parts, with the greeting and sign-off split
//! out of the body.

use serde_json::{Value, json};

use super::args::CommsArgs;
use super::edit::PartPath;

/// A message in parts, as the drafter and reviewers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// Recipients.
    pub to: Vec<String>,
    /// Copied recipients.
    pub cc: Vec<String>,
    /// Subject line (may be empty in a draft).
    pub subject: String,
    /// Opening line, if any.
    pub greeting: Option<String>,
    /// The message proper.
    pub body: String,
    /// Closing line(s), if any.
    pub signoff: Option<String>,
}

impl Draft {
    /// The drafter: normalises line ends and splits greeting and sign-off
    /// out of the body.
    pub fn from_args(args: &CommsArgs) -> Self {
        let text = args.body.replace("\r\n", "\n").replace('\r', "\n");
        let (greeting, rest) = split_greeting(&text);
        let (body, signoff) = split_signoff(&rest);
        Self {
            to: args.to.clone(),
            cc: args.cc.clone(),
            subject: args.subject.trim().to_string(),
            greeting,
            body,
            signoff,
        }
    }

    /// The value at `path`; empty subject/body count as no value.
    pub fn get(&self, path: PartPath) -> Option<&str> {
        let v = match path {
            PartPath::Subject => Some(self.subject.as_str()),
            PartPath::Greeting => self.greeting.as_deref(),
            PartPath::Body => Some(self.body.as_str()),
            PartPath::Signoff => self.signoff.as_deref(),
        };
        v.filter(|s| !s.trim().is_empty())
    }

    pub(super) fn set(&mut self, path: PartPath, value: String) {
        match path {
            PartPath::Subject => self.subject = value,
            PartPath::Greeting => self.greeting = Some(value),
            PartPath::Body => self.body = value,
            PartPath::Signoff => self.signoff = Some(value),
        }
    }

    /// Greeting, body and sign-off joined by blank lines, skipping absent parts.
    pub fn compose_body(&self) -> String {
        [
            self.greeting.as_deref(),
            Some(self.body.as_str()),
            self.signoff.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
    }

    /// Reads a draft written by [`Draft::to_json`].
    pub fn from_json(v: &Value) -> Option<Self> {
        let list = |k: &str| -> Option<Vec<String>> {
            match &v[k] {
                Value::Null => Some(Vec::new()),
                Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
                _ => None,
            }
        };
        let opt = |k: &str| v[k].as_str().map(str::to_string);
        Some(Self {
            to: list("to")?,
            cc: list("cc")?,
            subject: v["subject"].as_str().unwrap_or_default().to_string(),
            greeting: opt("greeting"),
            body: v["body"].as_str()?.to_string(),
            signoff: opt("signoff"),
        })
    }

    /// The draft as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "to": self.to,
            "cc": self.cc,
            "subject": self.subject,
            "greeting": self.greeting,
            "body": self.body,
            "signoff": self.signoff,
        })
    }
}

/// Phrases that open a greeting line (matched case-insensitively as whole words).
const GREETINGS: &[&str] = &[
    "good morning",
    "good afternoon",
    "good evening",
    "greetings",
    "hello",
    "hiya",
    "hey",
    "hi",
    "dear",
];

/// Phrases that make up a sign-off line.
const SIGNOFFS: &[&str] = &[
    "best regards",
    "kind regards",
    "warm regards",
    "warmest regards",
    "regards",
    "many thanks",
    "thanks a lot",
    "thanks again",
    "thank you",
    "thanks",
    "cheers",
    "sincerely",
    "yours sincerely",
    "yours truly",
    "best wishes",
    "all the best",
    "best",
    "take care",
];

/// The byte length of `s`'s leading phrase from `phrases`, matched
/// ASCII-case-insensitively and ending at a word boundary.
pub(super) fn leading_phrase(s: &str, phrases: &[&str]) -> Option<usize> {
    phrases.iter().find_map(|p| {
        let head = s.get(..p.len())?;
        let boundary = s[p.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        (head.eq_ignore_ascii_case(p) && boundary).then_some(p.len())
    })
}

/// Splits a greeting off the start of `text`: a whole first line ("Hi team,")
/// or the start of the first line up to its first comma or `!` ("Hi, the
/// database…"). Only a greeting phrase followed by at most three words
/// counts, so "Hello world program crashed badly, …" is not split.
pub fn split_greeting(text: &str) -> (Option<String>, String) {
    let text = text.trim();
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let first = first.trim();
    let Some(n) = leading_phrase(first, GREETINGS) else {
        return (None, text.to_string());
    };
    let short = |s: &str| s[n..].split_whitespace().count() <= 3 && s.chars().count() <= 60;
    let ends_open = first.ends_with([',', '!', ':']);
    let sentence_like = first.ends_with(['.', '?']);
    if short(first) && (ends_open || (!rest.trim().is_empty() && !sentence_like)) {
        return (Some(first.to_string()), rest.trim().to_string());
    }
    if let Some(pos) = first[n..].find([',', '!']).map(|p| p + n) {
        let greeting = &first[..=pos];
        if short(greeting) {
            let remainder = first[pos + 1..].trim();
            let body = if rest.trim().is_empty() {
                remainder.to_string()
            } else {
                format!("{remainder}\n{}", rest.trim()).trim().to_string()
            };
            return (Some(greeting.trim().to_string()), body);
        }
    }
    (None, text.to_string())
}

fn is_signoff_phrase(line: &str) -> bool {
    let core = line.trim().trim_end_matches([',', '.', '!']).trim();
    SIGNOFFS.iter().any(|p| core.eq_ignore_ascii_case(p))
}

fn looks_like_name(line: &str) -> bool {
    let line = line.trim();
    let words = line.split_whitespace().count();
    (1..=4).contains(&words)
        && line.chars().count() <= 40
        && line.chars().any(char::is_alphabetic)
        && !line.ends_with(['.', '?', '!', ':', ','])
}

/// Splits a sign-off off the end of `text`: a last line that is a sign-off
/// phrase ("Thanks!", "Best regards,"), a phrase with a name ("Cheers, Ana"),
/// or a phrase line followed by a name line ("Regards,\nAna").
pub fn split_signoff(text: &str) -> (String, Option<String>) {
    let text = text.trim();
    let lines: Vec<&str> = text.lines().collect();
    let nonempty: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].trim().is_empty())
        .collect();
    let body_before = |i: usize| lines[..i].join("\n").trim().to_string();
    let Some(&last) = nonempty.last() else {
        return (String::new(), None);
    };
    let last_line = lines[last].trim();
    let with_name = last_line
        .split_once(',')
        .is_some_and(|(p, name)| is_signoff_phrase(p) && looks_like_name(name));
    if is_signoff_phrase(last_line) || with_name {
        return (body_before(last), Some(last_line.to_string()));
    }
    if nonempty.len() >= 2 {
        let prev = nonempty[nonempty.len() - 2];
        if is_signoff_phrase(lines[prev]) && looks_like_name(last_line) {
            let signoff = format!("{}\n{}", lines[prev].trim(), last_line);
            return (body_before(prev), Some(signoff));
        }
    }
    (text.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communications::test_support::draft;

    #[test]
    fn greetings_are_split_out() {
        let cases = [
            (
                "Hi team,\n\nThe database is down.",
                Some("Hi team,"),
                "The database is down.",
            ),
            ("hello!\ndb down", Some("hello!"), "db down"),
            (
                "Dear Ms. Lee,\nThanks for the report.",
                Some("Dear Ms. Lee,"),
                "Thanks for the report.",
            ),
            (
                "Good morning all,\nbackup done",
                Some("Good morning all,"),
                "backup done",
            ),
            ("Hey, db down, eta 1h", Some("Hey,"), "db down, eta 1h"),
            ("Hi team\nrestart at 5", Some("Hi team"), "restart at 5"),
            // Not greetings: a sentence that starts with a greeting word, or a
            // word that only begins like one.
            ("Hey can you check the db", None, "Hey can you check the db"),
            ("History repeats.", None, "History repeats."),
            (
                "Hello world program crashed badly, see logs",
                None,
                "Hello world program crashed badly, see logs",
            ),
            ("Hi.", None, "Hi."),
        ];
        for (text, greeting, body) in cases {
            let (g, b) = split_greeting(text);
            assert_eq!((g.as_deref(), b.as_str()), (greeting, body), "{text:?}");
        }
    }

    #[test]
    fn signoffs_are_split_out() {
        let cases = [
            ("db down.\n\nThanks,\nAna", "db down.", Some("Thanks,\nAna")),
            ("db down.\nBest regards,", "db down.", Some("Best regards,")),
            ("db down.\nCheers, Ana", "db down.", Some("Cheers, Ana")),
            ("db down.\nthank you!", "db down.", Some("thank you!")),
            (
                "db down.\nSincerely,\nThe Ops Team",
                "db down.",
                Some("Sincerely,\nThe Ops Team"),
            ),
            ("Please check.\nBest", "Please check.", Some("Best")),
            // Sentences that merely start with a sign-off word stay in the body.
            (
                "Thank you for the update.",
                "Thank you for the update.",
                None,
            ),
            (
                "db down.\nBest of luck with the launch.",
                "db down.\nBest of luck with the launch.",
                None,
            ),
            (
                "Regards to the team.\nSee you",
                "Regards to the team.\nSee you",
                None,
            ),
        ];
        for (text, body, signoff) in cases {
            let (b, s) = split_signoff(text);
            assert_eq!((b.as_str(), s.as_deref()), (body, signoff), "{text:?}");
        }
        let d = draft("Status of the db", "Hi all,\n\ndb down.\n\nThanks,\nAna");
        assert_eq!(d.greeting.as_deref(), Some("Hi all,"));
        assert_eq!(d.body, "db down.");
        assert_eq!(d.signoff.as_deref(), Some("Thanks,\nAna"));
        assert_eq!(d.compose_body(), "Hi all,\n\ndb down.\n\nThanks,\nAna");
    }
}
