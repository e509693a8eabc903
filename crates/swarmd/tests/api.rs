//! The HTTP API over a real socket, on SQLite and on PostgreSQL.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, TestServer};

/// A pool with one slot, for queueing scenarios (queue-delay shedding off:
/// these tests build queues on purpose).
const ONE_SLOT: &str = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n[pools.slow.queue]\ntarget_delay_ms = 0\n";

async fn server(backend: Backend, extra: &str) -> Option<TestServer> {
    TestServer::start(backend, extra).await
}

async fn submit_echo_with_wait_returns_the_result(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "args": {"n": 7}, "title": "hi", "wait_ms": 5000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = &r.body;
    assert_eq!(t["status"], "succeeded");
    assert_eq!(t["result"]["echo"]["n"], 7);
    assert_eq!(t["result"]["title"], "hi");
    assert_eq!(t["department"], "echo");
    assert_eq!(t["agent"], "echo");
    assert_eq!(t["instance"], "echo-0");
    assert_eq!(t["priority"], "normal");
    assert_eq!(t["attempts"], 1);
    for k in [
        "admission_ms",
        "persist_ms",
        "queue_ms",
        "run_ms",
        "total_ms",
    ] {
        assert!(
            t["timings"][k].as_f64().is_some(),
            "timings.{k} in {}",
            r.text
        );
    }
    // The stages do not overlap: they add up to the total, and the
    // outcome's own commit (live answers only) comes after it.
    let stage = |t: &Value, k: &str| t["timings"][k].as_f64().unwrap();
    let sum: f64 = ["admission_ms", "persist_ms", "queue_ms", "run_ms"]
        .iter()
        .map(|k| stage(t, k))
        .sum();
    assert!(
        (sum - stage(t, "total_ms")).abs() < 0.01,
        "stages sum to {sum}, total is {}: {}",
        stage(t, "total_ms"),
        r.text
    );
    assert!(stage(t, "complete_ms") >= 0.0, "{}", r.text);
    let loc = r.headers["location"].to_str().unwrap();
    assert_eq!(loc, format!("/api/tasks/{}", t["id"].as_str().unwrap()));
    // The stored task reads back the same, with the same stages; only the
    // commit of the outcome itself is known too late to be stored.
    let g = s.get(loc).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body["status"], "succeeded");
    assert_eq!(g.body["result"], t["result"]);
    assert!(g.body["finished_at"].as_str().unwrap().ends_with('Z'));
    for k in [
        "admission_ms",
        "persist_ms",
        "queue_ms",
        "run_ms",
        "total_ms",
    ] {
        assert_eq!(g.body["timings"][k], t["timings"][k], "stored {k}");
    }
    assert!(g.body["timings"].get("complete_ms").is_none(), "{}", g.text);
}

async fn text_with_nul_is_refused_with_its_field(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    for (body, field) in [
        (json!({"type": "echo", "title": "a\u{0}b"}), "title"),
        (
            json!({"type": "echo", "description": "\u{0}"}),
            "description",
        ),
        (
            json!({"type": "echo", "args": {"n": {"note": "x\u{0}"}}}),
            "args.n.note",
        ),
        (
            json!({"type": "email", "args": {"to": "a@example.com", "subject": "s\u{0}", "body": "b"}}),
            "args.subject",
        ),
    ] {
        let r = s.post("/api/tasks", &body).await;
        assert_eq!(r.status, 422, "{}", r.text);
        assert_eq!(r.body["field"], field, "{}", r.text);
        assert!(
            r.body["message"].as_str().unwrap().contains("NUL"),
            "{}",
            r.text
        );
    }
    // Nothing reached the store.
    let list = s.get("/api/tasks").await;
    assert_eq!(
        list.body["tasks"].as_array().unwrap().len(),
        0,
        "{}",
        list.text
    );
}

