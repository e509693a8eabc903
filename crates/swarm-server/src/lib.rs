//! # swarm-server
//!
//! SwarmDirector's HTTP API over the [`swarm_engine::Engine`]: routes, auth,
//! the error envelope, server-sent events. It knows nothing of SQL.
//!
//! # Layout
//! - [`serve`]: runs the API on a listener until a shutdown future resolves,
//!   then drains (tests pass `127.0.0.1:0` and their own future).
//! - `routes`: the route table; `routes/tasks.rs`, `routes/system.rs`.
//! - [`auth`]: API keys → tenant and role.
//! - [`error`]: [`ApiError`] and its JSON envelope.
//! - [`extract`]: the JSON body extractor with field-level errors.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod error;
pub mod extract;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use swarm_engine::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use error::ApiError;
pub use routes::router;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// API keys.
    pub keys: Arc<auth::Keys>,
    /// Fired when shutdown begins: waits and event streams end, so the
    /// server can drain.
    pub closing: CancellationToken,
}

impl FromRef<AppState> for Arc<auth::Keys> {
    fn from_ref(s: &AppState) -> Self {
        s.keys.clone()
    }
}

impl AppState {
    /// State for `engine`, with keys from its configuration.
    pub fn new(engine: Engine) -> Self {
        let keys = Arc::new(auth::Keys::from_config(&engine.config().tenants));
        Self {
            engine,
            keys,
            closing: CancellationToken::new(),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves; then stops
/// accepting, ends waits and event streams, finishes in-flight requests, and
/// drains the engine within `server.shutdown_grace_ms`.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(engine.clone());
    let closing = state.closing.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let addr = listener.local_addr()?;
    info!(%addr, node = engine.node_id(), "listening");
    let signal = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            info!("shutdown requested");
            closing.cancel();
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await?;
    let grace = Duration::from_millis(engine.config().server.shutdown_grace_ms);
    engine.shutdown(grace).await;
    info!("stopped");
    Ok(())
}
