//! `sim`: a stand-in for an LLM provider, for demos and benchmarks.
//!
//! # What one run does
//! 1. Parses `args` (all optional, unknown keys rejected so typos surface):
//!    `latency_ms` (100), `jitter_ms` (0), `fail_rate` (0.0), `cpu_ms` (0),
//!    `capacity` (0 = unlimited) and `group` (`"default"`).
//! 2. Joins its `group`: a per-agent table counts the sim runs of each group
//!    in flight. An RAII guard holds the slot and gives it back when the run
//!    ends in any way (success, failure, cancellation, or the engine dropping
//!    the future), so the count never leaks.
//! 3. Waits like a saturating provider: the base service time is
//!    `latency_ms` plus a uniform `0..=jitter_ms`; when the group has more
//!    runs in flight than `capacity` (this run included, sampled when it
//!    starts), the wait grows in proportion to the excess:
//!    `base * inflight / capacity`. The wait is a `tokio::time::sleep` raced
//!    against the task's cancellation token.
//! 4. Fails with `simulated_failure` with probability `fail_rate` (after the
//!    wait, as a real provider's error costs its round trip too). Fails
//!    *retryably* (`simulated_transient_failure`, like a provider's 503)
//!    while the task's attempt is at most `fail_first`, and with
//!    probability `transient_rate`: what task retries are tested with.
//! 5. Burns `cpu_ms` of CPU on the engine's bounded CPU pool
//!    ([`swarm_sched::cpu::CpuPool`], `[cpu_pool]` in the configuration),
//!    never on an async worker, so `/health` stays fast while burns run. A
//!    full pool queue is reported as `Overloaded` (back-pressure for the
//!    limiter). The burn loop polls a flag that is set when the token fires
//!    or the run's future is dropped, so abandoned work stops within
//!    microseconds instead of running to completion.
//!
//! The result is `{"latency_ms", "cpu_ms", "group", "inflight_at_start",
//! "capacity"}` where `latency_ms` is the wait actually applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use swarm_core::FieldError;
use swarm_core::config::SimConfig;
use swarm_sched::cpu::{CpuError, CpuPool};

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};

/// Largest `latency_ms` and `jitter_ms` any configuration allows (10
/// minutes); `[sim] max_latency_ms` lowers it.
pub const MAX_LATENCY_MS: u64 = swarm_core::config::SIM_MAX_LATENCY_MS;
/// Largest `cpu_ms` any configuration allows (1 minute); `[sim]
/// max_cpu_ms` lowers it.
pub const MAX_CPU_MS: u64 = swarm_core::config::SIM_MAX_CPU_MS;
/// The bounds of an agent built without `[sim]`.
const WIDEST: SimConfig = SimConfig {
    max_latency_ms: MAX_LATENCY_MS,
    max_cpu_ms: MAX_CPU_MS,
};
/// Longest `group` name, in characters.
pub const MAX_GROUP_CHARS: usize = 64;

const KNOWN_KEYS: &[&str] = &[
    "latency_ms",
    "jitter_ms",
    "fail_rate",
    "cpu_ms",
    "capacity",
    "group",
    "fail_first",
    "transient_rate",
];

/// Parsed `sim` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct SimArgs {
    /// Base latency, ms.
    pub latency_ms: u64,
    /// Uniform extra latency bound, ms.
    pub jitter_ms: u64,
    /// Probability of a simulated failure.
    pub fail_rate: f64,
    /// CPU to burn on a blocking thread, ms.
    pub cpu_ms: u64,
    /// Runs of the group served at full speed at once; 0 = unlimited.
    pub capacity: u64,
    /// The capacity group.
    pub group: String,
    /// Attempts that fail retryably before one may succeed.
    pub fail_first: u64,
    /// Probability of a retryable failure.
    pub transient_rate: f64,
}

impl Default for SimArgs {
    fn default() -> Self {
        Self {
            latency_ms: 100,
            jitter_ms: 0,
            fail_rate: 0.0,
            cpu_ms: 0,
            capacity: 0,
            group: "default".into(),
            fail_first: 0,
            transient_rate: 0.0,
        }
    }
}

