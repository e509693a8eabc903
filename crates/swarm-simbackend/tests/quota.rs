//! `rpm`/`tpm` quotas over a real socket: the `x-ratelimit-*` headers,
//! the `429`s past a quota and the window's reset.

mod common;

use std::time::Duration;

use common::{Server, fast};
use reqwest::Response;
use serde_json::{Value, json};
use swarm_simbackend::SimConfig;

const WINDOW_MS: u64 = 500;

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// `NNNms` or `1s` (the resets of a window of at most a second).
fn reset_ms(text: &str) -> u64 {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().unwrap();
    }
    let secs: f64 = text.strip_suffix('s').unwrap().parse().unwrap();
    (secs * 1000.0).round() as u64
}

async fn work(server: &Server) -> Response {
    server
        .client
        .post(server.url("/work"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap()
}

/// Waits for the next window, so a test has (almost) a whole one.
async fn next_window(resp: &Response) {
    let reset = header(resp, "x-ratelimit-reset-requests")
        .or_else(|| header(resp, "x-ratelimit-reset-tokens"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(reset_ms(&reset) + 10)).await;
}

#[tokio::test]
async fn rpm_counts_requests_per_window_and_answers_429_with_retry_after() {
    let server = Server::start(SimConfig {
        rpm: 2,
        window_ms: WINDOW_MS,
        ..fast(0)
    })
    .await;
    next_window(&work(&server).await).await;

    let first = work(&server).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-limit-requests").as_deref(),
        Some("2")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );
    let reset = reset_ms(&header(&first, "x-ratelimit-reset-requests").unwrap());
    assert!((WINDOW_MS - 200..=WINDOW_MS).contains(&reset), "{reset}");
    // No tpm: no token headers.
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), None);

    let second = work(&server).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        header(&second, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );

    let third = work(&server).await;
    assert_eq!(third.status(), 429);
    assert_eq!(header(&third, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&third, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&third, "x-ratelimit-limit-requests").as_deref(),
        Some("2")
    );
    let reset = reset_ms(&header(&third, "x-ratelimit-reset-requests").unwrap());
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests"),
        "{body}"
    );

    // The next window has the whole quota again.
    tokio::time::sleep(Duration::from_millis(reset + 10)).await;
    let again = work(&server).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        header(&again, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );

    let stats = server.stats().await;
    assert_eq!(stats.rate_limited, 1, "{stats:?}");
    assert_eq!(stats.served, 4, "{stats:?}");
    assert_eq!(stats.received, 5, "{stats:?}");
    assert_eq!(stats.refused, 0, "{stats:?}");
    let stats = server.finish().await;
    assert_eq!(stats.rate_limited, 1);
}

fn chat(stream: bool) -> Value {
    // 4 prompt tokens (words), and a reply of `reply_tokens`.
    json!({
        "model": "sim",
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three four"}]
    })
}

async fn post_chat(server: &Server, stream: bool) -> Response {
    server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&chat(stream))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tpm_counts_prompt_and_completion_tokens() {
    // Each request costs 4 + 6 = 10 tokens: two fit in 25, a third not.
    let server = Server::start(SimConfig {
        tpm: 25,
        rpm: 100,
        reply_tokens: 6,
        token_ms: 0,
        window_ms: WINDOW_MS,
        ..fast(0)
    })
    .await;
    next_window(&post_chat(&server, false).await).await;

    let first = post_chat(&server, false).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens").as_deref(),
        Some("25")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens").as_deref(),
        Some("15")
    );
    assert!(header(&first, "x-ratelimit-reset-tokens").is_some());
    assert_eq!(
        header(&first, "x-ratelimit-remaining-requests").as_deref(),
        Some("99")
    );
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["usage"]["total_tokens"], 10, "{body}");

    // A streamed reply carries the headers too.
    let second = post_chat(&server, true).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        header(&second, "x-ratelimit-remaining-tokens").as_deref(),
        Some("5")
    );
    let text = second.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");

    let third = post_chat(&server, false).await;
    assert_eq!(third.status(), 429);
    assert_eq!(header(&third, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&third, "x-ratelimit-remaining-tokens").as_deref(),
        Some("5")
    );
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens"),
        "{body}"
    );

    let stats = server.finish().await;
    assert_eq!((stats.rate_limited, stats.served), (1, 3), "{stats:?}");
}

#[tokio::test]
async fn without_quotas_no_headers() {
    let server = Server::start(fast(0)).await;
    let resp = work(&server).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("x-ratelimit")),
        "{:?}",
        resp.headers()
    );
    let stats = server.finish().await;
    assert_eq!(stats.rate_limited, 0);
}
