//! Starting the measured server for each step: a fresh `swarmd` (on a new
//! SQLite file or PostgreSQL database), the `hello` ceiling, or the
//! sim-backend. Every step gets a fresh process, so one step's leftovers
//! (a long queue, a big table) never colour the next.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::BenchError;
use crate::scenario::{Database, Launch, Scenario};

/// A server started for a step; killed when dropped.
pub struct Launched {
    child: Child,
    /// Its base URL.
    pub base: String,
    /// Its process id (for CPU accounting).
    pub pid: u32,
    dir: PathBuf,
    pg: Option<(String, String)>,
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Launched {
    /// Stops the server and removes what it created.
    pub async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((admin, db)) = self.pg.take() {
            let _ = drop_pg_database(&admin, &db).await;
        }
    }

    /// The server's log (its stderr), for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Launch(format!("no free port: {e}")))
}

fn sibling(name: &str) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Launch(format!("cannot find this program: {e}")))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(BenchError::Launch(format!(
            "{} not found; build it first: cargo build --release -p {name}",
            path.display()
        )))
    }
}

fn pg_admin_url() -> Result<String, BenchError> {
    ["SWARMD_BENCH_PG_URL", "SWARMD_TEST_PG_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| {
            BenchError::Launch(
                "database = \"postgres\" needs SWARMD_BENCH_PG_URL (or SWARMD_TEST_PG_URL)".into(),
            )
        })
}

async fn pg_exec(admin: &str, sql: String) -> Result<(), BenchError> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .map_err(|e| BenchError::Launch(format!("cannot connect to PostgreSQL: {e}")))?;
    sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql))
        .await
        .map_err(|e| BenchError::Launch(format!("PostgreSQL: {e}")))?;
    Ok(())
}

async fn drop_pg_database(admin: &str, db: &str) -> Result<(), BenchError> {
    pg_exec(admin, format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = base[scheme_end..]
        .find('/')
        .map_or(base, |i| &base[..scheme_end + i]);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Starts the scenario's target, or `None` when it launches nothing.
pub async fn launch(s: &Scenario, step: usize) -> Result<Option<Launched>, BenchError> {
    let t = &s.target;
    if t.launch == Launch::None {
        return Ok(None);
    }
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!(
        "swarmd-bench-{}-{}-{step}",
        std::process::id(),
        s.name
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::Launch(format!("cannot create {}: {e}", dir.display())))?;
    let listen = format!("127.0.0.1:{port}");
    let config = t.config.as_ref().map(|c| s.resolve(c));
    if let Some(c) = &config
        && !c.exists()
    {
        return Err(BenchError::Launch(format!(
            "config file {} not found",
            c.display()
        )));
    }
    let mut pg = None;
    let (program, args, ready) = match t.launch {
        Launch::Swarmd => {
            let url = match t.database {
                Database::Sqlite => format!("sqlite://{}", dir.join("bench.db").display()),
                Database::Postgres => {
                    let admin = pg_admin_url()?;
                    let db = format!("swarmd_bench_{}_{step}", std::process::id());
                    let _ = drop_pg_database(&admin, &db).await;
                    pg_exec(&admin, format!("CREATE DATABASE {db}")).await?;
                    // CREATE DATABASE copies the template through the WAL
                    // and leaves its pages dirty; flushed by the first
                    // checkpoint of the run, they cost the run a third of
                    // its rate in some rounds and not in others (measured
                    // here). A database that has lived a while has none, so
                    // flush them first. Needs the right to CHECKPOINT;
                    // without it the run goes on as before.
                    let _ = pg_exec(&admin, "CHECKPOINT".to_string()).await;
                    let url = with_database(&admin, &db);
                    pg = Some((admin, db));
                    url
                }
            };
            let exe = std::env::current_exe().map_err(|e| BenchError::Launch(e.to_string()))?;
            let mut a = vec![
                "serve".into(),
                "--listen".into(),
                listen.clone(),
                "--database-url".into(),
                url,
            ];
            a.extend(["--log".into(), "warn".into()]);
            if let Some(c) = &config {
                a.extend(["--config".into(), c.display().to_string()]);
            }
            (exe, a, "/ready")
        }
        Launch::Hello => (sibling("swarm-hello")?, vec![listen.clone()], "/health"),
        Launch::SimBackend => {
            let exe = std::env::current_exe().map_err(|e| BenchError::Launch(e.to_string()))?;
            let mut a = vec!["sim-backend".into(), "--listen".into(), listen.clone()];
            if let Some(c) = &config {
                a.extend(["--config".into(), c.display().to_string()]);
            }
            (exe, a, "/health")
        }
        Launch::None => return Ok(None),
    };
    let launched = spawn(&program, &args, &dir, port, pg)?;
    wait_ready(&launched, ready).await?;
    Ok(Some(launched))
}

fn spawn(
    program: &Path,
    args: &[String],
    dir: &Path,
    port: u16,
    pg: Option<(String, String)>,
) -> Result<Launched, BenchError> {
    let log = std::fs::File::create(dir.join("server.log"))
        .map_err(|e| BenchError::Launch(format!("cannot create the server log: {e}")))?;
    let child = Command::new(program)
        .args(args)
        .env_remove("SWARMD_CONFIG")
        .env_remove("SWARMD_LISTEN")
        .env_remove("SWARMD_DATABASE_URL")
        .env_remove("SWARMD_NODE_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| BenchError::Launch(format!("cannot start {}: {e}", program.display())))?;
    Ok(Launched {
        pid: child.id(),
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.to_path_buf(),
        pg,
    })
}

async fn wait_ready(l: &Launched, path: &str) -> Result<(), BenchError> {
    crate::http::install_crypto_provider();
    let client = reqwest::Client::new();
    let url = format!("{}{path}", l.base);
    for _ in 0..300 {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Launch(format!(
        "the launched server did not become ready at {url} within 30 s; its log ends:\n{}",
        l.log_tail()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "b1"),
            "postgres://u@h:5432/b1"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "b1"),
            "postgres://u@h/b1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "b1"), "postgres://u@h/b1");
    }

    #[test]
    fn a_missing_sibling_binary_says_how_to_build_it() {
        let e = sibling("no-such-binary-xyz").unwrap_err().to_string();
        assert!(
            e.contains("cargo build --release -p no-such-binary-xyz"),
            "{e}"
        );
    }
}