async fn finished_work_past_retention_is_deleted(backend: Backend) {
    let Some(s) = server(backend, "[database]\nretention = \"1s\"\n").await else {
        return;
    };
    for i in 0..5 {
        s.run_ok("echo", json!({ "n": i })).await;
    }
    s.run_ok(
        "email",
        json!({"to": "ops@example.com", "subject": "Weekly report", "body": "all fine"}),
    )
    .await;
    // A task still queued stays, however old it gets.
    let waiting = s.occupy("sim", 30_000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.get("/api/status").await.body;
        let r = &st["database"]["retention"];
        if r["deleted_tasks"] == 6 && r["deleted_outbox"] == 1 {
            assert_eq!(r["keep_s"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never ran: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = s.get("/api/tasks").await;
    let left: Vec<&str> = list.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [waiting.as_str()], "{}", list.text);
    assert_eq!(
        s.get("/api/outbox").await.body["messages"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let m = s.get("/metrics").await.text;
    assert!(
        m.lines()
            .any(|l| l.starts_with("swarmd_db_retention_deleted_total{table=\"tasks\"} 6")),
        "{m}"
    );
}

async fn child_tasks_count_in_their_department(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    for i in 0..3 {
        s.run_ok(
            "email",
            json!({"to": "ops@example.com", "subject": format!("Report {i}"), "body": "all fine"}),
        )
        .await;
    }
    let st = s.get("/api/status").await.body;
    let reviewers = support::pool(&st, "reviewers");
    // Two reviewers per email, run as child tasks of communications.
    assert_eq!(reviewers["accepted"], 0, "no task was submitted to it");
    assert_eq!(reviewers["children"], 6, "{reviewers}");
    assert_eq!(reviewers["succeeded"], 6, "{reviewers}");
    assert_eq!(reviewers["child_outcomes"]["succeeded"], 6, "{reviewers}");
    let comms = support::pool(&st, "communications");
    assert_eq!(comms["succeeded"], 3);
    assert_eq!(comms["children"], 0);
    let m = s.get("/metrics").await.text;
    assert!(
        m.lines()
            .any(|l| l.starts_with("swarmd_pool_finished_total")
                && l.contains("pool=\"reviewers\"")
                && l.contains("kind=\"child\"")
                && l.contains("outcome=\"succeeded\"")
                && l.ends_with(" 6")),
        "{m}"
    );
}

async fn submit_without_wait_is_accepted_then_finishes(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 200}, "priority": "medium"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(matches!(
        r.body["status"].as_str(),
        Some("queued" | "running")
    ));
    assert_eq!(r.body["priority"], "normal");
    let id = r.body["id"].as_str().unwrap();
    let done = s.wait_done(id).await;
    assert_eq!(done["status"], "succeeded");
    assert!(done["result"]["latency_ms"].as_f64().unwrap() >= 200.0);
}

async fn prototype_task_endpoint_answers_the_same(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/task",
            &json!({"type": "echo", "args": {"a": 1}, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["echo"]["a"], 1);
    let r = s.post("/task", &json!({"type": "nope"})).await;
    r.assert_error(422, "unknown_type", Some("type"));
}

async fn unknown_and_malformed_ids_are_404(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    s.get("/api/tasks/01900000-0000-7000-8000-000000000000")
        .await
        .assert_error(404, "not_found", None);
    s.get("/api/tasks/not-a-uuid")
        .await
        .assert_error(404, "not_found", None);
    s.get("/api/tasks/not-a-uuid/events")
        .await
        .assert_error(404, "not_found", None);
    s.post(
        "/api/tasks/01900000-0000-7000-8000-000000000000/cancel",
        &json!({}),
    )
    .await
    .assert_error(404, "not_found", None);
}

async fn bad_requests_get_clear_errors(backend: Backend) {
    let Some(s) = server(backend, "[server]\nmax_body_bytes = 4096\n").await else {
        return;
    };
    let raw = |body: &'static str, ct: Option<&'static str>| {
        let mut req = s.client.post(s.url("/api/tasks")).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req
    };
    let send = |req: reqwest::RequestBuilder| async move {
        support::Reply::from(req.send().await.unwrap()).await
    };

    send(raw("{\"type\":", Some("application/json")))
        .await
        .assert_error(400, "malformed_json", None);
    send(raw("", Some("application/json")))
        .await
        .assert_error(400, "malformed_json", None);
    send(raw("{\"type\":\"echo\"}", Some("text/plain")))
        .await
        .assert_error(415, "unsupported_media_type", None);
    send(raw("{\"type\":\"echo\"}", None))
        .await
        .assert_error(415, "unsupported_media_type", None);
    let big = json!({"type": "echo", "args": {"blob": "x".repeat(10_000)}});
    s.post("/api/tasks", &big)
        .await
        .assert_error(413, "payload_too_large", None);

    s.post("/api/tasks", &json!({"args": {}}))
        .await
        .assert_error(422, "missing_field", Some("type"));
    s.post("/api/tasks", &json!({"type": "teleport"}))
        .await
        .assert_error(422, "unknown_type", Some("type"));
    s.post("/api/tasks", &json!({"type": "echo", "priority": "urgent"}))
        .await
        .assert_error(422, "invalid_field", Some("priority"));
    s.post("/api/tasks", &json!({"type": "echo", "timout_ms": 5}))
        .await
        .assert_error(422, "unknown_field", Some("timout_ms"));
    s.post("/api/tasks", &json!({"type": "echo", "timeout_ms": -1}))
        .await
        .assert_error(422, "invalid_field", Some("timeout_ms"));
    s.post("/api/tasks", &json!({"type": "echo", "args": [1]}))
        .await
        .assert_error(422, "invalid_field", Some("args"));
    s.post("/api/tasks", &json!({"type": "echo", "agent": "nobody"}))
        .await
        .assert_error(422, "unknown_agent", Some("agent"));
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "wait_ms": 10_000_000}),
    )
    .await
    .assert_error(422, "invalid_field", Some("wait_ms"));
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "timeout_ms": 999_999_999}),
    )
    .await
    .assert_error(422, "invalid_field", Some("timeout_ms"));
    s.post(
        "/api/tasks",
        &json!({"type": "sim", "args": {"latency_ms": "slow"}}),
    )
    .await
    .assert_error(422, "invalid_field", Some("args.latency_ms"));
    s.post(
        "/api/tasks",
        &json!({"type": "email", "args": {"subject": "x", "body": "y"}}),
    )
    .await
    .assert_error(422, "missing_field", Some("args.to"));
    s.post(
        "/api/tasks",
        &json!({"type": "email", "args": {"to": "not an address", "body": "y"}}),
    )
    .await
    .assert_error(422, "invalid_field", Some("args.to"));
    s.post_with(
        "/api/tasks",
        &json!({"type": "echo"}),
        &[("request-timeout", "soon")],
    )
    .await
    .assert_error(422, "invalid_field", Some("Request-Timeout"));
    // The body's timeout wins over the header, but a malformed header is
    // still refused (schemathesis found it ignored).
    s.post_with(
        "/task",
        &json!({"type": "echo", "timeout_ms": 983}),
        &[("request-timeout", "G@-2VvLe[")],
    )
    .await
    .assert_error(422, "invalid_field", Some("Request-Timeout"));
    s.post_with(
        "/api/tasks",
        &json!({"type": "echo"}),
        &[("x-tenant", "bad tenant")],
    )
    .await
    .assert_error(422, "invalid_field", Some("X-Tenant"));

    s.get("/api/tasks?limit=0")
        .await
        .assert_error(422, "invalid_field", Some("limit"));
    s.get("/api/tasks?status=done")
        .await
        .assert_error(422, "invalid_field", Some("status"));
    s.get("/api/tasks?cursor=zzz")
        .await
        .assert_error(422, "invalid_field", Some("cursor"));
    s.get("/api/tasks?department=nope").await.assert_error(
        422,
        "invalid_field",
        Some("department"),
    );
    s.get("/api/nothing-here")
        .await
        .assert_error(404, "not_found", None);
    let r = support::Reply::from(s.client.delete(s.url("/api/tasks")).send().await.unwrap()).await;
    r.assert_error(405, "method_not_allowed", None);
    // Nothing above created a task.
    let list = s.get("/api/tasks").await;
    assert_eq!(list.list_len(), 0, "{}", list.text);
}

