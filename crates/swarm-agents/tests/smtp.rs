//! Email over a real SMTP server (aiosmtpd; without it the tests that need
//! it are reported as ignored, unless `SWARMD_TEST_REQUIRE_ALL=1`).

#[path = "support/needs.rs"]
mod needs;
#[path = "support/smtp_server.rs"]
mod smtp_server;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use smtp_server::SmtpServer;
use swarm_agents::communications::CommunicationsAgent;
use swarm_agents::email::EmailAgent;
use swarm_agents::{Agent, AgentContext, AgentInput, Outbox, OutboxMessage, Progress};
use swarm_core::TaskId;
use swarm_core::config::{SmtpConfig, SmtpSecurity};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// With SMTP configured the outbox must not be used; it refuses.
struct NoOutbox;

impl Outbox for NoOutbox {
    fn deliver(&self, _msg: OutboxMessage) -> BoxFuture<'static, Result<String, String>> {
        Box::pin(async { Err("the outbox must not be used when SMTP is configured".to_string()) })
    }
}

fn ctx() -> AgentContext {
    AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "email-0".into(),
        deadline: Instant::now() + Duration::from_secs(30),
        cancel: CancellationToken::new(),
        children: None,
        progress: Progress::default(),
        request_id: None,
        placed: Default::default(),
        provider: Default::default(),
    }
}

fn input(args: Value) -> AgentInput {
    AgentInput {
        task_type: "email".into(),
        title: None,
        description: None,
        args,
    }
}

fn email_agent(server: &SmtpServer) -> Arc<EmailAgent> {
    let cfg = SmtpConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        security: SmtpSecurity::None,
        from: "Swarm Tester <tester@example.com>".into(),
        pool_size: 2,
        timeout_ms: 5_000,
        ..SmtpConfig::default()
    };
    Arc::new(EmailAgent::new(Some(&cfg), Arc::new(NoOutbox)).expect("valid smtp config"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "aiosmtpd",
    ignore = "needs aiosmtpd: pip install aiosmtpd"
)]
async fn email_round_trip_over_smtp() {
    let server = SmtpServer::start();
    let agent = email_agent(&server);

    let out = agent
        .clone()
        .run(
            ctx(),
            input(json!({
                "to": ["ops@example.com"],
                "cc": "Lead <lead@example.com>",
                "subject": "Round trip check 4711",
                "body": "The database is back.\nNothing else to report.",
            })),
        )
        .await
        .expect("send over smtp");

    assert_eq!(out["transport"], "smtp");
    assert_eq!(out["to"], json!(["ops@example.com"]));
    let response = out["smtp_response"].as_str().unwrap();
    assert!(response.starts_with("250"), "{response}");
    let message_id = out["message_id"].as_str().unwrap().to_string();
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@swarmd>"),
        "{message_id}"
    );

    let msgs = server.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let raw = &msgs[0];
    assert!(raw.contains("Subject: Round trip check 4711"), "{raw}");
    assert!(raw.contains("To: ops@example.com"), "{raw}");
    assert!(raw.contains("Cc: Lead <lead@example.com>"), "{raw}");
    // lettre quotes a display name with a space in it.
    assert!(
        raw.contains("From: \"Swarm Tester\" <tester@example.com>"),
        "{raw}"
    );
    assert!(raw.contains(&format!("Message-ID: {message_id}")), "{raw}");
    assert!(raw.contains("The database is back."), "{raw}");
    assert!(raw.contains("Nothing else to report."), "{raw}");
    // The envelope carries every recipient, the Cc included.
    assert!(
        raw.contains("X-RcptTo: ops@example.com, lead@example.com"),
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "aiosmtpd",
    ignore = "needs aiosmtpd: pip install aiosmtpd"
)]
async fn pooled_transport_sends_concurrently() {
    let server = SmtpServer::start();
    let agent = email_agent(&server);

    let sends = (0..5).map(|i| {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .run(
                    ctx(),
                    input(json!({"to": "ops@example.com", "subject": format!("Batch message {i}"), "body": "b"})),
                )
                .await
        })
    });
    for s in sends {
        s.await.unwrap().expect("send");
    }
    let msgs = server.wait_for_messages(5, Duration::from_secs(5));
    assert_eq!(msgs.len(), 5);
    for i in 0..5 {
        let subject = format!("Subject: Batch message {i}");
        assert!(
            msgs.iter().any(|m| m.contains(&subject)),
            "{subject} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "aiosmtpd",
    ignore = "needs aiosmtpd: pip install aiosmtpd"
)]
async fn communications_workflow_delivers_over_smtp() {
    let server = SmtpServer::start();
    let comms = Arc::new(CommunicationsAgent::new(email_agent(&server)));

    let out = comms
        .run(
            ctx(),
            input(json!({"to": "ops@example.com", "subject": "Outage", "body": "db down, eta 1h"})),
        )
        .await
        .expect("workflow");
    assert_eq!(out["delivery"]["transport"], "smtp");
    assert_eq!(out["final"]["subject"], "Outage: Database down, ETA 1 hour");

    let msgs = server.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1);
    let raw = &msgs[0];
    assert!(
        raw.contains("Subject: Outage: Database down, ETA 1 hour"),
        "{raw}"
    );
    for line in [
        "Hello,",
        "Database down, ETA 1 hour.",
        "Best regards,",
        "SwarmDirector",
    ] {
        assert!(raw.contains(line), "{line:?} missing from {raw}");
    }
}
