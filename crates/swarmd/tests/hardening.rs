//! What one caller can cost everyone (issue 15): large responses to slow
//! readers, long-lived requests per tenant, metric labels, request heads
//! and ids, other tenants' figures, secrets in logs. Each test failed
//! before its fix. SQLite only: the database plays no part here.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{TestServer, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ONE_SLOT: &str = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\nmax_timeout_ms = 600000\n[pools.slow.queue]\ntarget_delay_ms = 0\n";

async fn server(extra: &str) -> TestServer {
    TestServer::sqlite(extra).await
}

fn addr(s: &TestServer) -> SocketAddr {
    s.addr()
}

/// Sends `raw` on a new connection and reads what comes back until the
/// server closes or `within` passes.
async fn exchange(s: &TestServer, raw: &[u8], within: Duration) -> String {
    let mut c = TcpStream::connect(addr(s)).await.expect("connect");
    c.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Submits `n` echo tasks whose args hold `bytes` bytes each; returns ids.
async fn big_tasks(s: &TestServer, n: usize, bytes: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = s
            .post(
                "/api/tasks",
                &json!({"type": "echo", "args": {"i": i, "blob": "x".repeat(bytes)}, "wait_ms": 10_000}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        ids.push(r.id());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_leave_out_large_fields_and_are_bounded_in_bytes() {
    let s = server("[server]\nmax_page_bytes = 65536\n").await;
    let ids = big_tasks(&s, 10, 20_000).await;
    // By default neither `args` nor `result`: all ten in one small page.
    let r = s.get("/api/tasks?limit=50").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.list_len(), 10);
    assert!(r.text.len() < 20_000, "page of {} bytes", r.text.len());
    for t in r.body["tasks"].as_array().unwrap() {
        assert!(t.get("args").is_none() && t.get("result").is_none(), "{t}");
        assert_eq!(t["status"], "succeeded");
    }
    assert_eq!(r.body["next_cursor"], Value::Null);
    // Asked for: pages cut at 64 KiB, cursors still reach every task once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let r = s
            .get(&format!(
                "/api/tasks?limit=50&fields=args,result&cursor={cursor}"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.len() <= 65_536, "page of {} bytes", r.text.len());
        for t in r.body["tasks"].as_array().unwrap() {
            assert_eq!(t["args"]["blob"].as_str().map(str::len), Some(20_000));
            assert!(t["result"].is_object(), "{t}");
        }
        seen.extend(r.list_ids());
        pages += 1;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert!(pages >= 4, "{pages} pages");
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(seen, want);
    // An unknown field is a clear 422.
    s.get("/api/tasks?fields=args,secrets").await.assert_error(
        422,
        "invalid_field",
        Some("fields"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_off() {
    let s = server(
        "[server]\nmax_body_bytes = 2000000\nmax_page_bytes = 64000000\nwrite_timeout_ms = 500\n",
    )
    .await;
    big_tasks(&s, 8, 1_500_000).await;
    // A client with a small receive window that asks for ~24 MB and reads
    // nothing: the response cannot fit in the socket buffers.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(addr(&s)).await.expect("connect");
    c.write_all(b"GET /api/tasks?limit=8&fields=args,result HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut cut = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let st = s.get("/api/status").await;
        cut = st.body["connections"]["closed_write_timeout"]
            .as_u64()
            .unwrap();
        if cut > 0 {
            break;
        }
    }
    assert_eq!(cut, 1, "the stalled response was cut off");
    // What the client can still read ends well short of the whole page.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got < 12_000_000, "read {got} bytes of a cut response");
    let m = s.get("/api/status").await;
    assert_eq!(
        m.body["connections"]["open"], 1,
        "{}",
        m.body["connections"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_metric_label() {
    let s = server("").await;
    for i in 0..30 {
        let r = exchange(
            &s,
            format!("BREW{i} /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    }
    let m = s.get("/metrics").await;
    assert!(!m.text.contains("BREW"), "a made-up method became a label");
    assert!(
        m.text
            .lines()
            .any(|l| l.starts_with("swarmd_http_requests_total") && l.contains("method=\"other\"")),
        "no `other` series in:\n{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_bounded() {
    let s = server("").await;
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = exchange(&s, huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        !r.starts_with("HTTP/1.1 200"),
        "a 100 KiB head was served: {}",
        &r[..r.len().min(200)]
    );
    // A head of 16 KiB is still fine.
    let fine = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let r = exchange(&s, fine.as_bytes(), Duration::from_secs(5)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_too_large_is_refused_before_100_continue() {
    let s = server("").await;
    let r = exchange(
        &s,
        b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50000000\r\nexpect: 100-continue\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(!r.contains("100 Continue"), "{r}");
    assert!(r.contains("\"error_code\":\"payload_too_large\""), "{r}");
    let st = s.get("/api/status").await;
    assert_eq!(st.body["connections"]["early_too_large"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_ids_are_replaced() {
    let s = server("").await;
    let long = "r".repeat(200);
    let r = s.get_with("/health", &[("x-request-id", &long)]).await;
    let got = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(got, long);
    assert!(!got.is_empty() && got.len() <= 128, "{got}");
    let ok = "req-1234567890";
    let r = s.get_with("/health", &[("x-request-id", ok)]).await;
    assert_eq!(r.headers["x-request-id"], ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_percent_escape_gets_the_json_envelope() {
    let s = server("").await;
    for path in [
        "/api/tasks/%ff",
        "/api/tasks/%C3/events",
        "/api/pools/x%ff/instances",
    ] {
        s.get(path).await.assert_error(400, "invalid_path", None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_waiters_are_capped_per_tenant() {
    let s = server(&format!(
        "{ONE_SLOT}[server]\nmax_streams_per_tenant = 2\nmax_waiters_per_tenant = 1\n"
    ))
    .await;
    let busy = s.occupy("slow", 60_000).await;
    let events = format!("/api/tasks/{busy}/events");
    let open_stream = |tenant: &'static str| {
        let req = s
            .client
            .get(s.url(&events))
            .header("x-tenant", tenant)
            .send();
        async move { req.await.expect("GET events") }
    };
    // The task is the default tenant's; streams of other tenants get 404,
    // so the default tenant holds the streams here.
    let a1 = open_stream("default").await;
    let a2 = open_stream("default").await;
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    let r = support::Reply::from(open_stream("default").await).await;
    r.assert_error(429, "too_many_streams", None);
    assert_eq!(r.headers["retry-after"], "1");
    // Another tenant has its own cap (its 404 shows it got past the cap).
    let other = open_stream("other").await;
    assert_eq!(other.status(), 404);
    // A closed stream gives its slot back.
    drop(a1);
    let mut reopened = 0;
    for _ in 0..100 {
        let r = open_stream("default").await;
        if r.status() == 200 {
            reopened = 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reopened, 1);
    // One waiter per tenant: the second is refused and submits nothing.
    let waiter = {
        let req = s
            .client
            .post(s.url("/api/tasks"))
            .json(&json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1}, "wait_ms": 30_000}))
            .send();
        tokio::spawn(req)
    };
    // The waiter's slot is taken before its task is stored, so both are
    // awaited: the occupying task and the waiter's make two.
    let (mut held, mut before) = (0, 0);
    for _ in 0..100 {
        let st = s.get("/api/status").await;
        held = st.body["long_requests"]["waiters"]["open"]
            .as_u64()
            .unwrap();
        before = s.get("/api/tasks?limit=500").await.list_len();
        if held == 1 && before == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((held, before), (1, 2));
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "args": {}, "wait_ms": 1000}),
        )
        .await;
    r.assert_error(429, "too_many_waiters", None);
    assert_eq!(s.get("/api/tasks?limit=500").await.list_len(), before);
    // Without `wait_ms` the same tenant still submits.
    let r = s
        .post("/api/tasks", &json!({"type": "echo", "args": {}}))
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    waiter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_only_its_own_tenant_in_status() {
    let acme = swarm_server::auth::hash_key("acme-key");
    let beta = swarm_server::auth::hash_key("beta-key");
    let ops = swarm_server::auth::hash_key("ops-key");
    let s = server(&format!(
        "{ONE_SLOT}[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{acme}\"\n[[tenants]]\nname = \"beta\"\nkey_sha256 = \"{beta}\"\n[[tenants]]\nname = \"ops\"\nrole = \"admin\"\nkey_sha256 = \"{ops}\"\n"
    ))
    .await;
    let auth = |k: &str| format!("Bearer {k}");
    let blocker = s
        .post_with(
            "/api/tasks",
            &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 60_000}, "timeout_ms": 600_000}),
            &[("authorization", &auth("ops-key"))],
        )
        .await;
    assert_eq!(blocker.status, 202, "{}", blocker.text);
    for key in ["acme-key", "beta-key", "beta-key"] {
        let r = s
            .post_with(
                "/api/tasks",
                &json!({"type": "sim", "agent": "slow", "args": {"latency_ms": 1}, "timeout_ms": 600_000}),
                &[("authorization", &auth(key))],
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let queued = |key: &'static str| {
        let s = &s;
        async move {
            for _ in 0..100 {
                let st = s
                    .get_with("/api/status", &[("authorization", &auth(key))])
                    .await;
                let q = support::pool(&st.body, "slow")["queued_by_tenant"].clone();
                if q.as_object().is_some_and(|m| !m.is_empty()) {
                    return q;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("nothing queued for {key}");
        }
    };
    assert_eq!(queued("acme-key").await, json!({"acme": 1}));
    assert_eq!(queued("beta-key").await, json!({"beta": 2}));
    assert_eq!(queued("ops-key").await, json!({"acme": 1, "beta": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_query_strings_stay_out_of_the_log() {
    let dir = std::env::temp_dir().join(support::unique("swarmd-logs"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stderr.log");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_swarmd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log", "debug", "--log-format", "json"])
        .env(
            "SWARMD_DATABASE_URL",
            format!("sqlite://{}", dir.join("t.db").display()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("swarmd starts");
    let mut child = scopeguard(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "swarmd came up");
    for path in [
        "/dashboard?key=SECRET-ONE",
        "/api/tasks?status=queued&key=SECRET-TWO",
    ] {
        client.get(format!("{base}{path}")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.0.kill().ok();
    child.0.wait().ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("SECRET-"), "a key reached the log:\n{text}");
    // The requests were logged, with the key redacted.
    assert!(
        text.contains("/api/tasks?status=queued&key=REDACTED"),
        "request not logged:\n{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Kills the child if the test panics before it does.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