async fn list_is_newest_first_with_cursor_and_filters(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": "echo", "args": {"i": i}, "wait_ms": 5000}),
            )
            .await;
        ids.push(r.id());
    }
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 1}, "wait_ms": 5000}),
        )
        .await;
    let sim_id = r.id();

    let page1 = s.get("/api/tasks?limit=3&department=echo").await;
    let got = page1.list_ids();
    assert_eq!(got, ids[4..7].iter().rev().cloned().collect::<Vec<_>>());
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = s
        .get(&format!(
            "/api/tasks?limit=3&department=echo&cursor={cursor}"
        ))
        .await;
    let got = page2.list_ids();
    assert_eq!(got, ids[1..4].iter().rev().cloned().collect::<Vec<_>>());
    let cursor = page2.body["next_cursor"].as_str().unwrap();
    let page3 = s
        .get(&format!(
            "/api/tasks?limit=3&department=echo&cursor={cursor}"
        ))
        .await;
    assert_eq!(page3.list_len(), 1);
    assert_eq!(page3.body["next_cursor"], Value::Null);

    let all = s.get("/api/tasks?status=succeeded").await;
    assert_eq!(all.list_len(), 8);
    assert_eq!(all.body["tasks"][0]["id"], sim_id.as_str());
    let none = s.get("/api/tasks?status=failed").await;
    assert_eq!(none.list_len(), 0);
}

