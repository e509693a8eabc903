//! `echo`: returns its input. The cheapest possible agent, for measuring the
//! server around the work.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};

/// Returns `{"echo": args}` (plus title, description and the request id
/// when given).
#[derive(Debug, Default)]
pub struct EchoAgent;

impl Agent for EchoAgent {
    fn kind(&self) -> &'static str {
        "echo"
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let mut out = json!({ "echo": input.args });
            if let Some(t) = input.title {
                out["title"] = Value::String(t);
            }
            if let Some(d) = input.description {
                out["description"] = Value::String(d);
            }
            // Shows the request id reaches agents (what an HTTP agent would
            // forward as `X-Request-Id`).
            if let Some(r) = ctx.request_id {
                out["request_id"] = Value::String(r);
            }
            Ok(out)
        })
    }
}
