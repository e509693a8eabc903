//! Balanced departments through the whole server, against real
//! `swarmd sim-backend` processes: an instance killed mid-run costs no
//! task, a failing one is ejected and comes back when healthy, active
//! health checks take a dead one out and put it back, instances are added,
//! drained and removed at runtime (API and SIGHUP) without failing a task,
//! and a hanging worker process is timed out and replaced.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, TempDir, TestServer, agent_py, free_port, require_python3};

/// A `swarmd sim-backend` process, killed when dropped.
struct Sim {
    child: Child,
    port: u16,
    args: Vec<String>,
}

impl Sim {
    async fn start(args: &[&str]) -> Sim {
        Self::start_on(free_port(), args.iter().map(|a| a.to_string()).collect()).await
    }

    async fn start_on(port: u16, args: Vec<String>) -> Sim {
        let child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
            .arg("sim-backend")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sim-backend starts");
        let sim = Sim { child, port, args };
        swarm_agents::install_crypto_provider();
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(sim.url("/health")).send().await.is_ok() {
                return sim;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sim-backend on {port} did not come up");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn work(&self) -> String {
        self.url("/work")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, with the same settings.
    async fn restart(&mut self) {
        self.kill();
        let fresh = Sim::start_on(self.port, self.args.clone()).await;
        *self = fresh;
    }

    async fn served(&self) -> u64 {
        let stats: Value = reqwest::get(self.url("/stats"))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json");
        stats["served"].as_u64().expect("served")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pool_cfg(name: &str, urls: &[String], extra: &str) -> String {
    format!(
        "[pools.{name}]\nagent = \"http\"\nconcurrency = 64\n[pools.{name}.http]\nurls = {urls:?}\n{extra}"
    )
}

/// Callers on loopback are admins (the tests change instances without keys).
const LOOPBACK_ADMIN: &str = "[auth]\nloopback_admin = true\n";

/// Submits `n` tasks to `pool` without waiting; returns their ids.
async fn submit_many(s: &TestServer, pool: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": pool, "args": {"i": i}, "timeout_ms": 20_000}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.id());
    }
    ids
}

async fn instances(s: &TestServer, pool: &str) -> Value {
    let r = s.get(&format!("/api/pools/{pool}/instances")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn instance<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["balancer"]["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
}

/// Polls `pool`'s instances until `pred` holds (or 15 s pass).
async fn wait_instances(s: &TestServer, pool: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = instances(s, pool).await;
        if pred(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen in 15 s; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_mid_run_fails_no_task() {
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(Sim::start(&["--latency-ms", "200"]).await);
    }
    let urls: Vec<String> = sims.iter().map(Sim::work).collect();
    let s = TestServer::start(Backend::Sqlite, &pool_cfg("remote", &urls, ""))
        .await
        .unwrap();
    let ids = submit_many(&s, "remote", 60).await;
    // Let calls reach every instance, then kill one with calls in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sims[0].kill();
    let mut on_live = 0;
    for id in &ids {
        let t = s.wait_done(id).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        // The task names the instance that ran it (its last attempt).
        let at = t["instance"].as_str().unwrap_or_default().to_string();
        assert!(urls.contains(&at), "{t}");
        on_live += usize::from(at != urls[0]);
    }
    assert!(on_live >= 40, "{on_live} of 60 ended on a live instance");
    let view = instances(&s, "remote").await;
    let dead = instance(&view, &urls[0]).expect("listed");
    assert!(
        dead["failures"].as_u64().unwrap() >= 1,
        "the killed instance had calls in flight: {dead}"
    );
    assert_ne!(dead["state"], "healthy", "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_ejected_then_restored_when_healthy() {
    let good = Sim::start(&["--latency-ms", "10"]).await;
    // Answers 500 for its first 3 s, then works.
    let dir = TempDir::new();
    let model = dir.path().join("flaky.toml");
    std::fs::write(
        &model,
        "latency_ms = 10\nerror_rate = 1.0\n[[schedule]]\nat_s = 3.0\nerror_rate = 0.0\n",
    )
    .unwrap();
    let flaky = Sim::start(&["--config", model.to_str().unwrap()]).await;
    let urls = vec![good.work(), flaky.work()];
    let cfg = pool_cfg(
        "remote",
        &urls,
        "[pools.remote.balance]\npolicy = \"round_robin\"\n\
         [pools.remote.balance.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 500\n",
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    for i in 0..10 {
        let t = s.run_ok("remote", json!({"i": i})).await;
        assert_eq!(t["instance"], urls[0], "only the good one succeeds: {t}");
    }
    let view = instances(&s, "remote").await;
    let f = instance(&view, &urls[1]).unwrap();
    assert!(f["ejections"].as_u64().unwrap() >= 1, "ejected: {f}");
    assert_eq!(f["successes"], 0, "{f}");
    // Once it works again, probes bring it back and it takes its share.
    let mut restored = false;
    for i in 10..210 {
        s.run_ok("remote", json!({"i": i})).await;
        let view = instances(&s, "remote").await;
        let f = instance(&view, &urls[1]).unwrap();
        if f["state"] == "healthy" && f["successes"].as_u64().unwrap() >= 3 {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(restored, "flaky instance restored after it recovered");
    assert!(flaky.served().await >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_dead_instance_out_and_back() {
    let a = Sim::start(&["--latency-ms", "5"]).await;
    let mut b = Sim::start(&["--latency-ms", "5"]).await;
    let urls = vec![a.work(), b.work()];
    let mut cfg = pool_cfg("remote", &urls, "");
    cfg = cfg.replace(
        "[pools.remote.http]\n",
        "[pools.remote.http]\nhealth_path = \"/health\"\nhealth_interval_ms = 100\n",
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    b.kill();
    // No traffic at all: only the checks can tell.
    let id = urls[1].clone();
    wait_instances(&s, "remote", "dead instance ejected", |v| {
        instance(v, &id).is_some_and(|i| i["state"] == "ejected")
    })
    .await;
    // Every task goes to the live one meanwhile.
    for i in 0..5 {
        s.run_ok("remote", json!({"i": i})).await;
    }
    assert_eq!(
        instance(&instances(&s, "remote").await, &id).unwrap()["picks"],
        0
    );
    b.restart().await;
    wait_instances(&s, "remote", "restarted instance back", |v| {
        instance(v, &id).is_some_and(|i| i["state"] == "healthy")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_added_drained_and_removed_at_runtime() {
    let a = Sim::start(&["--latency-ms", "5"]).await;
    let b = Sim::start(&["--latency-ms", "400"]).await;
    let s = TestServer::start(
        Backend::Sqlite,
        &(pool_cfg(
            "remote",
            &[a.work()],
            "allow_hosts = [\"127.0.0.1\"]\n[pools.remote.balance]\npolicy = \"round_robin\"\n",
        ) + "[pools.echo]\nreplicas = 2\n"
            + LOOPBACK_ADMIN),
    )
    .await
    .unwrap();
    // Add b.
    let r = s
        .post(
            "/api/pools/remote/instances",
            &json!({"url": b.work(), "weight": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["id"], b.work());
    assert_eq!(r.body["state"], "healthy");
    // Again: already there, 200.
    let again = s
        .post("/api/pools/remote/instances", &json!({"url": b.work()}))
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    // Tasks go to both; remove b while it has calls in flight.
    let ids = submit_many(&s, "remote", 10).await;
    wait_instances(&s, "remote", "calls in flight on b", |v| {
        instance(v, &b.work()).is_some_and(|i| i["outstanding"].as_u64() > Some(0))
    })
    .await;
    let alias = format!("127.0.0.1:{}", b.port);
    let del = s
        .client
        .delete(s.url(&format!("/api/pools/remote/instances/{alias}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let body: Value = del.json().await.unwrap();
    assert_eq!(body["state"], "draining", "{body}");
    assert!(body["outstanding"].as_u64().unwrap() > 0, "{body}");
    for id in &ids {
        let t = s.wait_done(id).await;
        assert_eq!(
            t["status"], "succeeded",
            "a drained instance fails no task: {t}"
        );
    }
    wait_instances(&s, "remote", "b gone once idle", |v| {
        instance(v, &b.work()).is_none()
    })
    .await;
    let served_b = b.served().await;
    assert!(served_b >= 1);
    for id in submit_many(&s, "remote", 5).await {
        assert_eq!(s.wait_done(&id).await["status"], "succeeded");
    }
    assert_eq!(b.served().await, served_b, "no calls after removal");

    // Draining by full, percent-encoded id; then taking it back.
    let enc = a.work().replace(':', "%3A").replace('/', "%2F");
    let r = s
        .post(
            &format!("/api/pools/remote/instances/{enc}/drain"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "draining");
    let back = s
        .post("/api/pools/remote/instances", &json!({"url": a.work()}))
        .await;
    assert_eq!(back.status, 200, "{}", back.text);
    assert_eq!(back.body["state"], "healthy");

    // Per-instance figures in /api/status and /metrics.
    let st = s.get("/api/status").await;
    let pool = support::pool(&st.body, "remote");
    assert_eq!(pool["instances"], json!([a.work()]), "{pool}");
    assert_eq!(pool["balancer"]["policy"], "round_robin");
    let m = s.get("/metrics").await;
    let line = format!(
        "swarmd_instance_state{{pool=\"remote\",instance=\"{}\",state=\"healthy\"}} 1",
        a.work()
    );
    assert!(m.text.contains(&line), "{line} in\n{}", m.text);
    assert!(
        m.text
            .contains("swarmd_instance_calls_total{pool=\"remote\"")
    );

    // Replicas of a built-in agent are instances too.
    let echo = instances(&s, "echo").await;
    assert_eq!(echo["instances"], json!(["echo-0", "echo-1"]), "{echo}");
    let r = s
        .post("/api/pools/echo/instances", &json!({"id": "echo-2"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Clear errors.
    s.post("/api/pools/nope/instances", &json!({"url": a.work()}))
        .await
        .assert_error(404, "pool_not_found", None);
    s.post("/api/pools/remote/instances", &json!({"url": "ftp://x"}))
        .await
        .assert_error(422, "invalid_field", Some("url"));
    s.post("/api/pools/remote/instances", &json!({"weight": 2}))
        .await
        .assert_error(422, "missing_field", Some("url"));
    s.post(
        "/api/pools/remote/instances",
        &json!({"url": a.work(), "weight": 0}),
    )
    .await
    .assert_error(422, "invalid_field", Some("weight"));
    s.post("/api/pools/remote/instances/127.0.0.1:1/drain", &json!({}))
        .await
        .assert_error(404, "instance_not_found", None);
    s.post("/api/pools/communications/instances", &json!({"id": "c-1"}))
        .await
        .assert_error(409, "instances_fixed", None);
}

/// `kill -HUP` on a `swarmd serve` process.
fn hangup(child: &Child) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok);
}

fn write_config(path: &Path, db: &Path, urls: &[String]) {
    let text = format!(
        "[database]\nurl = \"sqlite://{}\"\n{}",
        db.display(),
        pool_cfg("remote", urls, "")
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_instance_lists() {
    let a = Sim::start(&["--latency-ms", "5"]).await;
    let b = Sim::start(&["--latency-ms", "5"]).await;
    let dir = TempDir::new();
    let (cfg, db): (PathBuf, PathBuf) = (dir.path().join("swarmd.toml"), dir.path().join("t.db"));
    write_config(&cfg, &db, &[a.work()]);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    swarm_agents::install_crypto_provider();
    let client = reqwest::Client::new();
    let list = || async {
        let r = client
            .get(format!("{base}/api/pools/remote/instances"))
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()
    };
    let mut up = false;
    for _ in 0..200 {
        if list().await.is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "swarmd came up");
    assert_eq!(list().await.unwrap()["instances"], json!([a.work()]));
    write_config(&cfg, &db, &[b.work()]);
    hangup(&child);
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = list().await.unwrap();
        if seen["instances"] == json!([b.work()]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unparsable file changes nothing, and the server lives on.
    std::fs::write(&cfg, "[pools.remote\n").unwrap();
    hangup(&child);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = list().await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen["instances"], json!([b.work()]), "reloaded: {seen}");
    assert_eq!(after.unwrap()["instances"], json!([b.work()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_hanging_worker_is_timed_out_and_replaced() {
    require_python3();
    let agent = agent_py();
    let cfg = format!(
        "[pools.py]\nagent = \"process\"\n[pools.py.process]\ncommand = [\"python3\", \"{agent}\"]\nworkers = 1\n"
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let hung = s
        .post(
            "/api/tasks",
            &json!({"type": "py", "args": {"hang": true}, "timeout_ms": 1_000, "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(hung.body["status"], "timed_out", "{}", hung.text);
    // As examples/python-agent/README.md says: the task's deadline ended it.
    assert_eq!(
        hung.body["error"]["code"], "deadline_exceeded",
        "{}",
        hung.text
    );
    assert_eq!(hung.body["error"]["stage"], "run", "{}", hung.text);
    // The one worker was killed and replaced: the next task runs.
    s.run_ok("py", json!({"n": 2})).await;
    let view = instances(&s, "py").await;
    assert_eq!(view["mutable"], false);
    assert!(view["workers"]["kills"].as_u64().unwrap() >= 1, "{view}");
    assert!(view["workers"]["restarts"].as_u64().unwrap() >= 1, "{view}");
    let st = s.get("/api/status").await;
    assert!(support::pool(&st.body, "py")["workers"]["alive"] == 1);
}
