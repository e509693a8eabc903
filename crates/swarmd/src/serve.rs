//! `swarmd serve`.

use swarm_agents::BUILTIN_KINDS;
use swarm_core::config::Config;
use swarm_engine::Engine;
use swarm_store::Store;
use tokio::net::TcpListener;

use crate::cli::ServeArgs;

/// Loads the configuration: defaults, then the file, then env and flags.
pub(crate) fn load_config(args: &ServeArgs) -> Result<Config, String> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            Config::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(l) = &args.listen {
        cfg.server.listen = l.clone();
    }
    if let Some(u) = &args.database_url {
        cfg.database.url = u.clone();
    }
    if let Some(n) = args.db_max_connections {
        cfg.database.max_connections = n;
    }
    if let Some(n) = &args.node_id {
        cfg.node_id = Some(n.clone());
    }
    cfg.validate(BUILTIN_KINDS).map_err(|e| e.to_string())?;
    check_exposure(&cfg, args.allow_unauthenticated)?;
    Ok(cfg)
}

/// Without API keys every caller may submit, read and cancel tasks; that
/// is the embedded default on loopback, and a mistake anywhere else. So a
/// listen address other machines may reach needs keys, or the explicit
/// `--allow-unauthenticated`. Checked at start and at every reload (a
/// reload that removes the last key is refused).
pub(crate) fn check_exposure(cfg: &Config, allow_unauthenticated: bool) -> Result<(), String> {
    if !cfg.tenants.is_empty() || allow_unauthenticated || is_loopback_addr(&cfg.server.listen) {
        return Ok(());
    }
    Err(format!(
        "refusing to serve on {} without API keys: anyone who reaches it could submit, read \
         and cancel tasks. Configure [[tenants]] keys (see `swarmd hash-key`), listen on \
         loopback (127.0.0.1), or pass --allow-unauthenticated if the network is trusted",
        cfg.server.listen
    ))
}

/// Whether `listen` (`host:port`) names only this machine: a loopback IP
/// or `localhost`. Anything else (`0.0.0.0`, a host name, a LAN address)
/// counts as reachable from elsewhere.
fn is_loopback_addr(listen: &str) -> bool {
    if let Ok(a) = listen.parse::<std::net::SocketAddr>() {
        return a.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Binds with a deep accept backlog: a burst of thousands of new
/// connections (a client fleet reconnecting) otherwise overflows the default
/// 1,024 and costs clients a one-second SYN retransmit.
pub(crate) async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(8192)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// `cannot listen on <addr>: …`, with what to do where there is something
/// to do; `how` names the settings that choose the address.
pub(crate) fn listen_error(addr: &str, e: &std::io::Error, how: &str) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::AddrInUse => format!(
            "cannot listen on {addr}: the address is already in use (another swarmd, \
             or another program, listens there); choose another with {how}"
        ),
        K::PermissionDenied => format!(
            "cannot listen on {addr}: permission denied (ports below 1024 need \
             privileges); choose another with {how}"
        ),
        K::AddrNotAvailable => format!(
            "cannot listen on {addr}: not an address of this machine; choose another with {how}"
        ),
        _ => format!("cannot listen on {addr}: {e}"),
    }
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), String> {
    // The configuration comes first: it says where spans go. Its errors
    // are returned, not logged, so nothing is lost before logging starts.
    let cfg = load_config(&args)?;
    let telemetry = crate::telemetry::init(&args, &cfg.telemetry)?;
    let result = serve(cfg, args).await;
    telemetry.shutdown().await;
    result
}

/// Threads of the engine's own runtime.
const ENGINE_THREADS: usize = 2;

async fn serve(cfg: Config, args: ServeArgs) -> Result<(), String> {
    let listener = listen(&cfg.server.listen).await.map_err(|e| {
        listen_error(
            &cfg.server.listen,
            &e,
            "--listen or SWARMD_LISTEN (or `listen` under [server] in the config file)",
        )
    })?;
    // The engine (the store's writer, the dispatchers, every run) gets a
    // runtime of its own. HTTP connections live on this one; under a flood
    // of thousands of them its queues hold thousands of ready tasks, and a
    // commit or a start woken behind them would wait seconds. On its own
    // threads the work already accepted keeps finishing at its own pace
    // while the flood is refused here (issue 13: completions before
    // admissions).
    let engine_rt = EngineRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(ENGINE_THREADS)
            .thread_name("swarmd-engine")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the engine's runtime: {e}"))?,
    ));
    let engine = engine_rt
        .handle()
        .spawn(async move {
            let store = Store::connect(&cfg.database)
                .await
                .map_err(|e| e.to_string())?;
            Engine::start(cfg, store).await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("starting the engine failed: {e}"))??;
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(engine.clone(), args));
    #[cfg(not(unix))]
    let _ = args;
    swarm_server::serve(listener, engine, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// The engine's runtime, shut down without blocking when dropped: by then
/// the engine has shut down (`serve` waits for it), and a runtime must not
/// be dropped the blocking way inside another one.
struct EngineRuntime(Option<tokio::runtime::Runtime>);

impl EngineRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }
}

impl Drop for EngineRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// On SIGHUP, reads the configuration again (file, env, flags, as at
/// start) and applies what can change while running: the instance lists of
/// balanced departments and the tenants (keys, roles, weights, quotas). A
/// bad file changes nothing and is logged.
#[cfg(unix)]
async fn reload_on_hangup(engine: Engine, args: ServeArgs) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; configuration reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        let result =
            load_config(&args).and_then(|cfg| engine.reload(&cfg).map_err(|e| e.to_string()));
        match result {
            Ok(r) => tracing::info!(
                pools_changed = r.changed.len(),
                tenants_added = ?r.tenants.added,
                tenants_removed = ?r.tenants.removed,
                tenants_changed = ?r.tenants.changed,
                ignored = r.ignored.len(),
                "configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "configuration reload failed; nothing changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:8080",
            "[::1]:80",
            "localhost:9000",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback_addr(a), "{a}");
        }
        for a in [
            "0.0.0.0:8080",
            "[::]:80",
            "10.0.0.1:80",
            "example.com:80",
            "nonsense",
        ] {
            assert!(!is_loopback_addr(a), "{a}");
        }
    }
}
