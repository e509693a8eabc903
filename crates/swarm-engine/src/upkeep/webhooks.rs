//! Completion webhooks: delivering finished tasks to their `callback_url`.
//!
//! # Durable by construction
//! A task's finish sets its row's `callback_state` to `pending` in the same
//! statement that stores the outcome, so a task can never end without the
//! duty to deliver it, whatever happens to the node after. This loop, on
//! every node, leases due deliveries (`callback_next_at` passed: the lease
//! pushes it past the try's time limit, and on PostgreSQL the claim skips
//! rows another node is claiming), POSTs each, and records the try (the
//! `deliveries` table) and the new state: `delivered` on a 2xx; `pending`
//! with a full-jitter exponential backoff otherwise; `failed` after
//! `max_attempts`. A node that dies mid-try leaves the lease to lapse and
//! another node tries again. Delivery is therefore at least once, and each
//! message keeps one `webhook-id` across tries for receivers to drop a
//! repeat (Standard Webhooks; signing in `swarm_agents::webhook`).
//!
//! The loop looks every [`POLL`] with a read that touches only the partial
//! index of pending rows, and writes only when something is due.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use swarm_agents::webhook::{Secret, WebhookSender};
use swarm_core::clock::{now_ms, rfc3339};
use swarm_core::config::WebhookConfig;
use swarm_core::{Delivery, FieldError, Task, TaskId};
use swarm_sched::balance::Backoff;
use swarm_store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often the loop looks for due deliveries.
const POLL: Duration = Duration::from_millis(200);

/// Webhook settings, parsed: the sender, the secrets, the tenants' URLs.
pub(crate) struct WebhookPlan {
    pub(crate) sender: WebhookSender,
    default_secret: Option<Secret>,
    tenants: BTreeMap<String, (Option<String>, Option<Secret>)>,
    cfg: WebhookConfig,
}

impl WebhookPlan {
    /// Parses `[webhooks]`; a bad secret or a tenant URL outside the
    /// allow-list names its key.
    pub(crate) fn new(cfg: &WebhookConfig) -> Result<Self, FieldError> {
        let sender = WebhookSender::new(&cfg.allow_hosts, Duration::from_millis(cfg.timeout_ms))?;
        let secret = |key: String, s: &Option<String>| {
            s.as_deref()
                .map(|s| Secret::parse(s).map_err(|m| FieldError::invalid(key, m)))
                .transpose()
        };
        let default_secret = secret("webhooks.secret".into(), &cfg.secret)?;
        let mut tenants = BTreeMap::new();
        for (name, t) in &cfg.tenants {
            let key = format!("webhooks.tenants.{name}");
            if let Some(url) = &t.url {
                sender.check(&format!("{key}.url"), url)?;
            }
            let s = secret(format!("{key}.secret"), &t.secret)?;
            tenants.insert(name.clone(), (t.url.clone(), s));
        }
        Ok(Self {
            sender,
            default_secret,
            tenants,
            cfg: cfg.clone(),
        })
    }

    /// The callback of a task of `tenant` that asked for `asked`: checked
    /// against the allow-list (`422 host_not_allowed` on `callback_url`),
    /// or the tenant's default.
    pub(crate) fn callback(
        &self,
        tenant: &str,
        asked: Option<&str>,
    ) -> Result<Option<String>, FieldError> {
        match asked {
            Some(url) => {
                self.sender.check("callback_url", url)?;
                Ok(Some(url.to_string()))
            }
            None => Ok(self.tenants.get(tenant).and_then(|(u, _)| u.clone())),
        }
    }

    fn secret(&self, tenant: &str) -> Option<&Secret> {
        self.tenants
            .get(tenant)
            .and_then(|(_, s)| s.as_ref())
            .or(self.default_secret.as_ref())
    }
}

/// The delivery loop.
pub(crate) struct Deliverer {
    pub(crate) store: Store,
    pub(crate) plan: Arc<WebhookPlan>,
    pub(crate) node_id: String,
    pub(crate) stop: CancellationToken,
}

impl Deliverer {
    pub(crate) async fn run(self) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.plan.cfg.concurrency));
        // A failing store is said once a minute, not every poll.
        let mut quiet_until = tokio::time::Instant::now();
        let mut complain = |what: &str, e: &swarm_store::StoreError| {
            let now = tokio::time::Instant::now();
            if now >= quiet_until {
                warn!(error = %e, "{what}");
                quiet_until = now + Duration::from_secs(60);
            } else {
                debug!(error = %e, "{what}");
            }
        };
        // After a full batch there may be more due at once: look again
        // as soon as a slot frees, not a poll later (a poll per batch of
        // `concurrency` capped delivery at 80/s in bench/webhooks.sh).
        let mut full = false;
        loop {
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = this.stop.cancelled() => return,
                }
            }
            full = false;
            // Wait for room; the slot taken is the first delivery's.
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = this.stop.cancelled() => return,
            };
            let free = slots.available_permits() + 1;
            let now = now_ms();
            match this.store.callbacks_pending(now).await {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    complain("could not look for due webhooks", &e);
                    continue;
                }
            }
            let lease = now + this.plan.cfg.timeout_ms as i64 + 5_000;
            let due = match this.store.callbacks_due(now, lease, free as i64).await {
                Ok(d) => d,
                Err(e) => {
                    complain("could not lease due webhooks", &e);
                    continue;
                }
            };
            full = due.len() == free;
            let mut first = Some(first);
            for (task, tries) in due {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.deliver(task, tries).await;
                    drop(permit);
                });
            }
        }
    }

    async fn deliver(&self, task: Task, tries: i64) {
        let Some(url) = task.callback_url.clone() else {
            return;
        };
        let attempt = tries as i32 + 1;
        // One message per ending of the task (a task run again ends anew).
        let message_id = format!("{}.{}", task.id, task.attempts);
        let at = now_ms();
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "task.finished",
            "timestamp": rfc3339(at),
            "data": task,
        }))
        .unwrap_or_default();
        let started = tokio::time::Instant::now();
        let sent = self
            .plan
            .sender
            .send(
                &url,
                &message_id,
                at / 1000,
                body,
                self.plan.secret(&task.tenant),
            )
            .await;
        let cfg = &self.plan.cfg;
        let (state, next_at) = match &sent.error {
            None => ("delivered", None),
            Some(_) if attempt as u32 >= cfg.max_attempts => ("failed", None),
            Some(_) => {
                let wait = Backoff {
                    base: Duration::from_millis(cfg.backoff_ms),
                    max: Duration::from_millis(cfg.max_backoff_ms.max(cfg.backoff_ms)),
                }
                .delay((attempt - 1) as u32, None, &mut fastrand::Rng::new());
                ("pending", Some(now_ms() + wait.as_millis() as i64))
            }
        };
        if let Some(e) = &sent.error {
            debug!(task = %task.id, attempt, error = %e, state, "webhook try failed");
        }
        let d = Delivery {
            id: TaskId::new().to_string(),
            message_id,
            attempt,
            url,
            node: self.node_id.clone(),
            at: rfc3339(at),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            status: sent.status.map(i32::from),
            error: sent.error,
        };
        if let Err(e) = self
            .store
            .delivery_tried(task.id, &d, at, state, next_at)
            .await
        {
            // The lease lapses and a later pass tries again.
            warn!(task = %task.id, error = %e, "could not record a webhook try");
        }
    }
}
