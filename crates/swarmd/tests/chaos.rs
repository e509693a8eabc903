//! Chaos: a real `swarmd serve` process under a steady stream of
//! submissions while its database misbehaves, on a PostgreSQL server the
//! test starts itself (so it can stop and starve it) and on SQLite.
//!
//! Faults: (a) every swarmd connection terminated 4×/s for 10 s; (b)
//! PostgreSQL stopped for 5 s, then started; (c) all but two of
//! PostgreSQL's connection slots held by idle sessions for 10 s; (d) swarmd
//! `kill -9`ed every 2–5 s, 20 times, restarted each time; on SQLite, (d)
//! and a full disk for 5 s.
//!
//! After each, checked from the database itself once the node has stopped:
//! every acknowledged task is terminal (succeeded) with exactly one stored
//! outcome (a trigger logs every write of a terminal state), nothing is
//! left `queued` or `running`, and no answer was a 500. Each run prints its
//! figures: tasks acknowledged, the share of the baseline acceptance rate
//! kept during the fault, and how long acceptance took to recover.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, Row};
use support::pgcluster::PgCluster;
use support::{free_port, unique};
use tokio::sync::Semaphore;

/// Scenarios run one at a time: each starts its own servers, and together
/// they would fight for two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Submissions per second of the steady stream.
const RATE: u64 = 200;

const CONFIG: &str = r#"
[pools.chaos]
agent = "sim"
concurrency = 64
[database]
lease_ms = 3000
acquire_timeout_ms = 2000
[server]
shutdown_grace_ms = 3000
"#;

const TERMINAL: &str = "('succeeded', 'failed', 'timed_out', 'cancelled')";

// === the database under test ===

enum Db {
    Pg {
        cluster: PgCluster,
        name: String,
    },
    Sqlite {
        dir: PathBuf,
        mount: Option<PathBuf>,
    },
}

impl Db {
    /// A database on a fresh server of the test's own, used by swarmd as an
    /// ordinary role (so it gets no reserved slots).
    async fn pg(max_connections: u32) -> Db {
        let cluster = PgCluster::start(max_connections);
        let name = "chaos".to_string();
        for sql in [
            "CREATE ROLE swarmd LOGIN",
            "CREATE ROLE filler LOGIN",
            "CREATE DATABASE chaos OWNER swarmd",
        ] {
            cluster.exec("postgres", sql).await;
        }
        Db::Pg { cluster, name }
    }

    fn sqlite(dir: PathBuf, mount: Option<PathBuf>) -> Db {
        Db::Sqlite { dir, mount }
    }

    fn url(&self) -> String {
        match self {
            Db::Pg { cluster, name } => cluster.url("swarmd", name),
            Db::Sqlite { dir, .. } => format!("sqlite://{}", dir.join("swarmd.db").display()),
        }
    }

    fn cluster(&self) -> &PgCluster {
        match self {
            Db::Pg { cluster, .. } => cluster,
            Db::Sqlite { .. } => panic!("not PostgreSQL"),
        }
    }

