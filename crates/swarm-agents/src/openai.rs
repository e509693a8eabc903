//! `openai`: an OpenAI-compatible chat-completions client, as a pool's
//! agent (`agent = "openai"`) and as the LLM the communications drafter and
//! reviewers ask when `[llm]` is configured.
//!
//! # Protocol
//! `POST <base_url>/chat/completions` (`base_url` includes the version, as
//! in the OpenAI SDKs: `http://127.0.0.1:8090/v1`) with
//! `{"model", "messages", "stream": true, "max_tokens"?, "temperature"?}`,
//! `Authorization: Bearer <key>` when the variable named by `api_key_env`
//! is set (local providers need none), and the submitting request's
//! `X-Request-Id`. The answer is a server-sent-events stream of
//! `data: {chat.completion.chunk}` events whose `choices[0].delta.content`
//! pieces make up the reply, ended by `data: [DONE]`. A provider that
//! answers plain JSON (`chat.completion`) anyway is read too.
//!
//! # Pool agent
//! `args` are `{"prompt": "..."}` or `{"messages": [{"role", "content"}]}`
//! (one of the two), optionally `system` (a system message put first),
//! `max_tokens` and `temperature` (overriding the pool's). The result is
//! `{"content", "model", "finish_reason", "usage"?}`.
//!
//! # Design
//! - Tokens go out as they arrive: each network read that completes one
//!   or more content pieces becomes one progress report
//!   `{"step": "token", "text", "source"?}` (so the task's SSE stream shows
//!   the reply growing). One report per read rather than per piece keeps a
//!   fast provider from flooding the task's event channel, which a slow
//!   subscriber would otherwise fall behind on.
//! - The stream is parsed by hand ([`SseParser`]): bytes are buffered until
//!   a whole line is in, so an event, a line or a UTF-8 character split
//!   across reads is put back together; comments and fields other than
//!   `data` are ignored; a line longer than the whole response may be is an
//!   error, not unbounded memory.
//! - Transport is the `http` backend's: one pooled keep-alive client
//!   (`https://` with the system's roots plus `ca_file`), the request bounded by the task's deadline (and `request_timeout_ms`) and
//!   raced against its cancellation, so a cancelled or timed-out task
//!   closes the connection mid-stream and the provider stops generating.
//!   Status mapping is shared too: `429`/`503` (with `Retry-After`) are
//!   back-pressure ([`AgentError::Overloaded`]), other `5xx` and refused
//!   connections retryable, `4xx` not. A stream cut before `[DONE]` (and
//!   before a `finish_reason`) is a retryable `backend_error`; an event
//!   that is not a chunk is a `bad_backend_output`; an `error` object sent
//!   in the stream is a retryable `backend_error` with its message.
//! - Rate limits: the response's headers (`x-ratelimit-*`,
//!   `anthropic-ratelimit-*`, and `Retry-After` on a 429) are read as soon
//!   as they arrive, before the stream, and a spent quota is told to
//!   [`AgentContext::provider`] (see [`crate::ratelimit`]), on a success too.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use swarm_core::FieldError;

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};
use crate::http::{
    ClientSettings, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_POOL_IDLE_TIMEOUT_MS, bounded, excerpt, parse_http_url, read_reply, signal_pause,
    status_error, transport_error,
};

/// Default `api_key_env`.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// Default `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;
/// Largest `max_tokens` accepted (in the config and in `args`).
pub const MAX_MAX_TOKENS: u64 = 1_000_000;
/// Default `pool_max_idle`: higher than the `http` backend's, because a
/// streamed call holds its connection for the whole reply, so a department
/// at 2k tasks/s of 20 ms calls has 40+ in flight; every call past the idle
/// pool paid a TCP handshake (seen in profiles as `connect` per task).
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;
/// Roles a message may have.
const ROLES: &[&str] = &["system", "developer", "user", "assistant"];

