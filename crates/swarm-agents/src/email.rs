//! `email`: sends a plain-text message over pooled SMTP, or stores it in the
//! [`Outbox`] when no SMTP server is configured.
//!
//! # Input
//! `args`: `to` (an address or an array of them), `subject` (one line, at most
//! 998 characters: the RFC 5322 line limit), `body` (at most 1 MiB), and
//! optionally `from` and `cc`. Addresses are parsed with lettre's
//! [`Mailbox`] (`ops@example.com` or `Ops <ops@example.com>`) and stored in
//! their normalised form. [`parse_message`] does all checks; admission
//! (`validate`) and `run` share it, and [`EmailAgent::send`] re-checks
//! messages built by other agents, so a header can never be injected through
//! CR/LF in any field.
//!
//! # Delivery
//! - With `[smtp]`: a lettre [`AsyncSmtpTransport`] with a connection pool
//!   (`pool_size` connections kept open, `timeout_ms` per command). The
//!   transport is built on first use rather than in [`EmailAgent::new`]
//!   because lettre's pool spawns a Tokio task when created; configuration
//!   errors (bad sender, missing password variable, bad TLS host) are still
//!   reported by `new`. The send races the task's cancellation token. A
//!   transient (4xx) refusal is reported as [`AgentError::Overloaded`] so the
//!   pool's limiter backs off, a timeout as [`AgentError::Timeout`], anything
//!   else as `smtp_error`.
//! - Without: the message goes to [`Outbox::deliver`] (the engine backs it
//!   with the store's `outbox` table), `to` and `cc` kept apart.

use std::str::FromStr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Map, Value, json};
use swarm_core::config::{SmtpConfig, SmtpSecurity};
use swarm_core::{FieldError, TaskId};

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};

/// Sender used when neither `args.from` nor `[smtp].from` gives one.
pub const DEFAULT_FROM: &str = "SwarmDirector <swarmd@localhost>";
/// Longest subject, in characters (RFC 5322's line limit).
pub const MAX_SUBJECT_CHARS: usize = 998;
/// Largest body, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most addresses in one of `to` or `cc`.
pub const MAX_RECIPIENTS: usize = 100;

const KNOWN_KEYS: &[&str] = &["to", "cc", "from", "subject", "body"];

/// A message stored instead of sent when no SMTP server is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The task that produced it.
    pub task_id: TaskId,
    /// Its tenant.
    pub tenant: String,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Copy recipients.
    pub cc: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Where unsent mail goes (the engine backs it with the store's `outbox` table).
pub trait Outbox: Send + Sync + 'static {
    /// Stores one message; returns its outbox id.
    fn deliver(&self, msg: OutboxMessage) -> BoxFuture<'static, Result<String, String>>;
}

/// One message to send, as parsed from `args` or composed by another agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailMessage {
    /// Sender mailbox; `None` uses the configured default.
    pub from: Option<String>,
    /// Primary recipients (at least one).
    pub to: Vec<String>,
    /// Copied recipients.
    pub cc: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

impl EmailMessage {
    /// Checks every field (addresses, subject, body limits); errors name the
    /// field as `args` would (`to`, `subject`, …).
    pub fn check(&self) -> Result<(), FieldError> {
        if let Some(from) = &self.from {
            parse_mailbox(from).map_err(|m| FieldError::invalid("from", m))?;
        }
        if self.to.is_empty() {
            return Err(FieldError::missing("to"));
        }
        check_list(&self.to, "to")?;
        check_list(&self.cc, "cc")?;
        check_subject(&self.subject, "subject")?;
        check_body(&self.body, "body", MAX_BODY_BYTES)?;
        Ok(())
    }
}