async fn idempotency_keys_make_retries_safe(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let body =
        json!({"type": "echo", "args": {"x": 1}, "idempotency_key": "order-42", "wait_ms": 5000});
    let a = s.post("/api/tasks", &body).await;
    assert_eq!(a.status, 200);
    assert!(a.headers.get("idempotent-replayed").is_none());
    let b = s.post("/api/tasks", &body).await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.body["id"], a.body["id"]);
    assert_eq!(b.headers["idempotent-replayed"], "true");
    // The header form is the same key.
    let c = s
        .post_with(
            "/api/tasks",
            &json!({"type": "echo", "args": {"x": 1}}),
            &[("idempotency-key", "order-42")],
        )
        .await;
    assert_eq!(c.body["id"], a.body["id"], "{}", c.text);
    // Same key, different request: a conflict, not a silent replay.
    let d = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "args": {"x": 2}, "idempotency_key": "order-42"}),
        )
        .await;
    d.assert_error(409, "idempotency_conflict", None);
    // Keys are per tenant.
    let e = s
        .post_with("/api/tasks", &body, &[("x-tenant", "other")])
        .await;
    assert_ne!(e.body["id"], a.body["id"]);
    // Concurrent first submissions with one key create one task.
    let body = json!({"type": "echo", "args": {}, "idempotency_key": "burst"});
    let replies = futures_join(&s, &body, 20).await;
    let first = &replies[0]["id"];
    assert!(replies.iter().all(|r| &r["id"] == first), "{replies:?}");
    let list = s.get("/api/tasks?limit=500").await;
    let n = list.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["idempotency_key"] == "burst")
        .count();
    assert_eq!(n, 1);
}

async fn futures_join(s: &TestServer, body: &Value, n: usize) -> Vec<Value> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let (client, url, body) = (s.client.clone(), s.url("/api/tasks"), body.clone());
        handles.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn cancel_queued_and_running_tasks(backend: Backend) {
    let Some(s) = server(backend, ONE_SLOT).await else {
        return;
    };
    let blocker_id = s.occupy("slow", 60_000).await;
    let queued = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1}}),
        )
        .await;
    let queued_id = queued.id();
    assert_eq!(queued.body["status"], "queued");

    let c = s
        .post(&format!("/api/tasks/{queued_id}/cancel"), &json!({}))
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["status"], "cancelled");
    assert_eq!(c.body["error"]["stage"], "queue");
    assert_eq!(
        s.get(&format!("/api/tasks/{queued_id}")).await.body["status"],
        "cancelled"
    );

    let started = std::time::Instant::now();
    let c = s
        .post(&format!("/api/tasks/{blocker_id}/cancel"), &json!({}))
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["status"], "cancelled");
    assert_eq!(c.body["error"]["stage"], "run");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a running cancel stops the agent"
    );
    // The slot is free again: the next task runs.
    let next = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(next.body["status"], "succeeded", "{}", next.text);
    // Ended tasks cannot be cancelled.
    s.post(&format!("/api/tasks/{blocker_id}/cancel"), &json!({}))
        .await
        .assert_error(409, "already_finished", None);
}

async fn deadlines_fire_in_queue_and_in_run(backend: Backend) {
    let Some(s) = server(backend, ONE_SLOT).await else {
        return;
    };
    let r = s
        .post("/api/tasks", &json!({"type": "sim", "args": {"latency_ms": 30000}, "timeout_ms": 300, "wait_ms": 10000}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "timed_out");
    assert_eq!(r.body["error"]["stage"], "run");
    assert_eq!(r.body["error"]["code"], "deadline_exceeded");
    let run_ms = r.body["timings"]["run_ms"].as_f64().unwrap();
    assert!((250.0..5000.0).contains(&run_ms), "run_ms {run_ms}");

    // A task whose deadline passes while it waits is never started, and
    // it ends while it waits (the blocker still runs), not when its turn
    // comes. Twice: the queue's expiry bookkeeping is reset by the first.
    let blocker = s.occupy("slow", 3000).await;
    for _ in 0..2 {
        let late = s
            .post_with(
                "/api/tasks",
                &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1}, "wait_ms": 10000}),
                &[("request-timeout", "200")],
            )
            .await;
        assert_eq!(late.body["status"], "timed_out", "{}", late.text);
        assert_eq!(late.body["error"]["stage"], "queue");
        assert_eq!(late.body["timeout_ms"], 200);
        assert_eq!(late.body["started_at"], Value::Null);
        assert_eq!(late.body["attempts"], 0);
        let b = s.get(&format!("/api/tasks/{blocker}")).await;
        assert_eq!(b.body["status"], "running", "{}", b.text);
    }
}

