//! `GET /dashboard` in a real browser: headless Chromium loads the page from
//! a server under load; the test reads what the page drew.
//!
//! Chromium runs with a virtual-time budget: the page's timers run on
//! virtual time, which Chromium holds still while a fetch is in flight, so
//! every 1 s poll really reaches the server, yet 8 s of page time cost a
//! second or two of wall time. When the budget is spent Chromium writes a
//! screenshot and prints the DOM, where each chart carries `data-points`
//! and `data-max[-<line>]`, and `<body>` carries `data-polls`.
//!
//! Without Chromium the browser tests are reported as ignored, unless
//! `SWARMD_TEST_REQUIRE_ALL=1` (CI), where that is a failure.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::{Backend, TestServer, pool};

/// One department, four tasks at a time, 100 ms each: 40 tasks/s. The load
/// below offers more and shedding is off, so a queue builds and stays.
const BUSY: &str = "[pools.busy]\nagent = \"sim\"\nconcurrency = 4\nmax_timeout_ms = 600000\n\
                    [pools.busy.queue]\ntarget_delay_ms = 0\n";

async fn server(extra: &str) -> TestServer {
    TestServer::start(Backend::Sqlite, extra)
        .await
        .expect("SQLite is always available")
}

/// The browser to drive: `SWARMD_TEST_CHROMIUM`, else the first of the
/// usual names on `PATH` (the same search as `test_env.rs`, which marks
/// these tests ignored when it finds none); without one the test fails.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARMD_TEST_CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    support::needs::missing(
        "Chromium",
        "apt-get install chromium, or set SWARMD_TEST_CHROMIUM",
    )
}

/// A scratch directory, removed at the end unless the test failed (then
/// its screenshot and DOM stay for a look).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "swarmd-dashboard-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What Chromium saw: the DOM after `budget_ms` of page time, and the
/// screenshot's path.
struct Page {
    dom: String,
    png: PathBuf,
}

async fn open(browser: &Path, url: &str, scratch: &Scratch, budget_ms: u64) -> Page {
    let png = scratch.0.join("dashboard.png");
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        // Tests may run as root, where Chromium refuses its sandbox.
        "--no-sandbox",
        "--disable-gpu",
        // Without these Chromium keeps calling home (updates, sync,
        // field trials), which on a closed network only costs time.
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ])
    .arg(format!(
        "--user-data-dir={}",
        scratch.0.join("profile").display()
    ))
    .arg(format!("--virtual-time-budget={budget_ms}"))
    .arg(format!("--screenshot={}", png.display()))
    .arg("--dump-dom")
    .arg(url)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in 90 s", browser.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::write(scratch.0.join("dom.html"), &dom);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}); stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Page { dom, png }
}

/// The attributes of every `<tag …>` in `html`, as Chromium serialises
/// them (double quotes, `"` escaped as `&quot;`).
fn tags(html: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag}");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let mut attrs = HashMap::new();
        loop {
            rest = rest.trim_start();
            if rest.is_empty() || rest.starts_with('>') || rest.starts_with("/>") {
                break;
            }
            let end = rest
                .find(|c: char| c == '=' || c == '>' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = rest[..end].to_string();
            rest = &rest[end..];
            let value = match rest.strip_prefix("=\"") {
                Some(v) => {
                    let close = v.find('"').expect("a closing quote");
                    rest = &v[close + 1..];
                    v[..close].to_string()
                }
                None => String::new(),
            };
            attrs.insert(name, value);
        }
        out.push(attrs);
    }
    out
}