impl SimArgs {
    /// Parses and range-checks `args` against the widest bounds; errors
    /// name the field relative to `args`. `null` counts as an empty object.
    pub fn parse(args: &Value) -> Result<Self, FieldError> {
        Self::parse_within(args, &WIDEST)
    }

    /// As [`parse`](Self::parse), within the configured `limits`.
    pub fn parse_within(args: &Value, limits: &SimConfig) -> Result<Self, FieldError> {
        let empty = Map::new();
        let obj = match args {
            Value::Object(m) => m,
            Value::Null => &empty,
            _ => return Err(FieldError::invalid("", "`args` must be an object")),
        };
        if let Some(key) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(FieldError::invalid(
                key.as_str(),
                format!("unknown field `{key}`; known: {}", KNOWN_KEYS.join(", ")),
            ));
        }
        let mut out = Self::default();
        if let Some(v) = obj.get("latency_ms") {
            out.latency_ms = int_in(v, "latency_ms", 0, limits.max_latency_ms)?;
        }
        if let Some(v) = obj.get("jitter_ms") {
            out.jitter_ms = int_in(v, "jitter_ms", 0, limits.max_latency_ms)?;
        }
        if let Some(v) = obj.get("cpu_ms") {
            out.cpu_ms = int_in(v, "cpu_ms", 0, limits.max_cpu_ms)?;
        }
        if let Some(v) = obj.get("capacity") {
            // 0 means unlimited; any other value is a real bound.
            out.capacity = int_in(v, "capacity", 0, u64::from(u32::MAX))?;
        }
        if let Some(v) = obj.get("fail_first") {
            out.fail_first = int_in(v, "fail_first", 0, 100)?;
        }
        for (key, slot) in [
            ("fail_rate", &mut out.fail_rate),
            ("transient_rate", &mut out.transient_rate),
        ] {
            if let Some(v) = obj.get(key) {
                *slot = match v.as_f64() {
                    Some(f) if (0.0..=1.0).contains(&f) => f,
                    _ => {
                        return Err(FieldError::invalid(key, "must be a number from 0.0 to 1.0"));
                    }
                };
            }
        }
        if let Some(v) = obj.get("group") {
            out.group = match v.as_str() {
                Some(s) if !s.is_empty() && s.chars().count() <= MAX_GROUP_CHARS => s.to_string(),
                _ => {
                    return Err(FieldError::invalid(
                        "group",
                        format!("must be a string of 1 to {MAX_GROUP_CHARS} characters"),
                    ));
                }
            };
        }
        Ok(out)
    }
}

fn int_in(v: &Value, field: &str, min: u64, max: u64) -> Result<u64, FieldError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(FieldError::invalid(
            field,
            format!("must be an integer from {min} to {max}"),
        )),
    }
}

/// The wait for one run: `base * inflight / capacity` once the group is over
/// capacity, `base` otherwise. Saturates instead of overflowing.
pub fn effective_latency_ms(base_ms: u64, inflight: usize, capacity: u64) -> u64 {
    let inflight = inflight as u64;
    if capacity == 0 || inflight <= capacity {
        return base_ms;
    }
    let scaled = u128::from(base_ms) * u128::from(inflight) / u128::from(capacity);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

type GroupTable = Arc<Mutex<HashMap<String, usize>>>;

/// Holds one in-flight slot of a group; gives it back on drop.
struct GroupSlot {
    table: GroupTable,
    group: String,
}

impl GroupSlot {
    /// Joins `group`; returns the slot and the in-flight count including it.
    fn join(table: &GroupTable, group: &str) -> (Self, usize) {
        // A poisoned lock only means another run panicked mid-update of a plain
        // counter map; the map itself is still consistent, so keep using it.
        let mut map = table.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(group.to_string()).or_insert(0);
        *n += 1;
        let inflight = *n;
        drop(map);
        let slot = Self {
            table: table.clone(),
            group: group.to_string(),
        };
        (slot, inflight)
    }
}

impl Drop for GroupSlot {
    fn drop(&mut self) {
        let mut map = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Drop empty groups so arbitrary group names cannot grow the map.
                map.remove(&self.group);
            }
        }
    }
}