async fn failures_say_why(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 1, "fail_rate": 1.0}, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert_eq!(r.body["error"]["code"], "simulated_failure");
    assert_eq!(r.body["error"]["stage"], "run");
    assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
}

async fn priorities_order_the_queue(backend: Backend) {
    let Some(s) = server(backend, ONE_SLOT).await else {
        return;
    };
    s.occupy("slow", 500).await;
    let mut ids = Vec::new();
    for p in ["low", "normal", "high", "critical"] {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": "sim", "agent": "slow", "priority": p, "args": {"latency_ms": 1}}),
            )
            .await;
        ids.push((p, r.id()));
    }
    let mut started = Vec::new();
    for (p, id) in &ids {
        let t = s.wait_done(id).await;
        started.push((t["started_at"].as_str().unwrap().to_string(), *p));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, p)| *p).collect();
    assert_eq!(order, ["critical", "high", "normal", "low"]);
}

async fn events_stream_state_changes_then_the_result(backend: Backend) {
    let Some(s) = server(backend, ONE_SLOT).await else {
        return;
    };
    s.occupy("slow", 300).await;
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 200}}),
        )
        .await;
    let id = r.id();
    let events = s.read_sse(&id).await;
    let states: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "state")
        .map(|(_, d)| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{events:?}");
    let (last, result) = events.last().unwrap();
    assert_eq!(last, "result");
    assert_eq!(result["id"], id.as_str());
    assert_eq!(result["status"], "succeeded");
    // An ended task's stream gives its state and result at once.
    let events = s.read_sse(&id).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].1["result"], result["result"]);
}

async fn tenants_see_only_their_own_tasks(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let a = s
        .post_with(
            "/api/tasks",
            &json!({"type": "echo", "wait_ms": 5000}),
            &[("x-tenant", "alpha")],
        )
        .await;
    assert_eq!(a.body["tenant"], "alpha");
    let id = a.body["id"].as_str().unwrap();
    let as_beta = s
        .get_with(&format!("/api/tasks/{id}"), &[("x-tenant", "beta")])
        .await;
    as_beta.assert_error(404, "not_found", None);
    let as_alpha = s
        .get_with(&format!("/api/tasks/{id}"), &[("x-tenant", "alpha")])
        .await;
    assert_eq!(as_alpha.status, 200);
    let beta_list = s.get_with("/api/tasks", &[("x-tenant", "beta")]).await;
    assert_eq!(beta_list.list_len(), 0);
    let default_list = s.get("/api/tasks").await;
    assert_eq!(default_list.list_len(), 0);
    let alpha_list = s.get_with("/api/tasks", &[("x-tenant", "alpha")]).await;
    assert_eq!(alpha_list.list_len(), 1);
}