/// The `<body>`'s `data-polls`.
fn polls(dom: &str) -> u64 {
    let body = tags(dom, "body");
    body.first()
        .and_then(|b| b.get("data-polls"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no data-polls on <body>:\n{dom}"))
}

/// The chart of `metric` for `scope` (a pool, or `process`).
fn chart(dom: &str, scope: &str, metric: &str) -> HashMap<String, String> {
    tags(dom, "canvas")
        .into_iter()
        .find(|c| {
            c.get("data-scope").map(String::as_str) == Some(scope)
                && c.get("data-metric").map(String::as_str) == Some(metric)
        })
        .unwrap_or_else(|| panic!("no {scope}/{metric} chart in:\n{dom}"))
}

fn number(chart: &HashMap<String, String>, attr: &str) -> f64 {
    chart
        .get(attr)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{attr} is not a number in {chart:?}"))
}

/// Submits `sim` tasks to `busy` every 15 ms until aborted (refusals are
/// fine: they are part of what the page shows).
fn keep_busy(s: &TestServer) -> tokio::task::JoinHandle<()> {
    let client = s.client.clone();
    let url = s.url("/api/tasks");
    tokio::spawn(async move {
        let task = json!({"type": "sim", "agent": "busy", "args": {"latency_ms": 100}, "timeout_ms": 600_000});
        loop {
            let _ = client.post(&url).json(&task).send().await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_key_with_strict_headers() {
    let key = "dash-secret";
    let cfg = format!(
        "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{}\"\n",
        swarm_server::auth::hash_key(key)
    );
    let s = server(&cfg).await;
    let page = s.get("/dashboard").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let header = |r: &support::Reply, h: &str| {
        r.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let csp = header(&page, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "no inline code allowed: {csp}");
    // Nothing from elsewhere: no absolute URLs in the page.
    assert!(!page.text.contains("http"), "{}", page.text);
    for (path, ty) in [
        ("/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard/dashboard.css", "text/css; charset=utf-8"),
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(header(&r, "content-type"), ty, "{path}");
        assert!(!r.text.contains("http://") && !r.text.contains("https://"));
    }
    // The data stays behind the key.
    s.get("/api/status")
        .await
        .assert_error(401, "unauthorized", None);
    let bearer = format!("Bearer {key}");
    let st = s
        .get_with("/api/status", &[("authorization", bearer.as_str())])
        .await;
    assert_eq!(st.status, 200, "{}", st.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or set SWARMD_TEST_CHROMIUM"
)]
async fn the_page_polls_and_charts_a_busy_pool() {
    let browser = chromium();
    let s = server(BUSY).await;
    let load = keep_busy(&s);
    // Let a queue build first, so every poll the page makes sees work.
    let mut busy = false;
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        let st = s.get("/api/status").await.body;
        last = pool(&st, "busy").clone();
        if last["queued"].as_u64().unwrap_or(0) >= 10 {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool as last seen says why (refusals by reason, limit, counts).
    assert!(busy, "no queue built up in the busy pool: {last}");

    let scratch = Scratch::new("busy");
    let page = open(&browser, &s.url("/dashboard"), &scratch, 8_000).await;
    let status = s.get("/api/status").await.body;
    load.abort();
    let dom = &page.dom;

    let png = std::fs::read(&page.png).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank 1400×1000 page compresses to a few kB; charts and text do not.
    assert!(png.len() > 30_000, "screenshot of {} bytes", png.len());
    eprintln!("screenshot: {}", page.png.display());

    let polls = polls(dom);
    assert!(polls >= 3, "the page polled {polls} times");
    assert!(
        tags(dom, "div")
            .iter()
            .any(|d| d.get("id").map(String::as_str) == Some("banner") && d.contains_key("hidden")),
        "the error banner shows after successful polls:\n{dom}"
    );
    // Every chart has a point per poll, the process ones included.
    for (scope, metric) in [
        ("process", "cpu"),
        ("process", "rss"),
        ("process", "database"),
        ("busy", "concurrency"),
        ("busy", "throughput"),
        ("busy", "latency"),
        ("busy", "errors"),
    ] {
        let c = chart(dom, scope, metric);
        assert!(number(&c, "data-points") >= 3.0, "{scope}/{metric}: {c:?}");
    }
    let conc = chart(dom, "busy", "concurrency");
    assert_eq!(number(&conc, "data-max-limit"), 4.0, "{conc:?}");
    assert!(number(&conc, "data-max-inflight") >= 1.0, "{conc:?}");
    assert!(number(&conc, "data-max-queued") >= 1.0, "{conc:?}");
    let tput = chart(dom, "busy", "throughput");
    assert!(number(&tput, "data-max") > 0.0, "{tput:?}");
    assert!(number(&chart(dom, "process", "rss"), "data-max") > 1.0);
    // `latency_ms` is optional in the status; when the server has it, the
    // page must chart it.
    if pool(&status, "busy").get("latency_ms").is_some() {
        let lat = chart(dom, "busy", "latency");
        assert!(number(&lat, "data-max-p50") > 0.0, "{lat:?}");
        assert!(number(&lat, "data-max-p99") > 0.0, "{lat:?}");
    }
    // The busy pool is unfolded; a pool nobody used stays folded.
    let rows = tags(dom, "section");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.get("data-pool").map(String::as_str) == Some(name))
            .and_then(|r| r.get("class").cloned())
            .unwrap_or_else(|| panic!("no row for {name}"))
    };
    assert_eq!(row("busy"), "row", "busy is shown in full");
    assert_eq!(row("email"), "row idle", "email had no work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or set SWARMD_TEST_CHROMIUM"
)]
async fn without_a_key_the_page_asks_for_one_and_with_key_in_the_url_it_polls() {
    let browser = chromium();
    let key = "dash-secret";
    let cfg = format!(
        "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{}\"\n",
        swarm_server::auth::hash_key(key)
    );
    let s = server(&cfg).await;

    let scratch = Scratch::new("nokey");
    let page = open(&browser, &s.url("/dashboard"), &scratch, 3_000).await;
    assert_eq!(polls(&page.dom), 0, "no poll succeeds without the key");
    assert!(
        page.dom.contains("This server needs an API key"),
        "the banner asks for a key:\n{}",
        page.dom
    );
    drop(scratch);

    let scratch = Scratch::new("key");
    let url = s.url(&format!("/dashboard?key={key}"));
    let page = open(&browser, &url, &scratch, 4_000).await;
    let polls = polls(&page.dom);
    assert!(polls >= 3, "the page polled {polls} times with the key");
    assert!(!page.dom.contains("needs an API key"), "{}", page.dom);
}

/// The name column fits the names of the open rows, and a name is never
/// broken inside a word: `communications` is shown whole, and a name too
/// long for any column is cut with an ellipsis and whole in its tooltip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or set SWARMD_TEST_CHROMIUM"
)]
async fn a_department_token_budget_shows_what_is_left() {
    let browser = chromium();
    let s =
        server("[pools.busy]\nagent = \"sim\"\ntokens_per_minute = 5000\ntokens_per_day = 90000\n")
            .await;
    let scratch = Scratch::new("tokens");
    let page = open(&browser, &s.url("/dashboard"), &scratch, 3_000).await;
    assert!(
        page.dom
            .contains("tokens left: 5,000 of 5,000/min · 90,000 of 90,000/day"),
        "{}",
        page.dom
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or set SWARMD_TEST_CHROMIUM"
)]
async fn pool_names_are_never_broken_inside_a_word() {
    const LONG: &str = "an-unusually-long-department-name-for-one-column";
    let browser = chromium();
    let s = server(&format!("[pools.{LONG}]\nagent = \"echo\"\n")).await;
    // Work in both while the page polls, so both rows open.
    let client = s.client.clone();
    let url = s.url("/api/tasks");
    let load = tokio::spawn(async move {
        let email = json!({"type": "email", "args": {"to": "ops@example.com", "body": "db down"}});
        let echo = json!({"type": LONG});
        loop {
            let _ = client.post(&url).json(&email).send().await;
            let _ = client.post(&url).json(&echo).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let scratch = Scratch::new("names");
    let page = open(&browser, &s.url("/dashboard"), &scratch, 4_000).await;
    load.abort();
    let dom = &page.dom;
    // Each `<div class="name" …>text</div>`: its attributes and its text.
    let names: Vec<(HashMap<String, String>, String)> = dom
        .match_indices("<div class=\"name\"")
        .map(|(i, _)| {
            let rest = &dom[i..];
            let open_end = rest.find('>').expect("the tag ends");
            let text_end = rest.find("</div>").expect("the div ends");
            let attrs = tags(&rest[..=open_end], "div").remove(0);
            (attrs, rest[open_end + 1..text_end].to_string())
        })
        .collect();
    let name = |text: &str| {
        names
            .iter()
            .find(|(_, t)| t == text)
            .map(|(a, _)| a.clone())
            .unwrap_or_else(|| panic!("no name {text} in:\n{dom}"))
    };
    let comms = name("communications");
    assert_eq!(
        comms.get("data-fit").map(String::as_str),
        Some("whole"),
        "{comms:?}\n{dom}"
    );
    assert!(!comms.contains_key("title"), "{comms:?}");
    let long = name(LONG);
    assert_eq!(
        long.get("data-fit").map(String::as_str),
        Some("clipped"),
        "{long:?}"
    );
    assert_eq!(long.get("title").map(String::as_str), Some(LONG));
    eprintln!("screenshot: {}", page.png.display());
}

/// On PostgreSQL the page lists the nodes sharing the database (from
/// `/api/nodes`); on SQLite, one node per file, it shows no nodes section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(test_missing = "chromium", test_missing = "postgres"),
    ignore = "needs Chromium and PostgreSQL (SWARMD_TEST_PG_URL)"
)]
async fn the_page_lists_the_nodes_of_a_cluster() {
    let browser = chromium();
    let s = TestServer::start(Backend::Postgres, "")
        .await
        .expect("PostgreSQL");
    let scratch = Scratch::new("nodes");
    let page = open(&browser, &s.url("/dashboard"), &scratch, 5_000).await;
    let node = s.engine.node_id().to_string();
    let rows: Vec<_> = tags(&page.dom, "tr")
        .into_iter()
        .filter(|t| t.contains_key("data-node"))
        .collect();
    assert_eq!(rows.len(), 1, "one node on this database:\n{}", page.dom);
    assert_eq!(rows[0].get("data-node"), Some(&node));
    assert_eq!(rows[0].get("class").map(String::as_str), Some("alive"));
    assert!(
        !tags(&page.dom, "section")
            .iter()
            .any(|t| t.get("id").map(String::as_str) == Some("nodes") && t.contains_key("hidden")),
        "the nodes section shows:\n{}",
        page.dom
    );

    let sqlite = server("").await;
    let scratch = Scratch::new("no-nodes");
    let page = open(&browser, &sqlite.url("/dashboard"), &scratch, 3_000).await;
    assert!(
        tags(&page.dom, "section")
            .iter()
            .any(|t| t.get("id").map(String::as_str) == Some("nodes") && t.contains_key("hidden")),
        "no nodes section on SQLite:\n{}",
        page.dom
    );
}

/// The task explorer: the list filters by status and pages by cursor, and a
/// task's page shows its timeline, its result and its event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    test_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or set SWARMD_TEST_CHROMIUM"
)]
async fn the_task_explorer_lists_filters_pages_and_opens_a_task() {
    let browser = chromium();
    let s = server("").await;
    let mut ok = Vec::new();
    for n in 0..3 {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": "echo", "args": {"n": n, "word": "explorer-check"}, "wait_ms": 5000}),
            )
            .await;
        assert_eq!(r.body["status"], "succeeded", "{}", r.text);
        ok.push(r.id());
    }
    let failed = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 1, "fail_rate": 1.0}, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.text);
    let rows = |dom: &str| -> Vec<(String, String)> {
        tags(dom, "tr")
            .into_iter()
            .filter_map(|t| Some((t.get("data-task")?.clone(), t.get("data-status")?.clone())))
            .collect()
    };
    let section = |dom: &str, id: &str| -> HashMap<String, String> {
        tags(dom, "section")
            .into_iter()
            .find(|t| t.get("id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no section {id} in:\n{dom}"))
    };

    // All four, newest first.
    let scratch = Scratch::new("tasks-all");
    let page = open(&browser, &s.url("/dashboard#tasks"), &scratch, 3_000).await;
    let all = rows(&page.dom);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[0], (failed.id(), "failed".to_string()));
    assert_eq!(all[3].0, ok[0]);
    drop(scratch);

    // Filtered by status.
    let scratch = Scratch::new("tasks-failed");
    let page = open(
        &browser,
        &s.url("/dashboard#tasks?status=failed"),
        &scratch,
        3_000,
    )
    .await;
    assert_eq!(rows(&page.dom), vec![(failed.id(), "failed".to_string())]);
    drop(scratch);

    // Pages of two: the first holds the newest two and names the next page.
    let scratch = Scratch::new("tasks-page");
    let page = open(
        &browser,
        &s.url("/dashboard#tasks?limit=2"),
        &scratch,
        3_000,
    )
    .await;
    let first = rows(&page.dom);
    assert_eq!(first.len(), 2, "{first:?}");
    let next = section(&page.dom, "tasks")
        .get("data-next-cursor")
        .cloned()
        .unwrap_or_default();
    assert!(!next.is_empty(), "no next cursor:\n{}", page.dom);
    drop(scratch);
    let scratch = Scratch::new("tasks-page2");
    let url = s.url(&format!("/dashboard#tasks?limit=2&cursor={next}"));
    let page = open(&browser, &url, &scratch, 3_000).await;
    let second = rows(&page.dom);
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(
        second.iter().all(|r| !first.contains(r)),
        "{first:?} then {second:?}"
    );
    drop(scratch);

    // One task's page.
    let scratch = Scratch::new("task-one");
    let url = s.url(&format!("/dashboard#task={}", ok[1]));
    let page = open(&browser, &url, &scratch, 3_000).await;
    let dom = &page.dom;
    let task = section(dom, "task");
    assert_eq!(
        task.get("data-status").map(String::as_str),
        Some("succeeded"),
        "{dom}"
    );
    assert!(!task.contains_key("hidden"), "{dom}");
    let stages: Vec<String> = tags(dom, "div")
        .into_iter()
        .filter_map(|d| d.get("data-stage").cloned())
        .collect();
    assert_eq!(stages, ["admission", "persist", "queue", "run"], "{dom}");
    assert!(
        dom.contains("explorer-check"),
        "the result is shown:\n{dom}"
    );
    let events: u64 = task
        .get("data-events")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    assert!(
        events >= 2,
        "{events} events shown (a state and the result):\n{dom}"
    );
    assert!(
        tags(dom, "li")
            .iter()
            .any(|l| l.get("data-kind").map(String::as_str) == Some("result")),
        "{dom}"
    );
    drop(scratch);

    // A retried task's page lists each attempt.
    let retried = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 1, "fail_first": 1},
                    "retry": {"max_attempts": 2, "backoff_ms": 10}, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(retried.body["status"], "succeeded", "{}", retried.text);
    let scratch = Scratch::new("task-attempts");
    let url = s.url(&format!("/dashboard#task={}", retried.id()));
    let page = open(&browser, &url, &scratch, 3_000).await;
    let attempts: Vec<(String, String)> = tags(&page.dom, "tr")
        .into_iter()
        .filter_map(|t| {
            Some((
                t.get("data-attempt")?.clone(),
                t.get("data-status")?.clone(),
            ))
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("1".to_string(), "failed".to_string()),
            ("2".to_string(), "succeeded".to_string())
        ],
        "{}",
        page.dom
    );
    assert!(
        page.dom.contains("simulated_transient_failure"),
        "the failed attempt's error is shown:\n{}",
        page.dom
    );
}
