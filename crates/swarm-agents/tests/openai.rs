//! The `openai` backend against a real simulated provider
//! (`swarm_simbackend::serve`, the code behind `swarmd sim-backend`) on a
//! real socket, streaming; and against a hand-written provider for what the
//! simulation does not do (headers, awkwardly split streams).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use swarm_agents::openai::{ChatRequest, Message, OpenAiAgent, OpenAiClient, OpenAiConfig};
use swarm_agents::{Agent, AgentContext, AgentError, AgentInput, Progress};
use swarm_core::TaskId;
use swarm_simbackend::{SimConfig, StatsSnapshot};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A simulated provider on 127.0.0.1:<free port>.
struct Sim {
    base: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Sim {
    async fn start(cfg: SimConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(swarm_simbackend::serve(listener, cfg, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            stop: Some(tx),
        }
    }

    fn config(&self) -> OpenAiConfig {
        OpenAiConfig::new(format!("{}/v1", self.base), "sim-large")
    }

    async fn stats(&self) -> StatsSnapshot {
        swarm_agents::install_crypto_provider();
        reqwest::get(format!("{}/stats", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stats once nothing is in flight (the server notices a client that
    /// left only when it next writes, so this polls).
    async fn settled(&self) -> StatsSnapshot {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.stats().await;
            if s.inflight == 0 || Instant::now() > until {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn sim(latency_ms: u64, token_ms: u64, reply_tokens: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        token_ms,
        reply_tokens,
        seed: Some(1),
        ..SimConfig::default()
    }
}

type Reports = Arc<Mutex<Vec<Value>>>;

fn ctx_for(timeout: Duration) -> (AgentContext, Reports) {
    let reports: Reports = Arc::default();
    let sink = reports.clone();
    let ctx = AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "llm-0".into(),
        deadline: Instant::now() + timeout,
        cancel: CancellationToken::new(),
        progress: Progress::new(move |v| sink.lock().unwrap().push(v)),
        children: None,
        request_id: Some("req-42".into()),
        placed: Default::default(),
        provider: Default::default(),
    };
    (ctx, reports)
}

fn input(args: Value) -> AgentInput {
    AgentInput {
        task_type: "llm".into(),
        title: None,
        description: None,
        args,
    }
}

fn tokens(reports: &Reports) -> Vec<String> {
    reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["step"], "token", "{r}");
            r["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn tokens_stream_in_order_and_join_to_the_content() {
    let sim = Sim::start(sim(10, 15, 12)).await;
    let agent = Arc::new(OpenAiAgent::new(sim.config()).unwrap());
    let (ctx, reports) = ctx_for(Duration::from_secs(10));
    let out = agent
        .run(
            ctx,
            input(json!({"system": "be brief", "prompt": "status of the db please"})),
        )
        .await
        .unwrap();
    let content = out["content"].as_str().unwrap();
    assert_eq!(
        content,
        "Simulated reply to: status of the db please lorem ipsum dolor sit "
    );
    assert_eq!(out["model"], "sim-large");
    assert_eq!(out["finish_reason"], "stop");
    let pieces = tokens(&reports);
    // Spaced 15 ms apart, the tokens come in many reads, each reported as
    // it arrives, in order.
    assert!(pieces.len() >= 6, "{pieces:?}");
    assert_eq!(pieces.concat(), content);
    let stats = sim.settled().await;
    assert_eq!((stats.served, stats.disconnected), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn max_tokens_from_args_cuts_a_scripted_reply() {
    let sim = Sim::start(SimConfig {
        replies: vec![swarm_simbackend::ScriptedReply {
            contains: "count".into(),
            reply: "one two three four five".into(),
        }],
        ..sim(5, 1, 16)
    })
    .await;
    let agent = Arc::new(OpenAiAgent::new(sim.config()).unwrap());
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    let out = agent
        .run(
            ctx,
            input(json!({"messages": [{"role": "user", "content": "count to five"}], "max_tokens": 3})),
        )
        .await
        .unwrap();
    assert_eq!(out["content"], "one two three ");
    assert_eq!(out["finish_reason"], "length");
}

#[tokio::test]
async fn a_full_provider_is_back_pressure_with_retry_after() {
    // Hard limit 1: a slow first request holds the only slot.
    let sim = Sim::start(SimConfig {
        hard_limit: 1,
        retry_after_s: 3,
        ..sim(2_000, 1, 4)
    })
    .await;
    let agent = Arc::new(OpenAiAgent::new(sim.config()).unwrap());
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    let first = tokio::spawn(agent.clone().run(ctx, input(json!({"prompt": "a"}))));
    let until = Instant::now() + Duration::from_secs(5);
    while sim.stats().await.inflight == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    let err = agent
        .clone()
        .run(ctx, input(json!({"prompt": "b"})))
        .await
        .unwrap_err();
    match &err {
        AgentError::Overloaded {
            message,
            retry_after,
        } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(3)));
            assert!(message.contains("429"), "{message}");
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(err.is_retryable());
    first.abort();
}

#[tokio::test]
async fn server_errors_are_retryable_client_errors_not() {
    let sim = Sim::start(SimConfig {
        error_rate: 1.0,
        error_status: 502,
        ..sim(1, 1, 4)
    })
    .await;
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    let err = Arc::new(OpenAiAgent::new(sim.config()).unwrap())
        .run(ctx, input(json!({"prompt": "a"})))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.is_retryable()), ("backend_error", true));
    assert!(err.to_string().contains("502"), "{err}");

    // A wrong base URL: the provider's 404 will not go away by retrying.
    let mut cfg = sim.config();
    cfg.base_url = format!("{}/v2", sim.base);
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    let err = Arc::new(OpenAiAgent::new(cfg).unwrap())
        .run(ctx, input(json!({"prompt": "a"})))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.is_retryable()),
        ("backend_rejected", false)
    );
    assert!(err.to_string().contains("/v2/chat/completions"), "{err}");

    // Nobody listening: retryable, and says so.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "m");
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    let err = Arc::new(OpenAiAgent::new(cfg).unwrap())
        .run(ctx, input(json!({"prompt": "a"})))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.is_retryable()),
        ("backend_unreachable", true)
    );
}

#[tokio::test]
async fn the_deadline_aborts_the_stream_and_the_provider_sees_the_client_leave() {
    // 40 tokens 50 ms apart: two seconds of streaming, cut at 400 ms.
    let sim = Sim::start(sim(10, 50, 40)).await;
    let agent = Arc::new(OpenAiAgent::new(sim.config()).unwrap());
    let (ctx, reports) = ctx_for(Duration::from_millis(400));
    let t0 = Instant::now();
    let err = agent
        .run(ctx, input(json!({"prompt": "a long story"})))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        t0.elapsed()
    );
    // Tokens streamed until then, but not the whole reply.
    let got = tokens(&reports).len();
    assert!(got >= 1, "some tokens before the deadline");
    let stats = sim.settled().await;
    assert_eq!(
        (stats.inflight, stats.disconnected, stats.served),
        (0, 1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn cancelling_the_task_aborts_the_stream() {
    let sim = Sim::start(sim(10, 50, 40)).await;
    let agent = Arc::new(OpenAiAgent::new(sim.config()).unwrap());
    let (ctx, _) = ctx_for(Duration::from_secs(30));
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let err = agent
        .run(ctx, input(json!({"prompt": "a long story"})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cancelled");
    let stats = sim.settled().await;
    assert_eq!((stats.inflight, stats.disconnected), (0, 1), "{stats:?}");
}

/// A provider written by hand: records the request, answers with a stream
/// cut into awkward pieces (mid-line, mid-character) with pauses between.
async fn handwritten_provider(seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((headers, serde_json::from_str(&body).unwrap()));
                let stream = "data: {\"model\":\"hand-1\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                    : a comment\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"Grüße, \"}}]}\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"wörld\"},\"finish_reason\":\"stop\"}],\
                    \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
                    data: [DONE]\n\n";
                let pieces: Vec<Vec<u8>> =
                    stream.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
                let body = futures_util::stream::iter(pieces).then(|p| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok::<_, std::io::Error>(p)
                });
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(body),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn request_shape_headers_and_a_split_stream() {
    let seen = Arc::default();
    let base = handwritten_provider(Arc::clone(&seen)).await;
    // A variable no one else sets: the test's own. SAFETY (set_var): set
    // once, before the client reads it, to the same value by any test.
    unsafe { std::env::set_var("SWARMD_TEST_OPENAI_KEY", "sk-test-123") };
    let cfg = OpenAiConfig {
        api_key_env: "SWARMD_TEST_OPENAI_KEY".into(),
        temperature: Some(0.2),
        max_tokens: 77,
        ..OpenAiConfig::new(base.clone(), "hand")
    };
    let client = OpenAiClient::new(cfg).unwrap();
    let (ctx, reports) = ctx_for(Duration::from_secs(10));
    let reply = client
        .complete(
            &ctx,
            Some("draft"),
            &ChatRequest {
                messages: vec![Message::new("user", "greet")],
                ..ChatRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.content, "Grüße, wörld");
    assert_eq!(reply.model, "hand-1");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(reply.usage.unwrap()["total_tokens"], 5);
    let reports = reports.lock().unwrap().clone();
    assert!(
        reports.iter().all(|r| r["source"] == "draft"),
        "{reports:?}"
    );
    let text: String = reports
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Grüße, wörld");

    let (headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], "Bearer sk-test-123");
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(
        body,
        json!({"model": "hand", "stream": true, "max_tokens": 77, "temperature": 0.2,
               "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "greet"}]})
    );

    // No key in the environment: no Authorization header at all.
    let cfg = OpenAiConfig {
        api_key_env: "SWARMD_TEST_OPENAI_KEY_UNSET".into(),
        ..OpenAiConfig::new(base, "hand")
    };
    let (ctx, _) = ctx_for(Duration::from_secs(10));
    OpenAiClient::new(cfg)
        .unwrap()
        .complete(
            &ctx,
            None,
            &ChatRequest {
                messages: vec![Message::new("user", "x")],
                ..ChatRequest::default()
            },
        )
        .await
        .unwrap();
    assert!(seen.lock().unwrap()[1].0.get("authorization").is_none());
}