fn check_list(list: &[String], field: &str) -> Result<(), FieldError> {
    if list.len() > MAX_RECIPIENTS {
        return Err(FieldError::invalid(
            field,
            format!("at most {MAX_RECIPIENTS} addresses"),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        parse_mailbox(a).map_err(|m| FieldError::invalid(field, format!("entry {i}: {m}")))?;
    }
    Ok(())
}

/// Parses one mailbox (`a@example.com` or `Name <a@example.com>`), refusing
/// control characters (header injection).
pub fn parse_mailbox(s: &str) -> Result<Mailbox, String> {
    if s.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains control characters",
            s.escape_debug()
        ));
    }
    let trimmed = s.trim();
    // lettre's mailbox parser requires the whole input to be one mailbox, so
    // `a@x.com, b@y.com` and `a@x.com junk` are refused, not truncated.
    let mb = Mailbox::from_str(trimmed)
        .map_err(|e| format!("`{trimmed}` is not a valid address: {e}"))?;
    Ok(mb)
}

/// Parses `args.<field>` as one address or an array of them; returns the
/// normalised addresses. An absent or `null` field gives an empty list.
pub fn parse_recipients(v: Option<&Value>, field: &str) -> Result<Vec<String>, FieldError> {
    let items: Vec<&Value> = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(_)) => v.into_iter().collect(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => {
            return Err(FieldError::invalid(
                field,
                "must be an address or an array of addresses",
            ));
        }
    };
    if items.len() > MAX_RECIPIENTS {
        return Err(FieldError::invalid(
            field,
            format!("at most {MAX_RECIPIENTS} addresses"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item
                .as_str()
                .ok_or_else(|| FieldError::invalid(field, format!("entry {i} must be a string")))?;
            parse_mailbox(s)
                .map(|m| m.to_string())
                .map_err(|m| FieldError::invalid(field, m))
        })
        .collect()
}

/// Checks a subject line: non-empty, one line, at most 998 characters.
pub fn check_subject(s: &str, field: &str) -> Result<(), FieldError> {
    if s.trim().is_empty() {
        return Err(FieldError::invalid(field, "must not be empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::invalid(
            field,
            "must be a single line (no CR, LF or other control characters)",
        ));
    }
    if s.chars().count() > MAX_SUBJECT_CHARS {
        return Err(FieldError::invalid(
            field,
            format!("at most {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Checks a body's size.
pub fn check_body(s: &str, field: &str, max_bytes: usize) -> Result<(), FieldError> {
    if s.len() > max_bytes {
        return Err(FieldError::invalid(
            field,
            format!("at most {max_bytes} bytes"),
        ));
    }
    Ok(())
}

/// `args` as an object (`null` as an empty one), rejecting keys not in `known`.
pub(crate) fn args_object<'a>(
    args: &'a Value,
    known: &[&str],
) -> Result<&'a Map<String, Value>, FieldError> {
    static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);
    let obj = match args {
        Value::Object(m) => m,
        Value::Null => &*EMPTY,
        _ => return Err(FieldError::invalid("", "`args` must be an object")),
    };
    if let Some(key) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(FieldError::invalid(
            key.as_str(),
            format!("unknown field `{key}`; known: {}", known.join(", ")),
        ));
    }
    Ok(obj)
}

/// A required string field.
pub(crate) fn required_str(obj: &Map<String, Value>, field: &str) -> Result<String, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(FieldError::missing(field)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(FieldError::invalid(field, "must be a string")),
    }
}

/// An optional string field.
pub(crate) fn optional_str(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::invalid(field, "must be a string")),
    }
}

/// Parses and checks the email agent's `args`.
pub fn parse_message(args: &Value) -> Result<EmailMessage, FieldError> {
    let obj = args_object(args, KNOWN_KEYS)?;
    let to = parse_recipients(obj.get("to"), "to")?;
    if to.is_empty() {
        return Err(FieldError::missing("to"));
    }
    let cc = parse_recipients(obj.get("cc"), "cc")?;
    let from = optional_str(obj, "from")?
        .map(|f| parse_mailbox(&f).map(|m| m.to_string()))
        .transpose()
        .map_err(|m| FieldError::invalid("from", m))?;
    let subject = required_str(obj, "subject")?;
    let body = required_str(obj, "body")?;
    let msg = EmailMessage {
        from,
        to,
        cc,
        subject,
        body,
    };
    msg.check()?;
    Ok(msg)
}

