//! Runs a scenario: for each step, start the target, warm up, measure,
//! sample the server, account CPU, stop the target.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::BenchError;
use crate::http::{HttpExchange, check_reachable, client, shared};
use crate::launch::launch;
use crate::load::{
    Exchange, Live, Measured, PhasePlan, Window, closed_loop, open_loop, open_loop_phased,
};
use crate::phases::{PhaseSpan, phase_results, timeline};
use crate::progress::Progress;
use crate::recorder::{LabelRecorder, LatencySummary};
use crate::result::{LabelResult, Machine, ScenarioResult, StepResult};
use crate::sampler::Sampler;
use crate::scenario::{Database, E2e, Launch, Mode, Scenario};
use crate::sysstat::{generator_bound, snapshot, usage};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// No progress display.
    pub quiet: bool,
    /// The command line, recorded with the results.
    pub command: String,
}

/// The machine this runs on.
pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu,
        memory_gib,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// The checked-out commit, `-dirty` when the tree has changes (other than
/// the bench's own outputs).
pub fn commit() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            // The bench's own outputs do not make the measured build dirty.
            let dirty = out(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!BENCHMARKS.md",
                ":!bench/results",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    }
}

fn target_label(s: &Scenario) -> String {
    let t = &s.target;
    let cfg = t
        .config
        .as_ref()
        .map(|c| format!(", config `{}`", c.display()))
        .unwrap_or_default();
    match t.launch {
        Launch::Swarmd => format!(
            "swarmd on {}{cfg}",
            match t.database {
                Database::Sqlite => "SQLite",
                Database::Postgres => "PostgreSQL",
            }
        ),
        Launch::Hello => "the axum hello-world ceiling (`bench/hello`)".into(),
        Launch::SimBackend => format!("sim-backend{cfg}"),
        Launch::None => t.url.clone().unwrap_or_default(),
    }
}

/// Makes sure this process may open `needed` files (sockets).
fn ensure_fd_limit(needed: u64) -> Result<(), BenchError> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if limit != 0 && limit < needed {
        return Err(BenchError::Input(format!(
            "this run needs about {needed} open files but the limit is {limit}; raise it (ulimit -n {needed})"
        )));
    }
    Ok(())
}

async fn offer(
    ex: Arc<dyn Exchange>,
    s: &Scenario,
    x: f64,
    w: Window,
    live: Arc<Live>,
    warming_up: bool,
) -> Measured {
    match s.load.mode {
        Mode::Closed => closed_loop(ex, x as usize, w, live).await,
        Mode::Open if !s.load.phases.is_empty() => {
            // Warm-up runs at the first phase's rate and args.
            let plans: Vec<PhasePlan> = if !warming_up {
                plans(s, x)
            } else {
                plans(s, x)
                    .into_iter()
                    .take(1)
                    .map(|p| PhasePlan {
                        duration: w.duration,
                        ..p
                    })
                    .collect()
            };
            open_loop_phased(ex, &plans, s.load.max_inflight, live).await
        }
        Mode::Open => open_loop(ex, x, s.load.max_inflight, w, live).await,
    }
}

/// The phases of step `x` as rates and durations.
fn plans(s: &Scenario, x: f64) -> Vec<PhasePlan> {
    s.load
        .phases
        .iter()
        .map(|p| PhasePlan {
            rate: x * p.factor,
            duration: p.duration,
        })
        .collect()
}

