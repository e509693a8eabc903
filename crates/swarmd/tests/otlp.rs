//! `[telemetry] otlp_endpoint`: the real binary exports its request spans
//! over OTLP/HTTP to a collector stand-in (a bare socket), and without the
//! `otlp` feature says at start that it will not.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{Backend, TestDb};
use tokio::process::{Child, Command};

/// Starts `swarmd serve` exporting to `endpoint`, waits until it is ready.
async fn start(db: &TestDb, endpoint: &str, dir: &std::path::Path) -> (Child, String) {
    let config = dir.join("otlp.toml");
    std::fs::write(
        &config,
        format!(
            "[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"swarmd-otlp-test\"\n"
        ),
    )
    .expect("write config");
    let port = support::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &db.url, "--log", "info"])
        .arg("--config")
        .arg(&config)
        .env_remove("SWARMD_LISTEN")
        .env_remove("SWARMD_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn swarmd");
    let base = format!("http://127.0.0.1:{port}");
    swarm_agents::install_crypto_provider();
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            return (child, base);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("swarmd did not become ready");
}

/// SIGTERM, then the exit status and what it logged.
async fn stop(child: Child) -> (bool, String) {
    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("swarmd stopped within 30 s")
        .expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(db: &TestDb) -> std::path::PathBuf {
    std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"))
        .parent()
        .expect("db dir")
        .to_path_buf()
}

#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One HTTP/1.1 request as the collector saw it.
    struct Seen {
        head: String,
        body: Vec<u8>,
    }
    let collector = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", collector.local_addr().expect("addr"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = collector.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let _ = tx.send(Seen { head, body });
                }
            });
        }
    });

    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let (child, base) = start(&db, &endpoint, &temp_dir(&db)).await;
    let r = reqwest::get(format!("{base}/api/status"))
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    // Shutdown flushes the batch, so no waiting for the export interval.
    let (clean, log) = stop(child).await;
    assert!(clean, "swarmd did not exit cleanly:\n{log}");
    assert!(log.contains("exporting spans over OTLP/HTTP"), "{log}");

    let mut all = Vec::new();
    while let Ok(Some(seen)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        assert!(seen.head.starts_with("post /v1/traces "), "{}", seen.head);
        assert!(
            seen.head.contains("content-type: application/x-protobuf"),
            "{}",
            seen.head
        );
        all.extend(seen.body);
    }
    let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(!all.is_empty(), "no spans exported; log:\n{log}");
    assert!(has(b"swarmd-otlp-test"), "service.name missing");
    assert!(has(b"/api/status"), "the request span is missing");
}

#[cfg(not(feature = "otlp"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feature_a_configured_endpoint_is_a_warning() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let (child, _) = start(&db, "http://127.0.0.1:9", &temp_dir(&db)).await;
    let (clean, log) = stop(child).await;
    assert!(clean, "{log}");
    assert!(
        log.contains("built without the `otlp` feature"),
        "no warning in:\n{log}"
    );
}
