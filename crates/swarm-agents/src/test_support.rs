//! Helpers shared by the crate's unit tests.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use swarm_core::TaskId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentContext, AgentInput, Progress};
use crate::email::{Outbox, OutboxMessage};

/// An outbox that records what it is given.
#[derive(Default)]
pub(crate) struct RecordingOutbox {
    pub(crate) messages: Mutex<Vec<OutboxMessage>>,
    pub(crate) fail: bool,
}

impl Outbox for RecordingOutbox {
    fn deliver(&self, msg: OutboxMessage) -> BoxFuture<'static, Result<String, String>> {
        let result = if self.fail {
            Err("disk full".to_string())
        } else {
            let mut list = self.messages.lock().unwrap();
            list.push(msg);
            Ok(format!("ob-{}", list.len()))
        };
        Box::pin(async move { result })
    }
}

/// A context for tenant `acme`, an hour from its deadline, not cancelled.
pub(crate) fn ctx() -> AgentContext {
    AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "test-0".into(),
        deadline: Instant::now() + Duration::from_secs(3600),
        cancel: CancellationToken::new(),
        children: None,
        progress: Progress::default(),
        request_id: None,
        placed: Default::default(),
        provider: Default::default(),
    }
}

/// An input with only `args` (agents do not look at the task type).
pub(crate) fn input(args: Value) -> AgentInput {
    AgentInput {
        task_type: "test".into(),
        title: None,
        description: None,
        args,
    }
}
