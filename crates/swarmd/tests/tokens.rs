//! Token budgets over a real socket, on SQLite and PostgreSQL (issue 16,
//! part 3): an `openai` department in front of a simulated provider
//! (`swarm_simbackend::serve`), with `tokens_per_minute` on the department
//! and on a tenant. Admission reserves each task's estimate and refuses
//! past the budget with `429 token_budget` and `Retry-After`; the
//! provider's reported usage gives the excess back; a run that spends more
//! than its estimate pauses the department's starts (`waiting_for:
//! token_budget`); the figures show in `/api/status` and `/metrics`.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer, pool};
use swarm_simbackend::SimConfig;

/// A provider that answers after `latency_ms` with 5 tokens.
fn provider(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        token_ms: 0,
        reply_tokens: 5,
        seed: Some(1),
        ..SimConfig::default()
    }
}

/// An `openai` pool `name` in front of `base`, with `extra` settings.
fn llm_pool(name: &str, base: &str, extra: &str) -> String {
    format!(
        "[pools.{name}]\nagent = \"openai\"\n{extra}\n[pools.{name}.openai]\n\
         base_url = \"{base}/v1\"\nmodel = \"m\"\nmax_tokens = 100\n"
    )
}

/// A task for `pool`: "hi there" is 8 characters (2 tokens, plus 4 for the
/// message), and `max_tokens` 100: an estimate of 106. The provider counts
/// 2 prompt words and 5 reply tokens: 7.
fn task(pool: &str) -> Value {
    json!({"type": "llm", "agent": pool, "args": {"prompt": "hi there"}})
}

const ESTIMATE: u64 = 106;
const USAGE: u64 = 7;

async fn minute(s: &TestServer, pool_name: &str) -> Value {
    let st = s.get("/api/status").await.body;
    pool(&st, pool_name)["tokens"]["minute"].clone()
}

async fn a_department_budget_reserves_estimates_and_usage_gives_the_excess_back(backend: Backend) {
    let (base, _stop) = support::sim_provider(provider(400)).await;
    let cfg = llm_pool("llm", &base, "tokens_per_minute = 250");
    let Some(s) = TestServer::start(backend, &cfg).await else {
        return;
    };
    let a = s.post("/api/tasks", &task("llm")).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let b = s.post("/api/tasks", &task("llm")).await;
    assert_eq!(b.status, 202, "{}", b.text);
    // 212 of 250 reserved: a third estimate of 106 does not fit.
    let c = s.post("/api/tasks", &task("llm")).await;
    c.assert_error(429, "token_budget", None);
    let msg = c.body["message"].as_str().unwrap();
    assert!(
        msg.contains("department `llm`") && msg.contains("38 of its 250 tokens_per_minute"),
        "{msg}"
    );
    let retry_after: u64 = c.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let m = minute(&s, "llm").await;
    assert_eq!(m["limit"], 250, "{m}");
    assert_eq!(m["reserved"], 2 * ESTIMATE, "{m}");
    assert_eq!(m["remaining"], 250 - 2 * ESTIMATE, "{m}");
    // The provider reports 7 tokens each: the rest of the estimates comes
    // back as the tasks end.
    for id in [a.id(), b.id()] {
        let done = s.wait_done(&id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["usage"]["total_tokens"], USAGE, "{done}");
    }
    let m = minute(&s, "llm").await;
    assert_eq!(m["spent"], 2 * USAGE, "{m}");
    assert_eq!(m["reserved"], 0, "{m}");
    assert_eq!(m["remaining"], 250 - 2 * USAGE, "{m}");
    let again = s.post("/api/tasks", &task("llm")).await;
    assert_eq!(again.status, 202, "{}", again.text);
    let st = s.get("/api/status").await.body;
    assert_eq!(pool(&st, "llm")["rejections"]["token_budget"], 1, "{st}");
    let metrics = s.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("swarmd_tokens_limit{")
                && l.contains("scope=\"pool\"")
                && l.contains("name=\"llm\"")
                && l.contains("window=\"minute\"")
                && l.ends_with(" 250")),
        "{metrics}"
    );
    // An estimate that can never fit is the caller's error, not a wait.
    let long = "word ".repeat(200);
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "llm", "agent": "llm", "args": {"prompt": long}}),
        )
        .await;
    r.assert_error(422, "invalid_field", Some("args"));
    assert!(
        r.text.contains("whole tokens_per_minute of 250"),
        "{}",
        r.text
    );
}

