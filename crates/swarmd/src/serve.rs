//! `swarmd serve`.

use swarm_agents::BUILTIN_KINDS;
use swarm_core::config::Config;
use swarm_engine::Engine;
use swarm_store::Store;
use tokio::net::TcpListener;

use crate::cli::{LogFormat, ServeArgs};

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
    Ok(cfg)
}

fn init_logging(args: &ServeArgs) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| format!("bad --log filter `{}`: {e}", args.log))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match args.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
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

pub(crate) async fn run(args: ServeArgs) -> Result<(), String> {
    init_logging(&args)?;
    let cfg = load_config(&args)?;
    let listener = listen(&cfg.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
    let store = Store::connect(&cfg.database)
        .await
        .map_err(|e| e.to_string())?;
    let engine = Engine::start(cfg, store).await.map_err(|e| e.to_string())?;
    swarm_server::serve(listener, engine, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}
