//! `swarmd sim-backend`: the simulated provider as a process.

use swarm_simbackend::SimConfig;

use crate::cli::SimBackendArgs;

pub(crate) async fn run(a: SimBackendArgs) -> Result<(), String> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            SimConfig::from_toml(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => SimConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { cfg.$f = v; } )* };
    }
    set!(
        latency_ms, jitter_ms, capacity, hard_limit, rpm, tpm, window_ms, error_rate, stall_rate,
        stall_ms, token_ms
    );
    if a.seed.is_some() {
        cfg.seed = a.seed;
    }
    cfg.validate()
        .map_err(|e| format!("invalid sim-backend settings: {e}"))?;
    let listener = crate::serve::listen(&a.listen)
        .await
        .map_err(|e| crate::serve::listen_error(&a.listen, &e, "--listen"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "sim-backend listening on {addr} (POST /v1/chat/completions, POST /work, GET /stats)"
    );
    let stats = swarm_simbackend::serve(listener, cfg, crate::serve::shutdown_signal())
        .await
        .map_err(|e| format!("sim-backend: {e}"))?;
    eprintln!(
        "sim-backend: served {}, refused {}, rate limited {}, errors {}, stalled {}, most in flight {}",
        stats.served,
        stats.refused,
        stats.rate_limited,
        stats.errors,
        stats.stalled,
        stats.inflight_max
    );
    Ok(())
}