async fn a_tenant_budget_counts_every_department(backend: Backend) {
    let (base, _stop) = support::sim_provider(provider(300)).await;
    let hash = |k: &str| swarm_server::auth::hash_key(k);
    let cfg = format!(
        "{}{}[[tenants]]\nname = \"small\"\nkey_sha256 = \"{}\"\ntokens_per_minute = 150\n\
         tokens_per_day = 1000\n[[tenants]]\nname = \"big\"\nkey_sha256 = \"{}\"\n",
        llm_pool("llm", &base, ""),
        llm_pool("llm2", &base, ""),
        hash("small-key"),
        hash("big-key"),
    );
    let Some(s) = TestServer::start(backend, &cfg).await else {
        return;
    };
    let small = [("authorization", "Bearer small-key")];
    let big = [("authorization", "Bearer big-key")];
    let a = s.post_with("/api/tasks", &task("llm"), &small).await;
    assert_eq!(a.status, 202, "{}", a.text);
    // Another department, the same tenant: 106 + 106 > 150.
    let b = s.post_with("/api/tasks", &task("llm2"), &small).await;
    b.assert_error(429, "token_budget", None);
    assert!(b.text.contains("tenant `small`"), "{}", b.text);
    // Another tenant is not held by it.
    for _ in 0..3 {
        let r = s.post_with("/api/tasks", &task("llm2"), &big).await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let done = s.wait_done_with(&a.id(), &small).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // `/api/status` is for admins; neither tenant is one.
    let st = serde_json::to_value(s.engine.status()).unwrap();
    let t = &st["tenant_tokens"]["small"];
    assert_eq!(t["minute"]["spent"], USAGE, "{st}");
    assert_eq!(t["day"]["spent"], USAGE, "{st}");
    assert_eq!(t["day"]["limit"], 1000, "{st}");
    assert!(st["tenant_tokens"].get("big").is_none(), "{st}");
    let r = s.post_with("/api/tasks", &task("llm2"), &small).await;
    assert_eq!(r.status, 202, "the estimate was given back: {}", r.text);
}

async fn a_run_that_spends_more_than_its_estimate_pauses_the_department(backend: Backend) {
    let (base, _stop) = support::sim_provider(provider(300)).await;
    let cfg = llm_pool("llm", &base, "tokens_per_minute = 200\nconcurrency = 1");
    let Some(s) = TestServer::start(backend, &cfg).await else {
        return;
    };
    // 200 one-letter words: 399 characters, estimated at 100 + 4, plus a
    // `max_tokens` of 1: 105. The provider counts 200 prompt tokens and 1
    // of reply: 201, past the whole budget.
    let heavy = json!({"type": "llm", "agent": "llm",
        "args": {"prompt": "a ".repeat(200).trim_end(), "max_tokens": 1}});
    let light = json!({"type": "llm", "agent": "llm", "args": {"prompt": "hi", "max_tokens": 1}});
    let a = s.post("/api/tasks", &heavy).await;
    assert_eq!(a.status, 202, "{}", a.text);
    // 105 + 6 reserved of 200: it fits, and queues behind the first.
    let b = s.post("/api/tasks", &light).await;
    assert_eq!(b.status, 202, "{}", b.text);
    let done = s.wait_done(&a.id()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["usage"]["total_tokens"], 201, "{done}");
    // The spend fills the minute: the queued task waits for the window,
    // not for the department's limit, and keeps its place.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = s.get(&format!("/api/tasks/{}", b.id())).await.body;
        if seen["waiting_for"] == "token_budget" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen["status"], "queued", "{seen}");
    assert_eq!(seen["waiting_for"], "token_budget", "{seen}");
    let st = s.get("/api/status").await.body;
    let p = pool(&st, "llm");
    assert_eq!(p["waiting_for"], "token_budget", "{p}");
    assert_eq!(p["queued_by_blocker"]["token_budget"], 1, "{p}");
    assert_eq!(p["token_pauses"], 1, "{p}");
    let paused = p["paused_ms"].as_u64().unwrap();
    // Spent in the first second's slot: it leaves the window within 61 s.
    assert!((50_000..=61_000).contains(&paused), "{p}");
    assert_eq!(p["tokens"]["minute"]["spent"], 201, "{p}");
    assert_eq!(p["tokens"]["minute"]["remaining"], 0, "{p}");
    // New work is refused until then, with the wait in `Retry-After`.
    let r = s.post("/api/tasks", &light).await;
    r.assert_error(429, "token_budget", None);
    let retry_after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=61).contains(&retry_after), "{retry_after}");
    // The waiting task can still be cancelled, and gives its reservation
    // back.
    let c = s
        .post(&format!("/api/tasks/{}/cancel", b.id()), &json!({}))
        .await;
    assert!(c.status.is_success(), "{}", c.text);
    let done = s.wait_done(&b.id()).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(minute(&s, "llm").await["reserved"], 0);
}

on_both_backends!(
    a_department_budget_reserves_estimates_and_usage_gives_the_excess_back,
    a_tenant_budget_counts_every_department,
    a_run_that_spends_more_than_its_estimate_pauses_the_department,
);