/// Sets the flag when dropped: the run's future going away (engine timeout,
/// cancellation, shutdown) stops its CPU burn.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The process-wide CPU pool of agents built with [`SimAgent::new`]: one
/// thread per core, so burns never oversubscribe the machine.
fn shared_cpu_pool() -> CpuPool {
    static POOL: OnceLock<CpuPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        CpuPool::new(n, 4096, "sim-cpu")
    })
    .clone()
}

/// Burns CPU for `ms` of wall time on the current (blocking) thread, checking
/// `stop` between short slices. Returns whether it ran to the end.
///
/// This measures real elapsed time with `std::time::Instant` on purpose: it
/// stands for actual computation, which a paused test clock cannot shorten.
fn burn_cpu(ms: u64, stop: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    let budget = Duration::from_millis(ms);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        if stop() {
            return false;
        }
        if start.elapsed() >= budget {
            return true;
        }
        // A slice of a few microseconds of integer mixing; `black_box` keeps
        // the optimiser from deleting the work.
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}

/// Simulated LLM provider.
pub struct SimAgent {
    groups: GroupTable,
    cpu: CpuPool,
    /// What `args` may ask for (`[sim]`).
    limits: SimConfig,
}

impl Default for SimAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl SimAgent {
    /// Builds the agent; CPU burns share a process-wide, core-sized pool.
    pub fn new() -> Self {
        Self::with_cpu_pool(shared_cpu_pool())
    }

    /// Builds the agent with its own pool of `slots` burn threads (at least
    /// 1).
    pub fn with_cpu_slots(slots: usize) -> Self {
        Self::with_cpu_pool(CpuPool::new(slots.max(1), 4096, "sim-cpu"))
    }

    /// Builds the agent burning CPU on `cpu` (the engine passes its
    /// configured `[cpu_pool]`).
    pub fn with_cpu_pool(cpu: CpuPool) -> Self {
        Self {
            groups: Arc::new(Mutex::new(HashMap::new())),
            cpu,
            limits: WIDEST,
        }
    }

    /// Refuses `args` beyond `limits` (`[sim]`).
    pub fn with_limits(mut self, limits: SimConfig) -> Self {
        self.limits = limits;
        self
    }

    /// Runs of `group` in flight right now.
    pub fn in_flight(&self, group: &str) -> usize {
        let map = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        map.get(group).copied().unwrap_or(0)
    }

    /// CPU-burn threads idle right now.
    pub fn cpu_slots_available(&self) -> usize {
        let st = self.cpu.stats();
        st.threads.saturating_sub(st.busy)
    }

    async fn run_inner(&self, ctx: AgentContext, args: SimArgs) -> Result<Value, AgentError> {
        // Held to the end of this future, however it ends.
        let (_slot, inflight) = GroupSlot::join(&self.groups, &args.group);
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = StopOnDrop(stop.clone());

        let jitter = if args.jitter_ms > 0 {
            fastrand::u64(0..=args.jitter_ms)
        } else {
            0
        };
        let latency_ms = effective_latency_ms(
            args.latency_ms.saturating_add(jitter),
            inflight,
            args.capacity,
        );

        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(AgentError::cancelled()),
            _ = tokio::time::sleep(Duration::from_millis(latency_ms)) => {}
        }