/// Configuration of an OpenAI-compatible provider: a pool's
/// `[pools.NAME.openai]` table, or the top-level `[llm]` the
/// communications workflow uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root including its version, e.g. `http://127.0.0.1:8090/v1`;
    /// requests go to `<base_url>/chat/completions`.
    pub base_url: String,
    /// The model asked for.
    pub model: String,
    /// The environment variable holding the API key; unset or empty, no
    /// `Authorization` header is sent (fine for local providers).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// `max_tokens` of a request; `args` may lower it, not raise it.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
    /// Default sampling temperature (`0`–`2`); absent: the provider's.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Time allowed to open a connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Upper bound for one request, streaming included; the task's
    /// remaining time always bounds it too. `None`: the deadline only.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Idle keep-alive connections kept open to the provider.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// How long an idle connection is kept.
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Largest accepted response (the whole stream), in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// PEM file of CA certificates trusted for an `https://` `base_url`
    /// besides the system's (a private CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Ask for the token counts at the end of the stream
    /// (`stream_options.include_usage`, which OpenAI, vLLM and Ollama
    /// honour); token budgets correct their estimates from them. Turn off
    /// for a provider that refuses the field.
    #[serde(default = "yes")]
    pub include_usage: bool,
}

fn yes() -> bool {
    true
}

fn default_api_key_env() -> String {
    DEFAULT_API_KEY_ENV.into()
}
fn default_max_tokens() -> u64 {
    DEFAULT_MAX_TOKENS
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_pool_max_idle() -> usize {
    DEFAULT_POOL_MAX_IDLE
}
fn default_pool_idle_timeout_ms() -> u64 {
    DEFAULT_POOL_IDLE_TIMEOUT_MS
}
fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}

impl OpenAiConfig {
    /// A configuration for `model` at `base_url`, every other field at its
    /// default.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: default_api_key_env(),
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: None,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout_ms: DEFAULT_POOL_IDLE_TIMEOUT_MS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca_file: None,
            include_usage: true,
        }
    }

    /// Reads and checks a TOML table; errors name the key relative to it
    /// (`base_url`, `temperature`, …).
    pub fn from_table(table: toml::Table) -> Result<Self, FieldError> {
        let cfg: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                // serde names unknown and missing keys in its message.
                FieldError::invalid("", e.message().to_string())
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn settings(&self) -> ClientSettings {
        ClientSettings {
            connect_timeout_ms: self.connect_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            pool_max_idle: self.pool_max_idle,
            pool_idle_timeout_ms: self.pool_idle_timeout_ms,
            max_response_bytes: self.max_response_bytes,
            ca_file: self.ca_file.clone(),
        }
    }

    /// Checks every field; errors name it.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.endpoint().map(|_| ())
    }

    /// The chat-completions URL.
    fn endpoint(&self) -> Result<Url, FieldError> {
        let base = parse_http_url("base_url", &self.base_url)?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(FieldError::invalid(
                "base_url",
                "must not have a query or fragment",
            ));
        }
        if self.model.trim().is_empty() {
            return Err(FieldError::invalid("model", "must name a model"));
        }
        let env_ok = !self.api_key_env.is_empty()
            && self
                .api_key_env
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !env_ok {
            return Err(FieldError::invalid(
                "api_key_env",
                "must be an environment variable name (letters, digits, `_`)",
            ));
        }
        check_max_tokens("max_tokens", self.max_tokens)?;
        if let Some(t) = self.temperature {
            check_temperature("temperature", t)?;
        }
        self.settings().validate()?;
        let path = format!("{}/chat/completions", base.path().trim_end_matches('/'));
        let mut url = base;
        url.set_path(&path);
        Ok(url)
    }
}

fn check_max_tokens(field: &str, n: u64) -> Result<(), FieldError> {
    if !(1..=MAX_MAX_TOKENS).contains(&n) {
        return Err(FieldError::invalid(
            field,
            format!("must be between 1 and {MAX_MAX_TOKENS}"),
        ));
    }
    Ok(())
}

