//! Provider rate-limit signals over real sockets: the `openai` and `http`
//! backends tell `AgentContext::provider` when a response (a success too)
//! shows a spent quota, and when a 429 asks to wait.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use swarm_agents::openai::{OpenAiAgent, OpenAiConfig};
use swarm_agents::{
    Agent, AgentContext, AgentError, AgentInput, HttpAgent, HttpConfig, ProviderPause,
    ProviderSignal, Quota,
};
use swarm_core::TaskId;
use swarm_simbackend::SimConfig;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Pauses = Arc<Mutex<Vec<ProviderPause>>>;

fn ctx() -> (AgentContext, Pauses) {
    let pauses: Pauses = Arc::default();
    let sink = Arc::clone(&pauses);
    let ctx = AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "llm-0".into(),
        deadline: Instant::now() + Duration::from_secs(10),
        cancel: CancellationToken::new(),
        progress: Default::default(),
        children: None,
        request_id: None,
        placed: Default::default(),
        provider: ProviderSignal::new(move |p| sink.lock().unwrap().push(p)),
    };
    (ctx, pauses)
}

fn input(args: Value) -> AgentInput {
    AgentInput {
        task_type: "llm".into(),
        title: None,
        description: None,
        args,
    }
}

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
    data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n\
    data: [DONE]\n\n";

/// A provider whose answers carry the rate-limit headers each route names.
async fn provider() -> String {
    let sse = |extra: &'static [(&'static str, &'static str)]| {
        move || async move {
            let mut resp = ([("content-type", "text/event-stream")], STREAM).into_response();
            for (k, v) in extra {
                resp.headers_mut().insert(*k, v.parse().unwrap());
            }
            resp
        }
    };
    let refuse = |extra: &'static [(&'static str, &'static str)]| {
        move || async move {
            let body = r#"{"error":{"message":"slow down","type":"rate_limit_exceeded"}}"#;
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
            for (k, v) in extra {
                resp.headers_mut().insert(*k, v.parse().unwrap());
            }
            resp
        }
    };
    let app = axum::Router::new()
        .route(
            "/spent/v1/chat/completions",
            post(sse(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1m30.5s"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "20ms"),
            ])),
        )
        .route(
            "/left/v1/chat/completions",
            post(sse(&[
                ("x-ratelimit-remaining-requests", "5"),
                ("x-ratelimit-reset-requests", "1s"),
            ])),
        )
        .route(
            "/retry/v1/chat/completions",
            post(refuse(&[("retry-after", "7")])),
        )
        .route(
            "/reset/v1/chat/completions",
            post(refuse(&[
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "20s"),
            ])),
        )
        .route(
            "/run",
            post(|| async {
                (
                    [
                        ("anthropic-ratelimit-requests-remaining", "0"),
                        // Long past: no pause from it.
                        ("anthropic-ratelimit-requests-reset", "2001-01-01T00:00:00Z"),
                        ("x-ratelimit-remaining-requests", "0"),
                        ("x-ratelimit-reset-requests", "2s"),
                    ],
                    axum::Json(json!({"result": 1})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn chat(base: &str, case: &str) -> (Result<Value, AgentError>, Vec<ProviderPause>) {
    let cfg = OpenAiConfig::new(format!("{base}/{case}/v1"), "m");
    let agent = Arc::new(OpenAiAgent::new(cfg).unwrap());
    let (ctx, pauses) = ctx();
    let r = agent.run(ctx, input(json!({"prompt": "hello"}))).await;
    let seen = pauses.lock().unwrap().clone();
    (r, seen)
}

fn pause(ms: u64, quota: Quota) -> ProviderPause {
    ProviderPause {
        delay: Duration::from_millis(ms),
        quota,
        remaining: 0,
    }
}

#[tokio::test]
async fn a_success_with_a_spent_quota_signals_the_longest_reset() {
    let base = provider().await;
    let (r, seen) = chat(&base, "spent").await;
    r.unwrap();
    assert_eq!(seen, [pause(90_500, Quota::Requests)]);

    // Nothing spent: the request quota's headroom, for the engine to weigh
    // against its calls in flight.
    let (r, seen) = chat(&base, "left").await;
    r.unwrap();
    assert_eq!(
        seen,
        [ProviderPause {
            delay: Duration::from_secs(1),
            quota: Quota::Requests,
            remaining: 5,
        }]
    );
}

#[tokio::test]
async fn a_429_signals_retry_after_or_the_reset() {
    let base = provider().await;
    let (r, seen) = chat(&base, "retry").await;
    match r {
        Err(AgentError::Overloaded { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen, [pause(7_000, Quota::Unknown)]);

    // No Retry-After: the reset of the spent quota stands in for it.
    let (r, seen) = chat(&base, "reset").await;
    match r {
        Err(AgentError::Overloaded { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(20)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen, [pause(20_000, Quota::Tokens)]);
}

#[tokio::test]
async fn the_http_backend_signals_too() {
    let base = provider().await;
    let agent = Arc::new(HttpAgent::new(HttpConfig::new(format!("{base}/run"))).unwrap());
    let (ctx, pauses) = ctx();
    assert_eq!(agent.run(ctx, input(json!({}))).await.unwrap(), json!(1));
    assert_eq!(*pauses.lock().unwrap(), [pause(2_000, Quota::Requests)]);
}

/// Against `swarmd sim-backend` with `rpm = 1`: the first call succeeds and
/// says the quota is spent until the window ends; the second is refused.
#[tokio::test]
async fn against_the_simulated_provider_with_a_quota() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = SimConfig {
        rpm: 1,
        window_ms: 1000,
        latency_ms: 0,
        token_ms: 0,
        seed: Some(1),
        ..SimConfig::default()
    };
    tokio::spawn(swarm_simbackend::serve(listener, cfg, async move {
        let _ = rx.await;
    }));
    let oai = OpenAiConfig::new(format!("{base}/v1"), "sim");
    let agent = Arc::new(OpenAiAgent::new(oai).unwrap());

    let (c, pauses) = ctx();
    agent
        .clone()
        .run(c, input(json!({"prompt": "hi"})))
        .await
        .unwrap();
    let first = pauses.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].quota, Quota::Requests);
    assert!(
        first[0].delay > Duration::ZERO && first[0].delay <= Duration::from_secs(1),
        "{first:?}"
    );

    let (c, pauses) = ctx();
    let r = agent.clone().run(c, input(json!({"prompt": "hi"}))).await;
    let seen = pauses.lock().unwrap().clone();
    if first[0].delay < Duration::from_millis(50) {
        // The window ended between the two calls: nothing to check.
        let _ = tx.send(());
        return;
    }
    match r {
        Err(AgentError::Overloaded { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("{other:?}"),
    }
    // Retry-After (1 s, rounded up) is at least the reset: it wins, and
    // the quota is named by the headers.
    assert_eq!(seen, [pause(1_000, Quota::Requests)]);
    let _ = tx.send(());
}
