//! Completion webhooks: one signed POST of a finished task.
//!
//! # Signing (Standard Webhooks, <https://www.standardwebhooks.com>)
//! Each message carries three headers:
//! - `webhook-id`: the message's id, the same on every try of it, so a
//!   receiver drops a repeat (delivery is at least once);
//! - `webhook-timestamp`: seconds since the epoch at this try, so a
//!   receiver can refuse stale or replayed messages;
//! - `webhook-signature`: `v1,` and the base64 of
//!   HMAC-SHA256(`secret`, `"{id}.{timestamp}.{body}"`), where `secret` is
//!   the bytes of the base64 after `whsec_`.
//!
//! The body is `{"type": "task.finished", "timestamp", "data": <the task>}`.
//! The URL must be allowed (`[webhooks] allow_hosts`, the rules of runtime
//! instances: [`HostAllowList`]); redirects are not followed, so an allowed
//! host cannot hand the payload to another.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use swarm_core::FieldError;

use crate::allow::HostAllowList;

/// A signing secret, decoded.
#[derive(Clone)]
pub struct Secret(ring::hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Reads `whsec_<base64>` (the prefix is optional); at least 16 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| "a webhook secret must be `whsec_` and base64".to_string())?;
        if bytes.len() < 16 {
            return Err("a webhook secret must hold at least 16 bytes".into());
        }
        Ok(Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)))
    }

    /// The `webhook-signature` value of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(format!("{id}.{timestamp}.").as_bytes());
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// How one try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did (`None`: a 2xx).
    pub error: Option<String>,
}

/// Sends webhooks; cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    allow: HostAllowList,
}

impl WebhookSender {
    /// A sender allowing `allow_hosts`, each try bounded by `timeout`.
    pub fn new(allow_hosts: &[String], timeout: Duration) -> Result<Self, FieldError> {
        let list = toml::Value::Array(
            allow_hosts
                .iter()
                .map(|h| toml::Value::String(h.clone()))
                .collect(),
        );
        let allow = HostAllowList::parse(&list).map_err(|e| e.nested_under("webhooks"))?;
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("swarmd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                FieldError::invalid("webhooks", format!("cannot build the client: {e}"))
            })?;
        Ok(Self { client, allow })
    }

    /// Checks a `callback_url`: an http(s) URL whose host is allowed;
    /// the error names `field`.
    pub fn check(&self, field: &str, url: &str) -> Result<(), FieldError> {
        self.allow.check_in(
            field,
            url,
            "`[webhooks] allow_hosts`",
            "callbacks go only to listed hosts",
        )
    }

    /// POSTs `body` to `url` as message `id`, signed with `secret` if any.
    pub async fn send(
        &self,
        url: &str,
        id: &str,
        timestamp: i64,
        body: Vec<u8>,
        secret: Option<&Secret>,
    ) -> Sent {
        let Ok(parsed) = Url::parse(url) else {
            return Sent {
                status: None,
                error: Some("the callback URL does not parse".into()),
            };
        };
        // Checked again at send: the allow-list may have shrunk since.
        if !self.allow.allows(&parsed) {
            return Sent {
                status: None,
                error: Some("the callback host is no longer in `[webhooks] allow_hosts`".into()),
            };
        }
        let mut req = self
            .client
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(s) = secret {
            req = req.header("webhook-signature", s.sign(id, timestamp, &body));
        }
        match req.body(body).send().await {
            Ok(resp) if resp.status().is_success() => Sent {
                status: Some(resp.status().as_u16()),
                error: None,
            },
            Ok(resp) => Sent {
                status: Some(resp.status().as_u16()),
                error: Some(format!("the receiver answered {}", resp.status())),
            },
            Err(e) => Sent {
                status: None,
                error: Some(crate::http::error_chain(&e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (its
        // reference libraries' test vector).
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert!(Secret::parse("whsec_short").is_err());
        assert!(Secret::parse("not base64 at all!").is_err());
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).is_ok());
    }

    #[test]
    fn callbacks_go_only_to_listed_hosts() {
        let w = WebhookSender::new(
            &["127.0.0.1".into(), "hooks.example.com:8443".into()],
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(
            w.check("callback_url", "http://127.0.0.1:9999/hook")
                .is_ok()
        );
        assert!(
            w.check("callback_url", "https://hooks.example.com:8443/x")
                .is_ok()
        );
        let e = w
            .check("callback_url", "https://hooks.example.com/x")
            .unwrap_err();
        assert_eq!(e.code, "host_not_allowed");
        let e = w.check("callback_url", "ftp://127.0.0.1/x").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("callback_url"));
    }
}
