//! The concurrency engine through the API, over a real socket: tenant
//! quotas, queue-delay shedding (and its fairness), deadline-aware
//! admission, the resource governor, child tasks, the CPU pool and what
//! `/api/status` shows of them. Admission is in memory, so these run on
//! SQLite; the store's part is covered on both backends in `api.rs`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, TestServer, pool};

async fn server(extra: &str) -> TestServer {
    TestServer::start(Backend::Sqlite, extra)
        .await
        .expect("SQLite is always available")
}

fn slow(latency_ms: u64) -> Value {
    json!({"type": "sim", "agent": "slow", "args": {"latency_ms": latency_ms}, "timeout_ms": 600_000})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_over_its_quota_gets_429_and_others_do_not() {
    let cfg = "[admission]\ntenant_max_outstanding = 2\n\
               [pools.slow]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n\
               [pools.slow.queue]\ntarget_delay_ms = 0\n";
    let s = server(cfg).await;
    let a = [("x-tenant", "a")];
    let first = s.post_with("/api/tasks", &slow(60_000), &a).await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(
        s.post_with("/api/tasks", &slow(60_000), &a).await.status,
        202
    );
    let r = s.post_with("/api/tasks", &slow(10), &a).await;
    r.assert_error(429, "tenant_quota", None);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(r.body["message"].as_str().unwrap().contains("`a`"));
    // Another tenant is not affected.
    let b = s
        .post_with("/api/tasks", &slow(10), &[("x-tenant", "b")])
        .await;
    assert_eq!(b.status, 202, "{}", b.text);
    // A finished (here: cancelled) task gives its slot back.
    let id = first.id();
    let c = s
        .post_with(&format!("/api/tasks/{id}/cancel"), &json!({}), &a)
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    let again = s.post_with("/api/tasks", &slow(10), &a).await;
    assert_eq!(again.status, 202, "{}", again.text);
    let st = s.get("/api/status").await;
    assert_eq!(pool(&st.body, "slow")["rejections"]["tenant_quota"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_queue_is_shed_fairly_and_shedding_ends_when_it_drains() {
    let cfg = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n\
               [pools.slow.queue]\ntarget_delay_ms = 20\ninterval_ms = 20\n";
    let s = server(cfg).await;
    let heavy = [("x-tenant", "heavy")];
    let running = s.occupy("slow", 1_500).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        let r = s.post_with("/api/tasks", &slow(10), &heavy).await;
        assert_eq!(r.status, 202, "{}", r.text);
        queued.push(r.id());
    }
    // The queue now stands well past the target for many intervals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.post_with("/api/tasks", &slow(10), &heavy).await;
    r.assert_error(503, "queue_delay", None);
    assert!(r.headers.contains_key("retry-after"));
    // A tenant with nothing queued is not refused for another's backlog.
    let light = s
        .post_with("/api/tasks", &slow(10), &[("x-tenant", "light")])
        .await;
    assert_eq!(light.status, 202, "{}", light.text);
    let st = s.get("/api/status").await;
    let p = pool(&st.body, "slow");
    assert_eq!(p["shedding"], true, "{p}");
    assert_eq!(p["rejections"]["queue_delay"], 1, "{p}");
    assert_eq!(p["queued_by_tenant"]["heavy"], 3, "{p}");
    // Every accepted task still runs: shedding refuses, it never drops.
    s.wait_done(&running).await;
    for (id, tenant) in queued
        .iter()
        .map(|id| (id.clone(), "heavy"))
        .chain([(light.id(), "light")])
    {
        assert_eq!(
            s.wait_done_with(&id, &[("x-tenant", tenant)]).await["status"],
            "succeeded"
        );
    }
    let st = s.get("/api/status").await;
    assert_eq!(pool(&st.body, "slow")["shedding"], false, "drained");
    // Drained: admitted again.
    let after = s.post_with("/api/tasks", &slow(10), &heavy).await;
    assert_eq!(after.status, 202, "{}", after.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_cannot_start_before_its_deadline_is_refused() {
    let cfg = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n\
               [pools.slow.queue]\ntarget_delay_ms = 0\n";
    let s = server(cfg).await;
    // Teach the pool its drain rate: about 10 tasks a second.
    let mut warm = Vec::new();
    for _ in 0..12 {
        warm.push(s.post("/api/tasks", &slow(100)).await.id());
    }
    for id in &warm {
        s.wait_done(id).await;
    }
    // A backlog of ~2 s, then a task that allows 300 ms.
    s.occupy("slow", 2_000).await;
    for _ in 0..20 {
        assert_eq!(s.post("/api/tasks", &slow(100)).await.status, 202);
    }
    let hurried =
        json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 10}, "timeout_ms": 300});
    let r = s.post("/api/tasks", &hurried).await;
    r.assert_error(503, "deadline_unmeetable", None);
    // One that allows enough time is accepted.
    let patient =
        json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 10}, "timeout_ms": 120_000});
    assert_eq!(s.post("/api/tasks", &patient).await.status, 202);
    let st = s.get("/api/status").await;
    let p = pool(&st.body, "slow");
    assert!(p["drain_per_s"].as_f64().unwrap() > 1.0, "{p}");
    assert_eq!(p["rejections"]["deadline_unmeetable"], 1, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_over_threshold_lowers_the_global_cap_and_refuses_work() {
    // Any process holds more than 1 MiB: always over.
    let cfg =
        "[admission]\nrss_high_mib = 1\nglobal_max_inflight = 64\n[monitor]\ninterval_ms = 20\n";
    let s = server(cfg).await;
    let mut refused = None;
    for _ in 0..100 {
        let r = s
            .post("/api/tasks", &json!({"type": "echo", "args": {}}))
            .await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = refused.expect("the governor never reacted");
    r.assert_error(503, "process_overloaded", None);
    let st = s.get("/api/status").await.body;
    assert_eq!(st["resources"]["rss_high"], true, "{st}");
    assert!(st["resources"]["rss_mib"].as_f64().unwrap() > 1.0);
    let cap = st["global"]["cap"].as_u64().expect("a cap is set");
    assert!(cap < 64, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_run_as_child_tasks_in_the_reviewers_pool() {
    let s = server("").await;
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "email", "args": {"to": "ana@example.com", "subject": "Launch", "body": "hello team, the launch is on friday"}, "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let st = s.get("/api/status").await.body;
    let reviewers = pool(&st, "reviewers");
    assert_eq!(reviewers["children"], 2, "tone and structure: {reviewers}");
    assert_eq!(reviewers["running"], 0);
    assert_eq!(reviewers["limit"]["in_flight"], 0, "permits came back");
    assert_eq!(pool(&st, "communications")["succeeded"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_limiters_the_cap_and_the_cpu_pool() {
    let cfg = "[cpu_pool]\nthreads = 1\nqueue = 8\n\
               [pools.tuned]\nagent = \"sim\"\n[pools.tuned.limit]\nalgorithm = \"vegas\"\ninitial = 4\nmax = 64\n";
    let s = server(cfg).await;
    let burn = json!({"type": "sim", "args": {"latency_ms": 1, "cpu_ms": 5}, "wait_ms": 10_000});
    let r = s.post("/api/tasks", &burn).await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let v = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "agent": "tuned", "args": {"latency_ms": 5}, "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(v.body["status"], "succeeded", "{}", v.text);
    let st = s.get("/api/status").await.body;
    assert_eq!(st["cpu_pool"]["threads"], 1, "{st}");
    assert_eq!(st["cpu_pool"]["completed"], 1, "{st}");
    assert_eq!(st["global"]["limit"], 4096);
    assert!(st["connections"]["open"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["connections"]["accepted"].as_u64().unwrap() >= 1, "{st}");
    let tuned = pool(&st, "tuned");
    assert_eq!(tuned["limit"]["algorithm"], "vegas", "{tuned}");
    assert!(tuned["limit"]["limit"].as_u64().unwrap() >= 1);
    assert_eq!(pool(&st, "sim")["limit"]["algorithm"], "aimd");
    assert_eq!(pool(&st, "echo")["limit"]["algorithm"], "fixed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_waiting_on_children_cannot_deadlock_saturated_pools() {
    // One global slot, one reviewer slot, two communications slots: every
    // parent holds what a naive scheduler would make its children wait for.
    let cfg = "[admission]\nglobal_max_inflight = 1\n\
               [pools.communications]\nconcurrency = 2\n\
               [pools.reviewers]\nconcurrency = 1\n";
    let s = server(cfg).await;
    let body = json!({"type": "email", "args": {"to": "ana@example.com", "subject": "Status", "body": "all green today"}});
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = s.post("/api/tasks", &body).await;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.id());
    }
    for id in &ids {
        let t = s.wait_done(id).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }
    let st = s.get("/api/status").await.body;
    assert_eq!(pool(&st, "reviewers")["children"], 40, "two reviews each");
    assert_eq!(st["global"]["in_flight"], 0, "every permit came back");
}

/// A queued task says what holds it, in its JSON, its event stream and its
/// pool's status, and says so again when that changes: first the global
/// cap (another department's task holds the only global slot), then its
/// own department's limit (the task ahead of it took the department's
/// only slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_says_what_it_waits_for() {
    let cfg = "[admission]\nglobal_max_inflight = 1\n\
               [pools.a]\nagent = \"sim\"\nconcurrency = 2\nmax_timeout_ms = 600000\n\
               [pools.b]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n\
               [pools.b.queue]\ntarget_delay_ms = 0\n";
    let s = server(cfg).await;
    let holder = s.occupy("a", 60_000).await;
    let sim = |pool: &str| json!({"type": "sim", "agent": pool, "args": {"latency_ms": 60_000}, "timeout_ms": 600_000});
    let b1 = s.post("/api/tasks", &sim("b")).await.id();
    let b2 = s.post("/api/tasks", &sim("b")).await.id();
    let waits = |id: String| {
        let s = &s;
        async move {
            let t = s.get(&format!("/api/tasks/{id}")).await.body;
            assert_eq!(t["status"], "queued", "{t}");
            t["waiting_for"].as_str().unwrap_or("").to_string()
        }
    };
    // The dispatcher says so as soon as it finds the cap taken.
    for _ in 0..100 {
        if waits(b2.clone()).await == "global_cap" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in [&b1, &b2] {
        assert_eq!(waits(id.clone()).await, "global_cap");
    }
    let status = s.get("/api/status").await.body;
    let b = pool(&status, "b");
    assert_eq!(b["waiting_for"], "global_cap", "{b}");
    assert_eq!(b["queued_by_blocker"]["global_cap"], 2, "{b}");
    assert_eq!(b["queued_by_blocker"]["department_limit"], 0, "{b}");
    assert!(
        pool(&status, "a")["waiting_for"].is_null(),
        "nothing queued in a"
    );
    // A list says it too.
    let listed = s.get("/api/tasks?status=queued").await.body;
    let rows = listed["tasks"].as_array().expect("tasks");
    assert!(
        rows.iter().all(|t| t["waiting_for"] == "global_cap"),
        "{listed}"
    );

    // b2's stream: global_cap first, department_limit once b1 takes the
    // global slot and b's only one.
    let mut resp = reqwest::Client::new()
        .get(s.url(&format!("/api/tasks/{b2}/events")))
        .send()
        .await
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut cancelled = false;
    while seen.last().map(String::as_str) != Some("department_limit") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("a state event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if !block.contains("event: state") {
                continue;
            }
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("{}");
            let v: Value = serde_json::from_str(data).unwrap();
            seen.push(v["waiting_for"].as_str().unwrap_or("").to_string());
        }
        if !cancelled && !seen.is_empty() {
            let r = s
                .post(&format!("/api/tasks/{holder}/cancel"), &json!({}))
                .await;
            assert!(r.status.is_success(), "{}", r.text);
            cancelled = true;
        }
    }
    assert_eq!(seen, ["global_cap", "department_limit"]);
    s.wait_status(&b1, "running").await;
    assert_eq!(waits(b2.clone()).await, "department_limit");
    let status = s.get("/api/status").await.body;
    assert_eq!(
        pool(&status, "b")["queued_by_blocker"]["department_limit"],
        1,
        "{status}"
    );
}
