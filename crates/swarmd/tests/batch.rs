//! `POST /api/tasks/batch` over a real socket, on SQLite and PostgreSQL:
//! an answer per item in order, one commit for the whole batch, per-item
//! errors and idempotency keys.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer};

/// A small writer batch, so a batch submit larger than it shows whether it
/// still goes as one commit, and a department that starts one task at a
/// time, so the only other writes are one start and the odd heartbeat.
const SMALL_BATCHES: &str = "[database]\nbatch_max = 8\n[pools.held]\nagent = \"sim\"\nconcurrency = 1\n[pools.held.queue]\ntarget_delay_ms = 0\n";

async fn a_batch_is_stored_in_one_commit_with_an_answer_per_item(backend: Backend) {
    let Some(s) = TestServer::start(backend, SMALL_BATCHES).await else {
        return;
    };
    let tasks: Vec<Value> = (0..100)
        .map(|i| json!({"type": "held", "title": format!("t{i}"), "args": {"latency_ms": 30000}}))
        .collect();
    // Between two readings of the writer's commits only this batch, the
    // first task's start and the odd heartbeat write; one insert op per item
    // would take 13 commits of 8 at least.
    let before = s.engine.store().pool_stats().batches;
    let r = s.post("/api/tasks/batch", &json!({ "tasks": tasks })).await;
    let after = s.engine.store().pool_stats().batches;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 100);
    assert!(
        after - before <= 3,
        "{} commits for one batch",
        after - before
    );
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["status"], 202, "{item}");
        assert!(item.get("error").is_none(), "{item}");
        // In order: item i is the task titled i, and it is stored.
        let id = item["task"]["id"].as_str().expect("id");
        let stored = s.get(&format!("/api/tasks/{id}")).await;
        assert_eq!(stored.body["title"], format!("t{i}"), "{}", stored.text);
    }
}

async fn refused_items_fail_alone_and_keys_replay_per_item(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks/batch",
            &json!({"tasks": [
                {"type": "echo", "args": {"k": 1}, "idempotency_key": "a"},
                {"type": "no-such-department"},
                {"type": "echo", "args": {"k": 1}, "idempotency_key": "a"},
                {"type": "echo", "args": {"k": 2}, "idempotency_key": "a"},
                {"type": "sim", "args": {"latency_ms": "slow"}},
                {"type": "echo", "timeout_ms": 999_999_999},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 6, "{}", r.text);
    assert_eq!(items[0]["status"], 202, "{}", items[0]);
    let first = items[0]["task"]["id"].clone();
    let err = |i: usize, status: u16, code: &str, field: Option<&str>| {
        let it = &items[i];
        assert_eq!(it["status"], status, "item {i}: {it}");
        assert_eq!(it["error"]["error_code"], code, "item {i}: {it}");
        assert!(it.get("task").is_none(), "item {i}: {it}");
        match field {
            Some(f) => assert_eq!(it["error"]["field"], f, "item {i}: {it}"),
            None => assert!(it["error"].get("field").is_none(), "item {i}: {it}"),
        }
    };
    err(1, 422, "unknown_type", Some("type"));
    // The same key and request within the batch replays the first item...
    assert_eq!(items[2]["task"]["id"], first, "{}", items[2]);
    assert_eq!(items[2]["replayed"], true, "{}", items[2]);
    // ...and a different request under it is a conflict.
    err(3, 409, "idempotency_conflict", None);
    err(4, 422, "invalid_field", Some("args.latency_ms"));
    err(5, 422, "invalid_field", Some("timeout_ms"));
    // Across requests too.
    let again = s
        .post(
            "/api/tasks/batch",
            &json!({"tasks": [{"type": "echo", "args": {"k": 1}, "idempotency_key": "a"}]}),
        )
        .await;
    assert_eq!(
        again.body["items"][0]["task"]["id"], first,
        "{}",
        again.text
    );
    // Only one task was stored under the key.
    let list = s.get("/api/tasks?limit=500").await;
    assert_eq!(list.list_len(), 1, "{}", list.text);
}

async fn a_malformed_item_refuses_the_whole_batch(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let ok = json!({"type": "echo"});
    for (bad, code, field) in [
        (
            json!({"type": "echo", "priority": "urgentest"}),
            "invalid_field",
            "tasks[1].priority",
        ),
        (json!("not an object"), "invalid_body", "tasks[1]"),
        (
            json!({"type": "echo", "wait_ms": 100}),
            "invalid_field",
            "tasks[1].wait_ms",
        ),
        (
            json!({"type": "echo", "timeout_ms": 0}),
            "invalid_field",
            "tasks[1].timeout_ms",
        ),
        (
            json!({"type": "echo", "colour": "red"}),
            "unknown_field",
            "tasks[1].colour",
        ),
        (json!({"args": {}}), "missing_field", "tasks[1].type"),
    ] {
        s.post("/api/tasks/batch", &json!({"tasks": [ok, bad, ok]}))
            .await
            .assert_error(422, code, Some(field));
    }
    // Nothing of those batches was stored.
    let list = s.get("/api/tasks?limit=500").await;
    assert_eq!(list.list_len(), 0, "{}", list.text);
}

async fn whole_batch_errors(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    s.post("/api/tasks/batch", &json!({"tasks": []}))
        .await
        .assert_error(422, "invalid_field", Some("tasks"));
    let many: Vec<Value> = (0..1001).map(|_| json!({"type": "echo"})).collect();
    s.post("/api/tasks/batch", &json!({ "tasks": many }))
        .await
        .assert_error(422, "invalid_field", Some("tasks"));
    s.post("/api/tasks/batch", &json!({"task": []}))
        .await
        .assert_error(422, "unknown_field", Some("task"));
    s.post_with(
        "/api/tasks/batch",
        &json!({"tasks": [{"type": "echo"}]}),
        &[("idempotency-key", "k")],
    )
    .await
    .assert_error(422, "invalid_field", Some("Idempotency-Key"));
    // A full thousand is one request.
    let full: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "echo", "args": {"i": i}}))
        .collect();
    let r = s.post("/api/tasks/batch", &json!({ "tasks": full })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1000);
    assert!(items.iter().all(|i| i["status"] == 202), "{}", r.text);
    // And every one of them runs.
    for item in [&items[0], &items[999]] {
        let done = s.wait_done(item["task"]["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(
            done["result"]["echo"]["i"], item["task"]["args"]["i"],
            "{done}"
        );
    }
}

async fn refusals_are_per_item_with_retry_after(backend: Backend) {
    let Some(s) = TestServer::start(backend, "[admission]\ntenant_max_outstanding = 3\n[pools.slow]\nagent = \"sim\"\nconcurrency = 1\n[pools.slow.queue]\ntarget_delay_ms = 0\n").await
    else {
        return;
    };
    let tasks: Vec<Value> = (0..5)
        .map(|_| json!({"type": "slow", "args": {"latency_ms": 2000}}))
        .collect();
    let r = s.post("/api/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["items"].as_array().expect("items");
    let statuses: Vec<u64> = items
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![202, 202, 202, 429, 429], "{}", r.text);
    for it in &items[3..] {
        assert_eq!(it["error"]["error_code"], "tenant_quota", "{it}");
        assert!(it["retry_after"].as_u64().is_some_and(|s| s >= 1), "{it}");
    }
}

on_both_backends!(
    a_batch_is_stored_in_one_commit_with_an_answer_per_item,
    refused_items_fail_alone_and_keys_replay_per_item,
    a_malformed_item_refuses_the_whole_batch,
    whole_batch_errors,
    refusals_are_per_item_with_retry_after,
);
