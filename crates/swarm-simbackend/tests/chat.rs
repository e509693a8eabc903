//! `POST /v1/chat/completions` over a real socket.

mod common;

use std::time::{Duration, Instant};

use common::{Server, fast};
use serde_json::{Value, json};
use swarm_simbackend::SimConfig;

fn request(stream: bool) -> Value {
    json!({
        "model": "sim-large",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "summarise the quarterly report please"}
        ]
    })
}

#[tokio::test]
async fn non_stream_completion_has_openai_shape() {
    let server = Server::start(SimConfig {
        reply_tokens: 10,
        ..fast(20)
    })
    .await;
    let t0 = Instant::now();
    let resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(20));

    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "sim-large");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "Simulated reply to: summarise the quarterly report please lorem ipsum"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 8);
    assert_eq!(body["usage"]["completion_tokens"], 10);
    assert_eq!(body["usage"]["total_tokens"], 18);

    // max_tokens lowers the reply length.
    let mut req = request(false);
    req["max_tokens"] = json!(4);
    let body: Value = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Simulated reply to: summarise"
    );
    assert_eq!(body["usage"]["completion_tokens"], 4);

    let stats = server.finish().await;
    assert_eq!(stats.served, 2);
}

/// Reads a server-sent-events body; returns each `data:` payload with the
/// time since `t0` at which it was complete.
async fn read_events(mut resp: reqwest::Response, t0: Instant) -> Vec<(String, Duration)> {
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push((data.trim_start().to_owned(), t0.elapsed()));
                }
            }
        }
    }
    assert!(buf.trim().is_empty(), "trailing bytes: {buf:?}");
    events
}

#[tokio::test]
async fn stream_sends_role_tokens_stop_and_done_spaced_in_time() {
    let (tokens, token_ms) = (6u64, 40u64);
    let server = Server::start(SimConfig {
        reply_tokens: tokens,
        token_ms,
        ..fast(30)
    })
    .await;
    let t0 = Instant::now();
    let resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let events = read_events(resp, t0).await;
    let total = t0.elapsed();

    assert_eq!(events.len() as u64, 1 + tokens + 1 + 1, "{events:?}");
    let (last, _) = events.last().unwrap();
    assert_eq!(last, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(d, _)| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], "sim-large");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant"})
    );
    let text: String = chunks[1..=tokens as usize]
        .iter()
        .map(|c| {
            assert!(c["choices"][0]["finish_reason"].is_null());
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "Simulated reply to: summarise the quarterly ");
    let stop = &chunks[tokens as usize + 1]["choices"][0];
    assert_eq!(stop["finish_reason"], "stop");
    assert_eq!(stop["delta"], json!({}));

    // Time to first token is the service time; tokens are spaced.
    assert!(events[0].1 >= Duration::from_millis(30));
    assert!(
        total >= Duration::from_millis(tokens * token_ms),
        "{total:?}"
    );
    let spread = events[tokens as usize].1 - events[1].1;
    assert!(
        spread >= Duration::from_millis((tokens - 1) * token_ms),
        "{spread:?}"
    );

    let stats = server.finish().await;
    assert_eq!((stats.served, stats.inflight), (1, 0));
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let server = Server::start(fast(5)).await;
    let url = server.url("/v1/chat/completions");
    let cases: [(&str, Value); 4] = [
        ("{not json", Value::Null),
        (r#"{"model":"m"}"#, json!("messages")),
        (r#"{"model":"m","messages":[]}"#, json!("messages")),
        (
            r#"{"model":"m","messages":[{"role":"user"}]}"#,
            json!("messages"),
        ),
    ];
    for (body, param) in &cases {
        let resp = server
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(&err["error"]["param"], param, "{body}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    let resp = server.client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let stats = server.finish().await;
    assert_eq!((stats.bad_requests, stats.served), (4, 0));
}

#[tokio::test]
async fn injected_failure_in_stream_mode_is_plain_json() {
    let server = Server::start(SimConfig {
        error_rate: 1.0,
        error_status: 503,
        ..fast(10)
    })
    .await;
    let resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(
        err,
        json!({"error": {"message": "injected failure", "type": "server_error"}})
    );
    let stats = server.finish().await;
    assert_eq!((stats.errors, stats.served, stats.inflight), (1, 0, 0));
}

#[tokio::test]
async fn scripted_reply_streams_verbatim_and_plain() {
    let reply = "{\"edits\": [\n  {\"op\": \"replace\"}\n]}";
    let server = Server::start(SimConfig {
        token_ms: 1,
        replies: vec![swarm_simbackend::ScriptedReply {
            contains: "quarterly".into(),
            reply: reply.into(),
        }],
        ..fast(5)
    })
    .await;
    let resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&request(true))
        .send()
        .await
        .unwrap();
    let events = read_events(resp, Instant::now()).await;
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(d, _)| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, reply);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    let body: Value = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&request(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], reply);
    let stats = server.finish().await;
    assert_eq!((stats.served, stats.disconnected), (2, 0));
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_counted_as_disconnected() {
    let server = Server::start(SimConfig {
        token_ms: 200,
        reply_tokens: 50,
        ..fast(5)
    })
    .await;
    let mut resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&request(true))
        .send()
        .await
        .unwrap();
    // The role chunk arrives; then the client hangs up mid-stream.
    assert!(resp.chunk().await.unwrap().is_some());
    assert_eq!(server.stats().await.inflight, 1);
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = server.stats().await;
        if s.inflight == 0 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((stats.inflight, stats.disconnected), (0, 1), "{stats:?}");
}
