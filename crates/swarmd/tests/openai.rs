//! The `openai` backend through the whole server: a simulated provider
//! (`swarm_simbackend::serve`, what `swarmd sim-backend` runs) streaming on
//! a real socket, a pool `agent = "openai"` in front of it, and a task's
//! tokens arriving as server-sent `progress` events before its result;
//! then the communications workflow with `[llm]` configured.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer};
use swarm_agents::communications::llm::{DRAFTER_ROLE, STRUCTURE_ROLE, TONE_ROLE};
use swarm_simbackend::{ScriptedReply, SimConfig};

/// The `text` of `token` progress events, by `source` (`""` for none).
fn token_text(events: &[(String, Value)], source: &str) -> String {
    events
        .iter()
        .filter(|(e, v)| {
            e == "progress" && v["step"] == "token" && v["source"].as_str().unwrap_or("") == source
        })
        .map(|(_, v)| v["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_pool_streams_tokens_to_the_task_events() {
    // The service time (time to first token) leaves room to subscribe
    // before the first token; then 12 tokens 20 ms apart.
    let (base, _stop) = support::sim_provider(SimConfig {
        latency_ms: 500,
        token_ms: 20,
        reply_tokens: 12,
        seed: Some(3),
        ..SimConfig::default()
    })
    .await;
    let cfg = format!(
        "[pools.llm]\nagent = \"openai\"\n[pools.llm.openai]\nbase_url = \"{base}/v1\"\n\
         model = \"sim-large\"\nmax_tokens = 64\n"
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "llm", "args": {"prompt": "how is the database"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.id();
    let events = s.read_sse(&id).await;
    let (last, task) = events.last().unwrap();
    assert_eq!(last, "result", "{events:?}");
    assert_eq!(task["status"], "succeeded", "{task}");
    let content = task["result"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("Simulated reply to: how is the database lorem"),
        "{content}"
    );
    assert_eq!(task["result"]["model"], "sim-large");
    assert_eq!(task["result"]["finish_reason"], "stop");
    // Every token reached the task's event stream, in order, before the
    // result.
    let n = events
        .iter()
        .filter(|(e, v)| e == "progress" && v["step"] == "token")
        .count();
    assert!(n >= 4, "tokens come as they arrive: {events:?}");
    assert_eq!(token_text(&events, ""), content);

    // Bad args are refused at admission, naming the field.
    s.post(
        "/api/tasks",
        &json!({"type": "llm", "args": {"messages": [{"role": "robot", "content": "x"}]}}),
    )
    .await
    .assert_error(422, "invalid_field", Some("args.messages[0].role"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_settings_are_checked_at_start_naming_the_key() {
    for (table, key) in [
        ("model = \"m\"\n", "pools.llm.openai"),
        (
            "base_url = \"ftp://api.example.com/v1\"\nmodel = \"m\"\n",
            "pools.llm.openai.base_url",
        ),
        (
            "base_url = \"https://api.example.com/v1\"\nmodel = \"m\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "pools.llm.openai.ca_file",
        ),
        (
            "base_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\ntemperature = 5.0\n",
            "pools.llm.openai.temperature",
        ),
    ] {
        let toml = format!("[pools.llm]\nagent = \"openai\"\n[pools.llm.openai]\n{table}");
        let err = start_error(&toml).await;
        assert!(err.contains(key), "{toml}: {err}");
    }
    let err = start_error("[pools.llm]\nagent = \"openai\"\n").await;
    assert!(err.contains("pools.llm.openai"), "{err}");
    let err = start_error("[llm]\nbase_url = \"http://h/v1\"\nmodel = \"\"\n").await;
    assert!(err.contains("llm.model"), "{err}");
}

async fn start_error(toml: &str) -> String {
    let mut cfg = swarm_core::config::Config::from_toml(toml).unwrap();
    let db = support::TestDb::new(Backend::Sqlite).await.unwrap();
    cfg.database.url = db.url.clone();
    let store = swarm_store::Store::connect(&cfg.database).await.unwrap();
    match swarm_engine::Engine::start(cfg, store).await {
        Ok(_) => panic!("{toml} started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn communications_asks_the_llm_and_falls_back_to_the_rules() {
    let reply = |contains: &str, reply: &str| ScriptedReply {
        contains: contains.into(),
        reply: reply.into(),
    };
    let (base, _stop) = support::sim_provider(SimConfig {
        latency_ms: 300,
        token_ms: 5,
        seed: Some(3),
        replies: vec![
            reply(
                DRAFTER_ROLE,
                "The database is down. We expect it back within the hour.",
            ),
            reply(
                TONE_ROLE,
                "```json\n{\"edits\": [{\"op\": \"replace\", \"path\": \"/subject\", \
                 \"value\": \"Database outage\", \"reason\": \"says what it is about\"}], \
                 \"notes\": [\"reads well\"]}\n```",
            ),
            // Not the edit format: the structure reviewer falls back.
            reply(STRUCTURE_ROLE, "Sure! It looks great to me."),
        ],
        ..SimConfig::default()
    })
    .await;
    let cfg = format!("[llm]\nbase_url = \"{base}/v1\"\nmodel = \"sim-writer\"\n");
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "email", "args": {"to": "ops@example.com", "subject": "Outage",
                    "body": "db down, eta 1h"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let events = s.read_sse(&r.id()).await;
    let (last, task) = events.last().unwrap();
    assert_eq!(last, "result", "{events:?}");
    assert_eq!(task["status"], "succeeded", "{task}");
    let result = &task["result"];

    // The drafter wrote the body, streaming.
    let body = "The database is down. We expect it back within the hour.";
    assert_eq!(
        result["drafter"],
        json!({"by": "llm", "model": "sim-writer"})
    );
    assert_eq!(result["draft"]["body"], body);
    assert_eq!(token_text(&events, "draft"), body);
    // The tone reviewer's edit came from the LLM, in the edit format.
    let tone = &result["reviews"][0];
    assert_eq!(tone["reviewer"], "tone");
    assert_eq!(tone["edits"][0]["rule"], "llm", "{tone}");
    assert_eq!(tone["edits"][0]["value"], "Database outage");
    assert!(
        tone["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "edits suggested by the LLM (sim-writer)"),
        "{tone}"
    );
    assert!(token_text(&events, "tone").contains("Database outage"));
    // The structure reviewer's answer was unusable: the rules, saying so.
    let structure = &result["reviews"][1];
    let note = structure["notes"][0].as_str().unwrap();
    assert!(
        note.starts_with("LLM answer unusable (no JSON object); used the built-in rules"),
        "{structure}"
    );
    assert_eq!(
        token_text(&events, "structure"),
        "Sure! It looks great to me."
    );
    let rules: Vec<&str> = structure["edits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"greeting") && rules.contains(&"signoff"),
        "{structure}"
    );
    // The merge is the usual one: tone's subject first, structure's
    // summary of the same subject rejected as conflicting.
    assert_eq!(result["final"]["subject"], "Database outage", "{result}");
    assert!(
        result["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["rule"] == "subject_summary"
                && d["rejected_because"] == "conflicts with tone's edit"),
        "{result}"
    );
    let final_body = result["final"]["body"].as_str().unwrap();
    assert!(
        final_body
            .starts_with("Hello,\n\nThe database is down. We expect it back within the hour."),
        "{final_body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn communications_without_a_reachable_llm_uses_the_rules() {
    // `[llm]` pointing at a closed port: every call fails fast, and the
    // workflow gives the same message as without an LLM.
    let port = support::free_port();
    let cfg = format!("[llm]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"m\"\n");
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "email", "args": {"to": "ops@example.com", "subject": "Outage",
                    "body": "db down, eta 1h"}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let result = &r.body["result"];
    assert_eq!(
        result["final"]["subject"],
        "Outage: Database down, ETA 1 hour"
    );
    assert_eq!(
        result["final"]["body"],
        "Hello,\n\nDatabase down, ETA 1 hour.\n\nBest regards,\nSwarmDirector"
    );
    assert_eq!(result["drafter"]["by"], "rules");
    assert!(
        result["drafter"]["note"]
            .as_str()
            .unwrap()
            .starts_with("LLM failed (backend_unreachable"),
        "{result}"
    );
    for review in result["reviews"].as_array().unwrap() {
        let note = review["notes"][0].as_str().unwrap();
        assert!(
            note.starts_with("LLM failed (backend_unreachable")
                && note.ends_with("used the built-in rules"),
            "{review}"
        );
    }
}

/// A provider with a hard request quota (issue 16, part 2): 12 requests
/// per 1.5 s window. The pool reads the rate-limit headers of each answer
/// and pauses its starts until the reset once what is left would not
/// cover its calls in flight, so a backlog of 40 tasks drains at the quota
/// without the 429s a pool probing into the limit would collect (one per
/// start past the quota: 60-70% of the requests in bench/ratelimit.sh).
/// Queued tasks say what holds them: `provider_pause`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_pool_waits_for_the_providers_quota_to_reset() {
    let (base, _stop) = support::sim_provider(SimConfig {
        latency_ms: 10,
        rpm: 12,
        window_ms: 1_500,
        seed: Some(5),
        ..SimConfig::default()
    })
    .await;
    let cfg = format!(
        "[pools.llm]\nagent = \"openai\"\nconcurrency = 4\n[pools.llm.queue]\ntarget_delay_ms = 0\n\
         [pools.llm.retry_task]\nmax_attempts = 5\nbackoff_ms = 50\n\
         [pools.llm.openai]\nbase_url = \"{base}/v1\"\nmodel = \"sim\"\nmax_tokens = 8\n"
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let tasks: Vec<Value> = (0..40)
        .map(|i| json!({"type": "llm", "args": {"prompt": format!("q{i}")}, "timeout_ms": 60_000}))
        .collect();
    let r = s.post("/api/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // While the quota is spent, the queue waits for the provider.
    let mut saw_pause = false;
    for _ in 0..100 {
        let st = s.get("/api/status").await;
        let llm = support::pool(&st.body, "llm");
        if llm["waiting_for"] == "provider_pause" && llm["paused_ms"].as_u64() > Some(0) {
            saw_pause = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(saw_pause, "the pool never paused for the provider");
    for item in r.body["items"].as_array().unwrap() {
        let done = s.wait_done(item["task"]["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let stats: Value = s
        .client
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limited = stats["rate_limited"].as_u64().unwrap();
    assert!(
        limited <= 2,
        "{limited} requests refused with 429 for 40 served: {stats}"
    );
    let st = s.get("/api/status").await;
    assert!(
        support::pool(&st.body, "llm")["provider_pauses"]
            .as_u64()
            .unwrap()
            >= 3,
        "{}",
        st.text
    );
}
