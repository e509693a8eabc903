//! `http`: runs a task by POSTing it to one agent instance over HTTP.
//!
//! # Protocol
//! `POST <url>` with `Content-Type: application/json` and the body
//! `{"id", "type", "args", "title", "description", "deadline_ms",
//! "request_id", "task_id", "tenant"}` (the same shape the `process`
//! backend writes; `deadline_ms` is the time left when the request was
//! sent). The submitting request's id goes along as `X-Request-Id`.
//! The instance answers:
//! - `2xx` with `{"result": …}`, or `{"error": {"code", "message",
//!   "retryable"?}}` for a failure it wants reported as such;
//! - `429` or `503` when it is out of capacity, optionally with
//!   `Retry-After` (seconds or an HTTP date): [`AgentError::Overloaded`],
//!   which the pool's adaptive limiter treats as back-pressure (without
//!   `Retry-After`, its `retry_after` is the reset of a spent quota, if the
//!   rate-limit headers name one);
//! - any other `5xx`: a retryable `backend_error`;
//! - `4xx`: a non-retryable `backend_rejected`.
//!
//! Errors carry the status and the start of the body.
//!
//! Any response, success or not, whose rate-limit headers show a spent
//! quota (see [`crate::ratelimit`]) is told to [`AgentContext::provider`]
//! as a [`ProviderPause`]; so is a `429` whose only signal is
//! `Retry-After` (quota [`Quota::Unknown`]).
//!
//! # Design
//! - One [`reqwest::Client`] per agent, so connections are pooled and kept
//!   alive between tasks (`pool_max_idle`, `pool_idle_timeout_ms`);
//!   `connect_timeout_ms` bounds connection set-up. The whole request is
//!   bounded by the task's remaining time (or `request_timeout_ms` if that
//!   is shorter); running out is [`AgentError::Timeout`], also back-pressure.
//! - The request future is raced against the cancellation token and the
//!   deadline; losing drops it, which closes the connection mid-request,
//!   so the instance sees the client go away instead of working on for
//!   nobody. (The engine drops the whole run at the deadline anyway; the
//!   race makes the agent correct on its own.)
//! - A refused or reset connection is a retryable `backend_unreachable`;
//!   a reply that breaks the protocol is a non-retryable
//!   `bad_backend_output`. Bodies are read up to `max_response_bytes`.
//! - Redirects are not followed and proxy variables are ignored: an
//!   instance URL names one instance, and a redirect or a proxy in between
//!   would hide which one answered. One URL per agent object; balancing over
//!   instances is a layer above.
//! - `https://` URLs go over rustls with the *ring* provider (the one
//!   lettre already builds; reqwest's own default, aws-lc-rs, is a heavy C
//!   build). Server certificates are checked against the system's roots
//!   (rustls-platform-verifier) plus those in `ca_file`, for a private CA.
//!   reqwest's `rustls-no-provider` build panics when a client is built
//!   before a process-wide provider is installed, and Cargo turns that
//!   build on for every crate linked with this one:
//!   [`install_crypto_provider`] must run first in any process that builds a
//!   reqwest client (this module does it before its own).
//! - A client for an `http://` URL trusts no roots at all (it never speaks
//!   TLS: no redirects, no proxies), so it does not read the system's
//!   roots, and works on a host that has none.
//! - A failed TLS handshake (an unknown or expired certificate, a name
//!   that does not match) is a retryable `backend_unreachable`, like a
//!   refused connection: the fault is that instance's, and retrying on
//!   another one (and ejecting this one as an outlier) is what a pool
//!   should do; with one instance the retry budget bounds the waste.
//! - The connection settings (`ClientSettings`), the mapping of statuses
//!   and transport failures to [`AgentError`]s and the deadline/cancel race
//!   are `pub(crate)` and shared with the `openai` backend, so both
//!   backends mean the same by them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use swarm_core::FieldError;

use crate::agent::{Agent, AgentContext, AgentError, AgentInput, ProviderSignal};
use crate::ratelimit::{ProviderPause, Quota, rate_limit};

