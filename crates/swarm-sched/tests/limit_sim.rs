//! Simulation harness for the adaptive limiters.
//!
//! Every `tests/limit_scenarios/*.toml` describes a load, a simulated backend
//! and the expected ranges per algorithm; each runs under paused tokio time
//! (deterministic, seeded jitter). `cargo test -p swarm-sched --test limit_sim
//! -- --nocapture` prints a table per scenario. Adding a scenario needs no
//! Rust: see `limit_scenarios/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use swarm_sched::limit::{Algorithm, LimitConfig, Limiter, Outcome, Sample};
use tokio::time::Instant;

/// Every scenario the issue asks for must exist, so deleting one fails.
const REQUIRED: &[&str] = &[
    "steady",
    "knee",
    "knee_tight",
    "deferral_429",
    "capacity_halves_then_recovers",
    "jittery",
    "all_timeouts",
    "slow_start_recovery",
];

/// How often the limit and in-flight count are sampled.
const TICK_MS: u64 = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    description: String,
    algorithms: Vec<Algorithm>,
    /// Overrides of `LimitConfig` (any of its keys but `algorithm`).
    #[serde(default)]
    limit: toml::Table,
    duration_ms: u64,
    /// `[from, to]` of the measuring window; default: the second half.
    window_ms: Option<[u64; 2]>,
    #[serde(default = "default_seed")]
    seed: u64,
    load: Load,
    backend: Backend,
    /// `[expect]` keys apply to every algorithm; `[expect.ALGO]` overrides.
    #[serde(default)]
    expect: toml::Table,
}

fn default_seed() -> u64 {
    42
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Load {
    /// Closed loop: clients doing acquire → call → record.
    clients: Option<usize>,
    #[serde(default)]
    think_ms: u64,
    /// Open loop: arrivals per second.
    rate: Option<f64>,
    /// Open loop: arrivals that wait longer for a permit are shed.
    #[serde(default = "default_queue_timeout")]
    queue_timeout_ms: u64,
}

fn default_queue_timeout() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    base_latency_ms: f64,
    #[serde(default)]
    jitter_ms: f64,
    /// Concurrency above which latency grows proportionally.
    knee: f64,
    /// In-flight count above which the backend answers 429.
    defer_above: Option<usize>,
    #[serde(default = "default_defer_latency")]
    defer_latency_ms: f64,
    /// Calls longer than this are cut here and count as dropped.
    timeout_ms: Option<f64>,
    #[serde(default)]
    all_timeout: bool,
    #[serde(default)]
    capacity_schedule: Vec<Step>,
}

fn default_defer_latency() -> f64 {
    5.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at_ms: u64,
    knee: Option<f64>,
    base_latency_ms: Option<f64>,
    all_timeout: Option<bool>,
}

/// The backend's parameters in force at a time.
#[derive(Debug, Clone, Copy)]
struct Now {
    base: f64,
    knee: f64,
    all_timeout: bool,
}

impl Backend {
    fn at(&self, t_ms: u64) -> Now {
        let mut n = Now {
            base: self.base_latency_ms,
            knee: self.knee,
            all_timeout: self.all_timeout,
        };
        for s in self.capacity_schedule.iter().filter(|s| s.at_ms <= t_ms) {
            n.knee = s.knee.unwrap_or(n.knee);
            n.base = s.base_latency_ms.unwrap_or(n.base);
            n.all_timeout = s.all_timeout.unwrap_or(n.all_timeout);
        }
        n
    }

    /// Successes per second the backend can deliver at `t_ms`.
    fn capacity(&self, t_ms: u64) -> f64 {
        let n = self.at(t_ms);
        if n.all_timeout {
            return 0.0;
        }
        let conc = self.defer_above.map_or(n.knee, |d| n.knee.min(d as f64));
        conc / n.base * 1000.0
    }
}

type Range = [f64; 2];

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Mean effective limit over the window.
    limit: Option<Range>,
    /// Limit at the end.
    limit_end: Option<Range>,
    in_flight: Option<Range>,
    goodput_fraction: Option<Range>,
    p99_latency_ms: Option<Range>,
    shed_fraction: Option<Range>,
    drop_fraction: Option<Range>,
    #[serde(default)]
    phase: Vec<Phase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Phase {
    from_ms: u64,
    to_ms: u64,
    limit: Option<Range>,
    goodput_fraction: Option<Range>,
}