async fn api_keys_name_tenants_and_admins(backend: Backend) {
    let acme = swarm_server::auth::hash_key("acme-key");
    let ops = swarm_server::auth::hash_key("ops-key");
    let cfg = format!(
        "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{acme}\"\n[[tenants]]\nname = \"ops\"\nrole = \"admin\"\nkey_sha256 = \"{ops}\"\n"
    );
    let Some(s) = server(backend, &cfg).await else {
        return;
    };
    let body = json!({"type": "echo", "wait_ms": 5000});
    s.post("/api/tasks", &body)
        .await
        .assert_error(401, "unauthorized", None);
    let r = s
        .post_with("/api/tasks", &body, &[("authorization", "Bearer wrong")])
        .await;
    r.assert_error(401, "unauthorized", None);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    // X-Tenant cannot override a key's tenant.
    let mine = s
        .post_with(
            "/api/tasks",
            &body,
            &[("authorization", "Bearer acme-key"), ("x-tenant", "ops")],
        )
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    assert_eq!(mine.body["tenant"], "acme");
    let id = mine.body["id"].as_str().unwrap();
    let theirs = s
        .post_with("/api/tasks", &body, &[("authorization", "Bearer ops-key")])
        .await;
    let their_id = theirs.body["id"].as_str().unwrap();
    // A client reads its own, not others'; an admin reads all.
    assert_eq!(
        s.get_with(
            &format!("/api/tasks/{id}"),
            &[("authorization", "Bearer acme-key")]
        )
        .await
        .status,
        200
    );
    s.get_with(
        &format!("/api/tasks/{their_id}"),
        &[("authorization", "Bearer acme-key")],
    )
    .await
    .assert_error(404, "not_found", None);
    assert_eq!(
        s.get_with(
            &format!("/api/tasks/{id}"),
            &[("authorization", "Bearer ops-key")]
        )
        .await
        .status,
        200
    );
    let admin_list = s
        .get_with("/api/tasks", &[("authorization", "Bearer ops-key")])
        .await;
    assert_eq!(admin_list.list_len(), 2);
    let client_list = s
        .get_with("/api/tasks", &[("authorization", "Bearer acme-key")])
        .await;
    assert_eq!(client_list.list_len(), 1);
    // Health stays open for probes.
    assert_eq!(s.get("/health").await.status, 200);
}

async fn health_ready_and_status(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let h = s.get("/health").await;
    assert_eq!(
        (h.status.as_u16(), h.body["status"].as_str()),
        (200, Some("ok"))
    );
    let r = s.get("/ready").await;
    assert_eq!(
        (r.status.as_u16(), r.body["status"].as_str()),
        (200, Some("ready"))
    );
    s.post("/api/tasks", &json!({"type": "echo", "wait_ms": 5000}))
        .await;
    let st = s.get("/api/status").await;
    assert_eq!(st.status, 200);
    let b = &st.body;
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert!(b["uptime_s"].as_f64().unwrap() >= 0.0);
    let expected_backend = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(b["database"]["backend"], expected_backend);
    assert!(b["database"]["size"].as_u64().unwrap() >= 1);
    assert_eq!(b["database"]["max"], 8);
    let echo = b["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "echo")
        .unwrap();
    assert_eq!(echo["succeeded"], 1);
    assert_eq!(echo["queued"], 0);
    assert_eq!(echo["running"], 0);
    let names: Vec<&str> = b["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["communications", "echo", "email", "reviewers", "sim"]
    );
}

async fn queue_bound_refuses_with_retry_after(backend: Backend) {
    let cfg = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\n[pools.slow.queue]\ncapacity = 2\n";
    let Some(s) = server(backend, cfg).await else {
        return;
    };
    let body = json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 2000}});
    let first = s.post("/api/tasks", &body).await;
    s.wait_status(first.body["id"].as_str().unwrap(), "running")
        .await;
    assert_eq!(s.post("/api/tasks", &body).await.status, 202);
    assert_eq!(s.post("/api/tasks", &body).await.status, 202);
    let r = s.post("/api/tasks", &body).await;
    r.assert_error(503, "queue_full", None);
    assert_eq!(r.headers["retry-after"], "1");
    let st = s.get("/api/status").await;
    let slow = st.body["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(
        (slow["queued"].as_u64(), slow["rejected"].as_u64()),
        (Some(2), Some(1))
    );
}