/// Runs every step of `s`.
pub async fn run(s: &Scenario, opts: &RunOptions) -> Result<ScenarioResult, BenchError> {
    let biggest = s.load.steps.iter().fold(0.0f64, |a, &b| a.max(b))
        * s.load.phases.iter().fold(1.0f64, |a, p| a.max(p.factor));
    let sockets = match s.load.mode {
        Mode::Closed => biggest as u64 * if s.request.e2e == E2e::Sse { 2 } else { 1 },
        // In flight at once: at most max_inflight, and no more than a minute
        // of arrivals.
        Mode::Open => (s.load.max_inflight as u64).min((biggest * 60.0).ceil() as u64),
    };
    ensure_fd_limit(sockets + 256)?;
    let machine = machine();
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let n = s.load.steps.len();
    let mut steps = Vec::with_capacity(n);
    for (i, &x) in s.load.steps.iter().enumerate() {
        let launched = launch(s, i).await?;
        let base = match (&launched, &s.target.url) {
            (Some(l), _) => l.base.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => {
                return Err(BenchError::Input(
                    "no target: set target.url or target.launch".into(),
                ));
            }
        };
        let timeout = Duration::from_millis(s.request.wait_ms) + Duration::from_secs(120);
        let http = client(s.target.api_key.as_deref(), timeout)?;
        let probe = s
            .request
            .raw
            .as_ref()
            .map_or("/health", |r| r.path.as_str());
        check_reachable(&http, &base, probe).await?;
        let ex = shared(
            HttpExchange::new(http.clone(), &base, s.request.clone(), s.load.seed)
                .with_phase_args(s.load.phases.iter().map(|p| p.args.clone()).collect()),
        );
        let live = Arc::new(Live::default());
        let label = format!(
            "[{}/{n}] {} {}",
            i + 1,
            match s.load.mode {
                Mode::Closed => "concurrency",
                Mode::Open => "rate",
            },
            x
        );
        let progress = Progress::start(
            opts.quiet,
            label,
            live.clone(),
            s.load.warmup + s.load.measured(),
        );
        if !s.load.warmup.is_zero() {
            let w = Window {
                warmup: Duration::ZERO,
                duration: s.load.warmup,
                max_requests: None,
            };
            offer(ex.clone(), s, x, w, live.clone(), true).await;
        }
        let from = Instant::now();
        let sampler = (s.request.raw.is_none()).then(|| {
            let every = Duration::from_millis(s.target.sample_ms.unwrap_or(500).max(50));
            Sampler::start_for(http.clone(), &base, every, from, s.target.pool.clone())
        });
        let pid = launched.as_ref().map(|l| l.pid);
        let cpu0 = snapshot(pid);
        let w = Window {
            warmup: Duration::ZERO,
            duration: s.load.measured(),
            max_requests: s.load.requests,
        };
        let m = offer(ex, s, x, w, live, false).await;
        let wall = from.elapsed().as_secs_f64();
        let cpu1 = snapshot(pid);
        let status = match sampler {
            Some(sm) => Some(sm.stop().await),
            None => None,
        };
        progress.finish().await;
        let cpu = usage(&cpu0, &cpu1, wall);
        steps.push(assemble(s, x, &m, status, cpu, machine.cores));
        if let Some(l) = launched {
            l.stop().await;
        }
    }
    Ok(ScenarioResult {
        name: s.name.clone(),
        description: s.description.clone(),
        command: opts.command.clone(),
        commit: commit(),
        machine,
        started_at,
        target: target_label(s),
        mode: s.load.mode,
        e2e: s.request.e2e,
        warmup_s: s.load.warmup.as_secs_f64(),
        duration_s: s.load.measured().as_secs_f64(),
        steps,
    })
}

fn assemble(
    s: &Scenario,
    x: f64,
    m: &Measured,
    status: Option<crate::result::StatusSeries>,
    cpu: crate::sysstat::CpuUse,
    cores: usize,
) -> StepResult {
    let r = &m.recorder;
    let window = m.window.as_secs_f64().max(1e-9);
    let accepted = r.accepted();
    let rejected = r.rejected();
    let mut notes = Vec::new();
    if r.transport_errors > 0 {
        notes.push(format!(
            "{} without an answer, e.g. {}",
            r.transport_errors,
            r.first_transport_error.clone().unwrap_or_default()
        ));
    }
    let lag = LatencySummary::of(&r.lag);
    if let Some(l) = lag
        && l.p99 > 5.0
    {
        notes.push(format!(
            "sends fell behind schedule (lag p99 {:.1} ms)",
            l.p99
        ));
    }
    if let (Some(pool), Some(st)) = (&s.target.pool, &status)
        && st.t_s.is_empty()
    {
        notes.push(format!("pool `{pool}` not found in /api/status"));
    }
    let goodput = if s.request.e2e == E2e::None {
        status.as_ref().and_then(|st| st.goodput())
    } else {
        Some(r.outcomes.get("succeeded").copied().unwrap_or(0) as f64 / window)
    };
    let by_label = r
        .labels
        .iter()
        .map(|(k, l)| (k.to_string(), label_result(l, s.request.e2e, window)))
        .collect();
    let (phases, timeline) = if s.load.phases.is_empty() {
        (Vec::new(), None)
    } else {
        let spans: Vec<PhaseSpan> = s
            .load
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| PhaseSpan {
                label: s.load.phase_label(i),
                factor: p.factor,
                rate: x * p.factor,
                duration: p.duration,
            })
            .collect();
        let ack_is_done = s.request.e2e == E2e::None;
        (
            phase_results(&r.trace, &spans, ack_is_done),
            Some(timeline(&r.trace, m.window, ack_is_done)),
        )
    };
    StepResult {
        x,
        window_s: window,
        sent: r.sent,
        accepted,
        rejected,
        errors: r.sent - accepted - rejected,
        codes: r.codes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        throughput: accepted as f64 / window,
        goodput,
        submit: LatencySummary::of(&r.ack),
        e2e: LatencySummary::of(&r.e2e),
        rejection: LatencySummary::of(&r.reject),
        send_lag: lag,
        outcomes: r.outcomes.clone(),
        generator_cores: cpu.generator_cores,
        server_cores: cpu.server_cores,
        machine_busy: cpu.machine_busy,
        generator_bound: generator_bound(&cpu, cores),
        notes,
        status,
        by_label,
        phases,
        timeline,
    }
}