/// The SMTP side: the configured builder and the transport built from it.
struct Smtp {
    builder: AsyncSmtpTransportBuilder,
    transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
}

/// Sends mail.
pub struct EmailAgent {
    outbox: Arc<dyn Outbox>,
    default_from: String,
    smtp: Option<Smtp>,
}

impl EmailAgent {
    /// Builds the agent. With `smtp`, checks the sender, reads the password
    /// from the environment variable `password_env` names, and prepares a
    /// pooled transport; any problem is an error naming the `smtp.*` key.
    pub fn new(smtp: Option<&SmtpConfig>, outbox: Arc<dyn Outbox>) -> Result<Self, String> {
        let Some(cfg) = smtp else {
            return Ok(Self {
                outbox,
                default_from: DEFAULT_FROM.to_string(),
                smtp: None,
            });
        };
        let from = parse_mailbox(&cfg.from).map_err(|m| format!("smtp.from: {m}"))?;
        if cfg.host.trim().is_empty() {
            return Err("smtp.host: must not be empty".into());
        }
        if cfg.pool_size == 0 {
            return Err("smtp.pool_size: must be at least 1".into());
        }
        if cfg.timeout_ms == 0 {
            return Err("smtp.timeout_ms: must be at least 1".into());
        }
        let builder = match cfg.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
            }
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(|e| {
                    format!("smtp.host: cannot set up STARTTLS for `{}`: {e}", cfg.host)
                })?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)
                .map_err(|e| format!("smtp.host: cannot set up TLS for `{}`: {e}", cfg.host))?,
        };
        let mut builder = builder
            .port(cfg.port)
            .timeout(Some(Duration::from_millis(cfg.timeout_ms)))
            .pool_config(PoolConfig::new().max_size(cfg.pool_size));
        match (&cfg.username, &cfg.password_env) {
            (Some(user), Some(var)) => {
                let password = std::env::var(var).map_err(|_| {
                    format!("smtp.password_env: environment variable `{var}` is not set")
                })?;
                builder = builder.credentials(Credentials::new(user.clone(), password));
            }
            (Some(_), None) => {
                return Err("smtp.password_env: required when smtp.username is set".into());
            }
            (None, Some(_)) => {
                return Err("smtp.username: required when smtp.password_env is set".into());
            }
            (None, None) => {}
        }
        Ok(Self {
            outbox,
            default_from: from.to_string(),
            smtp: Some(Smtp {
                builder,
                transport: OnceLock::new(),
            }),
        })
    }

    /// `"smtp"` or `"outbox"`: where [`send`](Self::send) puts messages.
    pub fn transport_name(&self) -> &'static str {
        if self.smtp.is_some() {
            "smtp"
        } else {
            "outbox"
        }
    }

    /// Sends one message on behalf of the task in `ctx` (re-checking it
    /// first) and returns the delivery record.
    pub async fn send(&self, ctx: &AgentContext, msg: EmailMessage) -> Result<Value, AgentError> {
        msg.check().map_err(AgentError::invalid_args)?;
        let from = msg
            .from
            .clone()
            .unwrap_or_else(|| self.default_from.clone());
        match &self.smtp {
            Some(smtp) => send_smtp(smtp, ctx, from, msg).await,
            None => self.send_outbox(ctx, from, msg).await,
        }
    }

    async fn send_outbox(
        &self,
        ctx: &AgentContext,
        from: String,
        msg: EmailMessage,
    ) -> Result<Value, AgentError> {
        let delivery = self.outbox.deliver(OutboxMessage {
            task_id: ctx.task_id,
            tenant: ctx.tenant.clone(),
            from,
            to: msg.to.clone(),
            cc: msg.cc.clone(),
            subject: msg.subject,
            body: msg.body,
        });
        let id = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(AgentError::cancelled()),
            r = delivery => r.map_err(|e| AgentError::failed("outbox_error", format!("outbox: {e}")))?,
        };
        Ok(json!({"transport": "outbox", "outbox_id": id, "to": msg.to, "cc": msg.cc}))
    }
}

