//! Limits, `/work`, `/stats` and `/health` over a real socket.

mod common;

use std::time::{Duration, Instant};

use common::{Server, fast};
use serde_json::{Value, json};
use swarm_simbackend::SimConfig;

/// Sends `k` concurrent `POST /work`; returns (status, retry-after, body).
async fn burst(server: &Server, k: usize) -> Vec<(u16, Option<String>, Value)> {
    let tasks: Vec<_> = (0..k)
        .map(|i| {
            let (c, url) = (server.client.clone(), server.url("/work"));
            tokio::spawn(async move {
                let resp = c.post(url).json(&json!({ "i": i })).send().await.unwrap();
                let status = resp.status().as_u16();
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, retry, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn hard_limit_answers_429_with_retry_after() {
    let server = Server::start(SimConfig {
        hard_limit: 2,
        retry_after_s: 3,
        ..fast(400)
    })
    .await;
    let results = burst(&server, 5).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!((ok, refused.len()), (2, 3), "{results:?}");
    for (_, retry, body) in refused {
        assert_eq!(retry.as_deref(), Some("3"));
        assert_eq!(body["error"]["type"], "rate_limit_exceeded");
        assert_eq!(body["error"]["code"], "rate_limited");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("hard limit 2")
        );
    }
    // Once the in-flight requests are done, requests are admitted again.
    let again = burst(&server, 2).await;
    assert!(again.iter().all(|r| r.0 == 200), "{again:?}");
    let stats = server.finish().await;
    assert_eq!((stats.served, stats.refused, stats.inflight_max), (4, 3, 2));
    assert_eq!(stats.received, 7, "served and refused both arrived");
}

#[tokio::test]
async fn work_echoes_body_with_latency_and_inflight() {
    let server = Server::start(SimConfig {
        capacity: 1,
        ..fast(50)
    })
    .await;
    let t0 = Instant::now();
    let resp = server
        .client
        .post(server.url("/work"))
        .json(&json!({"task": "x", "n": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(body["ok"], true);
    assert_eq!(body["echo"], json!({"task": "x", "n": [1, 2]}));
    assert_eq!(body["latency_ms"], 50);
    assert_eq!(body["inflight_at_arrival"], 1);
    assert_eq!(
        body["result"],
        json!({"latency_ms": 50, "inflight_at_arrival": 1, "stalled": false}),
        "the figures again, as swarmd's http agent reads them"
    );

    // Past the knee (capacity 1), the second of two concurrent requests
    // takes twice as long.
    let mut results = burst(&server, 2).await;
    results.sort_by_key(|r| r.2["inflight_at_arrival"].as_u64());
    let lat: Vec<_> = results.iter().map(|r| r.2["latency_ms"].clone()).collect();
    assert_eq!(lat, vec![json!(50), json!(100)]);

    let resp = server
        .client
        .post(server.url("/work"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    server.finish().await;
}

#[tokio::test]
async fn stats_count_what_was_sent() {
    let server = Server::start(SimConfig {
        sample_ms: 10,
        ..fast(20)
    })
    .await;
    let health: Value = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let results = burst(&server, 3).await;
    assert!(results.iter().all(|r| r.0 == 200));
    let resp = server
        .client
        .post(server.url("/work"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Let one sampling period pass so the timeline shows the final counts.
    tokio::time::sleep(Duration::from_millis(15)).await;
    let s = server.stats().await;
    assert_eq!(
        (s.served, s.refused, s.errors, s.bad_requests),
        (3, 0, 0, 1)
    );
    assert_eq!((s.inflight, s.inflight_max), (0, 3));
    assert_eq!((s.latency_ms, s.capacity, s.hard_limit), (20, 0, 0));
    assert!(s.uptime_s > 0.0);
    let last = s.timeline.last().expect("timeline");
    assert_eq!(last.served, 3);
    assert!(
        s.timeline.iter().any(|p| p.inflight > 0),
        "{:?}",
        s.timeline
    );
    assert!(s.timeline.windows(2).all(|w| w[1].t_ms == w[0].t_ms + 10));

    let final_stats = server.finish().await;
    assert_eq!((final_stats.served, final_stats.bad_requests), (3, 1));
}

#[tokio::test]
async fn client_disconnect_releases_inflight() {
    let server = Server::start(fast(5_000)).await;
    common::install_crypto_provider();
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = impatient
        .post(server.url("/work"))
        .json(&json!({}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(impatient);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = server.stats().await;
        if s.inflight == 0 {
            assert_eq!((s.inflight_max, s.served), (1, 0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inflight stuck at {}",
            s.inflight
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.finish().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_for_stalled_requests() {
    let server = Server::start(SimConfig {
        stall_rate: 1.0,
        stall_ms: 60_000,
        ..fast(5)
    })
    .await;
    let (c, url) = (server.client.clone(), server.url("/work"));
    let stuck = tokio::spawn(async move { c.post(url).json(&json!({})).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = server.stats().await;
    assert_eq!((s.stalled, s.inflight), (1, 1));
    let t0 = Instant::now();
    let final_stats = server.finish().await;
    let waited = t0.elapsed();
    assert!(waited >= swarm_simbackend::SHUTDOWN_GRACE, "{waited:?}");
    assert!(waited < swarm_simbackend::SHUTDOWN_GRACE + Duration::from_secs(3));
    assert_eq!((final_stats.stalled, final_stats.served), (1, 0));
    stuck.abort();
}
