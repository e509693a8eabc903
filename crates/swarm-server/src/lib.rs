//! # swarm-server
//!
//! SwarmDirector's HTTP API over the [`swarm_engine::Engine`]: routes, auth,
//! the error envelope, server-sent events. It knows nothing of SQL.
//!
//! # Layout
//! - [`serve`]: runs the API on a listener until a shutdown future resolves,
//!   then drains (tests pass `127.0.0.1:0` and their own future).
//! - [`conn`]: the accept loop and the life of one connection (limits,
//!   timeouts, drain) and its counters, [`conn::ConnStats`].
//! - `routes`: the route table; `routes/tasks.rs`, `routes/system.rs`,
//!   `routes/profile.rs` (CPU profiles, feature `pprof`), `routes/doc.rs`
//!   (the OpenAPI document, [`openapi`], served at `/api/openapi.json`).
//! - [`auth`]: API keys → tenant and role.
//! - [`error`]: [`ApiError`] and its JSON envelope.
//! - [`extract`]: the JSON body extractor with field-level errors.
//! - [`slots`]: per-tenant caps on event streams and `wait_ms` waiters.
//!
//! # Connections: why our own accept loop
//!
//! `axum::serve` accepts every connection at once and gives it no timer: a
//! client that connects and sends nothing, sends half a header, stalls in
//! the middle of a body, or sits on an idle keep-alive connection holds a
//! socket, a task and a file descriptor forever, and enough of them exhaust
//! the process. [`serve`] therefore runs its own loop over hyper's HTTP/1
//! connection (`hyper::server::conn::http1`, the same engine axum uses):
//!
//! - **Connection limit.** A permit of a semaphore of
//!   `server.max_connections` is taken *before* `accept()` and released when
//!   the connection ends. Beyond the limit, connections wait in the kernel's
//!   listen backlog (the listener is bound with a deep one) instead of being
//!   accepted and starved; the client sees a slow connect, not a reset.
//! - **Header read timeout** (`server.header_read_timeout_ms`): a new
//!   connection must deliver its first request head within it, and a later
//!   request its head within it of its first byte; otherwise the connection
//!   is dropped.
//! - **Idle timeout** (`server.idle_timeout_ms`): a keep-alive connection
//!   with no request in flight and no byte of a next one is closed
//!   gracefully. A request is in flight from its parsed head until its
//!   response body is written, so a long `wait_ms` or an event stream is
//!   never idle.
//! - **Body read timeout** (`server.body_read_timeout_ms`): the whole body
//!   must arrive within it from the parsed head; a handler reading a body
//!   that did not answers 408 `request_timeout` (the usual error envelope)
//!   and the connection closes.
//! - **Accept errors** (`EMFILE` and friends) are logged and retried after
//!   100 ms; they never end the loop.
//! - **Shutdown**: stop accepting (the listener is closed), fire
//!   [`AppState::closing`] (waits and event streams end), ask every
//!   connection to close once its current request is done, wait for them at
//!   most `server.shutdown_grace_ms` (then drop the rest), then drain the
//!   engine.
//!
//! hyper's own `header_read_timeout` cannot serve as both header and idle
//! timeout: since hyper 1.4 its timer starts as soon as hyper waits for a
//! head, at accept and right after each response (hyperium/hyper#3185,
//! #3828), so it counts keep-alive idle time as header time. The watchdog in
//! [`conn`] keeps the two apart and hyper's timer stays only as a backstop;
//! the details are there.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod conn;
pub mod error;
pub mod extract;
mod routes;
pub mod slots;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use swarm_engine::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use error::ApiError;
pub use routes::{openapi, router};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// API keys (following the engine's reloads).
    pub keys: Arc<auth::KeyRing>,
    /// Fired when shutdown begins: waits and event streams end, so the
    /// server can drain.
    pub closing: CancellationToken,
    /// Connection counters of the server serving this state.
    pub connections: Arc<conn::ConnStats>,
    /// Event streams held open, per tenant (capped).
    pub streams: Arc<slots::TenantSlots>,
    /// `wait_ms` waiters, per tenant (capped).
    pub waiters: Arc<slots::TenantSlots>,
}

impl FromRef<AppState> for Arc<auth::KeyRing> {
    fn from_ref(s: &AppState) -> Self {
        s.keys.clone()
    }
}

impl AppState {
    /// State for `engine`, with keys from its tenants.
    pub fn new(engine: Engine) -> Self {
        let keys = Arc::new(auth::KeyRing::new(engine.clone()));
        let server = &engine.config().server;
        let streams = slots::TenantSlots::streams(server.max_streams_per_tenant);
        let waiters = slots::TenantSlots::waiters(server.max_waiters_per_tenant);
        Self {
            engine,
            keys,
            closing: CancellationToken::new(),
            connections: Arc::default(),
            streams,
            waiters,
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves; then stops
/// accepting, ends waits and event streams, finishes in-flight requests
/// (connections get `server.shutdown_grace_ms` for that), and drains the
/// engine within `server.shutdown_grace_ms`. See the crate docs for the
/// connection limit and timeouts.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(engine.clone());
    let closing = state.closing.clone();
    let server_cfg = &engine.config().server;
    let shared = conn::Shared {
        stats: state.connections.clone(),
        router: router(state),
        limits: conn::Limits::from_config(server_cfg),
        closing: closing.clone(),
        force: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    let grace = Duration::from_millis(server_cfg.shutdown_grace_ms);
    let addr = listener.local_addr()?;
    info!(%addr, node = engine.node_id(), "listening");
    {
        let accept = conn::accept_loop(&listener, shared.clone());
        tokio::select! {
            () = shutdown => {}
            () = accept => {}
        }
    }
    info!("shutdown requested");
    // Stop accepting: connections still in the backlog are refused.
    drop(listener);
    closing.cancel();
    conn::drain(&shared, grace).await;
    engine.shutdown(grace).await;
    info!("stopped");
    Ok(())
}