fn check_temperature(field: &str, t: f64) -> Result<(), FieldError> {
    if !(0.0..=2.0).contains(&t) {
        return Err(FieldError::invalid(field, "must be between 0 and 2"));
    }
    Ok(())
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What to ask: the conversation and per-request overrides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Overrides the configured `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Overrides the configured `temperature`.
    pub temperature: Option<f64>,
}

impl ChatRequest {
    /// The most tokens this request may cost: the prompt at about four
    /// characters a token (OpenAI's rule of thumb for English) plus 4 per
    /// message for the chat format, and the completion's ceiling
    /// (`max_tokens`, else the department's `default_max`). High on
    /// purpose: token budgets charge it at admission and give the excess
    /// back from the provider's reported usage.
    pub fn estimate_tokens(&self, default_max: u64) -> u64 {
        let prompt: u64 = self
            .messages
            .iter()
            .map(|m| (m.content.len() as u64).div_ceil(4) + 4)
            .sum();
        prompt + self.max_tokens.unwrap_or(default_max)
    }
}

/// The assembled reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The content pieces joined.
    pub content: String,
    /// The model that answered (as the provider says; else the one asked).
    pub model: String,
    /// `stop`, `length`, …; absent if the provider never said.
    pub finish_reason: Option<String>,
    /// Token counts, if the provider sent them.
    pub usage: Option<Value>,
}

impl ChatReply {
    /// The pool agent's result.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "content": self.content,
            "model": self.model,
            "finish_reason": self.finish_reason,
        });
        if let Some(u) = &self.usage {
            v["usage"] = u.clone();
        }
        v
    }
}

/// A chat-completions client for one provider; cheap to share.
pub struct OpenAiClient {
    cfg: OpenAiConfig,
    url: Url,
    client: reqwest::Client,
    /// `POST <url>`, the start of every error message.
    what: String,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the client: its default headers hold the key.
        f.debug_struct("OpenAiClient")
            .field("url", &self.url.as_str())
            .field("model", &self.cfg.model)
            .finish()
    }
}

impl OpenAiClient {
    /// Checks `cfg`, reads the key from `api_key_env` and builds the
    /// client; opens no connection.
    pub fn new(cfg: OpenAiConfig) -> Result<Self, FieldError> {
        let url = cfg.endpoint()?;
        let mut headers = HeaderMap::new();
        if let Some(key) = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty())
        {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                FieldError::invalid(
                    "api_key_env",
                    format!("`{}` holds characters a header cannot", cfg.api_key_env),
                )
            })?;
            // Kept out of debug output and logs.
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let client = cfg.settings().client(&url, headers, "base_url")?;
        Ok(Self {
            what: format!("POST {url}"),
            cfg,
            url,
            client,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.cfg
    }

    /// Asks for a completion, streaming: content is reported through
    /// `ctx.progress` as it arrives (`{"step": "token", "text"}`, plus
    /// `"source": source` when given), and the whole reply returned. Bounded
    /// by the task's deadline, aborted on its cancellation.
    pub async fn complete(
        &self,
        ctx: &AgentContext,
        source: Option<&str>,
        req: &ChatRequest,
    ) -> Result<ChatReply, AgentError> {
        let limit = self.cfg.settings().request_limit(ctx, &self.what)?;
        bounded(ctx, &self.what, self.call(ctx, source, req, limit)).await
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "stream": true,
            "max_tokens": req.max_tokens.unwrap_or(self.cfg.max_tokens),
        });
        if let Some(t) = req.temperature.or(self.cfg.temperature) {
            body["temperature"] = json!(t);
        }
        if self.cfg.include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn call(
        &self,
        ctx: &AgentContext,
        source: Option<&str>,
        req: &ChatRequest,
        limit: Duration,
    ) -> Result<ChatReply, AgentError> {
        let mut builder = self
            .client
            .post(self.url.clone())
            .timeout(limit)
            .header("accept", "text/event-stream")
            .json(&self.body(req));
        if let Some(id) = &ctx.request_id {
            builder = builder.header("x-request-id", id);
        }
        let mut resp = builder
            .send()
            .await
            .map_err(|e| transport_error(&self.what, &e, limit))?;
        // The headers come before the stream: a spent quota is told at
        // once, while the reply is still being generated.
        signal_pause(&ctx.provider, &resp);
        if !resp.status().is_success() {
            return Err(status_error(&self.what, resp).await);
        }
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            return self.plain(&mut resp, limit).await;
        }
        let mut acc = Accumulator::new(&self.cfg.model);
        let mut parser = SseParser::new(self.cfg.max_response_bytes);
        let mut total = 0usize;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(&self.what, &e, limit))?
        {
            total += chunk.len();
            if total > self.cfg.max_response_bytes {
                return Err(self.bad_output(format!(
                    "the stream is longer than {} bytes",
                    self.cfg.max_response_bytes
                )));
            }
            let events = parser.feed(&chunk).map_err(|e| self.bad_output(e))?;
            let mut text = String::new();
            for data in events {
                match acc.event(&data) {
                    Ok(piece) => text.push_str(piece),
                    Err(e) => return Err(self.stream_error(e)),
                }
            }
            if !text.is_empty() {
                let mut report = json!({"step": "token", "text": text});
                if let Some(s) = source {
                    report["source"] = json!(s);
                }
                ctx.progress.report(report);
            }
            if acc.done {
                break;
            }
        }
        // Events that were whole but not yet ended by a blank line, as a
        // server that closes right after its last `data:` line leaves them.
        if !acc.done {
            for data in parser.finish() {
                acc.event(&data).map_err(|e| self.stream_error(e))?;
            }
        }
        acc.reply().map_err(|why| {
            AgentError::failed_retryable("backend_error", format!("{}: {why}", self.what))
        })
    }

    /// A provider that ignored `stream` and answered one JSON completion.
    async fn plain(
        &self,
        resp: &mut reqwest::Response,
        limit: Duration,
    ) -> Result<ChatReply, AgentError> {
        let bytes = read_reply(resp, self.cfg.max_response_bytes, &self.what, limit).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            self.bad_output(format!(
                "a body that is not JSON ({e}): {}",
                excerpt(&bytes)
            ))
        })?;
        let choice = &v["choices"][0];
        let Some(content) = choice["message"]["content"].as_str() else {
            return Err(self.bad_output(format!(
                "no `choices[0].message.content`: {}",
                excerpt(&bytes)
            )));
        };
        Ok(ChatReply {
            content: content.to_string(),
            model: v["model"].as_str().unwrap_or(&self.cfg.model).to_string(),
            finish_reason: choice["finish_reason"].as_str().map(str::to_string),
            usage: v.get("usage").filter(|u| u.is_object()).cloned(),
        })
    }

    fn bad_output(&self, why: String) -> AgentError {
        AgentError::failed("bad_backend_output", format!("{}: {why}", self.what))
    }

    fn stream_error(&self, e: StreamError) -> AgentError {
        match e {
            StreamError::Malformed(why) => self.bad_output(why),
            StreamError::Provider(msg) => AgentError::failed_retryable(
                "backend_error",
                format!(
                    "{}: the provider reported an error mid-stream: {msg}",
                    self.what
                ),
            ),
        }
    }
}

/// Splits a server-sent-events byte stream into the `data` of its events
/// (several `data:` lines of one event joined by `\n`, as the SSE spec
/// says). Fed arbitrary pieces of the stream; keeps what is incomplete.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    /// `data` lines of the event being read.
    data: Option<String>,
    /// Longest line accepted.
    max_line: usize,
}

impl SseParser {
    /// A parser refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            data: None,
            max_line,
        }
    }

    /// Takes the next bytes; returns the events they complete, in order.
    /// Errors on a line over the limit or not UTF-8.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.partial.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = &self.partial[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // Borrowed, not copied: this runs for every line of every
            // stream.
            let line =
                std::str::from_utf8(line).map_err(|_| "the stream is not UTF-8".to_string())?;
            start = end + 1;
            if let Some(ev) = sse_line(&mut self.data, line) {
                events.push(ev);
            }
        }
        self.partial.drain(..start);
        if self.partial.len() > self.max_line {
            return Err(format!(
                "a stream line is longer than {} bytes",
                self.max_line
            ));
        }
        Ok(events)
    }

    /// The stream ended: the event whose blank line never came, if any.
    pub fn finish(&mut self) -> Vec<String> {
        let rest = std::mem::take(&mut self.partial);
        if let Ok(line) = std::str::from_utf8(&rest) {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(ev) = sse_line(&mut self.data, line) {
                return vec![ev];
            }
        }
        self.data.take().into_iter().collect()
    }
}

/// One line of an SSE stream: a blank one dispatches the event gathered in
/// `data`; `data` lines gather; comments (`:`) and other fields (`event`,
/// `id`, `retry`, or a line that is no field at all) are ignored. A free
/// function so the parser can pass a line borrowed from its own buffer.
fn sse_line(data: &mut Option<String>, line: &str) -> Option<String> {
    if line.is_empty() {
        return data.take();
    }
    let (field, value) = line.split_once(':').unwrap_or((line, ""));
    if field == "data" {
        let value = value.strip_prefix(' ').unwrap_or(value);
        match data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => *data = Some(value.to_string()),
        }
    }
    None
}

/// Why a stream's event could not be used.
#[derive(Debug, Clone, PartialEq)]
enum StreamError {
    /// Not a chunk: the provider broke the protocol.
    Malformed(String),
    /// The provider sent `{"error": …}` in the stream.
    Provider(String),
}

/// The fields of a `chat.completion.chunk` that are read; strings borrow
/// from the event where they have no escapes.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow, deserialize_with = "lenient_str")]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    /// `{"error": {...}}` sent mid-stream.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow, deserialize_with = "lenient_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    /// Not a string (nor null): the chunk is malformed.
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// A string, or `None` for any other JSON value: `model` and
/// `finish_reason` of other types were always ignored, not errors.
fn lenient_str<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            while a
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// Builds the reply from the stream's events.
#[derive(Debug)]
struct Accumulator {
    content: String,
    model: String,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl Accumulator {
    fn new(model: &str) -> Self {
        Self {
            content: String::new(),
            model: model.to_string(),
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    /// Takes one event's data; returns the content it adds.
    fn event(&mut self, data: &str) -> Result<&str, StreamError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok("");
        }
        if data.is_empty() || self.done {
            return Ok("");
        }
        // Into borrowed fields rather than a `Value` tree: this runs for
        // every token, and a tree is a map and a string per field.
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| {
            StreamError::Malformed(format!(
                "an event that is not a chunk ({e}): {}",
                excerpt(data.as_bytes())
            ))
        })?;
        if let Some(err) = chunk.error {
            let msg = err["message"]
                .as_str()
                .map_or_else(|| err.to_string(), str::to_string);
            return Err(StreamError::Provider(msg));
        }
        let Some(choices) = chunk.choices else {
            return Err(StreamError::Malformed(format!(
                "an event without `choices`: {}",
                excerpt(data.as_bytes())
            )));
        };
        if let Some(m) = chunk.model.filter(|m| !m.is_empty() && **m != *self.model) {
            self.model = m.into_owned();
        }
        if let Some(u) = chunk.usage.filter(Value::is_object) {
            self.usage = Some(u);
        }
        // The first choice only: we never ask for `n` > 1. A usage-only
        // chunk has no choices at all.
        let Some(choice) = choices.into_iter().next() else {
            return Ok("");
        };
        if let Some(r) = choice.finish_reason {
            self.finish_reason = Some(r.into_owned());
        }
        let start = self.content.len();
        if let Some(piece) = choice.delta.and_then(|d| d.content) {
            self.content.push_str(&piece);
        }
        Ok(&self.content[start..])
    }

    /// The reply, if the stream ended properly: `[DONE]`, or at least a
    /// `finish_reason` from a provider that omits `[DONE]`.
    fn reply(self) -> Result<ChatReply, String> {
        if !self.done && self.finish_reason.is_none() {
            return Err(format!(
                "the stream ended before [DONE] ({} characters received)",
                self.content.chars().count()
            ));
        }
        Ok(ChatReply {
            content: self.content,
            model: self.model,
            finish_reason: self.finish_reason,
            usage: self.usage,
        })
    }
}

/// A pool of one OpenAI-compatible provider: runs `args` as a chat
/// completion; see the module docs.
#[derive(Debug)]
pub struct OpenAiAgent {
    client: OpenAiClient,
}

impl OpenAiAgent {
    /// Builds the agent (errors as [`OpenAiClient::new`]).
    pub fn new(cfg: OpenAiConfig) -> Result<Self, FieldError> {
        Ok(Self {
            client: OpenAiClient::new(cfg)?,
        })
    }
}

/// Reads the pool agent's `args` into a request; errors name the field.
pub fn parse_args(args: &Value) -> Result<ChatRequest, FieldError> {
    let empty = Map::new();
    let obj = match args {
        Value::Object(o) => o,
        Value::Null => &empty,
        _ => return Err(FieldError::invalid("", "`args` must be an object")),
    };
    for k in obj.keys() {
        if !["prompt", "messages", "system", "max_tokens", "temperature"].contains(&k.as_str()) {
            return Err(FieldError::invalid(
                k.as_str(),
                format!(
                    "unknown field `{k}`; expected prompt, messages, system, max_tokens, temperature"
                ),
            ));
        }
    }
    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message::new("system", s.clone())),
        Some(_) => return Err(FieldError::invalid("system", "must be a string")),
    }
    match (obj.get("prompt"), obj.get("messages")) {
        (Some(_), Some(_)) => {
            return Err(FieldError::invalid(
                "messages",
                "give either `prompt` or `messages`, not both",
            ));
        }
        (Some(Value::String(p)), None) if !p.trim().is_empty() => {
            messages.push(Message::new("user", p.clone()));
        }
        (Some(_), None) => {
            return Err(FieldError::invalid("prompt", "must be a non-empty string"));
        }
        (None, Some(Value::Array(list))) if !list.is_empty() => {
            for (i, m) in list.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) if ROLES.contains(&r) => messages.push(Message::new(r, c)),
                    (Some(r), Some(_)) => {
                        return Err(FieldError::invalid(
                            format!("messages[{i}].role"),
                            format!("`{r}` is not one of {}", ROLES.join(", ")),
                        ));
                    }
                    (None, _) => return Err(FieldError::missing(format!("messages[{i}].role"))),
                    (_, None) => {
                        return Err(FieldError::invalid(
                            format!("messages[{i}].content"),
                            "must be a string",
                        ));
                    }
                }
            }
        }
        (None, Some(_)) => {
            return Err(FieldError::invalid(
                "messages",
                "must be a non-empty list of {role, content}",
            ));
        }
        (None, None) => {
            return Err(FieldError {
                message: "give `prompt` (a string) or `messages` (a list)".into(),
                ..FieldError::missing("prompt")
            });
        }
    }
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = v
                .as_u64()
                .ok_or_else(|| FieldError::invalid("max_tokens", "must be a positive integer"))?;
            check_max_tokens("max_tokens", n)?;
            Some(n)
        }
    };
    let temperature = match obj.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t = v
                .as_f64()
                .ok_or_else(|| FieldError::invalid("temperature", "must be a number"))?;
            check_temperature("temperature", t)?;
            Some(t)
        }
    };
    Ok(ChatRequest {
        messages,
        max_tokens,
        temperature,
    })
}

impl OpenAiAgent {
    /// `args` as a request. `max_tokens` may lower the department's
    /// configured `max_tokens`, never raise it: the operator's figure
    /// bounds what one task may cost.
    fn request(&self, args: &Value) -> Result<ChatRequest, FieldError> {
        let req = parse_args(args)?;
        let most = self.client.config().max_tokens;
        if req.max_tokens.is_some_and(|n| n > most) {
            return Err(FieldError::invalid(
                "max_tokens",
                format!("must be at most {most}, this department's configured `max_tokens`"),
            ));
        }
        Ok(req)
    }
}

impl Agent for OpenAiAgent {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        self.request(args).map(|_| ())
    }

    fn token_estimate(&self, args: &Value) -> Option<u64> {
        let req = self.request(args).ok()?;
        Some(req.estimate_tokens(self.client.config().max_tokens))
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let req = self
                .request(&input.args)
                .map_err(AgentError::invalid_args)?;
            let reply = self.client.complete(&ctx, None, &req).await?;
            Ok(reply.to_json())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_may_lower_max_tokens_but_not_raise_it() {
        let mut cfg = OpenAiConfig::new("http://127.0.0.1:9/v1", "m");
        cfg.max_tokens = 100;
        let agent = OpenAiAgent::new(cfg).unwrap();
        agent
            .validate(&json!({"prompt": "hi", "max_tokens": 100}))
            .unwrap();
        agent
            .validate(&json!({"prompt": "hi", "max_tokens": 5}))
            .unwrap();
        let e = agent
            .validate(&json!({"prompt": "hi", "max_tokens": 101}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_tokens"));
        assert!(e.message.contains("at most 100"), "{e}");
    }

    #[test]
    fn the_token_estimate_is_the_prompt_plus_the_completion_ceiling() {
        let mut cfg = OpenAiConfig::new("http://127.0.0.1:9/v1", "m");
        cfg.max_tokens = 100;
        let agent = OpenAiAgent::new(cfg).unwrap();
        // 9 characters: 3 tokens, plus 4 for the message.
        let args = json!({"prompt": "what time"});
        assert_eq!(agent.token_estimate(&args), Some(3 + 4 + 100));
        let args = json!({"prompt": "what time", "system": "be brief", "max_tokens": 10});
        assert_eq!(agent.token_estimate(&args), Some(3 + 4 + 2 + 4 + 10));
        assert_eq!(
            crate::reported_tokens(&json!({"usage": {"prompt_tokens": 5, "completion_tokens": 7}})),
            Some(12)
        );
        assert_eq!(
            crate::reported_tokens(&json!({"usage": {"input_tokens": 5, "output_tokens": 1}})),
            Some(6)
        );
        assert_eq!(crate::reported_tokens(&json!({"content": "x"})), None);
    }

    /// Feeds `stream` to a parser in pieces of `step` bytes.
    fn parse_in_pieces(stream: &[u8], step: usize) -> Vec<String> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            out.extend(p.feed(piece).unwrap());
        }
        out.extend(p.finish());
        out
    }

    const STREAM: &str = ": keep-alive comment\n\
        data: {\"model\":\"m1\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
        event: message\r\nid: 7\r\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"Héllo\"}}]}\r\n\r\n\
        data: {\"choices\":[{\"delta\":{\"content\":\", wörld\"},\"finish_reason\":null}]}\n\n\
        retry: 100\n\
        data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn events_are_the_same_however_the_stream_is_split() {
        let whole = parse_in_pieces(STREAM.as_bytes(), STREAM.len());
        assert_eq!(whole.len(), 6, "{whole:?}");
        assert_eq!(whole.last().unwrap(), "[DONE]");
        // Every split, including inside the multi-byte `é` and `ö` and
        // between `\r` and `\n`.
        for step in 1..40 {
            assert_eq!(
                parse_in_pieces(STREAM.as_bytes(), step),
                whole,
                "step {step}"
            );
        }
    }

    #[test]
    fn chunks_accumulate_into_the_reply() {
        let mut acc = Accumulator::new("asked");
        let pieces: Vec<String> = parse_in_pieces(STREAM.as_bytes(), 7)
            .iter()
            .map(|d| acc.event(d).unwrap().to_string())
            .collect();
        assert_eq!(pieces.concat(), "Héllo, wörld");
        assert!(acc.done);
        let reply = acc.reply().unwrap();
        assert_eq!(reply.content, "Héllo, wörld");
        assert_eq!(reply.model, "m1");
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        assert_eq!(reply.usage, Some(json!({"total_tokens": 5})));
    }

    #[test]
    fn chunk_fields_of_other_types_are_ignored_and_escapes_decoded() {
        let mut acc = Accumulator::new("asked");
        // `model` and `finish_reason` that are not strings were always
        // ignored; content with escapes is decoded (an owned string).
        let piece = acc
            .event(r#"{"model":5,"choices":[{"delta":{"content":"a\"b\u00e9\n"},"finish_reason":{"x":[1]}}],"usage":null}"#)
            .unwrap()
            .to_string();
        assert_eq!(piece, "a\"bé\n");
        assert_eq!(acc.model, "asked");
        assert_eq!(acc.finish_reason, None);
        assert_eq!(acc.usage, None);
        acc.event(r#"{"model":"m2","choices":[{"delta":{},"finish_reason":"stop"}]}"#)
            .unwrap();
        assert_eq!(
            (acc.model.as_str(), acc.finish_reason.as_deref()),
            ("m2", Some("stop"))
        );
    }

    #[test]
    fn multi_line_data_and_a_last_event_without_blank_line() {
        let out = parse_in_pieces(b"data: a\ndata: b\n\ndata:c\ndata", 3);
        assert_eq!(out, ["a\nb", "c\n"]);
        // `data` with no colon is a data line with an empty value.
        let out = parse_in_pieces(b"data: [DONE]", 4);
        assert_eq!(out, ["[DONE]"]);
    }

    #[test]
    fn malformed_input_is_an_error_or_ignored_as_the_spec_says() {
        // Lines that are no field, or unknown fields: ignored.
        assert_eq!(
            parse_in_pieces(b"garbage\nfoo: bar\n\ndata: x\n\n", 5),
            ["x"]
        );
        // A line longer than the limit, even before its end arrives.
        let mut p = SseParser::new(16);
        assert!(
            p.feed(b"data: 0123456789abcdef")
                .unwrap_err()
                .contains("16")
        );
        // Not UTF-8.
        let mut p = SseParser::new(64);
        assert!(p.feed(b"data: \xff\xfe\n\n").is_err());
        // Events that are not chunks.
        let mut acc = Accumulator::new("m");
        assert!(matches!(
            acc.event("{not json"),
            Err(StreamError::Malformed(_))
        ));
        assert!(matches!(
            acc.event("{\"x\":1}"),
            Err(StreamError::Malformed(_))
        ));
        assert!(matches!(
            acc.event("{\"choices\":[{\"delta\":{\"content\":5}}]}"),
            Err(StreamError::Malformed(_))
        ));
        assert_eq!(
            acc.event("{\"error\":{\"message\":\"overloaded\"}}"),
            Err(StreamError::Provider("overloaded".into()))
        );
        // A stream cut before [DONE] or a finish reason is not a reply.
        let mut acc = Accumulator::new("m");
        acc.event("{\"choices\":[{\"delta\":{\"content\":\"par\"}}]}")
            .unwrap();
        assert!(acc.reply().unwrap_err().contains("before [DONE]"));
        // A finish reason without [DONE] is (some providers omit it).
        let mut acc = Accumulator::new("m");
        acc.event("{\"choices\":[{\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"length\"}]}")
            .unwrap();
        assert_eq!(
            acc.reply().unwrap().finish_reason.as_deref(),
            Some("length")
        );
    }

    #[test]
    fn config_defaults_endpoint_and_errors_name_the_field() {
        let cfg = OpenAiConfig::from_table(
            toml::from_str("base_url = \"http://127.0.0.1:9/v1/\"\nmodel = \"m\"").unwrap(),
        )
        .unwrap();
        assert_eq!(cfg, OpenAiConfig::new("http://127.0.0.1:9/v1/", "m"));
        assert_eq!(
            cfg.endpoint().unwrap().as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let err = OpenAiConfig::from_table(toml::from_str("model = \"m\"").unwrap()).unwrap_err();
        assert!(err.message.contains("base_url"), "{err:?}");
        let err = OpenAiConfig::from_table(
            toml::from_str("base_url = \"http://h/v1\"\nmodel = \"m\"\nkey = 1").unwrap(),
        )
        .unwrap_err();
        assert!(err.message.contains("unknown field `key`"), "{err:?}");
        let field = |c: OpenAiConfig| c.validate().unwrap_err().field.unwrap();
        let base = || OpenAiConfig::new("http://127.0.0.1:9/v1", "m");
        OpenAiConfig::new("https://api.openai.com/v1", "m")
            .validate()
            .unwrap();
        assert_eq!(field(OpenAiConfig::new("ftp://h/v1", "m")), "base_url");
        assert_eq!(
            field(OpenAiConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..base()
            }),
            "ca_file"
        );
        assert_eq!(field(OpenAiConfig::new("http://h/v1?x=1", "m")), "base_url");
        assert_eq!(field(OpenAiConfig::new("http://h/v1", " ")), "model");
        let cases = [
            (
                OpenAiConfig {
                    api_key_env: "A-B".into(),
                    ..base()
                },
                "api_key_env",
            ),
            (
                OpenAiConfig {
                    max_tokens: 0,
                    ..base()
                },
                "max_tokens",
            ),
            (
                OpenAiConfig {
                    temperature: Some(3.0),
                    ..base()
                },
                "temperature",
            ),
            (
                OpenAiConfig {
                    connect_timeout_ms: 0,
                    ..base()
                },
                "connect_timeout_ms",
            ),
            (
                OpenAiConfig {
                    request_timeout_ms: Some(0),
                    ..base()
                },
                "request_timeout_ms",
            ),
            (
                OpenAiConfig {
                    max_response_bytes: 10,
                    ..base()
                },
                "max_response_bytes",
            ),
        ];
        for (cfg, name) in cases {
            assert_eq!(field(cfg), name);
        }
    }

    #[test]
    fn args_are_prompt_or_messages_and_errors_name_the_field() {
        let r =
            parse_args(&json!({"prompt": "hi", "system": "be brief", "max_tokens": 5})).unwrap();
        assert_eq!(
            r.messages,
            [
                Message::new("system", "be brief"),
                Message::new("user", "hi")
            ]
        );
        assert_eq!(r.max_tokens, Some(5));
        let r = parse_args(&json!({"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
        ]}))
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        let field = |v: Value| parse_args(&v).unwrap_err().field.unwrap();
        assert_eq!(field(json!({})), "prompt");
        assert_eq!(field(json!({"prompt": ""})), "prompt");
        assert_eq!(field(json!({"prompt": "a", "messages": []})), "messages");
        assert_eq!(field(json!({"messages": []})), "messages");
        assert_eq!(
            field(json!({"messages": [{"content": "a"}]})),
            "messages[0].role"
        );
        assert_eq!(
            field(
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]})
            ),
            "messages[1].role"
        );
        assert_eq!(
            field(json!({"messages": [{"role": "user", "content": 1}]})),
            "messages[0].content"
        );
        assert_eq!(field(json!({"prompt": "a", "max_tokens": 0})), "max_tokens");
        assert_eq!(
            field(json!({"prompt": "a", "max_tokens": "9"})),
            "max_tokens"
        );
        assert_eq!(
            field(json!({"prompt": "a", "temperature": 9})),
            "temperature"
        );
        assert_eq!(field(json!({"prompt": "a", "system": 1})), "system");
        assert_eq!(field(json!({"prompt": "a", "stream": false})), "stream");
        assert_eq!(
            parse_args(&json!("hi")).unwrap_err().field.as_deref(),
            Some("")
        );
    }
}