async fn send_smtp(
    smtp: &Smtp,
    ctx: &AgentContext,
    from: String,
    msg: EmailMessage,
) -> Result<Value, AgentError> {
    let mailbox = |s: &str, field: &str| {
        parse_mailbox(s).map_err(|m| AgentError::invalid_args(FieldError::invalid(field, m)))
    };
    let message_id = format!("<{}.{:016x}@swarmd>", ctx.task_id, fastrand::u64(..));
    let mut builder = Message::builder()
        .from(mailbox(&from, "from")?)
        .subject(msg.subject.as_str())
        .message_id(Some(message_id.clone()))
        .header(ContentType::TEXT_PLAIN);
    for to in &msg.to {
        builder = builder.to(mailbox(to, "to")?);
    }
    for cc in &msg.cc {
        builder = builder.cc(mailbox(cc, "cc")?);
    }
    let message = builder.body(msg.body).map_err(|e| AgentError::Invalid {
        message: format!("cannot build the message: {e}"),
        field: None,
    })?;

    let transport = smtp.transport.get_or_init(|| smtp.builder.clone().build());
    let response = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => return Err(AgentError::cancelled()),
        r = transport.send(message) => r.map_err(smtp_error)?,
    };
    let first = response.first_line().unwrap_or("").trim();
    Ok(json!({
        "transport": "smtp",
        "message_id": message_id,
        "to": msg.to,
        "cc": msg.cc,
        "smtp_response": format!("{} {first}", response.code()).trim_end(),
    }))
}

fn smtp_error(e: lettre::transport::smtp::Error) -> AgentError {
    if e.is_transient() {
        // 4xx: the server is alive but wants us to come back later.
        AgentError::Overloaded {
            message: format!("SMTP server deferred the message: {e}"),
            retry_after: None,
        }
    } else if e.is_timeout() {
        AgentError::Timeout {
            message: format!("SMTP server did not answer in time: {e}"),
        }
    } else {
        AgentError::failed("smtp_error", format!("SMTP: {e}"))
    }
}

impl Drop for EmailAgent {
    fn drop(&mut self) {
        // lettre's pool spawns a Tokio task when it is dropped, which panics
        // outside a runtime. If the agent outlives its runtime, leak the pool
        // (the process is ending anyway) rather than panic in a destructor.
        if tokio::runtime::Handle::try_current().is_err()
            && let Some(smtp) = self.smtp.as_mut()
            && let Some(transport) = smtp.transport.take()
        {
            std::mem::forget(transport);
        }
    }
}

impl Agent for EmailAgent {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        parse_message(args).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let msg = parse_message(&input.args).map_err(AgentError::invalid_args)?;
            self.send(&ctx, msg).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{RecordingOutbox, ctx, input};

    fn field_of(args: Value) -> (String, &'static str) {
        let e = parse_message(&args).unwrap_err();
        (e.field.unwrap_or_default(), e.code)
    }

    #[test]
    fn parses_single_and_list_recipients() {
        let m =
            parse_message(&json!({"to": "ops@example.com", "subject": "Hi there", "body": "x"}))
                .unwrap();
        assert_eq!(m.to, vec!["ops@example.com"]);
        assert!(m.cc.is_empty());
        assert_eq!(m.from, None);

        let m = parse_message(&json!({
            "to": ["a@example.com", "Bob Smith <bob@example.com>"],
            "cc": "c@example.com",
            "from": "Ops <ops@example.com>",
            "subject": "S", "body": ""
        }))
        .unwrap();
        assert_eq!(m.to, vec!["a@example.com", "Bob Smith <bob@example.com>"]);
        assert_eq!(m.cc, vec!["c@example.com"]);
        assert_eq!(m.from.as_deref(), Some("Ops <ops@example.com>"));
    }