#[derive(Default)]
struct Record {
    /// (end ms, outcome, rtt ms) per call.
    calls: Vec<(f64, Outcome, f64)>,
    /// Arrival ms per shed request.
    shed: Vec<f64>,
    /// Arrival ms per open-loop request.
    arrivals: Vec<f64>,
    /// (ms, limit, in flight) every tick.
    ticks: Vec<(f64, usize, usize)>,
}

struct Sim {
    backend: Backend,
    t0: Instant,
    state: Mutex<(usize, fastrand::Rng)>,
    rec: Mutex<Record>,
}

impl Sim {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    /// One call to the simulated backend: its latency is fixed from the
    /// concurrency it meets on arrival.
    async fn call(&self) -> (Outcome, Duration) {
        let (delay, outcome) = {
            let mut st = self.state.lock().unwrap();
            st.0 += 1;
            let n = st.0;
            let b = &self.backend;
            let now = b.at(self.ms() as u64);
            let timeout = b.timeout_ms.unwrap_or(1000.0);
            if now.all_timeout {
                (timeout, Outcome::Dropped)
            } else if b.defer_above.is_some_and(|d| n > d) {
                (b.defer_latency_ms, Outcome::Dropped)
            } else {
                let lat = now.base * (n as f64 / now.knee).max(1.0) + st.1.f64() * b.jitter_ms;
                match b.timeout_ms {
                    Some(t) if lat > t => (t, Outcome::Dropped),
                    _ => (lat, Outcome::Success),
                }
            }
        };
        let d = Duration::from_secs_f64(delay / 1000.0);
        tokio::time::sleep(d).await;
        self.state.lock().unwrap().0 -= 1;
        (outcome, d)
    }

    async fn one(&self, limiter: &Limiter) {
        let permit = limiter.acquire().await;
        let (outcome, rtt) = self.call().await;
        permit.record(Sample { rtt, outcome });
        let end = self.ms();
        self.rec
            .lock()
            .unwrap()
            .calls
            .push((end, outcome, rtt.as_secs_f64() * 1000.0));
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    limit: f64,
    limit_end: f64,
    in_flight: f64,
    goodput_fraction: f64,
    p99_latency_ms: f64,
    shed_fraction: f64,
    drop_fraction: f64,
}

fn load(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read scenario {}: {e}", path.display()));
    let sc: Scenario = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("invalid scenario {}: {e}", path.display()));
    assert!(
        !sc.algorithms.is_empty(),
        "{}: no algorithms",
        path.display()
    );
    assert!(
        sc.load.clients.is_some() != sc.load.rate.is_some(),
        "{}: give exactly one of load.clients and load.rate",
        path.display()
    );
    sc
}

fn config(sc: &Scenario, algo: Algorithm, name: &str) -> LimitConfig {
    let mut t = sc.limit.clone();
    let a = toml::Value::try_from(algo).unwrap();
    t.insert("algorithm".into(), a);
    let cfg: LimitConfig = toml::Value::Table(t)
        .try_into()
        .unwrap_or_else(|e| panic!("{name}: invalid [limit]: {e}"));
    cfg.validate()
        .unwrap_or_else(|e| panic!("{name}: invalid [limit]: {e}"));
    cfg
}

/// Runs one algorithm through the scenario; returns the record.
async fn simulate(sc: &Scenario, cfg: LimitConfig, tick: Duration) -> Record {
    let limiter = Limiter::new(cfg);
    let t0 = Instant::now();
    let sim = Arc::new(Sim {
        backend: sc.backend.clone(),
        t0,
        state: Mutex::new((0, fastrand::Rng::with_seed(sc.seed))),
        rec: Mutex::new(Record::default()),
    });
    let end = t0 + Duration::from_millis(sc.duration_ms);
    let mut tasks = Vec::new();
    {
        let (sim, limiter) = (sim.clone(), limiter.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(tick);
            loop {
                tick.tick().await;
                let row = (sim.ms(), limiter.limit(), limiter.in_flight());
                sim.rec.lock().unwrap().ticks.push(row);
            }
        }));
    }
    if let Some(clients) = sc.load.clients {
        let think = Duration::from_millis(sc.load.think_ms);
        for _ in 0..clients {
            let (sim, limiter) = (sim.clone(), limiter.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    sim.one(&limiter).await;
                    if !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                }
            }));
        }
    } else if let Some(rate) = sc.load.rate {
        let (sim, limiter) = (sim.clone(), limiter.clone());
        let qt = Duration::from_millis(sc.load.queue_timeout_ms);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                let at = sim.ms();
                sim.rec.lock().unwrap().arrivals.push(at);
                let (sim, limiter) = (sim.clone(), limiter.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(qt, limiter.acquire()).await {
                        Err(_) => sim.rec.lock().unwrap().shed.push(at),
                        Ok(permit) => {
                            let (outcome, rtt) = sim.call().await;
                            permit.record(Sample { rtt, outcome });
                            let end = sim.ms();
                            let rtt = rtt.as_secs_f64() * 1000.0;
                            sim.rec.lock().unwrap().calls.push((end, outcome, rtt));
                        }
                    }
                });
            }
        }));
    }
    tokio::time::sleep_until(end).await;
    for t in &tasks {
        t.abort();
    }
    std::mem::take(&mut *sim.rec.lock().unwrap())
}