        if u64::from(ctx.attempt) <= args.fail_first
            || (args.transient_rate > 0.0 && fastrand::f64() < args.transient_rate)
        {
            return Err(AgentError::failed_retryable(
                "simulated_transient_failure",
                format!(
                    "simulated transient provider failure (attempt {}, fail_first {}, transient_rate {})",
                    ctx.attempt, args.fail_first, args.transient_rate
                ),
            ));
        }
        // `f64()` is in [0, 1): a rate of 0 never fails, a rate of 1 always does.
        if args.fail_rate > 0.0 && fastrand::f64() < args.fail_rate {
            return Err(AgentError::failed(
                "simulated_failure",
                format!("simulated provider failure (fail_rate {})", args.fail_rate),
            ));
        }

        if args.cpu_ms > 0 {
            self.burn(&ctx, args.cpu_ms, stop).await?;
        }

        Ok(json!({
            "latency_ms": latency_ms,
            "cpu_ms": args.cpu_ms,
            "group": args.group,
            "inflight_at_start": inflight,
            "capacity": args.capacity,
        }))
    }

    /// Burns `ms` of CPU on the bounded CPU pool, never on an async worker.
    async fn burn(
        &self,
        ctx: &AgentContext,
        ms: u64,
        stop: Arc<AtomicBool>,
    ) -> Result<(), AgentError> {
        let flag = stop.clone();
        let job = self
            .cpu
            .spawn(move |cancel| {
                burn_cpu(ms, || flag.load(Ordering::Relaxed) || cancel.is_cancelled())
            })
            // A full pool is back-pressure, like a provider's 429.
            .map_err(|_| AgentError::Overloaded {
                message: "the CPU pool's queue is full".into(),
                retry_after: None,
            })?;
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                stop.store(true, Ordering::Relaxed);
                Err(AgentError::cancelled())
            }
            done = job => match done {
                Ok(true) => Ok(()),
                Ok(false) | Err(CpuError::Cancelled) => Err(AgentError::cancelled()),
                Err(e) => Err(AgentError::failed("cpu_burn_failed", e.to_string())),
            },
        }
    }
}

