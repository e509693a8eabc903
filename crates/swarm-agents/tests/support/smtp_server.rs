//! A real SMTP server for tests: Python's `aiosmtpd` writing every message
//! it accepts into a maildir.
//!
//! Self-contained (std only) so any test crate can include it with
//! `#[path = ".../tests/support/smtp_server.rs"] mod smtp_server;`.
//!
//! [`SmtpServer::start`] returns `None` when `aiosmtpd` is not installed
//! (`pip install aiosmtpd`), after printing `SKIPPED: aiosmtpd not installed`,
//! so a test can return early; with `SWARMD_TEST_REQUIRE_ALL=1` it panics
//! instead, so CI cannot skip silently. The server process is killed and its
//! directory removed when the [`SmtpServer`] is dropped.

// Each test binary that includes this file uses a different subset of it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A running `aiosmtpd` on 127.0.0.1, killed on drop.
pub struct SmtpServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SmtpServer {
    /// Starts the server on a free port and waits until it accepts
    /// connections. `None`: aiosmtpd is not installed (test skipped).
    /// Panics if it is installed but does not come up.
    pub fn start() -> Option<SmtpServer> {
        let installed = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !installed {
            if std::env::var("SWARMD_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
                panic!(
                    "aiosmtpd not installed and SWARMD_TEST_REQUIRE_ALL=1 (pip install aiosmtpd)"
                );
            }
            eprintln!("SKIPPED: aiosmtpd not installed (pip install aiosmtpd)");
            return None;
        }

        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).expect("create the server's temp dir");
        // Ask the OS for a free port, then hand it to the server. Another
        // process could take it in between; the wait below would then fail
        // loudly rather than hang.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let maildir = dir.join("maildir");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 -m aiosmtpd");
        let mut server = SmtpServer { child, port, dir };

        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("aiosmtpd exited before accepting connections: {status}");
            }
            if start.elapsed() > Duration::from_secs(15) {
                panic!("aiosmtpd did not accept connections on port {port} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on (host 127.0.0.1, no TLS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The maildir messages are written to.
    pub fn maildir(&self) -> PathBuf {
        self.dir.join("maildir")
    }

    /// Every message received so far, raw (headers and body), from the
    /// maildir's `new/` and `cur/` folders, oldest file name first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| read_dir_files(&self.maildir().join(sub)))
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Waits up to `timeout` for at least `n` messages and returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let msgs = self.messages();
            if msgs.len() >= n || start.elapsed() > timeout {
                return msgs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_dir_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "swarmd-smtp-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}
