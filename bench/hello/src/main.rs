//! The ceiling: the least an axum server can do for a task submission on
//! this machine. It accepts `POST /api/tasks` with a JSON body, parses it,
//! and answers `202` with a small JSON object — no validation, storage or
//! scheduling. `swarmd bench` figures are reported as a ratio to this.
//!
//! Usage: `swarm-hello [ADDR]` (default `127.0.0.1:8090`).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

async fn submit(
    body: axum::body::Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    // Parse like a real handler would, so the ceiling includes the JSON work.
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => (
            StatusCode::ACCEPTED,
            [("content-type", "application/json")],
            format!(
                "{{\"status\":\"queued\",\"fields\":{}}}",
                v.as_object().map_or(0, |o| o.len())
            ),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            format!("{{\"error_code\":\"malformed_json\",\"message\":\"{e}\"}}"),
        ),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let app = Router::new()
        .route("/api/tasks", post(submit))
        .route("/health", get(|| async { "ok" }))
        .route("/", get(|| async { "hello" }));
    eprintln!("swarm-hello listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
