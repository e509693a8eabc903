//! The admin surface and its keys (issue 15): a key removed from the
//! configuration stops working at SIGHUP, a reload replaces quotas,
//! runtime instances only go to allowed hosts and never carry
//! credentials in their URL, loopback callers are admins only by opt-in,
//! and `serve` refuses an address others reach while no key is configured.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Backend, TempDir, TestServer, free_port};
use swarm_core::config::Config;

/// A `swarmd serve` process, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cfg: &Path, listen: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_swarmd"));
    c.args([
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        listen,
    ])
    .args(extra)
    .env_remove("SWARMD_ALLOW_UNAUTHENTICATED");
    c
}

fn tenant(name: &str, key: &str) -> String {
    let hash = swarm_server::auth::hash_key(key);
    format!("[[tenants]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\n")
}

/// `GET /api/tasks` with `key`: the status, or `None` while not up.
async fn status_with(client: &reqwest::Client, base: &str, key: &str) -> Option<u16> {
    let r = client
        .get(format!("{base}/api/tasks"))
        .bearer_auth(key)
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

/// Asks with `key` until the answer is `want` (or 10 s pass); the last
/// answer.
async fn poll_status(base: &str, key: &str, want: u16) -> Option<u16> {
    let client = reqwest::Client::new();
    let mut seen = None;
    for _ in 0..200 {
        seen = status_with(&client, base, key).await;
        if seen == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// A directory, its `swarmd.toml`'s path, and a `[database]` section for it.
fn config_dir() -> (TempDir, PathBuf, String) {
    let dir = TempDir::new();
    let cfg = dir.path().join("swarmd.toml");
    let db = format!(
        "[database]\nurl = \"sqlite://{}\"\n",
        dir.path().join("t.db").display()
    );
    (dir, cfg, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_revokes_the_keys_of_a_removed_tenant() {
    let (_dir, cfg, db) = config_dir();
    std::fs::write(
        &cfg,
        format!(
            "{db}{}{}",
            tenant("acme", "acme-key"),
            tenant("ops", "ops-key")
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Served(
        serve(&cfg, &format!("127.0.0.1:{port}"), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = poll_status(&base, "acme-key", 200).await;
    assert_eq!(up, Some(200), "acme's key works");
    // acme leaves the file; ops stays.
    std::fs::write(&cfg, format!("{db}{}", tenant("ops", "ops-key"))).unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let seen = poll_status(&base, "acme-key", 401).await;
    assert_eq!(
        seen,
        Some(401),
        "a removed tenant's key is refused after SIGHUP"
    );
    assert_eq!(poll_status(&base, "ops-key", 200).await, Some(200));
    // A reload that would leave no key on a loopback address is fine, and
    // the API is open again (the embedded default).
    std::fs::write(&cfg, &db).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status();
    let open = poll_status(&base, "no-key-needed", 200).await;
    assert_eq!(open, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_tenant_quotas() {
    let base = tenant("acme", "acme-key");
    let s = TestServer::start(
        Backend::Sqlite,
        &format!("{base}max_outstanding = 1\n[pools.sim]\nconcurrency = 1\n"),
    )
    .await
    .unwrap();
    let auth = [("authorization", "Bearer acme-key")];
    let slow = json!({"type": "sim", "args": {"latency_ms": 5_000}});
    let first = s.post_with("/api/tasks", &slow, &auth).await;
    assert_eq!(first.status, 202, "{}", first.text);
    s.post_with("/api/tasks", &slow, &auth)
        .await
        .assert_error(429, "tenant_quota", None);
    let mut cfg = Config::from_toml(&format!("{base}max_outstanding = 3\n")).unwrap();
    cfg.database = s.engine.config().database.clone();
    let report = s.engine.reload(&cfg).unwrap();
    assert_eq!(report.tenants.changed, ["acme"], "{report:?}");
    let again = s.post_with("/api/tasks", &slow, &auth).await;
    assert_eq!(again.status, 202, "the new quota holds: {}", again.text);
}

fn http_pool(extra: &str) -> String {
    format!(
        "[auth]\nloopback_admin = true\n[pools.remote]\nagent = \"http\"\n[pools.remote.http]\n\
         urls = [\"http://127.0.0.1:9/work\"]\nheaders = {{ authorization = \"Bearer backend-secret\" }}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_instances_go_only_to_allowed_hosts() {
    let s = TestServer::start(Backend::Sqlite, &http_pool(""))
        .await
        .unwrap();
    let s = &s;
    let add = |url: &str| {
        let body = json!({ "url": url });
        async move { s.post("/api/pools/remote/instances", &body).await }
    };
    // By default only the configured hosts (and ports).
    for url in [
        "http://evil.example/steal",
        "http://127.0.0.2:9/work",
        "http://127.0.0.1:10/work",
    ] {
        add(url)
            .await
            .assert_error(422, "host_not_allowed", Some("url"));
    }
    let r = add("http://127.0.0.1:9/other").await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Credentials in a URL are refused, and not echoed.
    let r = add("http://user:hunter2@127.0.0.1:9/work").await;
    r.assert_error(422, "invalid_field", Some("url"));
    assert!(!r.text.contains("hunter2"), "{}", r.text);
    let listed = s.get("/api/pools/remote/instances").await;
    assert!(!listed.text.contains("evil"), "{}", listed.text);

    // An explicit list: hosts and CIDR blocks, any port.
    let s2 = TestServer::start(
        Backend::Sqlite,
        &http_pool("allow_hosts = [\"10.0.0.0/8\", \"backend.internal\"]\n"),
    )
    .await
    .unwrap();
    for (url, status) in [
        ("http://10.1.2.3:8000/run", 201),
        ("http://backend.internal:81/run", 201),
        ("http://11.0.0.1/run", 422),
        ("http://127.0.0.1:9/again", 422),
    ] {
        let r = s2
            .post("/api/pools/remote/instances", &json!({ "url": url }))
            .await;
        assert_eq!(r.status.as_u16(), status, "{url}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_configured_urls_are_refused() {
    let cfg = Config::from_toml(
        "[pools.remote]\nagent = \"http\"\n[pools.remote.http]\nurls = [\"http://u:hunter2@127.0.0.1:9/work\"]\n",
    )
    .unwrap();
    let db = support::TestDb::new(Backend::Sqlite).await.unwrap();
    let store = swarm_store::Store::connect(&swarm_core::config::DatabaseConfig {
        url: db.url.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = swarm_engine::Engine::start(cfg, store).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("pools.remote.http.urls.0"), "{text}");
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_callers_are_admins_only_by_opt_in() {
    let spec = json!({"id": "echo-2"});
    let closed = TestServer::start(Backend::Sqlite, "[pools.echo]\nreplicas = 2\n")
        .await
        .unwrap();
    let r = closed.post("/api/pools/echo/instances", &spec).await;
    r.assert_error(403, "forbidden", None);
    assert!(r.text.contains("loopback_admin"), "{}", r.text);
    let open = TestServer::start(
        Backend::Sqlite,
        "[pools.echo]\nreplicas = 2\n[auth]\nloopback_admin = true\n",
    )
    .await
    .unwrap();
    let r = open.post("/api/pools/echo/instances", &spec).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_public_address_without_keys() {
    let (_dir, cfg, db) = config_dir();
    std::fs::write(&cfg, &db).unwrap();
    let port = free_port();
    let public = format!("0.0.0.0:{port}");
    let out = serve(&cfg, &public, &[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without API keys"), "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    // With the flag, or with keys, it serves.
    for (text, flags) in [
        (db.clone(), vec!["--allow-unauthenticated"]),
        (format!("{db}{}", tenant("acme", "acme-key")), vec![]),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let port = free_port();
        let _child = Served(
            serve(&cfg, &format!("0.0.0.0:{port}"), &flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let up = poll_status(&format!("http://127.0.0.1:{port}"), "acme-key", 200).await;
        assert_eq!(up, Some(200), "{flags:?}");
    }
}

/// Every admin change through the API is logged with who made it and from
/// where (target `swarmd::audit`), refused attempts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_logged_with_their_tenant_and_peer() {
    swarm_agents::install_crypto_provider();
    let (dir, cfg, db) = config_dir();
    std::fs::write(
        &cfg,
        format!(
            "{db}{}{}role = \"admin\"\n[pools.echo]\nreplicas = 2\n",
            tenant("acme", "acme-key"),
            tenant("ops", "ops-key")
        ),
    )
    .unwrap();
    let log = dir.path().join("swarmd.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Served(
        serve(
            &cfg,
            &format!("127.0.0.1:{port}"),
            &["--log-format", "json"],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    assert_eq!(poll_status(&base, "ops-key", 200).await, Some(200));
    let client = reqwest::Client::new();
    let instances = format!("{base}/api/pools/echo/instances");
    let call = |req: reqwest::RequestBuilder, key: &str| {
        let req = req.bearer_auth(key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let spec = json!({"id": "echo-7"});
    let steps = [
        (
            call(client.post(&instances).json(&spec), "acme-key").await,
            403,
        ),
        (
            call(client.post(&instances).json(&spec), "ops-key").await,
            201,
        ),
        (
            call(client.post(format!("{instances}/echo-7/drain")), "ops-key").await,
            200,
        ),
        (
            call(client.delete(format!("{instances}/echo-7")), "ops-key").await,
            202,
        ),
        (
            call(client.post(format!("{instances}/nope/drain")), "ops-key").await,
            404,
        ),
    ];
    for (i, (got, want)) in steps.iter().enumerate() {
        assert_eq!(got, want, "step {i}");
    }
    // The lines are written as the requests are answered; give the writer
    // a moment, then stop the process so the file is complete.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "swarmd::audit")
        .map(|v| v["fields"].clone())
        .collect();
    let seen: Vec<(String, String, String)> = audit
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
            (s("tenant"), s("action"), s("outcome"))
        })
        .collect();
    let want = |t: &str, a: &str, o: &str| (t.to_string(), a.to_string(), o.to_string());
    assert_eq!(
        seen,
        [
            want("acme", "", "forbidden"),
            want("ops", "add_instance", "ok"),
            want("ops", "drain_instance", "ok"),
            want("ops", "remove_instance", "ok"),
            want("ops", "drain_instance", "instance_not_found"),
        ],
        "{text}"
    );
    for f in &audit {
        let peer = f["peer"].as_str().unwrap_or("");
        assert!(peer.starts_with("127.0.0.1:"), "the peer is named: {f}");
    }
    assert!(
        audit[1]["subject"]
            .as_str()
            .is_some_and(|s| s.contains("echo-7") && s.contains("echo")),
        "{:?}",
        audit[1]
    );
}