    /// Runs statements that return nothing.
    async fn exec(&self, sql: &str) {
        match self {
            Db::Pg { cluster, name } => cluster.exec(name, sql).await,
            Db::Sqlite { .. } => {
                let mut c = self.sqlite_conn().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    async fn sqlite_conn(&self) -> sqlx::SqliteConnection {
        let opts: sqlx::sqlite::SqliteConnectOptions = self.url().parse().unwrap();
        sqlx::SqliteConnection::connect_with(&opts.busy_timeout(Duration::from_secs(10)))
            .await
            .expect("open the SQLite file")
    }

    /// Pairs of (text, integer) a query returns.
    async fn rows(&self, sql: &str) -> Vec<(String, i64)> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Db::Pg { cluster, name } => {
                let mut c = cluster.admin(name).await;
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                rows.iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect()
            }
            Db::Sqlite { .. } => {
                let mut c = self.sqlite_conn().await;
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                rows.iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect()
            }
        }
    }

    /// Logs every write of a terminal state, so a second outcome stored
    /// for one task shows as a second row.
    async fn install_outcome_log(&self) {
        match self {
            Db::Pg { .. } => {
                self.exec(&format!(
                    "CREATE TABLE outcome_log (id TEXT NOT NULL, status TEXT NOT NULL); \
                     GRANT INSERT ON outcome_log TO swarmd; \
                     CREATE FUNCTION log_outcome() RETURNS trigger LANGUAGE plpgsql AS $$ \
                       BEGIN INSERT INTO outcome_log VALUES (NEW.id, NEW.status); RETURN NEW; END $$; \
                     CREATE TRIGGER log_outcome AFTER UPDATE ON tasks FOR EACH ROW \
                       WHEN (NEW.status IN {TERMINAL}) EXECUTE FUNCTION log_outcome();"
                ))
                .await
            }
            Db::Sqlite { .. } => {
                self.exec(&format!(
                    "CREATE TABLE outcome_log (id TEXT NOT NULL, status TEXT NOT NULL); \
                     CREATE TRIGGER log_outcome AFTER UPDATE ON tasks \
                       WHEN NEW.status IN {TERMINAL} \
                       BEGIN INSERT INTO outcome_log VALUES (NEW.id, NEW.status); END;"
                ))
                .await
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Sqlite { dir, mount } = self {
            if let Some(m) = mount {
                let _ = Command::new("umount").arg("-l").arg(&*m).status();
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// === the swarmd process ===

struct Swarmd {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    url: String,
}

impl Swarmd {
    async fn start(db: &Db, dir: &Path) -> Swarmd {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("swarmd.toml"), CONFIG).unwrap();
        let mut s = Swarmd {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            url: db.url(),
        };
        s.spawn().await;
        s
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("swarmd.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("swarmd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database-url", &self.url, "--log", "info"])
            .arg("--config")
            .arg(self.dir.join("swarmd.toml"))
            .env_remove("SWARMD_NODE_ID")
            .env_remove("SWARMD_LISTEN")
            .env_remove("SWARMD_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn swarmd");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base())).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "swarmd did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    async fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let exit = tokio::task::spawn_blocking(move || c.wait()).await.unwrap();
        assert!(
            exit.unwrap().success(),
            "clean exit after SIGTERM:\n{}",
            self.log()
        );
    }
}

impl Drop for Swarmd {
    fn drop(&mut self) {
        self.kill9();
        // A failing test has printed the log already; keep it for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// === the steady stream ===

/// One answer to a submission: when (ms from the stream's start), its
/// status (0: no connection), the task id of an acknowledgement, and the
/// body of anything unexpected.
struct Answer {
    at_ms: u64,
    code: u16,
    id: Option<String>,
    body: Option<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    task: tokio::task::JoinHandle<Vec<Answer>>,
}

impl Load {
    fn start(base: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap();
            let limit = Arc::new(Semaphore::new(400));
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let (client, base, tx) = (client.clone(), base.clone(), tx.clone());
                tokio::spawn(async move {
                    let body = json!({"type": "sim", "agent": "chaos", "args": {"latency_ms": 2}});
                    let r = client
                        .post(format!("{base}/api/tasks"))
                        .json(&body)
                        .send()
                        .await;
                    let at_ms = started.elapsed().as_millis() as u64;
                    let answer = match r {
                        Err(_) => Answer {
                            at_ms,
                            code: 0,
                            id: None,
                            body: None,
                        },
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let text = r.text().await.unwrap_or_default();
                            let v: serde_json::Value =
                                serde_json::from_str(&text).unwrap_or_default();
                            Answer {
                                at_ms,
                                code,
                                id: v["id"].as_str().filter(|_| code < 300).map(str::to_string),
                                body: (code >= 500 && code != 503).then_some(text),
                            }
                        }
                    };
                    let _ = tx.send(answer);
                    drop(permit);
                });
            }
            drop(tx);
            let mut all = Vec::new();
            while let Some(a) = rx.recv().await {
                all.push(a);
            }
            all
        });
        Load {
            stop,
            started,
            task,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

// === figures and checks ===

struct Figures {
    acked: Vec<String>,
    refused: usize,
    unreachable: usize,
    errors: Vec<String>,
    baseline_per_s: f64,
    kept: f64,
    recovery_ms: Option<u64>,
}

fn figures(answers: &[Answer], fault: (u64, u64)) -> Figures {
    let acks: Vec<u64> = answers
        .iter()
        .filter(|a| a.id.is_some())
        .map(|a| a.at_ms)
        .collect();
    let in_window = |from: u64, to: u64| acks.iter().filter(|t| **t >= from && **t < to).count();
    let baseline_per_s = in_window(0, fault.0) as f64 * 1000.0 / fault.0.max(1) as f64;
    let during = in_window(fault.0, fault.1) as f64 * 1000.0 / (fault.1 - fault.0).max(1) as f64;
    // Recovered: the first second after the fault's end that accepts at
    // least 90% of the baseline rate.
    let end = answers.iter().map(|a| a.at_ms).max().unwrap_or(0);
    let recovery_ms = (fault.1..end.saturating_sub(1000))
        .step_by(50)
        .find(|t| in_window(*t, t + 1000) as f64 >= 0.9 * baseline_per_s)
        .map(|t| t - fault.1);
    Figures {
        acked: answers.iter().filter_map(|a| a.id.clone()).collect(),
        refused: answers
            .iter()
            .filter(|a| a.code == 503 || a.code == 429)
            .count(),
        unreachable: answers.iter().filter(|a| a.code == 0).count(),
        errors: answers.iter().filter_map(|a| a.body.clone()).collect(),
        baseline_per_s,
        kept: during / baseline_per_s.max(1e-9),
        recovery_ms,
    }
}

/// Waits until every acknowledged task has ended, stops the node, and
/// checks the database itself; with `outages`, that the node logged that
/// many database outages (each once, not a line per task).
async fn settle_and_check(
    name: &str,
    db: &Db,
    node: &mut Swarmd,
    f: &Figures,
    outages: Option<usize>,
) {
    assert!(f.errors.is_empty(), "{name}: 5xx answers: {:?}", f.errors);
    let log = node.log();
    for bad in ["could not store", "internal error", "panicked"] {
        assert!(!log.contains(bad), "{name}: `{bad}` in the log:\n{log}");
    }
    if let Some(n) = outages {
        let logged = log
            .matches("database unavailable: submissions get 503")
            .count();
        assert_eq!(logged, n, "{name}: the outage is logged once:\n{log}");
    }
    assert!(!f.acked.is_empty(), "{name}: nothing was acknowledged");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open = db
            .rows(&format!(
                "SELECT status, COUNT(*) FROM tasks WHERE status NOT IN {TERMINAL} GROUP BY status"
            ))
            .await;
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: tasks stuck on a live node: {open:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.terminate().await;
    let stored: std::collections::HashMap<String, String> = db
        .rows("SELECT id, CAST(0 AS BIGINT) FROM tasks")
        .await
        .into_iter()
        .map(|(id, _)| (id, String::new()))
        .collect();
    let status: std::collections::HashMap<String, i64> = db
        .rows("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        .await
        .into_iter()
        .collect();
    let outcomes: std::collections::HashMap<String, i64> = db
        .rows("SELECT id, COUNT(*) FROM outcome_log GROUP BY id")
        .await
        .into_iter()
        .collect();
    let mut missing = 0;
    for id in &f.acked {
        if !stored.contains_key(id) {
            missing += 1;
        }
        assert_eq!(
            outcomes.get(id).copied(),
            Some(1),
            "{name}: task {id} does not have exactly one stored outcome"
        );
    }
    assert_eq!(missing, 0, "{name}: acknowledged tasks lost");
    let twice: Vec<_> = outcomes.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{name}: outcomes stored more than once: {twice:?}"
    );
    let succeeded = status.get("succeeded").copied().unwrap_or(0);
    assert_eq!(
        succeeded as usize,
        stored.len(),
        "{name}: every stored task succeeded: {status:?}"
    );
    let recovery = f
        .recovery_ms
        .map_or("did not recover to 90%".to_string(), |ms| {
            format!("{ms} ms")
        });
    println!(
        "CHAOS {name}: {} acknowledged ({} stored, every one succeeded with exactly one outcome), \
         {} refused with 503/429, {} unreachable, 0 errors; baseline {:.0}/s, {:.0}% of it kept \
         during the fault; recovered to 90% in {recovery}",
        f.acked.len(),
        stored.len(),
        f.refused,
        f.unreachable,
        f.baseline_per_s,
        f.kept * 100.0,
    );
    assert!(
        f.recovery_ms.is_some(),
        "{name}: acceptance never came back:\n{}",
        node.log()
    );
}

/// Starts a node on `db` with the outcome log, and lets the stream run for
/// a baseline.
async fn begin(db: &Db, name: &str) -> (Swarmd, Load) {
    swarm_agents::install_crypto_provider();
    let dir = std::env::temp_dir().join(unique(&format!("swarmd-chaos-{name}")));
    let node = Swarmd::start(db, &dir).await;
    db.install_outcome_log().await;
    let load = Load::start(node.base());
    tokio::time::sleep(Duration::from_secs(3)).await;
    (node, load)
}

/// Lets the stream run on after the fault, then stops it.
async fn end(load: Load) -> Vec<Answer> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.finish().await
}

// === the scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "pg_server",
    ignore = "needs PostgreSQL's server programs (initdb, pg_ctl)"
)]
async fn pg_connections_terminated_four_times_a_second() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = Db::pg(40).await;
    let (mut node, load) = begin(&db, "terminate").await;
    let start = load.now_ms();
    let mut killed = 0;
    let mut admin = db.cluster().admin("postgres").await;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let rows = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'swarmd'",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        killed += rows.iter().filter(|r| r.get::<bool, _>(0)).count();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fault = (start, load.now_ms());
    let answers = end(load).await;
    assert!(killed >= 20, "the fault bit: {killed} sessions terminated");
    let f = figures(&answers, fault);
    settle_and_check(
        "(a) connections terminated 4x/s for 10 s",
        &db,
        &mut node,
        &f,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "pg_server",
    ignore = "needs PostgreSQL's server programs (initdb, pg_ctl)"
)]
async fn pg_stopped_for_five_seconds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = Db::pg(40).await;
    let (mut node, load) = begin(&db, "stop").await;
    let start = load.now_ms();
    db.cluster().stop();
    // While it is down: /health answers, /ready does not, and submissions
    // are refused quickly with database_unavailable.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/health", node.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = client
        .get(format!("{}/ready", node.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let asked = Instant::now();
    let r = client
        .post(format!("{}/api/tasks", node.base()))
        .json(&json!({"type": "sim", "agent": "chaos", "args": {"latency_ms": 2}}))
        .send()
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "database_unavailable", "{body}");
    assert!(
        took < Duration::from_millis(2000),
        "refused within the acquire timeout: {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    db.cluster().resume();
    let fault = (start, load.now_ms());
    let answers = end(load).await;
    let f = figures(&answers, fault);
    assert!(f.refused > 0, "the fault bit");
    settle_and_check(
        "(b) PostgreSQL stopped for 5 s",
        &db,
        &mut node,
        &f,
        Some(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "pg_server",
    ignore = "needs PostgreSQL's server programs (initdb, pg_ctl)"
)]
async fn pg_all_but_two_connection_slots_held() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = Db::pg(24).await;
    let (mut node, load) = begin(&db, "slots").await;
    let start = load.now_ms();
    let mut admin = db.cluster().admin("postgres").await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'swarmd'",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // Every ordinary slot left, then two given back.
    let mut held = Vec::new();
    let url = db.cluster().url("filler", "postgres");
    while let Ok(c) = sqlx::PgConnection::connect(&url).await {
        held.push(c);
        assert!(held.len() < 100, "the server has a connection limit");
    }
    held.truncate(held.len().saturating_sub(2));
    let filled = held.len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(held);
    let fault = (start, load.now_ms());
    let answers = end(load).await;
    assert!(filled > 5, "the fault bit: {filled} slots held");
    let f = figures(&answers, fault);
    settle_and_check(
        "(c) all but two connection slots held for 10 s",
        &db,
        &mut node,
        &f,
        None,
    )
    .await;
}

/// (d): the process killed every 2–5 s, 20 times, restarted each time.
async fn killed_again_and_again(db: Db, name: &str) {
    let (mut node, load) = begin(&db, "kill").await;
    let start = load.now_ms();
    let mut rng = 0x9e37_79b9_u64;
    for _ in 0..20 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 2000 + (rng >> 33) % 3000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        node.kill9();
        node.spawn().await;
    }
    let fault = (start, load.now_ms());
    let answers = end(load).await;
    let f = figures(&answers, fault);
    assert!(f.unreachable > 0, "the fault bit");
    let log = node.log();
    assert!(
        log.contains("re-queued unfinished tasks"),
        "restarts took work back:\n{log}"
    );
    settle_and_check(name, &db, &mut node, &f, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "pg_server",
    ignore = "needs PostgreSQL's server programs (initdb, pg_ctl)"
)]
async fn pg_swarmd_killed_twenty_times() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = Db::pg(40).await;
    killed_again_and_again(db, "(d) swarmd kill -9 every 2-5 s, 20 times (PostgreSQL)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_swarmd_killed_twenty_times() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(unique("swarmd-chaos-sqlite"));
    std::fs::create_dir_all(&dir).unwrap();
    killed_again_and_again(
        Db::sqlite(dir, None),
        "(d) swarmd kill -9 every 2-5 s, 20 times (SQLite)",
    )
    .await;
}

/// SQLite's counterpart of a database that refuses writes: the disk under
/// its file fills up (a read-only directory does not stop a WAL-mode
/// database that is already open, so it is no fault). Needs a tmpfs of its
/// own, so root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "root",
    ignore = "needs root to mount a tmpfs of its own"
)]
async fn sqlite_disk_full_for_five_seconds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(unique("swarmd-chaos-full"));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = std::fs::remove_dir_all(&dir);
        support::needs::missing("a tmpfs of its own", "run the tests as root");
    }
    let db = Db::sqlite(dir.clone(), Some(dir.clone()));
    let (mut node, load) = begin(&db, "full").await;
    let start = load.now_ms();
    // Fill what is left of the disk.
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    tokio::time::sleep(Duration::from_secs(5)).await;
    std::fs::remove_file(&filler).unwrap();
    let fault = (start, load.now_ms());
    let answers = end(load).await;
    let f = figures(&answers, fault);
    assert!(f.refused > 0, "the fault bit");
    settle_and_check("disk full for 5 s (SQLite)", &db, &mut node, &f, Some(1)).await;
}
