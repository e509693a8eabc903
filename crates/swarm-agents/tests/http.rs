//! The `http` backend against a real local axum server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use swarm_agents::http::{HttpAgent, HttpConfig};
use swarm_agents::{Agent, AgentContext, AgentError, AgentInput, Progress};
use swarm_core::TaskId;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    /// Requests that reached `/slow`.
    slow_started: Notify,
    /// Set when a `/slow` handler's future was dropped before finishing.
    slow_dropped: AtomicBool,
    slow_dropped_notify: Notify,
}

/// Sets the flag when the handler's future is dropped unfinished: hyper
/// drops it when the client closes the connection.
struct DropGuard(Arc<Seen>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.slow_dropped.store(true, Ordering::SeqCst);
        self.0.slow_dropped_notify.notify_one();
    }
}

async fn ok(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let request_id = headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    Json(json!({"result": {
        "body": body,
        "request_id": request_id,
        "peer_port": peer.port(),
        "api_key": headers.get("x-api-key").map(|v| v.to_str().unwrap().to_string()),
    }}))
}

async fn slow(State(seen): State<Arc<Seen>>) -> Json<Value> {
    let guard = DropGuard(seen.clone());
    seen.slow_started.notify_one();
    tokio::time::sleep(Duration::from_secs(60)).await;
    std::mem::forget(guard);
    Json(json!({"result": "too late"}))
}

async fn serve() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/slow", post(slow))
        .route(
            "/error",
            post(|| async {
                Json(json!({"error": {"code": "no_customer", "message": "customer 7 unknown", "retryable": false}}))
            }),
        )
        .route(
            "/busy",
            post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "7")],
                    "slow down please",
                )
            }),
        )
        .route(
            "/unavailable",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance") }),
        )
        .route(
            "/boom",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "kaboom: database on fire") }),
        )
        .route(
            "/reject",
            post(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "args.x must be a number") }),
        )
        .route(
            "/garbage",
            post(|| async { "<html>not json</html>".into_response() }),
        )
        .route(
            "/huge",
            post(|| async { Json(json!({"result": "x".repeat(4096)})) }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    (format!("http://{addr}"), seen)
}

fn agent(url: String) -> Arc<HttpAgent> {
    Arc::new(HttpAgent::new(HttpConfig::new(url)).expect("valid config"))
}

fn ctx(deadline: Duration) -> AgentContext {
    AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "http-0".into(),
        deadline: Instant::now() + deadline,
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
        task_type: "summarise".into(),
        title: Some("Q3".into()),
        description: None,
        args,
    }
}