impl Agent for SimAgent {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        SimArgs::parse_within(args, &self.limits).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let args = SimArgs::parse_within(&input.args, &self.limits)
                .map_err(AgentError::invalid_args)?;
            self.run_inner(ctx, args).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ctx, input};
    use futures_util::future::join_all;
    use tokio::time::Instant;

    #[test]
    fn args_are_bounded_by_configuration() {
        let agent = SimAgent::new().with_limits(SimConfig {
            max_latency_ms: 1_000,
            max_cpu_ms: 50,
        });
        agent
            .validate(&json!({"latency_ms": 1_000, "cpu_ms": 50}))
            .unwrap();
        for (args, field) in [
            (json!({"latency_ms": 1_001}), "latency_ms"),
            (json!({"jitter_ms": 1_001}), "jitter_ms"),
            (json!({"cpu_ms": 51}), "cpu_ms"),
        ] {
            let e = agent.validate(&args).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{args}");
        }
        // The default bound is `[sim]`'s default.
        let dflt = SimAgent::new().with_limits(SimConfig::default());
        assert!(dflt.validate(&json!({"cpu_ms": 10_001})).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_applied() {
        let agent = Arc::new(SimAgent::new());
        let start = Instant::now();
        let out = agent
            .run(ctx(), input(json!({"latency_ms": 250})))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(out["latency_ms"], 250);
        assert_eq!(out["group"], "default");
        assert_eq!(out["inflight_at_start"], 1);
        assert_eq!(out["capacity"], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn default_latency_is_100ms() {
        let agent = Arc::new(SimAgent::new());
        let start = Instant::now();
        agent.run(ctx(), input(json!({}))).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_bounds() {
        let agent = Arc::new(SimAgent::new());
        let mut seen = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            let out = agent
                .clone()
                .run(ctx(), input(json!({"latency_ms": 100, "jitter_ms": 50})))
                .await
                .unwrap();
            let ms = out["latency_ms"].as_u64().unwrap();
            assert!((100..=150).contains(&ms), "{ms}");
            assert_eq!(start.elapsed(), Duration::from_millis(ms));
            seen.push(ms);
        }
        // 50 uniform draws from 51 values are all equal with negligible probability.
        assert!(
            seen.iter().any(|&m| m != seen[0]),
            "jitter never varied: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn latency_grows_past_capacity() {
        let agent = Arc::new(SimAgent::new());
        let start = Instant::now();
        let runs = (0..4).map(|_| {
            agent.clone().run(
                ctx(),
                input(json!({"latency_ms": 100, "capacity": 2, "group": "llm"})),
            )
        });
        let outs: Vec<Value> = join_all(runs)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let mut pairs: Vec<(u64, u64)> = outs
            .iter()
            .map(|o| {
                (
                    o["inflight_at_start"].as_u64().unwrap(),
                    o["latency_ms"].as_u64().unwrap(),
                )
            })
            .collect();
        pairs.sort();
        // Within capacity: base latency; beyond it: base * inflight / capacity.
        assert_eq!(pairs, vec![(1, 100), (2, 100), (3, 150), (4, 200)]);
        // The fourth run, at twice the capacity, took twice the base latency.
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert_eq!(agent.in_flight("llm"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn groups_do_not_share_capacity() {
        let agent = Arc::new(SimAgent::new());
        let runs = ["a", "b", "c"].map(|g| {
            agent.clone().run(
                ctx(),
                input(json!({"latency_ms": 100, "capacity": 1, "group": g})),
            )
        });
        for out in join_all(runs).await {
            let out = out.unwrap();
            assert_eq!(out["inflight_at_start"], 1);
            assert_eq!(out["latency_ms"], 100);
        }
    }

    #[test]
    fn effective_latency_formula() {
        assert_eq!(effective_latency_ms(100, 5, 0), 100);
        assert_eq!(effective_latency_ms(100, 2, 2), 100);
        assert_eq!(effective_latency_ms(100, 3, 2), 150);
        assert_eq!(effective_latency_ms(100, 10, 1), 1000);
        assert_eq!(effective_latency_ms(u64::MAX, 10, 1), u64::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_rate_one_always_fails_zero_never() {
        let agent = Arc::new(SimAgent::new());
        for _ in 0..20 {
            let err = agent
                .clone()
                .run(ctx(), input(json!({"latency_ms": 1, "fail_rate": 1.0})))
                .await
                .unwrap_err();
            assert_eq!(err.code(), "simulated_failure");
            agent
                .clone()
                .run(ctx(), input(json!({"latency_ms": 1, "fail_rate": 0.0})))
                .await
                .unwrap();
        }
    }

    #[test]
    fn validation_names_fields() {
        let agent = SimAgent::new();
        let field = |args: Value| agent.validate(&args).unwrap_err().field.unwrap();
        assert_eq!(field(json!({"latency_ms": -1})), "latency_ms");
        assert_eq!(field(json!({"latency_ms": 600_001})), "latency_ms");
        assert_eq!(field(json!({"latency_ms": "100"})), "latency_ms");
        assert_eq!(field(json!({"latency_ms": 1.5})), "latency_ms");
        assert_eq!(field(json!({"jitter_ms": 700_000})), "jitter_ms");
        assert_eq!(field(json!({"fail_rate": 1.5})), "fail_rate");
        assert_eq!(field(json!({"fail_rate": "x"})), "fail_rate");
        assert_eq!(field(json!({"cpu_ms": 60_001})), "cpu_ms");
        assert_eq!(field(json!({"capacity": -2})), "capacity");
        assert_eq!(field(json!({"group": ""})), "group");
        assert_eq!(field(json!({"group": "g".repeat(65)})), "group");
        assert_eq!(field(json!({"group": 7})), "group");
        assert_eq!(field(json!({"latency": 5})), "latency");
        assert_eq!(
            agent.validate(&json!([1])).unwrap_err().code,
            "invalid_field"
        );

        agent.validate(&json!({})).unwrap();
        agent.validate(&Value::Null).unwrap();
        agent
            .validate(
                &json!({"latency_ms": 600_000, "jitter_ms": 0, "fail_rate": 1, "cpu_ms": 60_000,
                "capacity": 3, "group": "g".repeat(64)}),
            )
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_rejects_bad_args_with_the_field() {
        let agent = Arc::new(SimAgent::new());
        let err = agent
            .run(ctx(), input(json!({"cpu_ms": -1})))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AgentError::Invalid {
                message: "must be an integer from 0 to 60000".into(),
                field: Some("cpu_ms".into()),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_returns_quickly() {
        let agent = Arc::new(SimAgent::new());
        let ctx = ctx();
        let token = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            token.cancel();
        });
        let start = Instant::now();
        let err = agent
            .clone()
            .run(ctx, input(json!({"latency_ms": 600_000, "group": "c"})))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "cancelled");
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert_eq!(agent.in_flight("c"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slot_is_released_when_the_future_is_dropped() {
        let agent = Arc::new(SimAgent::new());
        let mut run = agent
            .clone()
            .run(ctx(), input(json!({"latency_ms": 10_000, "group": "g"})));
        // Drive the run until it is sleeping.
        assert!(
            tokio::time::timeout(Duration::from_millis(5), &mut run)
                .await
                .is_err()
        );
        assert_eq!(agent.in_flight("g"), 1);
        let second = agent
            .clone()
            .run(ctx(), input(json!({"latency_ms": 1, "group": "g"})))
            .await
            .unwrap();
        assert_eq!(second["inflight_at_start"], 2);
        drop(run);
        assert_eq!(agent.in_flight("g"), 0);
        assert!(
            agent.groups.lock().unwrap().is_empty(),
            "empty groups are removed"
        );
    }

    #[tokio::test]
    async fn cpu_is_burnt_on_a_blocking_thread() {
        let agent = Arc::new(SimAgent::with_cpu_slots(1));
        let start = std::time::Instant::now();
        let out = agent
            .clone()
            .run(ctx(), input(json!({"latency_ms": 0, "cpu_ms": 60})))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert_eq!(out["cpu_ms"], 60);
        assert_eq!(agent.cpu_slots_available(), 1);
    }

    /// Waits (real time) until the agent's CPU slots are all free again,
    /// which happens only when the burn thread has returned.
    async fn wait_for_free_cpu(agent: &SimAgent, total: usize) -> Duration {
        let start = std::time::Instant::now();
        while agent.cpu_slots_available() < total {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the burn did not stop"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    #[tokio::test]
    async fn cancelled_cpu_burn_stops() {
        let agent = Arc::new(SimAgent::with_cpu_slots(1));
        let ctx = ctx();
        let token = ctx.cancel.clone();
        let run = tokio::spawn(
            agent
                .clone()
                .run(ctx, input(json!({"latency_ms": 0, "cpu_ms": 60_000}))),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(agent.cpu_slots_available(), 0, "the burn should be running");
        token.cancel();
        let start = std::time::Instant::now();
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(err.code(), "cancelled");
        assert!(start.elapsed() < Duration::from_secs(2));
        wait_for_free_cpu(&agent, 1).await;
    }

    #[tokio::test]
    async fn dropped_run_stops_its_cpu_burn() {
        let agent = Arc::new(SimAgent::with_cpu_slots(1));
        let run = tokio::spawn(
            agent
                .clone()
                .run(ctx(), input(json!({"latency_ms": 0, "cpu_ms": 60_000}))),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(agent.cpu_slots_available(), 0, "the burn should be running");
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        wait_for_free_cpu(&agent, 1).await;
    }

    #[tokio::test]
    async fn cpu_burns_queue_behind_the_slot_bound() {
        let agent = Arc::new(SimAgent::with_cpu_slots(1));
        let start = std::time::Instant::now();
        let runs = (0..2).map(|_| {
            agent
                .clone()
                .run(ctx(), input(json!({"latency_ms": 0, "cpu_ms": 40})))
        });
        for r in join_all(runs).await {
            r.unwrap();
        }
        // One slot: the two 40 ms burns ran one after the other.
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }
}
