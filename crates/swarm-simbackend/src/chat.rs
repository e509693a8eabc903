//! The OpenAI-compatible chat completion: request validation, the
//! deterministic reply (filler words, or a scripted reply from
//! `[[replies]]`), and the JSON / server-sent-events responses.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::time::sleep;

use crate::config::{MAX_REPLY_TOKENS, SimConfig};
use crate::model::InflightGuard;

/// Words that pad a reply up to its token count.
const FILLER: [&str; 8] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
];
/// Model name used when the request names none.
const DEFAULT_MODEL: &str = "sim";

/// A validated chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) stream: bool,
    /// `(role, content)` pairs, at least one.
    pub(crate) messages: Vec<(String, String)>,
    pub(crate) max_tokens: Option<u64>,
    /// `stream_options.include_usage`: end a stream with its `usage`.
    pub(crate) include_usage: bool,
}

/// Why a request body was rejected: a message and the parameter at fault.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
}

/// A reply as the tokens it is sent in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) tokens: Vec<String>,
    /// What follows each token: filler words are bare (`" "` after each),
    /// scripted pieces carry their own whitespace (`""`).
    sep: &'static str,
    /// `stop`, or `length` for a scripted reply cut by `max_tokens`.
    pub(crate) finish_reason: &'static str,
}

impl Reply {
    /// The text of token `i` as a stream chunk sends it.
    fn delta(&self, token: &str) -> String {
        format!("{token}{}", self.sep)
    }

    /// The whole reply as a non-streamed completion holds it.
    pub(crate) fn content(&self) -> String {
        self.tokens.join(self.sep)
    }
}

/// Splits `text` into pieces of one word and the whitespace after it
/// (leading whitespace stays with the first), so the pieces join to
/// exactly `text`; none if `text` is only whitespace.
pub(crate) fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_space = false;
    for c in text.chars() {
        let space = c.is_whitespace();
        // A word starting after whitespace closes the piece before it.
        if !space && in_space && cur.chars().any(|c| !c.is_whitespace()) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
        in_space = space;
    }
    if cur.chars().any(|c| !c.is_whitespace()) {
        out.push(cur);
    }
    out
}

fn invalid(param: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        param: Some(param),
    }
}

impl ChatRequest {
    /// Parses and validates a request body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let value: Value = serde_json::from_slice(body).map_err(|e| Invalid {
            message: format!("request body is not valid JSON: {e}"),
            param: None,
        })?;
        let Value::Object(obj) = value else {
            return Err(Invalid {
                message: "request body must be a JSON object".into(),
                param: None,
            });
        };
        let model = match obj.get("model") {
            None | Some(Value::Null) => DEFAULT_MODEL.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("model", "'model' must be a string")),
        };
        let stream = match obj.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("stream", "'stream' must be a boolean")),
        };
        let max_tokens = match obj.get("max_tokens") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    return Err(invalid(
                        "max_tokens",
                        "'max_tokens' must be a positive integer",
                    ));
                }
            },
        };
        let messages = parse_messages(obj.get("messages"))?;
        // OpenAI sends the usage of a stream only when asked, in a last
        // chunk with no choices.
        let include_usage = obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            model,
            stream,
            messages,
            max_tokens,
            include_usage,
        })
    }

    /// Tokens in the reply: `min(reply_tokens, max_tokens)`, never more
    /// than [`MAX_REPLY_TOKENS`] even with an unvalidated configuration.
    pub(crate) fn reply_len(&self, reply_tokens: u64) -> usize {
        let n = self
            .max_tokens
            .map_or(reply_tokens, |m| m.min(reply_tokens))
            .min(MAX_REPLY_TOKENS);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The reply's tokens, deterministic given the request:
    /// "Simulated reply to: <words of the last user message>", padded with
    /// filler words or truncated to `len` tokens.
    pub(crate) fn reply_tokens(&self, len: usize) -> Vec<String> {
        let last_user = self
            .messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .or(self.messages.last())
            .map_or("", |(_, content)| content.as_str());
        ["Simulated", "reply", "to:"]
            .into_iter()
            .chain(last_user.split_whitespace())
            .chain(FILLER.into_iter().cycle())
            .take(len)
            .map(str::to_owned)
            .collect()
    }

    /// The reply to this request: the first matching scripted reply of
    /// `cfg.replies`, else filler of `cfg.reply_tokens` tokens.
    pub(crate) fn reply(&self, cfg: &SimConfig) -> Reply {
        let scripted = cfg.replies.iter().find(|r| {
            self.messages
                .iter()
                .any(|(_, content)| content.contains(&r.contains))
        });
        let Some(scripted) = scripted else {
            return Reply {
                tokens: self.reply_tokens(self.reply_len(cfg.reply_tokens)),
                sep: " ",
                finish_reason: "stop",
            };
        };
        let mut tokens = pieces(&scripted.reply);
        let limit = self.reply_len(u64::MAX);
        let finish_reason = if tokens.len() > limit {
            tokens.truncate(limit);
            "length"
        } else {
            "stop"
        };
        Reply {
            tokens,
            sep: "",
            finish_reason,
        }
    }

    /// Whitespace-separated words in all messages (a rough token count).
    pub(crate) fn prompt_tokens(&self) -> usize {
        self.messages
            .iter()
            .map(|(_, c)| c.split_whitespace().count())
            .sum()
    }
}

