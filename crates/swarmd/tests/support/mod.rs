//! Shared test harness: a real server on a real socket, over a real SQLite
//! file or a fresh PostgreSQL database.
#![allow(dead_code)]

#[path = "../../../swarm-agents/tests/support/needs.rs"]
pub mod needs;
#[path = "../../../swarm-agents/tests/support/smtp_server.rs"]
pub mod smtp_server;

pub mod pgcluster;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use swarm_core::config::Config;
use swarm_engine::Engine;
use swarm_store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend from `async fn name(backend: Backend)`:
/// `sqlite::name` and `postgres::name`. Without PostgreSQL
/// (`SWARMD_TEST_PG_URL` unset) the `postgres` half is reported as ignored.
/// A test that needs more from outside Rust says so before its name, e.g.
/// `#[needs("aiosmtpd", "needs aiosmtpd: pip install aiosmtpd")] name`
/// (the `cfg(test_missing = …)` value from `build.rs`, and the reason shown):
/// both halves are then ignored without it.
#[macro_export]
macro_rules! on_both_backends {
    ($($(#[needs($what:literal, $why:literal)])? $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                $(#[cfg_attr(test_missing = $what, ignore = $why)])?
                async fn $name() {
                    super::$name(super::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    test_missing = "postgres",
                    ignore = "needs PostgreSQL: set SWARMD_TEST_PG_URL"
                )]
                // One reason is enough (a second `ignore` is an error).
                $(#[cfg_attr(all(test_missing = $what, not(test_missing = "postgres")), ignore = $why)])?
                async fn $name() {
                    super::$name(super::support::Backend::Postgres).await
                }
            )*
        }
    };
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// The PostgreSQL URL tests use (`SWARMD_TEST_PG_URL`). Without it the
/// PostgreSQL tests are reported as ignored; one run anyway fails here.
pub fn pg_url() -> String {
    match std::env::var("SWARMD_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => needs::missing(
            "PostgreSQL",
            "set SWARMD_TEST_PG_URL, e.g. postgres://postgres@127.0.0.1:5432/test",
        ),
    }
}

/// A database for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database. Always `Some`: a backend missing here fails the
    /// test instead (see [`pg_url`]); the `Option` stays so that the tests'
    /// `let Some(..) = … else` need not all change.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("swarmd-test"));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                Some(TestDb {
                    url: format!("sqlite://{}", dir.join("swarmd.db").display()),
                    dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                let admin = pg_url();
                let name = unique("swarmd_t").to_lowercase();
                let mut conn = connect_pg(&admin).await;
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
                )
                .await
                .expect("create test database");
                let url = with_database(&admin, &name);
                Some(TestDb {
                    url,
                    dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }
}

async fn connect_pg(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to SWARMD_TEST_PG_URL: {e}"))
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside async; use a short-lived runtime on a thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut conn = connect_pg(&admin).await;
                    let _ = sqlx::Executor::execute(
                        &mut conn,
                        sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
                    )
                    .await;
                });
                Some(())
            })
            .join();
        }
    }
}

/// One pool's entry in an `/api/status` answer.
pub fn pool<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {status}"))
}

/// Starts a simulated provider (`swarm_simbackend::serve`, what `swarmd
/// sim-backend` runs) on a free port in this process; returns its base URL
/// and a guard that stops it when dropped.
pub async fn sim_provider(cfg: swarm_simbackend::SimConfig) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(swarm_simbackend::serve(listener, cfg, async move {
        let _ = rx.await;
    }));
    (base, tx)
}

/// A server running in this process on `127.0.0.1:<free port>`.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    pub db: TestDb,
}

