//! Crash recovery with the real binary: kill -9 a server with tasks running
//! and queued; after a restart on the same database they all complete.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Backend, TestDb, free_port};

const CONFIG: &str =
    "[pools.slow]\nagent = \"sim\"\nconcurrency = 2\n[database]\nlease_ms = 3000\n";

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn spawn(db: &TestDb, port: u16, config: &PathBuf, log: &PathBuf) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db.url,
                "--log",
                "info",
            ])
            .arg("--config")
            .arg(config)
            .env_remove("SWARMD_NODE_ID")
            .env_remove("SWARMD_LISTEN")
            .env_remove("SWARMD_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn swarmd");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_healthy(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("swarmd did not become ready");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// A database, a config file, a log file and a port, for one server
/// started (and restarted) as a child process.
struct Fixture {
    db: TestDb,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    client: reqwest::Client,
}

impl Fixture {
    async fn new(backend: Backend, name: &str) -> Option<Fixture> {
        swarm_agents::install_crypto_provider();
        let db = TestDb::new(backend).await?;
        let dir = std::env::temp_dir().join(format!(
            "swarmd-recovery-{}-{name}-{backend:?}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("swarmd.toml");
        std::fs::write(&config, CONFIG).unwrap();
        Some(Fixture {
            db,
            log: dir.join("swarmd.log"),
            config,
            dir,
            port: free_port(),
            client: reqwest::Client::new(),
        })
    }

    /// Starts the server and waits until it is ready.
    async fn start(&self) -> Server {
        let s = Server::spawn(&self.db, self.port, &self.config, &self.log);
        s.wait_healthy(&self.client).await;
        s
    }

    async fn submit(&self, s: &Server, body: Value) -> String {
        let r: Value = self
            .client
            .post(format!("{}/api/tasks", s.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["id"].as_str().expect("task id").to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn killed_server_loses_no_task(backend: Backend) {
    let Some(f) = Fixture::new(backend, "kill").await else {
        return;
    };
    let first = f.start().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let body = json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1500}, "title": format!("job {i}")});
        ids.push(f.submit(&first, body).await);
    }
    // Two run (the pool's limit), two wait; then the process dies at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_status(&f.client, &first.base, &ids, "running").await != 2 {
        assert!(Instant::now() < deadline, "tasks never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // SIGKILL: no drain, no goodbye

    let second = f.start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reruns = 0;
    for id in &ids {
        loop {
            let t = get(&f.client, format!("{}/api/tasks/{id}", second.base)).await;
            if t["status"] == "succeeded" {
                if t["attempts"] == 2 {
                    reruns += 1;
                }
                break;
            }
            assert!(
                !matches!(
                    t["status"].as_str(),
                    Some("failed" | "timed_out" | "cancelled")
                ),
                "task ended badly: {t}"
            );
            assert!(
                Instant::now() < deadline,
                "task {id} did not complete after restart: {t}\n{}",
                std::fs::read_to_string(&f.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The two that were running when the process died ran again.
    assert_eq!(reruns, 2, "the running tasks were re-run once each");
    let log_text = std::fs::read_to_string(&f.log).unwrap_or_default();
    assert!(
        log_text.contains("re-queued unfinished tasks"),
        "{log_text}"
    );
}

async fn count_status(client: &reqwest::Client, base: &str, ids: &[String], status: &str) -> usize {
    let mut n = 0;
    for id in ids {
        if get(client, format!("{base}/api/tasks/{id}")).await["status"] == status {
            n += 1;
        }
    }
    n
}

async fn sigterm_drains_running_tasks(backend: Backend) {
    let Some(f) = Fixture::new(backend, "term").await else {
        return;
    };
    let mut server = f.start().await;
    let id = f
        .submit(&server, json!({"type": "sim", "args": {"latency_ms": 700}}))
        .await;
    let ids = [id.clone()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_status(&f.client, &server.base, &ids, "running").await != 1 {
        assert!(Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let (exit, server) = tokio::task::spawn_blocking(move || (server.child.wait(), server))
        .await
        .unwrap();
    assert!(exit.unwrap().success(), "clean exit after SIGTERM");
    drop(server);
    // The running task finished during the drain, and it is on record.
    let again = f.start().await;
    let t = get(&f.client, format!("{}/api/tasks/{id}", again.base)).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["attempts"], 1);
}

on_both_backends!(killed_server_loses_no_task, sigterm_drains_running_tasks);

/// Ctrl-C in a terminal signals the whole foreground process group. The
/// server drains; its Python workers are in groups of their own, so the
/// running task finishes on its worker instead of dying with it, and the
/// log has no worker "restarting" while the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn ctrl_c_drains_a_task_on_a_python_worker() {
    use std::os::unix::process::CommandExt;
    support::require_python3();
    let f = Fixture::new(Backend::Sqlite, "ctrl-c").await.unwrap();
    std::fs::write(
        &f.config,
        format!(
            "[pools.py]\nagent = \"process\"\n[pools.py.process]\n\
             command = [\"python3\", \"{}\"]\nworkers = 1\n",
            support::agent_py()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(&f.log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", f.port)])
        .args(["--database-url", &f.db.url, "--log", "info"])
        .arg("--config")
        .arg(&f.config)
        .env_remove("SWARMD_NODE_ID")
        // Like a shell's job: the server leads a process group of its own.
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn swarmd");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{}", f.port),
    };
    server.wait_healthy(&f.client).await;
    // Wait for the worker, so the task below is the one that is running.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = get(&f.client, format!("{}/api/status", server.base)).await;
        if support::pool(&st, "py")["workers"]["alive"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never started: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = f
        .submit(&server, json!({"type": "py", "args": {"sleep_ms": 1500}}))
        .await;
    while count_status(
        &f.client,
        &server.base,
        std::slice::from_ref(&id),
        "running",
    )
    .await
        != 1
    {
        assert!(Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let group = format!("-{}", server.child.id());
    let status = Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .expect("kill");
    assert!(status.success());
    let (exit, server) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        (server.child.wait(), server)
    })
    .await
    .unwrap();
    assert!(exit.unwrap().success(), "clean exit after Ctrl-C");
    drop(server);
    let text = std::fs::read_to_string(&f.log).unwrap_or_default();
    assert!(!text.contains("restarting"), "{text}");
    let warned = text
        .lines()
        .any(|l| l.contains("WARN") && l.contains("process worker"));
    assert!(!warned, "{text}");

    // The task finished during the drain, on its first attempt.
    let again = f.start().await;
    let t = get(&f.client, format!("{}/api/tasks/{id}", again.base)).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
}