/// Default `connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Default `pool_max_idle`.
pub const DEFAULT_POOL_MAX_IDLE: usize = 32;
/// Default `pool_idle_timeout_ms`.
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 90_000;
/// Default `max_response_bytes` (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Bytes of an error response read for the message.
const ERROR_BODY_BYTES: usize = 4 << 10;
/// Characters of a body quoted in an error message.
const EXCERPT_CHARS: usize = 300;

/// Configuration of an `http` agent (one instance).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The instance's task endpoint, e.g. `http://10.0.0.5:8000/run`.
    pub url: String,
    /// Time allowed to open a connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Upper bound for one request; the task's remaining time always
    /// bounds it too. `None`: the deadline only.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Idle keep-alive connections kept open to the instance.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// How long an idle connection is kept.
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Extra headers sent with every request (e.g. an API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Largest accepted response body, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// PEM file of CA certificates trusted for `https://` besides the
    /// system's (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
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

impl HttpConfig {
    /// A configuration for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: None,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout_ms: DEFAULT_POOL_IDLE_TIMEOUT_MS,
            headers: BTreeMap::new(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca_file: None,
        }
    }

    fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            connect_timeout_ms: self.connect_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            pool_max_idle: self.pool_max_idle,
            pool_idle_timeout_ms: self.pool_idle_timeout_ms,
            max_response_bytes: self.max_response_bytes,
            ca_file: self.ca_file.clone(),
        }
    }

    /// Checks every field; errors name it (`url`, `headers.NAME`, …)
    /// relative to this table.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.parse().map(|_| ())
    }

    fn parse(&self) -> Result<(Url, HeaderMap), FieldError> {
        let url = parse_http_url("url", &self.url)?;
        self.client_settings().validate()?;
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let field = || format!("headers.{k}");
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| FieldError::invalid(field(), "not a valid header name"))?;
            if matches!(
                name.as_str(),
                "content-type" | "content-length" | "host" | "x-request-id" | "transfer-encoding"
            ) {
                return Err(FieldError::invalid(
                    field(),
                    "set by the agent itself; cannot be configured",
                ));
            }
            let value = HeaderValue::from_str(v).map_err(|_| {
                FieldError::invalid(field(), "not a valid header value (control characters?)")
            })?;
            headers.insert(name, value);
        }
        Ok((url, headers))
    }
}

/// Connection settings shared by the HTTP-calling backends (`http`,
/// `openai`), checked and turned into a client in one place so both mean
/// the same by them.
pub(crate) struct ClientSettings {
    pub(crate) connect_timeout_ms: u64,
    pub(crate) request_timeout_ms: Option<u64>,
    pub(crate) pool_max_idle: usize,
    pub(crate) pool_idle_timeout_ms: u64,
    pub(crate) max_response_bytes: usize,
    pub(crate) ca_file: Option<PathBuf>,
}

impl ClientSettings {
    /// Checks the ranges and reads `ca_file`; errors name the field.
    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        if !(1..=600_000).contains(&self.connect_timeout_ms) {
            return Err(FieldError::invalid(
                "connect_timeout_ms",
                "must be between 1 and 600000",
            ));
        }
        if self.request_timeout_ms == Some(0) {
            return Err(FieldError::invalid(
                "request_timeout_ms",
                "must be at least 1 (leave it out to use the deadline only)",
            ));
        }
        if self.pool_idle_timeout_ms == 0 {
            return Err(FieldError::invalid(
                "pool_idle_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.max_response_bytes < 1024 {
            return Err(FieldError::invalid(
                "max_response_bytes",
                "must be at least 1024",
            ));
        }
        read_ca_file(self.ca_file.as_deref())?;
        Ok(())
    }

    /// A pooled keep-alive client for `url` with `headers` on every
    /// request; no redirects, no proxies (see the module docs). `field`
    /// names the setting blamed if the client cannot be built.
    pub(crate) fn client(
        &self,
        url: &Url,
        headers: HeaderMap,
        field: &str,
    ) -> Result<reqwest::Client, FieldError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .pool_max_idle_per_host(self.pool_max_idle)
            .pool_idle_timeout(Duration::from_millis(self.pool_idle_timeout_ms))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .default_headers(headers);
        let builder = with_roots(builder, url, self.ca_file.as_deref())?;
        builder.build().map_err(|e| {
            FieldError::invalid(
                field,
                format!("cannot build the HTTP client: {}", error_chain(&e)),
            )
        })
    }

