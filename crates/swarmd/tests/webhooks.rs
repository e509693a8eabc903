//! Completion webhooks over real sockets, on SQLite and PostgreSQL (issue
//! 17, part 4): a finished task is POSTed to its `callback_url`, signed by
//! the Standard Webhooks scheme (checked here with ring, not with the code
//! under test); a receiver that is down for 10 s still gets every delivery,
//! once each; each try is listed; callbacks go only to allowed hosts.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::{Backend, TestServer};

/// 32 bytes of key, as `whsec_` + base64.
const KEY: [u8; 32] = *b"swarmd-webhook-test-key-32-bytes";

fn secret() -> String {
    format!("whsec_{}", STANDARD.encode(KEY))
}

/// One message as the receiver saw it, its signature checked.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Received>>>);

impl Inbox {
    fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// Checks the Standard Webhooks signature: HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the key, base64, after `v1,`.
async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &KEY);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&body);
    let Some(mac) = sig
        .strip_prefix("v1,")
        .and_then(|b| STANDARD.decode(b).ok())
    else {
        return StatusCode::UNAUTHORIZED;
    };
    if ring::hmac::verify(&key, &signed, &mac).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let age = ts.parse::<i64>().map(|t| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - t
    });
    if !matches!(age, Ok(a) if (-5..=300).contains(&a)) {
        return StatusCode::BAD_REQUEST;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inbox.0.lock().unwrap().push(Received { id, body });
    StatusCode::NO_CONTENT
}

/// A receiver on `listener`.
fn serve(listener: tokio::net::TcpListener, inbox: Inbox) {
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(inbox);
    tokio::spawn(async move { axum::serve(listener, app).await });
}

fn config(extra: &str) -> String {
    format!(
        "[webhooks]\nallow_hosts = [\"127.0.0.1\"]\nsecret = \"{}\"\nbackoff_ms = 200\nmax_backoff_ms = 1000\nmax_attempts = 40\n{extra}",
        secret()
    )
}

async fn wait_state(s: &TestServer, id: &str, want: &str) -> Value {
    for _ in 0..600 {
        let t = s.get(&format!("/api/tasks/{id}")).await.body;
        if t["callback_state"] == want {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never reached callback_state {want}");
}

async fn a_finished_task_is_delivered_signed(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let inbox = Inbox::default();
    serve(listener, inbox.clone());
    let Some(s) = TestServer::start(backend, &config("")).await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "args": {"n": 7}, "callback_url": url, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let id = r.id();
    let t = wait_state(&s, &id, "delivered").await;
    assert_eq!(t["callback_url"], url.as_str(), "{t}");
    let got = inbox.all();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body["type"], "task.finished");
    assert_eq!(got[0].body["data"]["id"], id.as_str());
    assert_eq!(got[0].body["data"]["status"], "succeeded");
    assert_eq!(got[0].body["data"]["result"]["echo"]["n"], 7);
    let d = s.get(&format!("/api/tasks/{id}/deliveries")).await;
    assert_eq!(d.status, 200, "{}", d.text);
    let tries = d.body["deliveries"].as_array().unwrap();
    assert_eq!(tries.len(), 1, "{}", d.text);
    assert_eq!(tries[0]["status"], 204, "{}", d.text);
    assert_eq!(tries[0]["message_id"], got[0].id.as_str(), "{}", d.text);
    assert!(tries[0]["error"].is_null(), "{}", d.text);

    // Run again, it is a new message.
    let failed = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 1, "fail_rate": 1.0}, "callback_url": url, "wait_ms": 5000}),
        )
        .await;
    let fid = failed.id();
    wait_state(&s, &fid, "delivered").await;
    let r = s.post(&format!("/api/tasks/{fid}/retry"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    s.wait_done(&fid).await;
    wait_state(&s, &fid, "delivered").await;
    let ids: Vec<String> = inbox
        .all()
        .into_iter()
        .filter(|m| m.body["data"]["id"] == fid.as_str())
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1], "a rerun's ending is a new message");
}

async fn a_receiver_down_for_ten_seconds_gets_every_delivery_once(backend: Backend) {
    // A port with nobody behind it yet: connections are refused.
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let Some(s) = TestServer::start(backend, &config("")).await else {
        return;
    };
    let mut ids = Vec::new();
    for n in 0..20 {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": "echo", "args": {"n": n}, "callback_url": url}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.id());
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pending = s.get(&format!("/api/tasks/{}", ids[0])).await.body;
    assert_eq!(pending["callback_state"], "pending", "{pending}");
    let inbox = Inbox::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    serve(listener, inbox.clone());
    for id in &ids {
        wait_state(&s, id, "delivered").await;
    }
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for m in inbox.all() {
        *per_task
            .entry(m.body["data"]["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_task.len(), 20, "{per_task:?}");
    assert!(
        per_task.values().all(|n| *n == 1),
        "each once: {per_task:?}"
    );
    // The tries before it came up failed, and say why.
    let d = s.get(&format!("/api/tasks/{}/deliveries", ids[0])).await;
    let tries = d.body["deliveries"].as_array().unwrap();
    assert!(tries.len() >= 3, "{}", d.text);
    let last = tries.last().unwrap();
    assert_eq!(last["status"], 204, "{}", d.text);
    for t in &tries[..tries.len() - 1] {
        assert!(
            t["status"].is_null() && t["error"].is_string(),
            "{}",
            d.text
        );
    }
}

async fn callbacks_go_only_to_allowed_hosts(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let inbox = Inbox::default();
    serve(listener, inbox.clone());
    let tenant = format!("[webhooks.tenants.acme]\nurl = \"{url}\"\n");
    let Some(s) = TestServer::start(backend, &config(&tenant)).await else {
        return;
    };
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "callback_url": "http://example.com/hook"}),
    )
    .await
    .assert_error(422, "host_not_allowed", Some("callback_url"));
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "callback_url": "ftp://127.0.0.1/x"}),
    )
    .await
    .assert_error(422, "invalid_field", Some("callback_url"));
    // The tenant's default applies when the task names none.
    let r = s
        .post_with(
            "/api/tasks",
            &json!({"type": "echo", "wait_ms": 5000}),
            &[("x-tenant", "acme")],
        )
        .await;
    assert_eq!(r.body["callback_url"], url.as_str(), "{}", r.text);
    // Other tenants have none.
    let r = s
        .post("/api/tasks", &json!({"type": "echo", "wait_ms": 5000}))
        .await;
    assert!(r.body.get("callback_url").is_none(), "{}", r.text);
}

on_both_backends!(
    a_finished_task_is_delivered_signed,
    a_receiver_down_for_ten_seconds_gets_every_delivery_once,
    callbacks_go_only_to_allowed_hosts,
);
