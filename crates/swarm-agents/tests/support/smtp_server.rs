//! A real SMTP server for tests: Python's `aiosmtpd` writing every message
//! it accepts into a maildir.
//!
//! Std only, so any test crate can include it with
//! `#[path = ".../tests/support/smtp_server.rs"] mod smtp_server;`, next to
//! `needs.rs` included as a sibling module `needs`.
//!
//! A test using it carries
//! `#[cfg_attr(test_missing = "aiosmtpd", ignore = "needs aiosmtpd: pip install aiosmtpd")]`,
//! so without `aiosmtpd` it is reported as ignored; run anyway,
//! [`SmtpServer::start`] fails it (see `needs.rs`). The server process is
//! killed and its directory removed when the [`SmtpServer`] is dropped.

// Each test binary that includes this file uses a different subset of it.
#![allow(dead_code)]

use super::needs;

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
    /// connections. Panics if aiosmtpd is not installed or does not come up.
    pub fn start() -> SmtpServer {
        needs::require_aiosmtpd();

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
                return server;
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