    /// The time one request may take: what is left of the task's, capped
    /// by `request_timeout_ms`; a deadline already passed is a timeout.
    pub(crate) fn request_limit(
        &self,
        ctx: &AgentContext,
        what: &str,
    ) -> Result<Duration, AgentError> {
        let remaining = ctx.remaining();
        let limit = match self.request_timeout_ms {
            Some(ms) => remaining.min(Duration::from_millis(ms)),
            None => remaining,
        };
        if limit.is_zero() {
            return Err(AgentError::Timeout {
                message: format!("{what}: the deadline passed before the request"),
            });
        }
        Ok(limit)
    }
}

/// Installs rustls' *ring* provider as the process-wide default, once; a
/// provider installed before (by the embedding program) is left in place.
///
/// reqwest is built with `rustls-no-provider` (see the module docs) and
/// panics when a client is built before a provider is installed, http-only
/// clients included: every process that links this crate and builds a
/// reqwest client of its own (a binary's `main`, a test) calls this first.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // `Err` means another provider is already the default: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Sets the roots `builder` trusts for `url`: for `https`, the system's
/// plus those in `ca_file`; for anything else none (the client never
/// speaks TLS, so it needs no roots, not even a system that has some).
/// Installs the crypto provider first. Errors name `ca_file`.
pub(crate) fn with_roots(
    builder: reqwest::ClientBuilder,
    url: &Url,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, FieldError> {
    install_crypto_provider();
    if url.scheme() != "https" {
        return Ok(builder.tls_certs_only([]));
    }
    Ok(builder.tls_certs_merge(read_ca_file(ca_file)?))
}

/// The clients a pool's active health checks probe its instances with:
/// one for `http://` built at once, one for `https://` built on first use,
/// so a pool of plain-http instances never needs the system's roots.
pub(crate) struct ProbeClients {
    timeout: Duration,
    ca_file: Option<PathBuf>,
    plain: reqwest::Client,
    tls: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl ProbeClients {
    /// Errors name the key (`ca_file`, else `health_path`).
    pub(crate) fn new(timeout: Duration, ca_file: Option<PathBuf>) -> Result<Self, FieldError> {
        read_ca_file(ca_file.as_deref())?;
        let plain = Self::build(timeout, "http", ca_file.as_deref())?;
        Ok(Self {
            timeout,
            ca_file,
            plain,
            tls: std::sync::OnceLock::new(),
        })
    }

    fn build(
        timeout: Duration,
        scheme: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<reqwest::Client, FieldError> {
        let url = Url::parse(&format!("{scheme}://probe.invalid/")).expect("a valid URL");
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        with_roots(builder, &url, ca_file)?.build().map_err(|e| {
            FieldError::invalid(
                "health_path",
                format!("cannot build the HTTP client: {}", error_chain(&e)),
            )
        })
    }

    /// The client for `url`'s scheme.
    pub(crate) fn for_url(&self, url: &Url) -> Result<reqwest::Client, String> {
        if url.scheme() != "https" {
            return Ok(self.plain.clone());
        }
        self.tls
            .get_or_init(|| {
                Self::build(self.timeout, "https", self.ca_file.as_deref()).map_err(|e| e.message)
            })
            .clone()
    }
}

/// The certificates in `ca_file` (none without one); errors name the key.
pub(crate) fn read_ca_file(
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<reqwest::Certificate>, FieldError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| FieldError::invalid("ca_file", format!("cannot read `{shown}`: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| FieldError::invalid("ca_file", format!("`{shown}` is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(FieldError::invalid(
            "ca_file",
            format!("`{shown}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"),
        ));
    }
    Ok(certs)
}

/// An `http://` or `https://` URL with a host, for the setting `field`.
pub(crate) fn parse_http_url(field: &str, text: &str) -> Result<Url, FieldError> {
    // The text is echoed only when it cannot hold a password.
    let shown = if text.contains('@') {
        "the value"
    } else {
        text
    };
    let url = Url::parse(text)
        .map_err(|e| FieldError::invalid(field, format!("`{shown}` is not a URL: {e}")))?;
    // Instance URLs are ids: listed, logged and used as metric labels. A
    // password in one would be shown everywhere, so none is accepted.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldError::invalid(
            field,
            "must not carry credentials (`user:password@`): URLs are shown in lists, logs \
             and metrics; send them as a header instead (`headers`, e.g. Authorization)",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::invalid(
            field,
            format!(
                "scheme `{}` is not supported; use http or https",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::invalid(field, "must name a host"));
    }
    Ok(url)
}

/// Races `call` against the task's cancellation and deadline. Losing
/// either race drops the request future, which closes its connection: the
/// backend sees the client leave instead of working on for nobody.
pub(crate) async fn bounded<T>(
    ctx: &AgentContext,
    what: &str,
    call: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err(AgentError::cancelled()),
        r = call => r,
        _ = tokio::time::sleep_until(ctx.deadline) => Err(AgentError::Timeout {
            message: format!("{what}: no answer before the deadline"),
        }),
    }
}

/// The error for a response whose status is not a success: `429`/`503`
/// are [`AgentError::Overloaded`] (with `Retry-After`), other `5xx`
/// retryable `backend_error`, `4xx` non-retryable `backend_rejected`.
/// The message quotes the start of the body.
pub(crate) async fn status_error(what: &str, mut resp: reqwest::Response) -> AgentError {
    let status = resp.status();
    let now = SystemTime::now();
    let retry_after = retry_after(resp.headers(), now)
        .or_else(|| rate_limit(resp.headers(), now).map(|p| p.delay));
    // The body only feeds the message: read a little, and a failure to
    // read it must not hide the status.
    let bytes = read_body(&mut resp, ERROR_BODY_BYTES).await;
    let text = match &bytes {
        Ok(b) => excerpt(b),
        Err(BodyError::TooLarge) => "(body too large to quote)".into(),
        Err(BodyError::Transport(e)) => format!("(body unreadable: {e})"),
    };
    let message = format!("{what}: HTTP {status}: {text}");
    match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => AgentError::Overloaded {
            message,
            retry_after,
        },
        s if s.is_server_error() => AgentError::failed_retryable("backend_error", message),
        s if s.is_client_error() => AgentError::failed("backend_rejected", message),
        _ => AgentError::failed("bad_backend_output", message),
    }
}

/// The pause a response asks for: a spent quota in its rate-limit headers
/// (see [`crate::ratelimit`]), and on a `429` also `Retry-After` (the
/// longer wins: the pause lasts until every signal allows a call; alone,
/// it is [`Quota::Unknown`]).
pub fn response_pause(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<ProviderPause> {
    let quota = rate_limit(headers, now);
    if status != StatusCode::TOO_MANY_REQUESTS {
        return quota;
    }
    let asked = retry_after(headers, now)
        .filter(|d| !d.is_zero())
        .map(|delay| ProviderPause {
            delay,
            quota: Quota::Unknown,
            remaining: 0,
        });
    match (quota, asked) {
        (Some(q), Some(a)) if a.delay > q.delay => Some(ProviderPause {
            delay: a.delay,
            quota: q.quota,
            remaining: 0,
        }),
        (q, a) => q.or(a),
    }
}

/// Tells `signal` the pause `resp` asks for, if any (see
/// [`response_pause`]); called on every response, before its status is
/// looked at.
pub(crate) fn signal_pause(signal: &ProviderSignal, resp: &reqwest::Response) {
    if let Some(p) = response_pause(resp.status(), resp.headers(), SystemTime::now()) {
        tracing::debug!(
            url = %resp.url(),
            quota = p.quota.as_str(),
            delay_ms = u64::try_from(p.delay.as_millis()).unwrap_or(u64::MAX),
            "provider rate limit: spent"
        );
        signal.pause(p);
    } else if let Some(h) = crate::ratelimit::headroom(resp.headers(), SystemTime::now()) {
        // Not spent: the engine weighs what is left against its calls in
        // flight.
        signal.pause(h);
    }
}

/// A transport failure: reqwest's timeout (`limit`) is
/// [`AgentError::Timeout`]; a refused connection or a failed TLS handshake
/// a retryable `backend_unreachable` (see the module docs); anything else
/// (a reset mid-body) a retryable `backend_error`.
pub(crate) fn transport_error(what: &str, e: &reqwest::Error, limit: Duration) -> AgentError {
    if e.is_timeout() {
        return AgentError::Timeout {
            message: format!("{what}: no answer within {} ms", limit.as_millis()),
        };
    }
    let mut message = format!("{what}: {}", error_chain(e));
    if message.contains("invalid peer certificate") {
        // rustls says what is wrong (`UnknownIssuer`, `Expired`, …) but
        // not what to do about the common case.
        message.push_str(
            " (a private CA's certificates go in `ca_file`; the system's roots are trusted too)",
        );
    }
    if e.is_connect() {
        AgentError::failed_retryable("backend_unreachable", message)
    } else {
        AgentError::failed_retryable("backend_error", message)
    }
}

/// Posts tasks to one HTTP agent instance; see the module docs.
pub struct HttpAgent {
    cfg: HttpConfig,
    url: Url,
    /// `POST <url>`, the start of every error message.
    what: String,
    client: reqwest::Client,
    seq: AtomicU64,
}

impl HttpAgent {
    /// Checks `cfg` (errors as [`HttpConfig::validate`]) and builds the
    /// client; opens no connection.
    pub fn new(cfg: HttpConfig) -> Result<Self, FieldError> {
        let (url, headers) = cfg.parse()?;
        let client = cfg.client_settings().client(&url, headers, "url")?;
        Ok(Self {
            what: format!("POST {url}"),
            cfg,
            url,
            client,
            seq: AtomicU64::new(0),
        })
    }

    /// The instance URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// One request, bounded by `limit`.
    async fn call(
        &self,
        body: Value,
        request_id: Option<String>,
        provider: &ProviderSignal,
        limit: Duration,
    ) -> Result<Value, AgentError> {
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(limit)
            .json(&body);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport_error(&self.what, &e, limit))?;
        signal_pause(provider, &resp);
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(&self.what, resp).await);
        }
        let bytes = read_reply(&mut resp, self.cfg.max_response_bytes, &self.what, limit).await?;
        self.parse_success(status, &bytes)
    }

    fn parse_success(&self, status: StatusCode, bytes: &[u8]) -> Result<Value, AgentError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            self.bad_output(format!(
                "HTTP {status} with a body that is not JSON ({e}): {}",
                excerpt(bytes)
            ))
        })?;
        let Value::Object(mut obj) = v else {
            return Err(self.bad_output(format!(
                "HTTP {status} with a body that is not an object: {}",
                excerpt(bytes)
            )));
        };
        if let Some(r) = obj.remove("result") {
            return Ok(r);
        }
        match obj.get("error") {
            Some(e) => Err(AgentError::from_wire(e)
                .map_err(|why| self.bad_output(format!("{why}: {}", excerpt(bytes))))?),
            None => Err(self.bad_output(format!(
                "HTTP {status} with neither `result` nor `error`: {}",
                excerpt(bytes)
            ))),
        }
    }

    fn bad_output(&self, why: String) -> AgentError {
        AgentError::failed("bad_backend_output", format!("{}: {why}", self.what))
    }
}

