//! A simulated LLM provider for benchmarks and for tests of HTTP-calling
//! agents (`swarmd sim-backend`).
//!
//! The server answers like an OpenAI-compatible provider and behaves like
//! one under load:
//!
//! - **Knee** (`capacity`): past `capacity` requests in flight, the service
//!   time grows by `inflight / capacity`, as a saturated provider does when
//!   a fixed throughput is shared by more callers.
//! - **Hard limit** (`hard_limit`): when the requests in flight, counting
//!   the arriving one, exceed it, the request is answered `429` at once with
//!   `Retry-After`, as a provider's rate limiting does.
//! - **Quotas** (`rpm`, `tpm`, `window_ms`): requests and tokens per
//!   minute (or per `window_ms`), a fixed window from the server's start.
//!   Every chat and `/work` answer carries OpenAI's `x-ratelimit-limit-*`,
//!   `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` headers
//!   (`requests`, and `tokens` when `tpm` is set); a request past a quota
//!   is answered `429` at once with `Retry-After` (seconds until the
//!   window ends, rounded up) and `{"error": {"type":
//!   "rate_limit_exceeded"}}`; `/stats` counts them as `rate_limited`.
//! - **Failures and stalls** (`error_rate`, `stall_rate`): injected `5xx`
//!   answers and requests that hang for `stall_ms` before being served.
//! - **Schedule**: `capacity`, `hard_limit`, `latency_ms` and `error_rate`
//!   may change over time (piecewise constant, optionally repeating), to
//!   test how a client's adaptive limits follow a changing provider.
//!
//! Per request, in order: (0) quotas → `429`; (1) hard limit → `429`; (2) failure with
//! probability `error_rate` → `error_status` after the base latency;
//! (3) stall with probability `stall_rate` → wait `stall_ms`, then go on;
//! (4) service time `(latency_ms + jitter) × max(1, inflight / capacity)`,
//! with `inflight` taken at arrival including the request itself. A request
//! counts as in flight from arrival until its response is complete (a
//! stream until its last event) or the client goes away; a client that
//! goes away first is counted (`disconnected`), so a test can see that a
//! caller really dropped its request.
//!
//! All timing uses [`tokio::time`], so the model runs under paused time.
//!
//! Endpoints:
//!
//! - `POST /v1/chat/completions`: OpenAI chat completions, plain or
//!   streamed (`"stream": true`, server-sent events, one chunk per token
//!   every `token_ms` after the service time, then `data: [DONE]`). The
//!   reply is filler words after an echo of the last user message, or, when
//!   a `[[replies]]` entry's `contains` occurs in a message, that entry's
//!   scripted `reply` verbatim (a known answer for clients' tests).
//! - `POST /work`: any JSON body, echoed with the service time and the
//!   requests in flight at arrival; the same figures again under `result`,
//!   so a `/work` URL is an instance for swarmd's `agent = "http"` pools.
//! - `GET /stats`: a [`StatsSnapshot`]. `GET /health`: `{"status":"ok"}`.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let cfg = swarm_simbackend::SimConfig::from_toml("latency_ms = 50\ncapacity = 8")
//!     .map_err(std::io::Error::other)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
//! let stats = swarm_simbackend::serve(listener, cfg, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! println!("served {}", stats.served);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod chat;
mod config;
mod http;
mod model;
mod quota;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::sync::watch;

pub use config::{MAX_DURATION_MS, MAX_REPLY_TOKENS, ScriptedReply, SimConfig, Step};
pub use stats::{MAX_SAMPLES, Sample, StatsSnapshot};

/// How long [`serve`] waits, after the shutdown signal, for requests still
/// in flight (e.g. stalled ones) before it returns anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A handle on a running simulated provider, to read its statistics.
#[derive(Debug, Clone)]
pub struct SimHandle {
    model: Arc<model::Model>,
}

impl SimHandle {
    /// The counters, the timeline and the parameters in effect now.
    pub fn stats(&self) -> StatsSnapshot {
        self.model.stats()
    }
}

/// Builds the router and a handle on its statistics. The clock of the
/// schedule and of the uptime starts now.
///
/// The configuration is used as given; call [`SimConfig::validate`] first
/// (out-of-range values never panic, but may not mean much).
pub fn app(cfg: SimConfig) -> (axum::Router, SimHandle) {
    let model = model::Model::new(cfg);
    let router = http::router(Arc::clone(&model));
    (router, SimHandle { model })
}

/// Validates `cfg`, then serves on `listener` until `shutdown` completes,
/// and returns the final statistics.
///
/// After the signal, no new connections are accepted; requests in flight
/// get up to [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<StatsSnapshot> {
    cfg.validate().map_err(std::io::Error::other)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, ?cfg, "sim-backend listening");
    }
    let (router, handle) = app(cfg);
    let (tx, rx) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    // Without TCP_NODELAY, Nagle's algorithm holds each small SSE chunk
    // until the previous one is acknowledged, and the client's delayed ACK
    // makes that tens of milliseconds: a 20 ms reply took 30-65 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "set_nodelay failed");
        }
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(stopped(rx.clone()));
    let grace = async {
        stopped(rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r,
        () = grace => {
            tracing::warn!("sim-backend: shutdown grace expired with requests in flight");
            Ok(())
        }
    };
    signal.abort();
    result?;
    let stats = handle.stats();
    tracing::info!(
        served = stats.served,
        refused = stats.refused,
        errors = stats.errors,
        "sim-backend stopped"
    );
    Ok(stats)
}

/// Completes once the shutdown flag is set (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}
