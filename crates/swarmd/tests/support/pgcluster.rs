//! A PostgreSQL server of the test's own: `initdb` into a temporary
//! directory, its own port, started and stopped with `pg_ctl`. Tests that
//! stop, kill or restart PostgreSQL use this, never the shared server.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI)
//! its commands run as the `postgres` user through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::Connection;

/// A private PostgreSQL server, stopped and removed when dropped.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// The TCP port it listens on (127.0.0.1).
    pub port: u16,
    /// Its `max_connections`.
    pub max_connections: u32,
}

/// Where `initdb` and `pg_ctl` live: `$PATH`, or Debian's versioned
/// directory.
fn find_bin() -> Option<PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", "command -v pg_ctl"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(p) = on_path
        && let Ok(real) = std::fs::canonicalize(&p)
        && real.with_file_name("initdb").exists()
    {
        return real.parent().map(Path::to_path_buf);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("pg_ctl").exists() && d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    /// A fresh server with `max_connections`. Tests that use it carry
    /// `#[cfg_attr(test_missing = "pg_server", ignore = …)]`; one run
    /// anyway on a machine without PostgreSQL's server programs fails here.
    pub fn start(max_connections: u32) -> PgCluster {
        let Some(bin) = find_bin() else {
            super::needs::missing(
                "PostgreSQL's server programs (initdb, pg_ctl)",
                "Debian: apt-get install postgresql",
            );
        };
        let dir = std::env::temp_dir().join(super::unique("swarmd-pg"));
        std::fs::create_dir_all(dir.join("data")).expect("cluster dir");
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown of the cluster directory");
        }
        let c = PgCluster {
            dir,
            bin,
            as_postgres,
            port: super::free_port(),
            max_connections,
        };
        let out = c
            .cmd("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(c.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.resume();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        self.cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Starts (or restarts) the server and waits until it accepts
    /// connections.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={} \
             -c fsync=off -c full_page_writes=off -c superuser_reserved_connections=3",
            self.port,
            self.dir.display(),
            self.max_connections
        );
        let log = self.dir.join("postgres.log");
        let ok = self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-o",
            &opts,
            "-l",
            &log.display().to_string(),
            "start",
        ]);
        assert!(
            ok,
            "pg_ctl start failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server the way an administrator does (`-m fast`: sessions
    /// are terminated, the data is consistent).
    pub fn stop(&self) {
        assert!(self.pg_ctl(&["-w", "-m", "fast", "stop"]), "pg_ctl stop");
    }

    /// `postgres://user@127.0.0.1:port/db`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// A superuser connection to `db` (it may use the reserved slots).
    pub async fn admin(&self, db: &str) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url("postgres", db))
            .await
            .expect("connect to the test's own PostgreSQL")
    }

    /// Runs statements as the superuser on `db`.
    pub async fn exec(&self, db: &str, sql: &str) {
        let mut c = self.admin(db).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = c.close().await;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
