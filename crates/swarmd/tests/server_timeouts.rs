//! Connection limits and timeouts of the HTTP server, over raw sockets
//! (SQLite only: nothing here touches the database beyond a task or two).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Generous bound for "the server closed the connection".
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

async fn server(extra: &str) -> TestServer {
    TestServer::sqlite(extra).await
}

fn addr(s: &TestServer) -> SocketAddr {
    s.addr()
}

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(addr(s)).await.expect("connect")
}

/// Reads until the peer closes (or fails); panics if it stays open for
/// `CLOSE_WITHIN`. Returns what was read.
async fn read_until_closed(c: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + CLOSE_WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {CLOSE_WITHIN:?}; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// One HTTP/1.1 response: status, headers (lower-cased names) and body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads one response with a `Content-Length` body (all our JSON answers).
async fn read_response(c: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = timeout(Duration::from_secs(30), c.read(&mut chunk))
            .await
            .expect("response within 30 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("content-length"))
        .expect("a content-length response");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = timeout(Duration::from_secs(30), c.read(&mut chunk))
            .await
            .expect("body within 30 s")
            .expect("read");
        assert!(n > 0, "connection closed inside a response body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Resp {
        status,
        headers,
        body,
    }
}

async fn get_health(c: &mut TcpStream) -> Resp {
    c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write request");
    read_response(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let s = server("[server]\nheader_read_timeout_ms = 250\n").await;
    let mut c = connect(&s).await;
    // Closed well before hyper's own backstop (header + idle = 60.25 s).
    let got = read_until_closed(&mut c).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_closed_after_the_header_timeout() {
    let s = server("[server]\nheader_read_timeout_ms = 250\n").await;
    let mut c = connect(&s).await;
    c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_until_closed(&mut c).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // The same on a later request of a keep-alive connection: its head is
    // timed from its first byte.
    let mut c = connect(&s).await;
    assert_eq!(get_health(&mut c).await.status, 200);
    c.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    let got = read_until_closed(&mut c).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_is_closed_but_a_busy_one_survives() {
    // Idle much longer than header: idle time is not header time.
    let s = server("[server]\nheader_read_timeout_ms = 200\nidle_timeout_ms = 1500\n").await;

    let mut idle = connect(&s).await;
    assert_eq!(get_health(&mut idle).await.status, 200);
    // Well past the header timeout, well before the idle timeout: still
    // served on the same connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get_health(&mut idle).await.status, 200);

    // A connection sending a request every 100 ms outlives the idle timeout.
    let mut busy = connect(&s).await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        let r = get_health(&mut busy).await;
        assert_eq!(r.status, 200, "request {n} on the busy connection");
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n >= 5);

    // Meanwhile the idle one was closed (gracefully: nothing more written).
    let got = read_until_closed(&mut idle).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let s = server("[server]\nbody_read_timeout_ms = 300\n").await;
    let mut c = connect(&s).await;
    c.write_all(
        b"POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":",
    )
    .await
    .unwrap();
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error_code"], "request_timeout");
    assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    read_until_closed(&mut c).await;

    // A body that arrives in time is unaffected.
    let ok = s
        .post("/api/tasks", &json!({"type": "echo", "wait_ms": 5000}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_is_not_cut_by_the_idle_timeout() {
    let s = server("[server]\nheader_read_timeout_ms = 200\nidle_timeout_ms = 300\n").await;
    let mut c = connect(&s).await;
    let body = json!({"type": "sim", "args": {"latency_ms": 1500}, "wait_ms": 20000}).to_string();
    let req = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "succeeded");
    // Still usable right after (idle starts when the response is written) …
    assert_eq!(get_health(&mut c).await.status, 200);
    // … and then closed for idleness.
    read_until_closed(&mut c).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_to_be_accepted() {
    let s = server("[server]\nmax_connections = 2\n").await;
    let mut a = connect(&s).await;
    let mut b = connect(&s).await;
    assert_eq!(get_health(&mut a).await.status, 200);
    assert_eq!(get_health(&mut b).await.status, 200);
    // The third connects (the kernel completes the handshake) but is not
    // accepted, so its request is not answered …
    let mut c = connect(&s).await;
    c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = timeout(Duration::from_millis(700), c.read(&mut buf)).await;
    assert!(early.is_err(), "the third connection was served: {early:?}");
    // … until one of the two closes.
    drop(a);
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200);
    assert_eq!(get_health(&mut b).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_does_not_wait_for_them() {
    let s = server("").await;
    // Default timeouts (10 s header, 60 s idle): shutdown must not wait them out.
    let mut silent = connect(&s).await;
    let mut idle = connect(&s).await;
    assert_eq!(get_health(&mut idle).await.status, 200);
    let started = Instant::now();
    timeout(Duration::from_secs(8), s.stop())
        .await
        .expect("stop within 8 s");
    assert!(started.elapsed() < Duration::from_secs(8));
    read_until_closed(&mut silent).await;
    read_until_closed(&mut idle).await;
}