impl TestServer {
    /// Starts a server with `extra` TOML merged over the defaults. Always
    /// `Some`, as [`TestDb::new`].
    pub async fn start(backend: Backend, extra: &str) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        Some(Self::start_on(db, extra).await)
    }

    pub async fn start_on(db: TestDb, extra: &str) -> Self {
        let mut cfg = Config::from_toml(extra).expect("test config parses");
        cfg.database.url = db.url.clone();
        cfg.server.shutdown_grace_ms = 2_000;
        let store = Store::connect(&cfg.database).await.expect("store connects");
        let engine = Engine::start(cfg, store).await.expect("engine starts");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(swarm_server::serve(listener, engine.clone(), async move {
            let _ = rx.await;
        }));
        swarm_agents::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        TestServer {
            base,
            client,
            engine,
            stop: Some(tx),
            handle: Some(handle),
            db,
        }
    }

    /// A server on SQLite (always available) with `extra` TOML.
    pub async fn sqlite(extra: &str) -> Self {
        Self::start(Backend::Sqlite, extra)
            .await
            .expect("SQLite is always available")
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("server address")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Reply::from(
            self.client
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    pub async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.post(self.url(path)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("POST")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("GET")).await
    }

    /// Follows a task's server-sent events until the stream ends:
    /// `(event, data)` pairs.
    pub async fn read_sse(&self, id: &str) -> Vec<(String, Value)> {
        let mut resp = self
            .client
            .get(self.url(&format!("/api/tasks/{id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut buf = String::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .expect("events keep coming")
            .unwrap()
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        buf.split("\n\n")
            .filter_map(|block| {
                let mut ev = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        ev = Some(e.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                Some((ev?, serde_json::from_str(&data).unwrap_or(Value::Null)))
            })
            .collect()
    }

    /// Runs a task of `task_type` with `args`, waiting up to 10 s, and
    /// checks it succeeded; returns it.
    pub async fn run_ok(&self, task_type: &str, args: Value) -> Value {
        let r = self
            .post(
                "/api/tasks",
                &serde_json::json!({"type": task_type, "args": args, "wait_ms": 10_000}),
            )
            .await;
        assert_eq!(r.body["status"], "succeeded", "{}", r.text);
        r.body
    }

    /// Starts a `sim` task of `latency_ms` in `pool` and waits until it runs
    /// (with a one-slot pool, what follows queues behind it). Returns its id.
    pub async fn occupy(&self, pool: &str, latency_ms: u64) -> String {
        let r = self
            .post(
                "/api/tasks",
                &serde_json::json!({"type": "sim", "agent": pool, "args": {"latency_ms": latency_ms}, "timeout_ms": 600_000}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        let id = r.body["id"].as_str().expect("task id").to_string();
        self.wait_status(&id, "running").await;
        id
    }

    /// Polls a task until it ends (or 30 s pass).
    pub async fn wait_done(&self, id: &str) -> Value {
        self.wait_done_with(id, &[]).await
    }

    /// Polls a task until it ends (or 30 s pass), sending `headers` (e.g.
    /// the owning tenant's `x-tenant`).
    pub async fn wait_done_with(&self, id: &str, headers: &[(&str, &str)]) -> Value {
        for _ in 0..600 {
            let r = self.get_with(&format!("/api/tasks/{id}"), headers).await;
            if matches!(
                r.body["status"].as_str(),
                Some("succeeded" | "failed" | "timed_out" | "cancelled")
            ) {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} did not end in 30 s");
    }

    /// Polls a task until it has `status` (or 30 s pass).
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        for _ in 0..600 {
            let r = self.get(&format!("/api/tasks/{id}")).await;
            if r.body["status"] == status {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} did not reach {status} in 30 s");
    }

    /// Graceful stop; returns the database for a restart on it.
    pub async fn stop(mut self) -> TestDb {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server ran");
        }
        self.engine.store().close().await;
        std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                dir: None,
                pg: None,
            },
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn from(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// The task id in the body.
    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("a task id").to_string()
    }

    /// Ids of a task listing, in order.
    pub fn list_ids(&self) -> Vec<String> {
        self.body["tasks"]
            .as_array()
            .expect("a task listing")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// Length of a task listing.
    pub fn list_len(&self) -> usize {
        self.list_ids().len()
    }

    /// Asserts an error envelope with this status, code and field.
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "status of {}", self.text);
        assert_eq!(self.body["error_code"], code, "error_code of {}", self.text);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message of {}",
            self.text
        );
        match field {
            Some(f) => assert_eq!(self.body["field"], f, "field of {}", self.text),
            None => assert!(
                self.body.get("field").is_none(),
                "no field in {}",
                self.text
            ),
        }
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "content type of an error"
        );
    }
}

/// `python3` runs here, or the test fails (tests that need it are ignored
/// without it: `#[cfg_attr(test_missing = "python3", ignore = "needs python3")]`).
pub fn require_python3() {
    needs::require_python3();
}

/// The example Python worker (`examples/python-agent/agent.py`).
pub fn agent_py() -> String {
    format!(
        "{}/../../examples/python-agent/agent.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A directory for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("swarmd-dir"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on loopback (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
