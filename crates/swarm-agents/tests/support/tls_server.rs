//! An https server for tests: an axum router behind tokio-rustls on a real
//! socket, presenting `tests/data/localhost.pem` (signed by the test CA in
//! `tests/data/ca.pem`; `tests/data/make-certs.sh` made both).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A file under `crates/swarm-agents/tests/data`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../swarm-agents/tests/data")
        .join(name)
}

/// The test CA's certificate, for `ca_file`.
pub fn ca_file() -> PathBuf {
    data("ca.pem")
}

/// Accepts TCP connections and completes the TLS handshake; a failed
/// handshake (a client that rejects the certificate) is skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            // One handshake at a time is plenty for tests.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over https on 127.0.0.1 until the runtime ends; returns
/// the port. Connect as `localhost` or `127.0.0.1` (both are in the
/// certificate).
pub async fn serve_tls(app: Router) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(data("localhost.pem"))
        .expect("read localhost.pem")
        .collect::<Result<_, _>>()
        .expect("parse localhost.pem");
    let key = PrivateKeyDer::from_pem_file(data("localhost.key.pem")).expect("localhost.key.pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}
