//! A simulated provider on a real socket, for the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use swarm_simbackend::{SimConfig, StatsSnapshot, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and a client for it.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<StatsSnapshot>>,
}

/// A configuration with small, deterministic timings.
pub fn fast(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        seed: Some(7),
        ..SimConfig::default()
    }
}

/// Installs rustls' ring provider unless one is: built together with
/// swarm-agents, reqwest has TLS via `rustls-no-provider` and panics
/// building a client without one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

impl Server {
    /// Binds 127.0.0.1:0 and serves `cfg` until [`Server::finish`].
    pub async fn start(cfg: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, cfg, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client: client(),
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> StatsSnapshot {
        let resp = self.client.get(self.url("/stats")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Signals shutdown and returns the final stats from `serve`.
    pub async fn finish(mut self) -> StatsSnapshot {
        drop(self.client);
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
            .expect("serve result")
    }
}