    #[test]
    fn bad_addresses_name_their_field() {
        let base = |to: Value| json!({"to": to, "subject": "S", "body": "b"});
        assert_eq!(
            field_of(base(json!("not-an-address"))),
            ("to".into(), "invalid_field")
        );
        assert_eq!(
            field_of(base(json!("a@b.com, c@d.com"))),
            ("to".into(), "invalid_field")
        );
        assert_eq!(
            field_of(base(json!("a@b.com junk"))),
            ("to".into(), "invalid_field")
        );
        assert_eq!(
            field_of(base(json!("a@b.com\r\nBcc: x@evil.com"))),
            ("to".into(), "invalid_field")
        );
        assert_eq!(
            field_of(base(json!(["a@b.com", 5]))),
            ("to".into(), "invalid_field")
        );
        assert_eq!(field_of(base(json!(42))), ("to".into(), "invalid_field"));
        assert_eq!(field_of(base(json!([]))), ("to".into(), "missing_field"));
        let many: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!("u{i}@example.com"))
            .collect();
        assert_eq!(field_of(base(json!(many))), ("to".into(), "invalid_field"));
        assert_eq!(
            field_of(json!({"to": "a@b.com", "cc": ["@@"], "subject": "S", "body": "b"})),
            ("cc".into(), "invalid_field")
        );
        assert_eq!(
            field_of(json!({"to": "a@b.com", "from": "nobody", "subject": "S", "body": "b"})),
            ("from".into(), "invalid_field")
        );
    }

    #[test]
    fn subject_and_body_are_checked() {
        assert_eq!(
            field_of(json!({"to": "a@b.com", "body": "b"})),
            ("subject".into(), "missing_field")
        );
        assert_eq!(
            field_of(json!({"to": "a@b.com", "subject": "S"})),
            ("body".into(), "missing_field")
        );
        assert_eq!(
            field_of(json!({"subject": "S", "body": "b"})),
            ("to".into(), "missing_field")
        );
        let bad_subject = |s: Value| field_of(json!({"to": "a@b.com", "subject": s, "body": "b"}));
        assert_eq!(
            bad_subject(json!("  ")),
            ("subject".into(), "invalid_field")
        );
        assert_eq!(
            bad_subject(json!("Hello\r\nBcc: victim@example.com")),
            ("subject".into(), "invalid_field")
        );
        assert_eq!(
            bad_subject(json!("line\nbreak")),
            ("subject".into(), "invalid_field")
        );
        assert_eq!(
            bad_subject(json!("x".repeat(999))),
            ("subject".into(), "invalid_field")
        );
        assert_eq!(bad_subject(json!(7)), ("subject".into(), "invalid_field"));
        parse_message(&json!({"to": "a@b.com", "subject": "é".repeat(998), "body": "b"})).unwrap();
        assert_eq!(
            field_of(
                json!({"to": "a@b.com", "subject": "S", "body": "x".repeat(MAX_BODY_BYTES + 1)})
            ),
            ("body".into(), "invalid_field")
        );
        assert_eq!(
            field_of(json!({"to": "a@b.com", "subject": "S", "body": "b", "bcc": "x@y.z"})),
            ("bcc".into(), "invalid_field")
        );
    }

    #[tokio::test]
    async fn without_smtp_mail_goes_to_the_outbox() {
        let outbox = Arc::new(RecordingOutbox::default());
        let agent = Arc::new(EmailAgent::new(None, outbox.clone()).unwrap());
        assert_eq!(agent.transport_name(), "outbox");
        let ctx = ctx();
        let task_id = ctx.task_id;
        let out = agent
            .run(
                ctx,
                input(json!({"to": ["a@example.com"], "cc": "c@example.com", "subject": "Hello", "body": "Body text"})),
            )
            .await
            .unwrap();
        assert_eq!(out["transport"], "outbox");
        assert_eq!(out["outbox_id"], "ob-1");
        assert_eq!(out["to"], json!(["a@example.com"]));
        let stored = outbox.messages.lock().unwrap().clone();
        assert_eq!(
            stored,
            vec![OutboxMessage {
                task_id,
                tenant: "acme".into(),
                from: DEFAULT_FROM.into(),
                to: vec!["a@example.com".into()],
                cc: vec!["c@example.com".into()],
                subject: "Hello".into(),
                body: "Body text".into(),
            }]
        );
    }

    #[tokio::test]
    async fn outbox_errors_fail_the_task() {
        let outbox = Arc::new(RecordingOutbox {
            fail: true,
            ..Default::default()
        });
        let agent = EmailAgent::new(None, outbox).unwrap();
        let msg = parse_message(&json!({"to": "a@b.com", "subject": "S", "body": "b"})).unwrap();
        let err = agent.send(&ctx(), msg).await.unwrap_err();
        assert_eq!(err.code(), "outbox_error");
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[tokio::test]
    async fn send_rechecks_composed_messages() {
        let outbox = Arc::new(RecordingOutbox::default());
        let agent = EmailAgent::new(None, outbox.clone()).unwrap();
        let msg = EmailMessage {
            from: None,
            to: vec!["a@b.com".into()],
            cc: vec![],
            subject: "Hi\r\nBcc: x@evil.com".into(),
            body: "b".into(),
        };
        let err = agent.send(&ctx(), msg).await.unwrap_err();
        assert_eq!(
            err,
            AgentError::Invalid {
                message: "must be a single line (no CR, LF or other control characters)".into(),
                field: Some("subject".into()),
            }
        );
        assert!(outbox.messages.lock().unwrap().is_empty());
    }

    #[test]
    fn smtp_config_errors_are_reported() {
        let outbox: Arc<dyn Outbox> = Arc::new(RecordingOutbox::default());
        let cfg = |f: &dyn Fn(&mut SmtpConfig)| {
            let mut c = SmtpConfig::default();
            f(&mut c);
            c
        };
        let err = |c: SmtpConfig| match EmailAgent::new(Some(&c), outbox.clone()) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        };
        let e = err(cfg(&|c| {
            c.username = Some("u".into());
            c.password_env = Some("SWARMD_TEST_SURELY_UNSET_PASSWORD_VAR".into());
        }));
        assert!(e.contains("SWARMD_TEST_SURELY_UNSET_PASSWORD_VAR"), "{e}");
        assert!(err(cfg(&|c| c.username = Some("u".into()))).starts_with("smtp.password_env"));
        assert!(err(cfg(&|c| c.from = "not an address".into())).starts_with("smtp.from"));
        assert!(err(cfg(&|c| c.pool_size = 0)).starts_with("smtp.pool_size"));
        assert!(err(cfg(&|c| c.timeout_ms = 0)).starts_with("smtp.timeout_ms"));

        // A valid configuration builds without a runtime (the pool is lazy).
        let agent = EmailAgent::new(
            Some(&cfg(&|c| c.security = SmtpSecurity::Starttls)),
            outbox.clone(),
        )
        .unwrap();
        assert_eq!(agent.transport_name(), "smtp");
        EmailAgent::new(
            Some(&cfg(&|c| c.security = SmtpSecurity::Tls)),
            outbox.clone(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn unreachable_smtp_server_is_an_smtp_error() {
        // Reserve a port, then free it: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = SmtpConfig {
            port,
            timeout_ms: 2_000,
            ..SmtpConfig::default()
        };
        let agent = EmailAgent::new(Some(&cfg), Arc::new(RecordingOutbox::default())).unwrap();
        let msg = parse_message(&json!({"to": "a@b.com", "subject": "S", "body": "b"})).unwrap();
        let err = agent.send(&ctx(), msg).await.unwrap_err();
        assert_eq!(err.code(), "smtp_error", "{err:?}");
    }

    #[tokio::test]
    async fn cancelled_send_stops() {
        // A listener that accepts but never speaks: the SMTP greeting never comes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let cfg = SmtpConfig {
            port,
            timeout_ms: 60_000,
            ..SmtpConfig::default()
        };
        let agent = EmailAgent::new(Some(&cfg), Arc::new(RecordingOutbox::default())).unwrap();
        let ctx = ctx();
        let token = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel();
        });
        let start = std::time::Instant::now();
        let msg = parse_message(&json!({"to": "a@b.com", "subject": "S", "body": "b"})).unwrap();
        let err = agent.send(&ctx, msg).await.unwrap_err();
        assert_eq!(err.code(), "cancelled");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
