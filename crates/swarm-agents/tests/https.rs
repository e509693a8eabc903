//! The `http` and `openai` backends over https, against a real TLS server
//! (axum behind tokio-rustls on a real socket) whose certificate is signed
//! by a test CA the system does not know.

#[path = "support/tls_server.rs"]
mod tls_server;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use swarm_agents::http::{HttpAgent, HttpConfig};
use swarm_agents::openai::{ChatRequest, Message, OpenAiClient, OpenAiConfig};
use swarm_agents::{Agent, AgentContext, AgentError, AgentInput, Progress, pool_agent};
use swarm_core::TaskId;
use swarm_core::config::Config;
use tls_server::{ca_file, serve_tls};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn app() -> Router {
    Router::new()
        .route(
            "/run",
            post(|Json(body): Json<Value>| async move {
                Json(json!({"result": {"args": body["args"], "tls": true}}))
            }),
        )
        .route("/health", get(|| async { "ok" }))
        // A provider that answers plain JSON (the client reads that too).
        .route(
            "/v1/chat/completions",
            post(|| async {
                Json(json!({
                    "model": "tls-model",
                    "choices": [{"message": {"role": "assistant", "content": "over tls"},
                                 "finish_reason": "stop"}],
                }))
            }),
        )
}

fn ctx() -> AgentContext {
    AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "https-0".into(),
        deadline: Instant::now() + Duration::from_secs(10),
        cancel: CancellationToken::new(),
        children: None,
        progress: Progress::default(),
        request_id: None,
        placed: Default::default(),
        provider: Default::default(),
    }
}

async fn run(agent: Arc<dyn Agent>) -> Result<Value, AgentError> {
    let input = AgentInput {
        task_type: "t".into(),
        title: None,
        description: None,
        args: json!({"n": 7}),
    };
    agent.run(ctx(), input).await
}

fn http_agent(port: u16, ca: bool) -> Arc<dyn Agent> {
    let cfg = HttpConfig {
        ca_file: ca.then(ca_file),
        ..HttpConfig::new(format!("https://localhost:{port}/run"))
    };
    Arc::new(HttpAgent::new(cfg).expect("valid config"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_works_with_the_ca_in_ca_file() {
    let port = serve_tls(app()).await;
    let out = run(http_agent(port, true)).await.expect("https call");
    assert_eq!(out, json!({"args": {"n": 7}, "tls": true}));
    // By IP too: the certificate names 127.0.0.1.
    let cfg = HttpConfig {
        ca_file: Some(ca_file()),
        ..HttpConfig::new(format!("https://127.0.0.1:{port}/run"))
    };
    let out = run(Arc::new(HttpAgent::new(cfg).unwrap())).await.unwrap();
    assert_eq!(out["tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_is_a_retryable_unreachable_not_a_panic() {
    let port = serve_tls(app()).await;
    let err = run(http_agent(port, false)).await.unwrap_err();
    let AgentError::Failed {
        code,
        message,
        retryable,
    } = &err
    else {
        panic!("expected a failure, got {err:?}");
    };
    assert_eq!(code, "backend_unreachable", "{message}");
    assert!(*retryable, "another instance may have a good certificate");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains("ca_file"), "says what to do: {message}");
    // The wrong name fails the same way, CA or not.
    let cfg = HttpConfig {
        ca_file: Some(ca_file()),
        ..HttpConfig::new(format!("https://127.0.0.2:{port}/run"))
    };
    // 127.0.0.2 reaches the same listener only where the OS routes all of
    // 127/8 to lo (Linux does); elsewhere it is refused, also unreachable.
    let err = run(Arc::new(HttpAgent::new(cfg).unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Failed { code, .. } if code == "backend_unreachable"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_openai_provider_with_ca_file() {
    let port = serve_tls(app()).await;
    let mut cfg = OpenAiConfig::new(format!("https://localhost:{port}/v1"), "m");
    cfg.api_key_env = "SWARM_TEST_NO_SUCH_KEY".into();
    cfg.ca_file = Some(ca_file());
    let client = OpenAiClient::new(cfg.clone()).expect("client");
    let req = ChatRequest {
        messages: vec![Message::new("user", "hi")],
        ..ChatRequest::default()
    };
    let reply = client.complete(&ctx(), None, &req).await.expect("reply");
    assert_eq!(reply.content, "over tls");
    cfg.ca_file = None;
    let err = OpenAiClient::new(cfg)
        .unwrap()
        .complete(&ctx(), None, &req)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Failed { code, retryable: true, .. } if code == "backend_unreachable"),
        "{err:?}"
    );
}

fn pool_error(name: &str, toml: &str) -> String {
    let cfg = Config::from_toml(toml).expect("config parses");
    match pool_agent(name, &cfg.pools[name]) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_bad_ca_file_is_a_config_error_naming_the_key() {
    let err = pool_error(
        "remote",
        "[pools.remote]\nagent = \"http\"\n[pools.remote.http]\n\
         urls = [\"https://localhost:1/run\"]\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert!(
        err.starts_with("pools.remote.http.ca_file: cannot read `/nonexistent/ca.pem`"),
        "{err}"
    );
    // Also when health checks, which read it first, are on.
    let err = pool_error(
        "remote",
        "[pools.remote]\nagent = \"http\"\n[pools.remote.http]\n\
         urls = [\"https://localhost:1/run\"]\nca_file = \"/nonexistent/ca.pem\"\n\
         health_path = \"/health\"\n",
    );
    assert!(err.starts_with("pools.remote.http.ca_file: "), "{err}");
    let err = pool_error(
        "llm",
        "[pools.llm]\nagent = \"openai\"\n[pools.llm.openai]\n\
         base_url = \"https://localhost:1/v1\"\nmodel = \"m\"\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert!(
        err.starts_with("pools.llm.openai.ca_file: cannot read"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_https_instances_with_health_checks() {
    let port = serve_tls(app()).await;
    let toml = format!(
        "[pools.remote]\nagent = \"http\"\n[pools.remote.http]\n\
         urls = [\"https://localhost:{port}/run\"]\nca_file = \"{}\"\n\
         health_path = \"/health\"\nhealth_interval_ms = 50\n",
        ca_file().display()
    );
    let cfg = Config::from_toml(&toml).unwrap();
    let agent = pool_agent("remote", &cfg.pools["remote"])
        .unwrap()
        .expect("a pool agent");
    // Several health rounds pass; a failing probe (no `ca_file` for the
    // probe client, say) would have ejected the only instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snapshot = agent.balanced().expect("a balanced pool").snapshot();
    let state = format!("{:?}", snapshot.instances[0].state);
    assert_eq!(state, "Healthy", "{snapshot:?}");
    for _ in 0..3 {
        let out = run(agent.clone()).await.expect("served over https");
        assert_eq!(out["tls"], true);
    }
}
