//! Seeing inside, through the API over a real socket: `/metrics` (parsed
//! here and checked by `promtool`), figures that follow a known load,
//! alerts that fire and clear, and the request id reaching the agent.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, TestServer};

async fn server(extra: &str) -> TestServer {
    TestServer::start(Backend::Sqlite, extra)
        .await
        .expect("SQLite is always available")
}

/// One sample line of the text format: `name{k="v",…} value`.
#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser for what we emit: every line is a comment or a sample
/// whose value is a number; anything else fails the test.
fn parse(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.push(Series {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one series of `name` whose labels include `want`.
fn value(all: &[Series], name: &str, want: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Series> = all
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name} {want:?}: {hits:?}");
    hits[0].value
}

async fn metrics(s: &TestServer) -> (String, Vec<Series>) {
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ct = r.headers["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let all = parse(&r.text);
    (r.text, all)
}

/// `promtool check metrics` on `text`; fails the test without promtool.
fn promtool(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        support::needs::missing("promtool", "install Debian's `prometheus` package");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_stages_tenants_and_http() {
    let s = server("").await;
    for i in 0..6 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let r = s
            .post_with(
                "/api/tasks",
                &json!({"type": "echo", "args": {"i": i}, "wait_ms": 5000}),
                &[("x-tenant", tenant)],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // Every task carries its own timings too.
        for stage in [
            "admission_ms",
            "persist_ms",
            "queue_ms",
            "run_ms",
            "total_ms",
        ] {
            assert!(r.body["timings"][stage].is_number(), "{stage}: {}", r.text);
        }
    }
    assert_eq!(s.get("/api/tasks/not-an-id").await.status, 404);
    let (text, all) = metrics(&s).await;
    for stage in ["admission", "persist", "queue", "run", "complete", "total"] {
        let n = value(
            &all,
            "swarmd_task_stage_seconds_count",
            &[("pool", "echo"), ("stage", stage)],
        );
        assert_eq!(n, 6.0, "stage {stage}");
    }
    assert_eq!(
        value(
            &all,
            "swarmd_pool_finished_total",
            &[("pool", "echo"), ("outcome", "succeeded"), ("kind", "task")]
        ),
        6.0
    );
    for tenant in ["acme", "globex"] {
        let accepted = value(
            &all,
            "swarmd_tenant_tasks_total",
            &[("tenant", tenant), ("event", "accepted")],
        );
        assert_eq!(accepted, 3.0, "{tenant}");
    }
    assert_eq!(
        value(
            &all,
            "swarmd_http_requests_total",
            &[
                ("route", "/api/tasks"),
                ("method", "POST"),
                ("status", "200")
            ]
        ),
        6.0
    );
    // The route template, never the raw path (which would grow without bound).
    assert_eq!(
        value(
            &all,
            "swarmd_http_requests_total",
            &[("route", "/api/tasks/{id}"), ("status", "404")]
        ),
        1.0
    );
    assert!(!text.contains("not-an-id"));
    assert!(value(&all, "swarmd_process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&all, "swarmd_process_open_fds", &[]) >= 3.0);
    assert!(value(&all, "swarmd_runtime_workers", &[]) >= 1.0);
    assert_eq!(
        value(&all, "swarmd_alerts_active", &[("alert", "queue_age")]),
        0.0
    );
}

/// The whole exposition, after some traffic (every family has samples),
/// passes `promtool check metrics`: names, types, units, `# HELP`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "promtool",
    ignore = "needs promtool: install Debian's prometheus package"
)]
async fn metrics_pass_promtool() {
    let s = server("").await;
    for tenant in ["acme", "globex"] {
        let r = s
            .post_with(
                "/api/tasks",
                &json!({"type": "echo", "wait_ms": 5000}),
                &[("x-tenant", tenant)],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(s.get("/api/tasks/not-an-id").await.status, 404);
    let (text, _) = metrics(&s).await;
    promtool(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_rises_while_a_pool_is_saturated_and_falls_after() {
    let cfg = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\n\
               [pools.slow.queue]\ntarget_delay_ms = 0\n";
    let s = server(cfg).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 300}}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.id());
    }
    let (_, busy) = metrics(&s).await;
    let queued = value(
        &busy,
        "swarmd_pool_queued",
        &[("pool", "slow"), ("priority", "normal")],
    );
    assert!(queued >= 2.0, "queued {queued}");
    assert_eq!(
        value(&busy, "swarmd_pool_in_flight", &[("pool", "slow")]),
        1.0
    );
    assert_eq!(value(&busy, "swarmd_pool_limit", &[("pool", "slow")]), 1.0);
    assert!(
        value(
            &busy,
            "swarmd_pool_oldest_queued_seconds",
            &[("pool", "slow")]
        ) >= 0.0
    );
    for id in &ids {
        s.wait_done(id).await;
    }
    let (_, idle) = metrics(&s).await;
    assert_eq!(
        value(
            &idle,
            "swarmd_pool_queued",
            &[("pool", "slow"), ("priority", "normal")]
        ),
        0.0
    );
    assert_eq!(
        value(&idle, "swarmd_pool_in_flight", &[("pool", "slow")]),
        0.0
    );
    assert_eq!(
        value(
            &idle,
            "swarmd_pool_finished_total",
            &[("pool", "slow"), ("outcome", "succeeded"), ("kind", "task")]
        ),
        4.0
    );
    // Queue waits were recorded: the last task waited for three runs.
    let slow_queue = value(
        &idle,
        "swarmd_task_stage_seconds_bucket",
        &[("pool", "slow"), ("stage", "queue"), ("le", "0.25")],
    );
    assert!(
        slow_queue < 4.0,
        "some waited longer than 250 ms: {slow_queue}"
    );
    // The status view has the recent latency the dashboard plots.
    let st = s.get("/api/status").await.body;
    let slow = st["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(slow["latency_ms"]["count"], 4, "{slow}");
    assert!(
        slow["latency_ms"]["p99"].as_f64().unwrap() >= 300.0,
        "{slow}"
    );
}

async fn alerts_now(s: &TestServer) -> Value {
    let r = s.get("/api/alerts").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn firing(alerts: &Value, name: &str, scope: &str) -> bool {
    alerts["active"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == name && a["scope"] == scope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_while_a_queue_ages_and_clears_after() {
    let cfg = "[monitor]\ninterval_ms = 50\n[monitor.alerts]\nqueue_age_ms = 200\n\
               [pools.slow]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n\
               [pools.slow.queue]\ntarget_delay_ms = 0\n";
    let s = server(cfg).await;
    let job = json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 60_000}, "timeout_ms": 600_000});
    let running = s.post("/api/tasks", &job).await.id();
    let waiting = s.post("/api/tasks", &job).await.id();
    let mut fired = None;
    for _ in 0..100 {
        let a = alerts_now(&s).await;
        if firing(&a, "queue_age", "slow") {
            fired = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fired = fired.expect("queue_age fired within 5 s");
    let alert = fired["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "queue_age")
        .unwrap();
    assert_eq!(alert["threshold"], 200.0);
    assert!(alert["value"].as_f64().unwrap() > 200.0, "{alert}");
    assert!(
        alert["message"].as_str().unwrap().starts_with("slow: "),
        "{alert}"
    );
    assert_eq!(fired["fired"]["queue_age"], 1);
    let (_, all) = metrics(&s).await;
    assert_eq!(
        value(&all, "swarmd_alerts_active", &[("alert", "queue_age")]),
        1.0
    );
    // Empty the queue: the alert clears and stays in the history.
    for id in [&waiting, &running] {
        let c = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(c.status, 200, "{}", c.text);
    }
    let mut cleared = None;
    for _ in 0..100 {
        let a = alerts_now(&s).await;
        if !firing(&a, "queue_age", "slow") {
            cleared = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cleared = cleared.expect("queue_age cleared within 5 s");
    let last = &cleared["recent"][0];
    assert_eq!(last["name"], "queue_age");
    assert!(last["cleared_at"].is_string(), "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_reaches_the_agent_and_comes_back() {
    let s = server("").await;
    let body = json!({"type": "echo", "args": {}, "wait_ms": 5000});
    let given = s
        .post_with("/api/tasks", &body, &[("x-request-id", "req-42")])
        .await;
    assert_eq!(given.status, 200, "{}", given.text);
    assert_eq!(given.headers["x-request-id"], "req-42");
    assert_eq!(given.body["result"]["request_id"], "req-42");
    // Without one, the server makes one, answers with it, and the agent
    // saw the same.
    let made = s.post("/api/tasks", &body).await;
    let id = made.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() >= 32, "{id}");
    assert_eq!(made.body["result"]["request_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_admin_key_when_keys_are_configured() {
    let client = swarmd_hash("client-secret");
    let admin = swarmd_hash("admin-secret");
    let cfg = format!(
        "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{client}\"\n\
         [[tenants]]\nname = \"ops\"\nrole = \"admin\"\nkey_sha256 = \"{admin}\"\n"
    );
    let s = server(&cfg).await;
    s.get("/metrics")
        .await
        .assert_error(401, "unauthorized", None);
    s.get_with("/metrics", &[("authorization", "Bearer client-secret")])
        .await
        .assert_error(403, "forbidden", None);
    let ok = s
        .get_with("/metrics", &[("authorization", "Bearer admin-secret")])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.text.contains("swarmd_pool_limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let s = server("[monitor]\nmetrics = false\n").await;
    s.get("/metrics")
        .await
        .assert_error(404, "metrics_disabled", None);
    // Status and alerts still work: the monitor keeps sampling.
    assert_eq!(s.get("/api/alerts").await.status, 200);
    assert_eq!(s.get("/api/status").await.status, 200);
}

fn swarmd_hash(key: &str) -> String {
    swarm_server::auth::hash_key(key)
}

/// Log lines of this test binary, captured by a global subscriber (only the
/// test below reads them; others just add lines).
fn captured_logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buf
    })
}

struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tasks_are_logged_with_their_timings() {
    let logs = captured_logs();
    let s = server("[monitor]\nslow_task_ms = 100\n").await;
    let fast = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 1}, "wait_ms": 5000}),
        )
        .await;
    let slow = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 250}, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(slow.status, 200, "{}", slow.text);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("slow task") && l.contains(&slow.id()))
        .unwrap_or_else(|| panic!("no slow-task line for {} in:\n{text}", slow.id()));
    assert!(line.contains("run_ms"), "{line}");
    assert!(line.contains("queue_ms"), "{line}");
    assert!(!text.contains(&fast.id()), "the fast task is not logged");
}