fn parse_messages(value: Option<&Value>) -> Result<Vec<(String, String)>, Invalid> {
    let Some(Value::Array(items)) = value else {
        return Err(invalid("messages", "'messages' must be an array"));
    };
    if items.is_empty() {
        return Err(invalid("messages", "'messages' must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let role = item.get("role").and_then(Value::as_str);
            let content = item.get("content").and_then(Value::as_str);
            match (item.is_object(), role, content) {
                (true, Some(r), Some(c)) => Ok((r.to_owned(), c.to_owned())),
                _ => Err(invalid(
                    "messages",
                    format!("messages[{i}] must be an object with string 'role' and 'content'"),
                )),
            }
        })
        .collect()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The non-streaming `chat.completion` body.
pub(crate) fn completion_body(req: &ChatRequest, id: u64, reply: &Reply) -> Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.content()},
            "finish_reason": reply.finish_reason,
        }],
        "usage": usage(req, reply),
    })
}

/// Token counts, as `usage` reports them.
fn usage(req: &ChatRequest, reply: &Reply) -> Value {
    let (prompt, completion) = (req.prompt_tokens(), reply.tokens.len());
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Shared fields of every chunk of one stream.
struct ChunkMeta {
    id: String,
    created: u64,
    model: String,
}

impl ChunkMeta {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        Event::default().data(body.to_string())
    }
}

/// Where a stream is.
enum Phase {
    Role,
    Token(usize),
    Usage,
    Done,
    End,
}

struct StreamState {
    meta: ChunkMeta,
    reply: Reply,
    gap: Duration,
    phase: Phase,
    /// Keeps the request in flight until the stream ends or is dropped;
    /// dropped before the end, it counts the client as gone.
    guard: Option<InflightGuard>,
    /// The last chunk's `usage`, when `stream_options.include_usage`.
    usage: Option<Value>,
}

/// The event stream: the role chunk at once (the service time has already
/// passed: time to first token), then each content chunk after a gap of
/// `gap`, then the stop chunk and `[DONE]`.
fn events(state: StreamState) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    stream::unfold(state, |mut s| async move {
        let event = match s.phase {
            Phase::Role => {
                s.phase = Phase::Token(0);
                s.meta.chunk(json!({"role": "assistant"}), None)
            }
            Phase::Token(i) => match s.reply.tokens.get(i) {
                Some(token) => {
                    // No gap: no timer either, so a whole reply can go out
                    // in one write.
                    if !s.gap.is_zero() {
                        sleep(s.gap).await;
                    }
                    s.phase = Phase::Token(i + 1);
                    s.meta.chunk(json!({"content": s.reply.delta(token)}), None)
                }
                None => {
                    s.phase = if s.usage.is_some() {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    s.meta.chunk(json!({}), Some(s.reply.finish_reason))
                }
            },
            Phase::Usage => {
                s.phase = Phase::Done;
                let body = json!({
                    "id": s.meta.id,
                    "object": "chat.completion.chunk",
                    "created": s.meta.created,
                    "model": s.meta.model,
                    "choices": [],
                    "usage": s.usage,
                });
                Event::default().data(body.to_string())
            }
            Phase::Done => {
                s.phase = Phase::End;
                if let Some(guard) = s.guard.take() {
                    guard.complete();
                }
                Event::default().data("[DONE]")
            }
            Phase::End => return None,
        };
        Some((Ok(event), s))
    })
}

