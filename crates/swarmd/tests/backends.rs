//! Departments whose agents run elsewhere, through the whole server: a pool
//! of Python worker processes (`examples/python-agent/agent.py`) and a pool
//! of HTTP instances (real axum servers on real sockets) balanced by p2c,
//! where a broken instance costs no task.

mod support;
#[path = "../../swarm-agents/tests/support/tls_server.rs"]
mod tls_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use support::{Backend, TestServer, agent_py, require_python3};

/// The first block fenced as ```` ```lang ```` in `text`.
fn fenced<'a>(text: &'a str, lang: &str) -> &'a str {
    let open = format!("```{lang}\n");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no {lang} block"))
        + open.len();
    let len = text[start..].find("```").expect("the block ends");
    &text[start..start + len]
}

/// `examples/python-agent/README.md` shows a real configuration: taken
/// from the README as it stands, it runs the README's example request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn the_python_agent_readme_config_runs_its_example() {
    require_python3();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/examples/python-agent/README.md"))
        .expect("the python-agent README");
    // The README runs swarmd from the repository's root; tests run elsewhere.
    let toml = fenced(&readme, "toml");
    assert!(toml.contains("cwd = \".\""), "{toml}");
    let toml = toml.replace("cwd = \".\"", &format!("cwd = {root:?}"));
    let s = TestServer::start(Backend::Sqlite, &toml).await.unwrap();
    let curl = fenced(&readme, "sh");
    let body = curl
        .split_once("-d '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(body, _)| body)
        .unwrap_or_else(|| panic!("no -d '…' in {curl}"));
    let r = s
        .post(
            "/api/tasks",
            &serde_json::from_str(body).expect("JSON body"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert_eq!(r.body["result"]["type"], "py", "{}", r.text);
    assert_eq!(
        r.body["result"]["echo"],
        json!({"progress": 2}),
        "{}",
        r.text
    );
    let st = s.get("/api/status").await;
    assert_eq!(support::pool(&st.body, "py")["workers"]["workers"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_process_pool_runs_tasks_on_python_workers() {
    require_python3();
    let cfg = format!(
        "[pools.py]\nagent = \"process\"\n[pools.py.process]\ncommand = [\"python3\", \"{}\"]\nworkers = 2\n",
        agent_py()
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let ok = s
        .post_with(
            "/api/tasks",
            &json!({"type": "py", "args": {"sleep_ms": 5, "n": 1}, "wait_ms": 10000}),
            &[("x-request-id", "py-1")],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["status"], "succeeded", "{}", ok.text);
    assert_eq!(ok.body["result"]["echo"]["n"], 1);
    assert_eq!(ok.body["result"]["request_id"], "py-1");
    // A worker that dies mid-task fails only its task, saying why; the
    // worker is replaced and the next task runs.
    let crash = s
        .post(
            "/api/tasks",
            &json!({"type": "py", "args": {"crash": true}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(crash.body["status"], "failed", "{}", crash.text);
    assert_eq!(crash.body["error"]["code"], "worker_died", "{}", crash.text);
    let after = s
        .post(
            "/api/tasks",
            &json!({"type": "py", "args": {}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(after.body["status"], "succeeded", "{}", after.text);
    // A bad setting is named at start.
    let bad = "[pools.py]\nagent = \"process\"\n[pools.py.process]\ncommand = []\n";
    let cfg = swarm_core::config::Config::from_toml(bad).unwrap();
    let db = support::TestDb::new(Backend::Sqlite).await.unwrap();
    let mut cfg = cfg;
    cfg.database.url = db.url.clone();
    let store = swarm_store::Store::connect(&cfg.database).await.unwrap();
    let err = swarm_engine::Engine::start(cfg, store).await.unwrap_err();
    assert!(
        err.to_string().contains("pools.py.process.command"),
        "{err}"
    );
}

/// An instance answering every task, counting them; `broken` ones answer 500.
async fn instance(broken: bool, served: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/run",
        post(move |Json(task): Json<Value>| {
            let served = served.clone();
            async move {
                served.fetch_add(1, Ordering::Relaxed);
                if broken {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({"error": {"code": "boom", "message": "broken"}})),
                    )
                } else {
                    (
                        StatusCode::OK,
                        Json(json!({"result": {"args": task["args"]}})),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/run", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_pool_retries_elsewhere_and_ejects_a_broken_instance() {
    let good = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let bad = Arc::new(AtomicUsize::new(0));
    let urls = [
        instance(false, good[0].clone()).await,
        instance(false, good[1].clone()).await,
        instance(true, bad.clone()).await,
    ];
    let cfg = format!(
        "[pools.remote]\nagent = \"http\"\n[pools.remote.http]\nurls = {urls:?}\n\
         [pools.remote.balance]\npolicy = \"round_robin\"\n"
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    for i in 0..60 {
        let t = s.run_ok("remote", json!({"i": i})).await;
        assert_eq!(t["result"]["args"]["i"], i);
    }
    let (g0, g1, b) = (
        good[0].load(Ordering::Relaxed),
        good[1].load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
    );
    // Round robin would give the broken one a third (20); ejection stops
    // that after a few failures, and each failure was retried elsewhere.
    assert!((1..10).contains(&b), "broken instance saw {b} calls");
    assert_eq!(
        g0 + g1,
        60,
        "every task succeeded on a healthy instance: {g0} + {g1}"
    );
    assert!(g0 >= 20 && g1 >= 20, "{g0} / {g1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_pool_trusts_its_ca_file() {
    let app = axum::Router::new().route(
        "/run",
        post(|Json(task): Json<Value>| async move {
            Json(json!({"result": {"args": task["args"], "tls": true}}))
        }),
    );
    let port = tls_server::serve_tls(app).await;
    let url = format!("https://localhost:{port}/run");
    let cfg = format!(
        "[pools.secure]\nagent = \"http\"\n[pools.secure.http]\nurls = [\"{url}\"]\n\
         ca_file = \"{}\"\n\
         [pools.untrusting]\nagent = \"http\"\n[pools.untrusting.http]\nurls = [\"{url}\"]\n",
        tls_server::ca_file().display()
    );
    let s = TestServer::start(Backend::Sqlite, &cfg).await.unwrap();
    let t = s.run_ok("secure", json!({"i": 1})).await;
    assert_eq!(t["result"], json!({"args": {"i": 1}, "tls": true}));
    // Without the CA the certificate is unknown: the task fails, saying so.
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "untrusting", "args": {}, "wait_ms": 10000}),
        )
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert_eq!(r.body["error"]["code"], "backend_unreachable", "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("UnknownIssuer"), "{message}");
}
