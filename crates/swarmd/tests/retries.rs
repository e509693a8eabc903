//! Task retries over a real socket, on SQLite and PostgreSQL (issue 17,
//! part 1): retryable failures run again with backoff and end with every
//! attempt listed; bad input and permanent failures do not; the last
//! attempt ends `failed` (listable as dead) and `POST /api/tasks/{id}/retry`
//! runs it again; a retry waiting for its backoff can be cancelled and
//! survives a restart; a retry storm stays inside the department's limit
//! and its retry budget.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer, pool};

/// A quick backoff, so retries run within the test's patience.
fn quick(max_attempts: u32) -> Value {
    json!({"max_attempts": max_attempts, "backoff_ms": 20, "max_backoff_ms": 50})
}

async fn submit(s: &TestServer, body: Value) -> String {
    let r = s.post("/api/tasks", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.id()
}

fn codes(task: &Value) -> Vec<(String, String)> {
    task["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|a| {
            (
                a["status"].as_str().unwrap_or("?").to_string(),
                a["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn a_transient_failure_is_retried_until_it_succeeds(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let id = submit(
        &s,
        json!({"type": "sim", "args": {"latency_ms": 5, "fail_first": 2}, "retry": quick(4)}),
    )
    .await;
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(
        codes(&done),
        vec![
            ("failed".into(), "simulated_transient_failure".into()),
            ("failed".into(), "simulated_transient_failure".into()),
            ("succeeded".into(), String::new()),
        ],
        "{done}"
    );
    let node = s.engine.node_id().to_string();
    for (i, a) in done["history"].as_array().unwrap().iter().enumerate() {
        assert_eq!(a["attempt"], i + 1, "{a}");
        assert_eq!(a["node"], node.as_str(), "{a}");
        assert!(
            a["instance"].as_str().is_some_and(|i| i.starts_with("sim")),
            "{a}"
        );
        assert!(
            a["started_at"].is_string() && a["finished_at"].is_string(),
            "{a}"
        );
    }
    assert_eq!(done["retry"]["max_attempts"], 4, "{done}");
    assert!(
        done["error"].is_null(),
        "a success clears the last error: {done}"
    );
    let st = s.get("/api/status").await;
    assert!(
        pool(&st.body, "sim")["retries"].as_u64().unwrap() >= 2,
        "{}",
        st.text
    );
}

async fn bad_input_and_permanent_failures_are_not_retried(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    // `fail_rate` is a permanent (non-retryable) failure.
    let id = submit(
        &s,
        json!({"type": "sim", "args": {"latency_ms": 1, "fail_rate": 1.0}, "retry": quick(5)}),
    )
    .await;
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(done["error"]["code"], "simulated_failure", "{done}");
    assert_eq!(done["history"].as_array().unwrap().len(), 1, "{done}");
    // Bad retry settings are refused at the door, naming the field.
    s.post(
        "/api/tasks",
        &json!({"type": "sim", "retry": {"max_attempts": 0}}),
    )
    .await
    .assert_error(422, "invalid_field", Some("retry.max_attempts"));
    s.post(
        "/api/tasks",
        &json!({"type": "sim", "retry": {"backoff_ms": 3_600_001}}),
    )
    .await
    .assert_error(422, "invalid_field", Some("retry.backoff_ms"));
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "retry": {"max_attempts": 2, "tries": 3}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
}

async fn the_last_attempt_ends_failed_and_can_be_run_again(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let id = submit(
        &s,
        json!({"type": "sim", "args": {"latency_ms": 1, "fail_first": 10}, "retry": quick(3)}),
    )
    .await;
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["history"].as_array().unwrap().len(), 3, "{done}");
    let msg = done["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("attempt 3 of 3"),
        "the failure says why it ended: {msg}"
    );
    // Dead tasks list with `?status=failed`.
    let dead = s.get("/api/tasks?status=failed&limit=500").await;
    assert!(dead.list_ids().contains(&id), "{}", dead.text);

    // Run it again: a new attempt, the earlier ones kept.
    let r = s.post(&format!("/api/tasks/{id}/retry"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["id"], id.as_str());
    assert!(
        matches!(r.body["status"].as_str(), Some("queued" | "running")),
        "{}",
        r.text
    );
    let again = s.wait_done(&id).await;
    // `fail_first` 10: attempt 4 fails too, and it was the last the policy
    // allows, so the run ends at once.
    assert_eq!(again["status"], "failed", "{again}");
    assert_eq!(again["attempts"], 4, "{again}");
    assert_eq!(again["history"].as_array().unwrap().len(), 4, "{again}");

    // Only an ended task that did not succeed can be run again.
    let ok = s.run_ok("echo", json!({"x": 1})).await;
    let r = s
        .post(
            &format!("/api/tasks/{}/retry", ok["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    r.assert_error(409, "not_retryable", None);
    let held = s.occupy("sim", 30_000).await;
    s.post(&format!("/api/tasks/{held}/retry"), &json!({}))
        .await
        .assert_error(409, "not_retryable", None);
    s.post(
        "/api/tasks/0190b5a0-0000-7000-8000-000000000000/retry",
        &json!({}),
    )
    .await
    .assert_error(404, "not_found", None);
}

async fn the_department_default_applies(backend: Backend) {
    let Some(s) = TestServer::start(
        backend,
        "[pools.flaky]\nagent = \"sim\"\n[pools.flaky.retry_task]\nmax_attempts = 3\nbackoff_ms = 10\nmax_backoff_ms = 20\n",
    )
    .await
    else {
        return;
    };
    let id = submit(
        &s,
        json!({"type": "sim", "agent": "flaky", "args": {"latency_ms": 1, "fail_first": 1}}),
    )
    .await;
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(
        done["retry"],
        json!({"max_attempts": 3, "backoff_ms": 10, "max_backoff_ms": 20})
    );
    // A task's own `retry` wins, field by field.
    let id = submit(
        &s,
        json!({"type": "sim", "agent": "flaky", "args": {"latency_ms": 1, "fail_first": 1}, "retry": {"max_attempts": 1}}),
    )
    .await;
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert!(
        done["retry"].is_null(),
        "one attempt is no retry policy: {done}"
    );
}

async fn a_retry_keeps_its_deadline(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let id = submit(
        &s,
        json!({"type": "sim", "args": {"latency_ms": 20, "fail_first": 100}, "timeout_ms": 400,
               "retry": {"max_attempts": 100, "backoff_ms": 10, "max_backoff_ms": 40}}),
    )
    .await;
    let done = s.wait_done(&id).await;
    assert!(
        matches!(done["status"].as_str(), Some("failed" | "timed_out")),
        "{done}"
    );
    let attempts = done["attempts"].as_i64().unwrap();
    assert!((2..100).contains(&attempts), "{done}");
    // Ended by its one deadline, not 100 attempts' worth of them.
    let ms = |f: &str| {
        humantime::parse_rfc3339(done[f].as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    assert!(ms("finished_at") <= ms("deadline_at") + 1_000, "{done}");
}

async fn a_retry_waiting_for_its_backoff_can_be_cancelled(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let id = submit(
        &s,
        json!({"type": "sim", "args": {"latency_ms": 1, "fail_first": 5},
               "retry": {"max_attempts": 5, "backoff_ms": 600_000, "max_backoff_ms": 600_000}, "timeout_ms": 3_600_000}),
    )
    .await;
    let waiting = wait_for_backoff(&s, &id).await;
    assert!(waiting["run_after"].is_string(), "{waiting}");
    assert_eq!(
        waiting["error"]["code"], "simulated_transient_failure",
        "{waiting}"
    );
    let st = s.get("/api/status").await;
    let sim = pool(&st.body, "sim");
    assert_eq!(sim["scheduled"], 1, "{}", st.text);
    assert_eq!(
        sim["queued"], 0,
        "a scheduled retry is not queued: {}",
        st.text
    );
    let r = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let st = s.get("/api/status").await;
    assert_eq!(pool(&st.body, "sim")["scheduled"], 0, "{}", st.text);
}

/// Polls until the task is queued again with a backoff, its first attempt
/// in its history.
async fn wait_for_backoff(s: &TestServer, id: &str) -> Value {
    for _ in 0..400 {
        let t = s.get(&format!("/api/tasks/{id}")).await.body;
        if t["status"] == "queued" && !t["run_after"].is_null() {
            return t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("task {id} never waited for a retry");
}

async fn a_retry_waiting_for_its_backoff_survives_a_restart(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let id = submit(
        &s,
        json!({"type": "sim", "args": {"latency_ms": 1, "fail_first": 1},
               "retry": {"max_attempts": 3, "backoff_ms": 1_500, "max_backoff_ms": 1_500}, "timeout_ms": 600_000}),
    )
    .await;
    let waiting = wait_for_backoff(&s, &id).await;
    let db = s.stop().await;
    let s = TestServer::start_on(db, "").await;
    let done = s.wait_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(
        done["history"][0], waiting["history"][0],
        "the first attempt is kept across the restart"
    );
    // Not before its backoff ended.
    let started = humantime::parse_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    let after = humantime::parse_rfc3339(waiting["run_after"].as_str().unwrap()).unwrap();
    assert!(started >= after, "{done} started before {after:?}");
}

async fn a_retry_storm_stays_inside_the_limit_and_the_budget(backend: Backend) {
    let Some(s) = TestServer::start(
        backend,
        "[pools.storm]\nagent = \"sim\"\nconcurrency = 4\n[pools.storm.queue]\ntarget_delay_ms = 0\n\
         [pools.storm.retry_task]\nbudget_ratio = 0.1\nbudget_min_per_sec = 0\n\
         [pools.wide]\nagent = \"sim\"\nconcurrency = 4\n[pools.wide.queue]\ntarget_delay_ms = 0\n\
         [pools.wide.retry_task]\nbudget_ratio = 1.0\nbudget_min_per_sec = 1000\n",
    )
    .await
    else {
        return;
    };
    // Every attempt fails: without the budget, 100 tasks would make 400
    // retries. A ratio of 0.1 allows one per ten first attempts.
    let tasks: Vec<Value> = (0..100)
        .map(|_| json!({"type": "sim", "agent": "storm", "args": {"latency_ms": 2, "transient_rate": 1.0}, "retry": quick(5)}))
        .collect();
    let r = s.post("/api/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<String> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["task"]["id"].as_str().expect("stored").to_string())
        .collect();
    let mut attempts = 0;
    let mut refused = 0;
    for id in &ids {
        let done = s.wait_done(id).await;
        assert_eq!(done["status"], "failed", "{done}");
        attempts += done["attempts"].as_i64().unwrap();
        refused += usize::from(
            done["error"]["message"]
                .as_str()
                .unwrap()
                .contains("retry budget is spent"),
        );
    }
    let st = s.get("/api/status").await;
    let storm = pool(&st.body, "storm");
    let retries = storm["retries"].as_i64().unwrap();
    assert_eq!(attempts, 100 + retries, "{}", st.text);
    assert!(
        retries <= 12,
        "{retries} retries past a 10% budget: {}",
        st.text
    );
    assert!(
        refused >= 80,
        "{refused} tasks told the budget refused them"
    );

    // With room in the budget, retries still go through the department's
    // limit: no attempt started with more than 4 of the group in flight.
    let tasks: Vec<Value> = (0..40)
        .map(|_| json!({"type": "sim", "agent": "wide", "args": {"latency_ms": 20, "fail_first": 2, "group": "wide"}, "retry": quick(3)}))
        .collect();
    let r = s.post("/api/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for item in r.body["items"].as_array().unwrap() {
        let done = s.wait_done(item["task"]["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 3, "{done}");
        let inflight = done["result"]["inflight_at_start"].as_u64().unwrap();
        assert!(
            inflight <= 4,
            "{inflight} in flight under a limit of 4: {done}"
        );
    }
}

on_both_backends!(
    a_transient_failure_is_retried_until_it_succeeds,
    bad_input_and_permanent_failures_are_not_retried,
    the_last_attempt_ends_failed_and_can_be_run_again,
    the_department_default_applies,
    a_retry_keeps_its_deadline,
    a_retry_waiting_for_its_backoff_can_be_cancelled,
    a_retry_waiting_for_its_backoff_survives_a_restart,
    a_retry_storm_stays_inside_the_limit_and_the_budget,
);