impl Agent for HttpAgent {
    fn kind(&self) -> &'static str {
        "http"
    }

    /// Only the shape: what `args` mean is the instance's business.
    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        crate::agent::args_object(args)
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let remaining = ctx.remaining();
            let limit = self.cfg.client_settings().request_limit(&ctx, &self.what)?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let mut body = input.to_wire(&format!("{}.{seq}", ctx.task_id), &ctx);
            body["deadline_ms"] = json!(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX));
            bounded(
                &ctx,
                &self.what,
                self.call(body, ctx.request_id.clone(), &ctx.provider, limit),
            )
            .await
        })
    }
}

pub(crate) enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads at most `max` bytes of the body, chunk by chunk, so a huge or
/// endless body cannot exhaust memory.
pub(crate) async fn read_body(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if out.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A success reply's body, at most `max` bytes: a transport failure or a
/// larger body is the agent's error, naming the backend (`what`).
pub(crate) async fn read_reply(
    resp: &mut reqwest::Response,
    max: usize,
    what: &str,
    limit: Duration,
) -> Result<Vec<u8>, AgentError> {
    read_body(resp, max).await.map_err(|e| match e {
        BodyError::Transport(e) => transport_error(what, &e, limit),
        BodyError::TooLarge => AgentError::failed(
            "bad_backend_output",
            format!("{what}: the response is larger than {max} bytes"),
        ),
    })
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date (RFC 9110
/// §10.2.3); a date in the past is zero, anything unparsable is ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// reqwest's own message is terse (`error sending request`); the cause
/// (`Connection refused`) is in its sources.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        for url in [
            "http://user:hunter2@127.0.0.1:9/run",
            "http://user@127.0.0.1:9/run",
            "https://:hunter2@backend.example/run",
        ] {
            let e = HttpConfig::new(url).validate().unwrap_err();
            assert_eq!(e.field.as_deref(), Some("url"), "{url}");
            assert!(e.message.contains("credentials"), "{e}");
            assert!(!e.message.contains("hunter2"), "{e}");
        }
        let e = parse_http_url("url", "http://u:hunter2@[bad/").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e}");
    }

    fn field(cfg: HttpConfig) -> String {
        cfg.validate().unwrap_err().field.unwrap()
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: HttpConfig =
            serde_json::from_value(json!({"url": "http://127.0.0.1:9/run"})).unwrap();
        assert_eq!(cfg, HttpConfig::new("http://127.0.0.1:9/run"));
        cfg.validate().unwrap();
        let err = serde_json::from_value::<HttpConfig>(json!({"url": "http://x", "timeout": 1}))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn config_errors_name_the_field() {
        let base = || HttpConfig::new("http://127.0.0.1:8000/run");
        assert_eq!(field(HttpConfig::new("not a url")), "url");
        HttpConfig::new("https://example.com/").validate().unwrap();
        assert_eq!(field(HttpConfig::new("ftp://example.com/")), "url");
        assert_eq!(
            field(HttpConfig {
                connect_timeout_ms: 0,
                ..base()
            }),
            "connect_timeout_ms"
        );
        assert_eq!(
            field(HttpConfig {
                request_timeout_ms: Some(0),
                ..base()
            }),
            "request_timeout_ms"
        );
        assert_eq!(
            field(HttpConfig {
                max_response_bytes: 1,
                ..base()
            }),
            "max_response_bytes"
        );
        let with_header = |k: &str, v: &str| HttpConfig {
            headers: [(k.to_string(), v.to_string())].into(),
            ..base()
        };
        assert_eq!(field(with_header("bad name", "x")), "headers.bad name");
        assert_eq!(field(with_header("x-key", "a\nb")), "headers.x-key");
        assert_eq!(
            field(with_header("X-Request-Id", "x")),
            "headers.X-Request-Id"
        );
        with_header("authorization", "Bearer t").validate().unwrap();
        let with_ca = |path: &str| HttpConfig {
            ca_file: Some(path.into()),
            ..HttpConfig::new("https://localhost:8443/run")
        };
        let err = with_ca("/nonexistent/ca.pem").validate().unwrap_err();
        assert_eq!(err.field.as_deref(), Some("ca_file"));
        assert!(
            err.message.contains("cannot read `/nonexistent/ca.pem`"),
            "{err:?}"
        );
        // A file that is not PEM (this source) is refused too.
        let err = with_ca(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http.rs"))
            .validate()
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("ca_file"), "{err:?}");
        assert!(err.message.contains("no PEM certificate"), "{err:?}");
        let test_ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ca.pem");
        with_ca(test_ca).validate().unwrap();
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&m, now)
        };
        assert_eq!(h("7"), Some(Duration::from_secs(7)));
        assert_eq!(h(" 0 "), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(h(&later), Some(Duration::from_secs(120)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(h(&earlier), Some(Duration::ZERO));
        assert_eq!(h("soon"), None);
        assert_eq!(h("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}