fn label_result(l: &LabelRecorder, e2e: E2e, window: f64) -> LabelResult {
    LabelResult {
        sent: l.sent,
        accepted: l.accepted,
        rejected: l.rejected,
        errors: l.sent - l.accepted - l.rejected,
        goodput: (e2e != E2e::None)
            .then(|| l.outcomes.get("succeeded").copied().unwrap_or(0) as f64 / window),
        submit: LatencySummary::of(&l.ack),
        e2e: LatencySummary::of(&l.e2e),
        rejection: LatencySummary::of(&l.reject),
        outcomes: l.outcomes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An HTTP server answering `200 {}` to everything, keeping the bodies.
    async fn server() -> (String, Arc<Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        kept.lock().unwrap().push(text[end + 4..].to_string());
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                            )
                            .await;
                        return;
                    }
                });
            }
        });
        (base, bodies)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_phased_raw_scenario_runs_end_to_end() {
        let (base, bodies) = server().await;
        let s = Scenario::from_toml(&format!(
            r#"
name = "phased"
[target]
url = "{base}"
[load]
mode = "open"
steps = [20]
warmup = "200ms"
phases = [
  {{ factor = 1.0, duration = "500ms", label = "calm" }},
  {{ factor = 2.0, duration = "500ms", args = {{ capacity = 3 }} }},
]
[request.raw]
method = "POST"
path = "/work"
body = {{ capacity = 9, prompt = "hi" }}
"#
        ))
        .unwrap();
        let r = run(
            &s,
            &RunOptions {
                quiet: true,
                command: "test".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(r.duration_s, 1.0);
        let step = &r.steps[0];
        assert_eq!(step.sent, 30, "10 calm + 20 doubled");
        assert_eq!(step.accepted, 30, "{step:?}");
        let p = &step.phases;
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].label.as_str(), p[0].sent, p[0].rate),
            ("calm", 10, 20.0)
        );
        assert_eq!(
            (p[1].label.as_str(), p[1].sent, p[1].rate),
            ("phase 2", 20, 40.0)
        );
        assert!(p[1].goodput > 0.0 && p[1].e2e.is_some(), "{p:?}");
        let t = step.timeline.as_ref().unwrap();
        assert_eq!(t.sent, vec![10, 20]);
        // Warm-up (4) and calm (10) keep the body; the second phase's 20
        // have the phase's capacity merged in.
        let bodies = bodies.lock().unwrap().clone();
        let with = |c: u64| {
            bodies
                .iter()
                // (The reachability probe is a GET without a body.)
                .filter(|b| !b.is_empty())
                .filter(|b| {
                    serde_json::from_str::<serde_json::Value>(b).unwrap()
                        == serde_json::json!({"capacity": c, "prompt": "hi"})
                })
                .count()
        };
        assert_eq!((with(9), with(3)), (14, 20), "{bodies:?}");
        let md = crate::report::markdown(&r, None);
        assert!(md.contains("#### Phases at rate/s 20"), "{md}");
    }
}