async fn call(agent: &Arc<HttpAgent>) -> Result<Value, AgentError> {
    agent
        .clone()
        .run(ctx(Duration::from_secs(10)), input(json!({"n": 1})))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_the_task_and_returns_the_result() {
    let (base, _) = serve().await;
    let agent = agent(format!("{base}/ok"));
    // Only the shape of `args` is checked here; the instance owns the rest.
    assert!(agent.validate(&json!({"a": 1})).is_ok());
    assert!(agent.validate(&Value::Null).is_ok());
    assert!(agent.validate(&json!([1])).is_err());
    let mut c = ctx(Duration::from_secs(10));
    c.request_id = Some("req-xyz".into());
    let task_id = c.task_id.to_string();
    let out = agent.clone().run(c, input(json!({"n": 1}))).await.unwrap();
    assert_eq!(out["request_id"], "req-xyz");
    let body = &out["body"];
    assert_eq!(body["type"], "summarise");
    assert_eq!(body["args"], json!({"n": 1}));
    assert_eq!(body["title"], "Q3");
    assert_eq!(body["task_id"], task_id);
    assert_eq!(body["tenant"], "acme");
    assert!(body["id"].as_str().unwrap().starts_with(&task_id));
    let left = body["deadline_ms"].as_u64().unwrap();
    assert!(left > 5_000 && left <= 10_000, "{left}");

    // Pooled keep-alive: the next task reuses the connection.
    let again = call(&agent).await.unwrap();
    assert_eq!(again["peer_port"], out["peer_port"]);
    assert_eq!(again["request_id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_headers_are_sent() {
    let (base, _) = serve().await;
    let agent = Arc::new(
        HttpAgent::new(HttpConfig {
            headers: [("X-Api-Key".to_string(), "k-123".to_string())].into(),
            ..HttpConfig::new(format!("{base}/ok"))
        })
        .unwrap(),
    );
    assert_eq!(call(&agent).await.unwrap()["api_key"], "k-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_agent_errors() {
    let (base, _) = serve().await;
    let err = |path: &str| {
        let agent = agent(format!("{base}{path}"));
        async move { call(&agent).await.unwrap_err() }
    };

    assert_eq!(
        err("/error").await,
        AgentError::failed("no_customer", "customer 7 unknown")
    );

    match err("/busy").await {
        AgentError::Overloaded {
            message,
            retry_after,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert!(message.contains("429"), "{message}");
            assert!(message.contains("slow down please"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match err("/unavailable").await {
        AgentError::Overloaded { retry_after, .. } => assert_eq!(retry_after, None),
        other => panic!("{other:?}"),
    }

    let e = err("/boom").await;
    assert_eq!(e.code(), "backend_error");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("500"), "{e}");
    assert!(e.to_string().contains("kaboom: database on fire"), "{e}");

    let e = err("/reject").await;
    assert_eq!(e.code(), "backend_rejected");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("422"), "{e}");
    assert!(e.to_string().contains("args.x must be a number"), "{e}");

    let e = err("/garbage").await;
    assert_eq!(e.code(), "bad_backend_output");
    assert!(e.to_string().contains("<html>not json</html>"), "{e}");

    let e = err("/missing").await;
    assert_eq!(e.code(), "backend_rejected");
    assert!(e.to_string().contains("404"), "{e}");

    let small = Arc::new(
        HttpAgent::new(HttpConfig {
            max_response_bytes: 1024,
            ..HttpConfig::new(format!("{base}/huge"))
        })
        .unwrap(),
    );
    let e = call(&small).await.unwrap_err();
    assert_eq!(e.code(), "bad_backend_output");
    assert!(e.to_string().contains("larger than 1024"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retryable() {
    // Reserve a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = call(&agent(format!("http://127.0.0.1:{port}/run")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "backend_unreachable", "{e:?}");
    assert!(e.is_retryable());
}

/// Waits until the server noticed the client hang up on `/slow`.
async fn server_saw_abort(seen: &Seen) {
    tokio::time::timeout(Duration::from_secs(5), seen.slow_dropped_notify.notified())
        .await
        .expect("the server's handler was not dropped: the request was not aborted");
    assert!(seen.slow_dropped.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_times_out_and_aborts_the_request() {
    let (base, seen) = serve().await;
    let agent = agent(format!("{base}/slow"));
    let start = std::time::Instant::now();
    let e = agent
        .clone()
        .run(ctx(Duration::from_millis(400)), input(json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_secs(3),
        "{took:?}"
    );
    server_saw_abort(&seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_bounds_a_request_below_the_deadline() {
    let (base, seen) = serve().await;
    let agent = Arc::new(
        HttpAgent::new(HttpConfig {
            request_timeout_ms: Some(300),
            ..HttpConfig::new(format!("{base}/slow"))
        })
        .unwrap(),
    );
    let start = std::time::Instant::now();
    let e = call(&agent).await.unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    server_saw_abort(&seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_aborts_the_request() {
    let (base, seen) = serve().await;
    let agent = agent(format!("{base}/slow"));
    let c = ctx(Duration::from_secs(30));
    let token = c.cancel.clone();
    let run = tokio::spawn(agent.clone().run(c, input(json!({}))));
    tokio::time::timeout(Duration::from_secs(5), seen.slow_started.notified())
        .await
        .expect("the request reached the server");
    token.cancel();
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(e.code(), "cancelled");
    server_saw_abort(&seen).await;
}