async fn communications_workflow_end_to_end(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "email", "args": {"to": "ops@example.com", "subject": "Outage", "body": "db down, eta 1h"}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = &r.body;
    assert_eq!(t["status"], "succeeded", "{}", r.text);
    assert_eq!(t["department"], "communications");
    let res = &t["result"];
    assert_eq!(res["reviews"].as_array().unwrap().len(), 2, "two reviewers");
    assert!(!res["applied"].as_array().unwrap().is_empty());
    let body = res["final"]["body"].as_str().unwrap();
    assert!(
        body.to_lowercase().contains("database"),
        "abbreviation expanded: {body}"
    );
    assert!(
        body.to_lowercase().starts_with("hello"),
        "greeting added: {body}"
    );
    assert!(body.contains("regards"), "sign-off added: {body}");
    assert_ne!(
        res["final"]["subject"], "Outage",
        "unclear subject improved"
    );
    assert_eq!(res["delivery"]["transport"], "outbox");
    let outbox = s.get("/api/outbox").await;
    let msgs = outbox.body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{}", outbox.text);
    assert_eq!(msgs[0]["task_id"], t["id"]);
    assert_eq!(msgs[0]["to"], json!(["ops@example.com"]));
    assert_eq!(msgs[0]["body"], res["final"]["body"]);
    // Another tenant's outbox is empty.
    let other = s.get_with("/api/outbox", &[("x-tenant", "other")]).await;
    assert_eq!(other.body["messages"].as_array().unwrap().len(), 0);
    // Keyword routing: a general task about an email goes to communications.
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "general", "title": "Send an email to the team", "args": {"to": "team@example.com", "body": "standup moved"}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(r.body["department"], "communications", "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
}

async fn hundred_concurrent_communications_tasks_succeed(backend: Backend) {
    let Some(s) = server(backend, "").await else {
        return;
    };
    let mut handles = Vec::new();
    for i in 0..100 {
        let (client, url) = (s.client.clone(), s.url("/api/tasks"));
        handles.push(tokio::spawn(async move {
            let body = json!({"type": "communications", "args": {"to": format!("user{i}@example.com"), "subject": "Status", "body": format!("build {i} passed")}, "wait_ms": 30000});
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    for h in handles {
        let (code, body) = h.await.unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "succeeded", "{body}");
    }
    let outbox = s.get("/api/outbox?limit=500").await;
    assert_eq!(outbox.body["messages"].as_array().unwrap().len(), 100);
}

async fn graceful_stop_and_restart_keep_queued_tasks(backend: Backend) {
    let Some(s) = server(backend, ONE_SLOT).await else {
        return;
    };
    let blocker = s.occupy("slow", 300).await;
    let queued = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1}}),
        )
        .await;
    let queued_id = queued.id();
    let db = s.stop().await;
    // The running task finished inside the grace period; the queued one waits.
    let s = TestServer::start_on(db, ONE_SLOT).await;
    let b = s.get(&format!("/api/tasks/{}", blocker.as_str())).await;
    assert_eq!(b.body["status"], "succeeded", "{}", b.text);
    let done = s.wait_done(&queued_id).await;
    assert_eq!(done["status"], "succeeded");
}

async fn communications_deliver_over_a_real_smtp_server(backend: Backend) {
    let smtp = support::smtp_server::SmtpServer::start();
    let cfg = format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nfrom = \"Swarm <swarm@example.com>\"\n",
        smtp.port()
    );
    let Some(s) = server(backend, &cfg).await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "email", "args": {"to": "ops@example.com", "cc": ["lead@example.com"], "subject": "Outage", "body": "db down, eta 1h"}, "wait_ms": 20000}),
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let delivery = &r.body["result"]["delivery"];
    assert_eq!(delivery["transport"], "smtp", "{delivery}");
    let messages = smtp.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    let subject = r.body["result"]["final"]["subject"].as_str().unwrap();
    assert!(m.contains(&format!("Subject: {subject}")), "{m}");
    assert!(m.contains("To: ops@example.com"), "{m}");
    assert!(m.contains("Cc: lead@example.com"), "{m}");
    assert!(m.contains("From: Swarm <swarm@example.com>"), "{m}");
    assert!(m.contains("Best regards"), "{m}");
    // Nothing went to the outbox.
    assert_eq!(
        s.get("/api/outbox").await.body["messages"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

on_both_backends!(
    submit_echo_with_wait_returns_the_result,
    text_with_nul_is_refused_with_its_field,
    child_tasks_count_in_their_department,
    finished_work_past_retention_is_deleted,
    submit_without_wait_is_accepted_then_finishes,
    prototype_task_endpoint_answers_the_same,
    unknown_and_malformed_ids_are_404,
    bad_requests_get_clear_errors,
    list_is_newest_first_with_cursor_and_filters,
    idempotency_keys_make_retries_safe,
    cancel_queued_and_running_tasks,
    deadlines_fire_in_queue_and_in_run,
    failures_say_why,
    priorities_order_the_queue,
    events_stream_state_changes_then_the_result,
    tenants_see_only_their_own_tasks,
    api_keys_name_tenants_and_admins,
    health_ready_and_status,
    queue_bound_refuses_with_retry_after,
    communications_workflow_end_to_end,
    #[needs("aiosmtpd", "needs aiosmtpd: pip install aiosmtpd")]
    communications_deliver_over_a_real_smtp_server,
    hundred_concurrent_communications_tasks_succeed,
    graceful_stop_and_restart_keep_queued_tasks,
);