fn measure(sc: &Scenario, rec: &Record, from: u64, to: u64) -> Metrics {
    let (f, t) = (from as f64, to as f64);
    let ticks: Vec<_> = rec.ticks.iter().filter(|r| r.0 >= f && r.0 < t).collect();
    let mean = |g: &dyn Fn(&(f64, usize, usize)) -> f64| {
        ticks.iter().map(|r| g(r)).sum::<f64>() / ticks.len().max(1) as f64
    };
    let calls: Vec<_> = rec.calls.iter().filter(|c| c.0 >= f && c.0 < t).collect();
    let ok: Vec<f64> = calls
        .iter()
        .filter(|c| c.1 == Outcome::Success)
        .map(|c| c.2)
        .collect();
    let secs = (t - f) / 1000.0;
    let capacity = (from..to)
        .step_by(TICK_MS as usize)
        .map(|ms| sc.backend.capacity(ms))
        .sum::<f64>()
        / ((to - from) / TICK_MS).max(1) as f64;
    let mut sorted = ok.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted
        .get(((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    let arrivals = rec.arrivals.iter().filter(|&&a| a >= f && a < t).count();
    let shed = rec.shed.iter().filter(|&&a| a >= f && a < t).count();
    let drops = calls.len() - ok.len();
    Metrics {
        limit: mean(&|r| r.1 as f64),
        limit_end: rec.ticks.last().map_or(f64::NAN, |r| r.1 as f64),
        in_flight: mean(&|r| r.2 as f64),
        goodput_fraction: if capacity > 0.0 {
            ok.len() as f64 / secs / capacity
        } else {
            f64::NAN
        },
        p99_latency_ms: p99,
        shed_fraction: if arrivals > 0 {
            shed as f64 / arrivals as f64
        } else {
            0.0
        },
        drop_fraction: if calls.is_empty() {
            0.0
        } else {
            drops as f64 / calls.len() as f64
        },
    }
}

fn algo_name(a: Algorithm) -> String {
    toml::Value::try_from(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `[expect]` for every algorithm, with `[expect.ALGO]` keys on top.
fn expectations(sc: &Scenario, algo: &str, name: &str) -> Expect {
    let names = ["fixed", "aimd", "gradient2", "vegas"];
    let mut all = toml::Table::new();
    for (k, v) in &sc.expect {
        if !names.contains(&k.as_str()) {
            all.insert(k.clone(), v.clone());
        }
    }
    if let Some(toml::Value::Table(own)) = sc.expect.get(algo) {
        for (k, v) in own {
            all.insert(k.clone(), v.clone());
        }
    }
    toml::Value::Table(all)
        .try_into()
        .unwrap_or_else(|e| panic!("{name}: invalid [expect] for {algo}: {e}"))
}

fn check(fails: &mut Vec<String>, what: &str, got: f64, range: Option<Range>) {
    if let Some([lo, hi]) = range
        && !(got >= lo && got <= hi)
    {
        fails.push(format!("{what} = {got:.3}, expected [{lo}, {hi}]"));
    }
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}

async fn run_scenario(path: &Path) -> Vec<String> {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let sc = load(path);
    let [from, to] = sc.window_ms.unwrap_or([sc.duration_ms / 2, sc.duration_ms]);
    assert!(from < to && to <= sc.duration_ms, "{name}: bad window_ms");
    let mut out = format!(
        "\n== {name}: {} (window {from}..{to} ms, capacity {:.0}/s at end)\n",
        sc.description.trim(),
        sc.backend.capacity(to.saturating_sub(1))
    );
    out += &format!(
        "{:<10} {:>7} {:>6} {:>9} {:>8} {:>8} {:>6} {:>6}  phases(limit)\n",
        "algorithm", "limit", "end", "in_flight", "goodput", "p99_ms", "drop", "shed"
    );
    let mut fails = Vec::new();
    for &algo in &sc.algorithms {
        let a = algo_name(algo);
        let tick = Duration::from_millis(TICK_MS);
        let rec = simulate(&sc, config(&sc, algo, &name), tick).await;
        let m = measure(&sc, &rec, from, to);
        let exp = expectations(&sc, &a, &name);
        let mut f = Vec::new();
        check(&mut f, "limit", m.limit, exp.limit);
        check(&mut f, "limit_end", m.limit_end, exp.limit_end);
        check(&mut f, "in_flight", m.in_flight, exp.in_flight);
        check(
            &mut f,
            "goodput_fraction",
            m.goodput_fraction,
            exp.goodput_fraction,
        );
        check(
            &mut f,
            "p99_latency_ms",
            m.p99_latency_ms,
            exp.p99_latency_ms,
        );
        check(&mut f, "shed_fraction", m.shed_fraction, exp.shed_fraction);
        check(&mut f, "drop_fraction", m.drop_fraction, exp.drop_fraction);
        let mut phases = String::new();
        for p in &exp.phase {
            let pm = measure(&sc, &rec, p.from_ms, p.to_ms);
            phases += &format!(" {}..{}s:{:.1}", p.from_ms / 1000, p.to_ms / 1000, pm.limit);
            let tag = format!("phase {}..{} ms", p.from_ms, p.to_ms);
            check(&mut f, &format!("{tag} limit"), pm.limit, p.limit);
            check(
                &mut f,
                &format!("{tag} goodput_fraction"),
                pm.goodput_fraction,
                p.goodput_fraction,
            );
        }
        out += &format!(
            "{:<10} {:>7.1} {:>6.0} {:>9.1} {:>8} {:>8} {:>6.3} {:>6.3} {}\n",
            a,
            m.limit,
            m.limit_end,
            m.in_flight,
            fmt(m.goodput_fraction),
            fmt(m.p99_latency_ms),
            m.drop_fraction,
            m.shed_fraction,
            phases
        );
        fails.extend(f.into_iter().map(|e| format!("{name}/{a}: {e}")));
    }
    print!("{out}");
    fails
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/limit_scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let stems: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for r in REQUIRED {
        assert!(
            stems.iter().any(|s| s == r),
            "missing scenario {r}.toml in {}",
            dir.display()
        );
    }
    files
}

#[tokio::test(start_paused = true)]
async fn limit_scenarios() {
    // LIMIT_SIM=name runs one scenario while tuning.
    let only = std::env::var("LIMIT_SIM").ok();
    let mut fails = BTreeMap::new();
    for f in scenario_files() {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        if only.as_deref().is_some_and(|o| o != stem) {
            continue;
        }
        let errs = run_scenario(&f).await;
        if !errs.is_empty() {
            fails.insert(stem, errs);
        }
    }
    assert!(
        fails.is_empty(),
        "scenario expectations not met:\n{}",
        fails
            .values()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn invalid_scenarios_fail_clearly() {
    let dir = std::env::temp_dir().join(format!("limit_sim_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "algorithms = [\"aimd\"]\nduration_ms = 10\nbogus = 1\n",
    )
    .unwrap();
    let err = std::panic::catch_unwind(|| load(&bad)).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("invalid scenario") && msg.contains("bogus"),
        "{msg}"
    );
    let err = std::panic::catch_unwind(|| load(&dir.join("missing.toml"))).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("cannot read scenario"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

// === The convergence sweep (issue 16) ===
//
// `limit_scenarios/sweeps/*.toml` describe grids of cells (knee × base
// latency × starting limit); every algorithm runs in every cell and the
// targets are checked in the regions of `[[assert]]`. With
// `LIMIT_SWEEP_OUT=path` the Markdown table is also written to `path`
// (`bench/results/limit-convergence.md`); `LIMIT_SWEEP_ALGO=aimd` and
// `LIMIT_SWEEP_KNEE=500` narrow a run while tuning.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sweep {
    #[serde(default)]
    description: String,
    algorithms: Vec<Algorithm>,
    /// `[[assert]]`: the regions where the targets are asserted (a cell
    /// is asserted if any region holds it), so the cells a law meets can
    /// be pinned even when they do not form one knee × base × start product.
    #[serde(default)]
    assert: Vec<Region>,
    knees: Vec<usize>,
    base_latency_ms: Vec<f64>,
    /// Starting limits, as multiples of the knee.
    start: Vec<f64>,
    /// Uniform jitter, as a fraction of the base latency.
    jitter: f64,
    /// Clients, as a multiple of the knee (closed loop, no think time).
    overload: f64,
    overload_ms: f64,
    min_round_trips: f64,
    max_round_trips: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    limit: toml::Table,
    targets: Targets,
}

/// One region of cells whose targets are asserted: these algorithms, and
/// of the grid only these knees, bases and starts (each empty: all of them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Region {
    #[serde(default)]
    algorithms: Vec<Algorithm>,
    #[serde(default)]
    knees: Vec<usize>,
    #[serde(default)]
    base_latency_ms: Vec<f64>,
    #[serde(default)]
    start: Vec<f64>,
}

impl Region {
    fn holds(&self, a: Algorithm, c: &Cell) -> bool {
        self.algorithms.contains(&a)
            && (self.knees.is_empty() || self.knees.contains(&c.knee))
            && (self.base_latency_ms.is_empty() || self.base_latency_ms.contains(&c.base_ms))
            && (self.start.is_empty() || self.start.contains(&c.start))
    }

    /// `aimd: knees [50, 500] × bases all × starts [0.1]`, for the table.
    fn describe(&self) -> String {
        let list = |xs: Vec<String>| {
            if xs.is_empty() {
                "all".to_owned()
            } else {
                format!("[{}]", xs.join(", "))
            }
        };
        format!(
            "{}: knees {} × bases {} ms × starts {}",
            self.algorithms
                .iter()
                .map(|a| algo_name(*a))
                .collect::<Vec<_>>()
                .join(", "),
            list(self.knees.iter().map(|k| k.to_string()).collect()),
            list(self.base_latency_ms.iter().map(|b| b.to_string()).collect()),
            list(self.start.iter().map(|s| format!("{s}×")).collect()),
        )
    }
}

impl Sweep {
    fn asserted(&self, a: Algorithm, c: &Cell) -> bool {
        self.assert.iter().any(|r| r.holds(a, c))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Targets {
    rounds: u32,
    band: f64,
    p99_ratio: f64,
    goodput: f64,
}

/// What one algorithm did in one cell.
#[derive(Debug, Clone, Copy)]
struct Cell {
    knee: usize,
    base_ms: f64,
    start: f64,
    /// First unloaded round trip at whose end the limit is within the band.
    rounds: Option<u32>,
    /// Fraction of the time after `targets.rounds` spent within the band.
    in_band: f64,
    /// Admitted p99 ÷ unloaded p99, calls started after `targets.rounds`.
    p99_ratio: f64,
    /// The same over every call of the overload, the first round trips included.
    p99_all_ratio: f64,
    /// Successes after `targets.rounds` ÷ the backend's capacity.
    goodput: f64,
}

impl Cell {
    fn failures(&self, t: &Targets) -> Vec<String> {
        let mut f = Vec::new();
        if self.rounds.is_none_or(|r| r > t.rounds) {
            f.push(format!("rounds {:?} > {}", self.rounds, t.rounds));
        }
        // NaN (no calls) fails too.
        if self.p99_ratio.is_nan() || self.p99_ratio > t.p99_ratio {
            f.push(format!("p99 ratio {:.2} > {}", self.p99_ratio, t.p99_ratio));
        }
        if self.goodput.is_nan() || self.goodput < t.goodput {
            f.push(format!("goodput {:.2} < {}", self.goodput, t.goodput));
        }
        f
    }
}

fn p99(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(((xs.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

fn sweep_scenario(sw: &Sweep, knee: usize, base: f64, clients: usize, ms: f64) -> Scenario {
    Scenario {
        description: String::new(),
        algorithms: Vec::new(),
        limit: toml::Table::new(),
        duration_ms: ms.ceil() as u64,
        window_ms: None,
        seed: sw.seed,
        load: Load {
            clients: Some(clients),
            think_ms: 0,
            rate: None,
            queue_timeout_ms: default_queue_timeout(),
        },
        backend: Backend {
            base_latency_ms: base,
            jitter_ms: base * sw.jitter,
            knee: knee as f64,
            defer_above: None,
            defer_latency_ms: default_defer_latency(),
            timeout_ms: Some(f64::MAX),
            all_timeout: false,
            capacity_schedule: Vec::new(),
        },
        expect: toml::Table::new(),
    }
}

/// The unloaded p99: knee/2 clients (at least one) for 20 round trips.
async fn unloaded_p99(sw: &Sweep, knee: usize, base: f64) -> f64 {
    let rtt = base * (1.0 + sw.jitter);
    let sc = sweep_scenario(sw, knee, base, (knee / 2).max(1), 20.0 * rtt);
    let tick = Duration::from_secs_f64(rtt / 1000.0);
    let rec = simulate(&sc, LimitConfig::fixed(knee), tick).await;
    p99(rec.calls.iter().map(|c| c.2).collect())
}

async fn run_cell(sw: &Sweep, algo: Algorithm, knee: usize, base: f64, start: f64) -> Cell {
    let t = &sw.targets;
    // The unit of time: an unloaded round trip, at its slowest.
    let rtt = base * (1.0 + sw.jitter);
    let ms = sw
        .overload_ms
        .clamp(sw.min_round_trips * rtt, sw.max_round_trips * rtt);
    let clients = (sw.overload * knee as f64).round() as usize;
    let sc = sweep_scenario(sw, knee, base, clients, ms);
    let mut table = sw.limit.clone();
    table.insert("algorithm".into(), toml::Value::try_from(algo).unwrap());
    let initial = ((start * knee as f64).round() as i64).max(1);
    table.insert("initial".into(), toml::Value::Integer(initial));
    let cfg: LimitConfig = toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e| panic!("sweep: invalid [limit]: {e}"));
    cfg.validate()
        .unwrap_or_else(|e| panic!("sweep: invalid [limit]: {e}"));
    let unloaded = unloaded_p99(sw, knee, base).await;
    // Four ticks per round trip; tick 4k is the end of round trip k.
    let tick = Duration::from_secs_f64(rtt / 4000.0);
    let rec = simulate(&sc, cfg, tick).await;

    if std::env::var("LIMIT_SWEEP_TRACE").is_ok() {
        let trace: Vec<_> = rec
            .ticks
            .iter()
            .step_by(4)
            .take(40)
            .map(|x| (x.1, x.2))
            .collect();
        println!(
            "{algo:?} knee {knee} base {base} start {start}: (limit, in flight) per round trip {trace:?}"
        );
    }
    let k = knee as f64;
    let in_band = |l: usize| (l as f64 - k).abs() <= t.band * k + 1e-9;
    let rounds = (1..)
        .map_while(|r| rec.ticks.get(4 * r as usize).map(|x| (r, x.1)))
        .find(|&(_, l)| in_band(l))
        .map(|(r, _)| r);
    let settled = f64::from(t.rounds) * rtt;
    let after: Vec<_> = rec.ticks.iter().filter(|x| x.0 >= settled).collect();
    let band_frac =
        after.iter().filter(|x| in_band(x.1)).count() as f64 / after.len().max(1) as f64;
    let ok = |c: &&(f64, Outcome, f64)| c.1 == Outcome::Success;
    let late: Vec<f64> = rec
        .calls
        .iter()
        .filter(ok)
        .filter(|c| c.0 - c.2 >= settled)
        .map(|c| c.2)
        .collect();
    let done_late = rec
        .calls
        .iter()
        .filter(ok)
        .filter(|c| c.0 >= settled)
        .count();
    let capacity = k / base * (ms - settled);
    Cell {
        knee,
        base_ms: base,
        start,
        rounds,
        in_band: band_frac,
        p99_ratio: p99(late) / unloaded,
        p99_all_ratio: p99(rec.calls.iter().filter(ok).map(|c| c.2).collect()) / unloaded,
        goodput: done_late as f64 / capacity,
    }
}

fn sweep_markdown(sw: &Sweep, results: &[(Algorithm, Vec<Cell>)]) -> String {
    let t = &sw.targets;
    let mut md = format!(
        "Targets: within ±{:.0}% of the knee by the end of round trip {}; admitted p99 \
         (calls started after it) ≤ {}× the unloaded p99; goodput after it ≥ {:.0}%. \
         Asserted in the cells marked `asserted`, the union of {} region(s): {}; the rest \
         are reported.\n\n",
        t.band * 100.0,
        t.rounds,
        t.p99_ratio,
        t.goodput * 100.0,
        sw.assert.len(),
        sw.assert
            .iter()
            .map(Region::describe)
            .collect::<Vec<_>>()
            .join("; "),
    );
    md += "| algorithm | cells meeting all targets | worst rounds to ±20% | worst p99 ÷ unloaded | \
           worst p99 ÷ unloaded, first round trips included | lowest goodput | least time in band |\n";
    md += "|---|---|---|---|---|---|---|\n";
    for (a, cells) in results {
        let pass = cells.iter().filter(|c| c.failures(t).is_empty()).count();
        let never = cells.iter().filter(|c| c.rounds.is_none()).count();
        let worst_r = cells.iter().filter_map(|c| c.rounds).max().unwrap_or(0);
        let worst = |f: &dyn Fn(&Cell) -> f64| cells.iter().map(f).fold(f64::NAN, f64::max);
        let least = |f: &dyn Fn(&Cell) -> f64| cells.iter().map(f).fold(f64::NAN, f64::min);
        let rounds = if never > 0 {
            format!("never in {never} cells (else {worst_r})")
        } else {
            worst_r.to_string()
        };
        md += &format!(
            "| {} | {pass} / {} | {rounds} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            algo_name(*a),
            cells.len(),
            worst(&|c| c.p99_ratio),
            worst(&|c| c.p99_all_ratio),
            least(&|c| c.goodput),
            least(&|c| c.in_band),
        );
    }
    md += "\nEvery cell (rounds: `-` = never within the band):\n\n";
    md += "| algorithm | knee | base ms | start × knee | rounds | in band | p99 ÷ unl. | p99 all ÷ unl. | goodput | meets all | asserted |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (a, cells) in results {
        for c in cells {
            md += &format!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                algo_name(*a),
                c.knee,
                c.base_ms,
                c.start,
                c.rounds.map_or("-".into(), |r| r.to_string()),
                c.in_band,
                c.p99_ratio,
                c.p99_all_ratio,
                c.goodput,
                if c.failures(t).is_empty() {
                    "yes"
                } else {
                    "no"
                },
                if sw.asserted(*a, c) { "yes" } else { "" }
            );
        }
    }
    md
}

fn load_sweep(path: &Path) -> Sweep {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read sweep {}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("invalid sweep {}: {e}", path.display()))
}

#[tokio::test(start_paused = true)]
async fn convergence_sweep() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/limit_scenarios/sweeps/convergence.toml");
    let sw = load_sweep(&path);
    let only_algo = std::env::var("LIMIT_SWEEP_ALGO").ok();
    let only_knee: Option<usize> = std::env::var("LIMIT_SWEEP_KNEE")
        .ok()
        .and_then(|k| k.parse().ok());
    let mut results = Vec::new();
    let mut fails = Vec::new();
    // Cells per `[[assert]]` region: a region holding none (a typo such as
    // start 0.2 for 0.1) would silently assert nothing.
    let mut held = vec![0usize; sw.assert.len()];
    for &algo in &sw.algorithms {
        let name = algo_name(algo);
        if only_algo.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut cells = Vec::new();
        for &knee in &sw.knees {
            if only_knee.is_some_and(|k| k != knee) {
                continue;
            }
            for &base in &sw.base_latency_ms {
                for &start in &sw.start {
                    let c = run_cell(&sw, algo, knee, base, start).await;
                    for (n, r) in held.iter_mut().zip(&sw.assert) {
                        *n += usize::from(r.holds(algo, &c));
                    }
                    if sw.asserted(algo, &c) {
                        for f in c.failures(&sw.targets) {
                            fails.push(format!(
                                "{name} knee {knee} base {base} ms start {start}×: {f}"
                            ));
                        }
                    }
                    cells.push(c);
                }
            }
        }
        results.push((algo, cells));
    }
    let md = format!(
        "{}\n\n{}",
        sw.description.trim(),
        sweep_markdown(&sw, &results)
    );
    println!("{md}");
    if let Ok(out) = std::env::var("LIMIT_SWEEP_OUT") {
        std::fs::write(&out, &md).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    }
    if only_algo.is_none() && only_knee.is_none() {
        for (n, r) in held.iter().zip(&sw.assert) {
            assert!(*n > 0, "[[assert]] region holds no cell: {}", r.describe());
        }
    }
    assert!(
        fails.is_empty(),
        "convergence targets not met:\n{}",
        fails.join("\n")
    );
}