/// The streaming response (`text/event-stream`).
pub(crate) fn stream_response(
    req: &ChatRequest,
    id: u64,
    reply: Reply,
    gap: Duration,
    guard: InflightGuard,
) -> Response {
    let state = StreamState {
        meta: ChunkMeta {
            id: format!("chatcmpl-{id}"),
            created: unix_now(),
            model: req.model.clone(),
        },
        usage: req.include_usage.then(|| usage(req, &reply)),
        reply,
        gap,
        phase: Phase::Role,
        guard: Some(guard),
    };
    Sse::new(events(state)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChatRequest, Invalid> {
        ChatRequest::parse(s.as_bytes())
    }

    #[test]
    fn valid_request_parses() {
        let r = parse(
            r#"{"model":"m","stream":true,"max_tokens":3,
                "messages":[{"role":"system","content":"be brief"},
                            {"role":"user","content":"hello there world"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.stream, r.max_tokens),
            ("m", true, Some(3))
        );
        assert_eq!(r.prompt_tokens(), 5);
        assert_eq!(r.reply_len(16), 3);
        assert_eq!(r.reply_len(2), 2);
        let unbounded = ChatRequest {
            max_tokens: None,
            ..r.clone()
        };
        assert_eq!(unbounded.reply_len(u64::MAX), MAX_REPLY_TOKENS as usize);
        assert_eq!(
            r.reply_tokens(5),
            ["Simulated", "reply", "to:", "hello", "there"]
        );
        assert_eq!(r.reply_tokens(8)[6..], ["lorem", "ipsum"]);
    }

    #[test]
    fn pieces_join_to_the_text() {
        for text in [
            "a",
            "  {\"x\": 1,\n \"y\": [2]}\n",
            "one  two\tthree ",
            "é ü",
        ] {
            let p = pieces(text);
            assert_eq!(p.concat(), text);
            assert!(p.iter().all(|w| w.chars().any(|c| !c.is_whitespace())));
        }
        assert_eq!(pieces("one  two\n"), ["one  ", "two\n"]);
        assert!(pieces(" \n ").is_empty());
    }

    #[test]
    fn scripted_replies_match_any_message_and_respect_max_tokens() {
        let cfg = SimConfig {
            replies: vec![
                crate::config::ScriptedReply {
                    contains: "tone reviewer".into(),
                    reply: "{\"edits\": []}".into(),
                },
                crate::config::ScriptedReply {
                    contains: "REPLY".into(),
                    reply: "a b c d".into(),
                },
            ],
            ..SimConfig::default()
        };
        let req = |system: &str, max: Option<u64>| ChatRequest {
            model: "m".into(),
            stream: true,
            messages: vec![
                ("system".into(), system.into()),
                ("user".into(), "hi".into()),
            ],
            max_tokens: max,
            include_usage: false,
        };
        let r = req("You are the tone reviewer.", None).reply(&cfg);
        assert_eq!(
            (r.content().as_str(), r.finish_reason),
            ("{\"edits\": []}", "stop")
        );
        let r = req("REPLY please", Some(2)).reply(&cfg);
        assert_eq!((r.content().as_str(), r.finish_reason), ("a b ", "length"));
        assert_eq!(r.tokens.len(), 2);
        // No match: the filler reply, as without scripts.
        let r = req("other", None).reply(&cfg);
        assert_eq!(
            r.content(),
            req("other", None).reply(&SimConfig::default()).content()
        );
        assert!(r.content().starts_with("Simulated reply to: hi lorem"));
    }

    #[test]
    fn invalid_requests_name_the_param() {
        let cases = [
            ("{", None),
            ("[]", None),
            (r#"{"model":"m"}"#, Some("messages")),
            (r#"{"messages":[]}"#, Some("messages")),
            (r#"{"messages":"hi"}"#, Some("messages")),
            (r#"{"messages":[1]}"#, Some("messages")),
            (r#"{"messages":[{"role":"user"}]}"#, Some("messages")),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                Some("messages"),
            ),
            (
                r#"{"model":3,"messages":[{"role":"u","content":"c"}]}"#,
                Some("model"),
            ),
            (
                r#"{"stream":"yes","messages":[{"role":"u","content":"c"}]}"#,
                Some("stream"),
            ),
            (
                r#"{"max_tokens":0,"messages":[{"role":"u","content":"c"}]}"#,
                Some("max_tokens"),
            ),
        ];
        for (body, param) in cases {
            assert_eq!(parse(body).unwrap_err().param, param, "{body}");
        }
    }
}
