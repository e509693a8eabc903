//! A department of several agent instances behind one [`Agent`]: each run
//! goes to the instance `swarm_sched::balance::Balancer` picks (p2c over
//! peak-EWMA by default, or sticky by an `args` field), its outcome feeds
//! the balancer's load estimate and outlier ejection, and a retryable
//! failure is tried once more on another pick while the retry budget and
//! the task's deadline allow.
//!
//! Retries happen inside the run, under the permit the pool's limiter gave
//! it, so they never pile up outside the pool's concurrency limit; the
//! budget (tower's `TpsBudget`: at most ~10% extra calls plus a small
//! floor) keeps a failing backend from doubling its own load.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use swarm_core::FieldError;
use swarm_sched::balance::{
    BalanceConfig, Balancer, BalancerSnapshot, CallError, InstanceSnapshot, Outcome, RetryBudget,
    RetryConfig, RetryPolicy,
};
use tokio::time::Instant;

use crate::agent::{Agent, AgentContext, AgentError, AgentInput};

/// Builds the agent of a new instance from its spec (an HTTP client for a
/// URL, a replica of a built-in agent), or says which field is wrong.
pub type Factory = Arc<dyn Fn(&InstanceSpec) -> Result<Member, FieldError> + Send + Sync>;

/// Vets an instance added at runtime ([`BalancedAgent::add`]) before it
/// is built: an HTTP pool's allowed hosts. Instances from the
/// configuration ([`BalancedAgent::new`], [`BalancedAgent::reconcile`])
/// are not vetted.
pub type RuntimeCheck = Arc<dyn Fn(&InstanceSpec) -> Result<(), FieldError> + Send + Sync>;

/// An active health check of one instance, by id: `Ok` when it answers
/// healthy, else why not.
pub type Probe = Arc<dyn Fn(&str) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// An instance to add: what `POST /api/pools/{pool}/instances` takes and
/// what `[pools.NAME.http] urls` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// The instance's URL (HTTP pools); also its id.
    #[serde(default)]
    pub url: Option<String>,
    /// The id, for pools whose instances have no URL (replicas of a
    /// built-in agent).
    #[serde(default)]
    pub id: Option<String>,
    /// Weight for `weighted` and `hash` (default 1).
    #[serde(default, deserialize_with = "swarm_core::whole::optional")]
    #[schema(maximum = 4294967295_u64)]
    pub weight: Option<u32>,
}

/// One instance: its id and the agent that runs its calls.
pub struct Member {
    /// Unique in the pool; an HTTP instance's id is its URL.
    pub id: String,
    /// Does the calls.
    pub agent: Arc<dyn Agent>,
}

/// Active health checking: `probe` every `interval`; an instance that
/// fails is taken out of rotation until it passes again.
#[derive(Clone)]
pub struct HealthCheck {
    /// The check.
    pub probe: Probe,
    /// Between rounds.
    pub interval: Duration,
}

/// What [`BalancedAgent::reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// Ids added (or taken back from draining).
    pub added: Vec<String>,
    /// Ids now draining, removed once their calls finish.
    pub removed: Vec<String>,
    /// Ids whose weight changed.
    pub reweighted: Vec<String>,
}

/// Why an instance operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceError {
    /// The spec is wrong (the field says where).
    Invalid(FieldError),
    /// No instance has that id.
    NotFound(String),
}

/// Several instances of one kind, balanced.
pub struct BalancedAgent {
    kind: &'static str,
    balancer: Balancer,
    members: Arc<RwLock<HashMap<String, Arc<dyn Agent>>>>,
    factory: Factory,
    /// Vets runtime additions.
    runtime_check: Option<RuntimeCheck>,
    hash_key: Option<String>,
    retry: RetryPolicy,
    budget: RetryBudget,
    /// Instances an active check took out, so only they are put back by
    /// a passing check (a passing `/health` must not undo a passive
    /// ejection for 5xx answers).
    checked_down: Mutex<HashSet<String>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Critical sections are single map operations: never half-done.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// How often a removal waiting for its instance's calls looks again.
const REMOVE_POLL: Duration = Duration::from_millis(50);

impl BalancedAgent {
    /// A department of `kind` with the instances in `specs`, built by
    /// `factory` (ids must be unique). `hash_key` names the `args` field
    /// that keeps a task on one instance under `policy = "hash"`.
    pub fn new(
        kind: &'static str,
        factory: Factory,
        specs: &[InstanceSpec],
        balance: BalanceConfig,
        retry: RetryConfig,
        hash_key: Option<String>,
    ) -> Result<Self, FieldError> {
        let agent = Self {
            kind,
            balancer: Balancer::new(balance),
            members: Arc::default(),
            factory,
            runtime_check: None,
            hash_key,
            budget: RetryBudget::new(&retry),
            retry: RetryPolicy::new(retry),
            checked_down: Mutex::default(),
        };
        for (i, spec) in specs.iter().enumerate() {
            let m = (agent.factory)(spec).map_err(|e| e.nested_under(&i.to_string()))?;
            if read(&agent.members).contains_key(&m.id) {
                return Err(FieldError::invalid(
                    i.to_string(),
                    format!("`{}` is listed twice", m.id),
                ));
            }
            agent.insert(m, spec.weight.unwrap_or(1));
        }
        Ok(agent)
    }

    /// Vets every instance [`add`](Self::add)ed from now on with `check`.
    pub fn with_runtime_check(mut self, check: RuntimeCheck) -> Self {
        self.runtime_check = Some(check);
        self
    }

    fn insert(&self, m: Member, weight: u32) -> bool {
        write(&self.members).insert(m.id.clone(), m.agent);
        self.balancer.add(m.id, weight)
    }

    /// Starts active health checks; they stop when the agent is dropped.
    pub fn start_health_checks(self: &Arc<Self>, check: HealthCheck) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let ids: Vec<String> = read(&me.members).keys().cloned().collect();
                let results =
                    futures_util::future::join_all(ids.iter().map(|id| (check.probe)(id.as_str())))
                        .await;
                for (id, r) in ids.iter().zip(results) {
                    me.checked(id, r);
                }
            }
        });
    }

    /// Applies one active check's verdict.
    fn checked(&self, id: &str, r: Result<(), String>) {
        let mut down = self.checked_down.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(()) if down.remove(id) => {
                self.balancer.mark_healthy(id);
                tracing::info!(instance = %id, "health check passes again: back in rotation");
            }
            Ok(()) => {}
            Err(why) => {
                if down.insert(id.to_string()) {
                    tracing::warn!(instance = %id, error = %why, "health check failed: out of rotation");
                }
                // Again each round: an instance re-added meanwhile starts healthy.
                self.balancer.mark_unhealthy(id);
            }
        }
    }

    /// The balancer (for status: per-instance state and shares).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Per-instance state, load and shares.
    pub fn snapshot(&self) -> BalancerSnapshot {
        self.balancer.snapshot()
    }

    /// The id `name` refers to: an id, or the `host:port` of exactly one
    /// instance URL (so a path can name `127.0.0.1:9001` instead of the
    /// percent-encoded URL).
    pub fn resolve(&self, name: &str) -> Option<String> {
        let members = read(&self.members);
        if members.contains_key(name) {
            return Some(name.to_string());
        }
        let mut found = members.keys().filter(|id| {
            reqwest::Url::parse(id).is_ok_and(|u| {
                let host = u.host_str().unwrap_or_default();
                u.port_or_known_default()
                    .is_some_and(|p| format!("{host}:{p}") == name)
            })
        });
        let first = found.next()?.clone();
        found.next().is_none().then_some(first)
    }

    /// Adds an instance (or, if its id is there, sets its weight and ends
    /// its draining). Returns its snapshot and whether it is new.
    pub fn add(&self, spec: &InstanceSpec) -> Result<(InstanceSnapshot, bool), InstanceError> {
        let weight = spec.weight.unwrap_or(1);
        if weight == 0 {
            return Err(InstanceError::Invalid(FieldError::invalid(
                "weight",
                "must be at least 1",
            )));
        }
        if let Some(check) = &self.runtime_check {
            check(spec).map_err(InstanceError::Invalid)?;
        }
        let m = (self.factory)(spec).map_err(InstanceError::Invalid)?;
        let id = m.id.clone();
        let created = if read(&self.members).contains_key(&id) {
            self.balancer.add(id.as_str(), weight)
        } else {
            self.insert(m, weight)
        };
        let snap = self
            .balancer
            .instance(&id)
            .ok_or_else(|| InstanceError::NotFound(id.clone()))?;
        Ok((snap, created))
    }

    /// Stops new calls to `name`; calls in flight finish.
    pub fn drain(&self, name: &str) -> Result<InstanceSnapshot, InstanceError> {
        let id = self
            .resolve(name)
            .ok_or_else(|| InstanceError::NotFound(name.to_string()))?;
        self.balancer.drain(&id);
        self.balancer
            .instance(&id)
            .ok_or(InstanceError::NotFound(id))
    }

    /// Drains `name` and removes it once its calls in flight have
    /// finished (in the background; until then it is listed as
    /// `draining`). No call fails for it. Returns the draining snapshot.
    pub fn remove(&self, name: &str) -> Result<InstanceSnapshot, InstanceError> {
        let snap = self.drain(name)?;
        let (balancer, members, id) =
            (self.balancer.clone(), self.members.clone(), snap.id.clone());
        tokio::spawn(async move {
            loop {
                match balancer.instance(&id) {
                    // Added back meanwhile: keep it.
                    Some(s) if s.state != swarm_sched::balance::InstanceState::Draining => return,
                    Some(s) if s.outstanding > 0 => tokio::time::sleep(REMOVE_POLL).await,
                    Some(_) => {
                        balancer.remove(&id);
                        write(&members).remove(&id);
                        tracing::info!(instance = %id, "instance removed");
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(snap)
    }

    fn build_all(&self, want: &[InstanceSpec]) -> Result<Vec<(Member, u32)>, FieldError> {
        let mut built: Vec<(Member, u32)> = Vec::with_capacity(want.len());
        for (i, spec) in want.iter().enumerate() {
            let at = |e: FieldError| e.nested_under(&i.to_string());
            let m = (self.factory)(spec).map_err(at)?;
            if spec.weight == Some(0) {
                return Err(at(FieldError::invalid("weight", "must be at least 1")));
            }
            if built.iter().any(|(b, _)| b.id == m.id) {
                return Err(at(FieldError::invalid(
                    "",
                    format!("`{}` is listed twice", m.id),
                )));
            }
            built.push((m, spec.weight.unwrap_or(1)));
        }
        Ok(built)
    }

    /// Checks that `want` would be accepted by [`reconcile`](Self::reconcile).
    pub fn check(&self, want: &[InstanceSpec]) -> Result<(), FieldError> {
        self.build_all(want).map(drop)
    }

    /// Makes the instances those of `want` (a reloaded configuration):
    /// adds the new, drains and removes the missing, sets weights.
    pub fn reconcile(&self, want: &[InstanceSpec]) -> Result<Reconciled, FieldError> {
        let built = self.build_all(want)?;
        let before = self.balancer.snapshot().instances;
        let mut out = Reconciled::default();
        let wanted: HashSet<&str> = built.iter().map(|(m, _)| m.id.as_str()).collect();
        for s in &before {
            if !wanted.contains(s.id.as_str())
                && s.state != swarm_sched::balance::InstanceState::Draining
            {
                let _ = self.remove(&s.id);
                out.removed.push(s.id.clone());
            }
        }
        for (m, weight) in built {
            match before.iter().find(|s| s.id == m.id) {
                None => {
                    out.added.push(m.id.clone());
                    self.insert(m, weight);
                }
                Some(s) if s.state == swarm_sched::balance::InstanceState::Draining => {
                    out.added.push(m.id.clone());
                    self.balancer.add(m.id, weight);
                }
                Some(s) if s.weight != weight => {
                    out.reweighted.push(m.id.clone());
                    self.balancer.add(m.id, weight);
                }
                Some(_) => {}
            }
        }
        Ok(out)
    }

    fn key(&self, args: &Value) -> Option<String> {
        let v = args.get(self.hash_key.as_deref()?)?;
        Some(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// An agent's error in the retry policy's terms. Tasks are delivered at
/// least once anyway, so every call counts as idempotent; a failure the
/// backend marked retryable reads as a 5xx, any other as a 4xx.
fn call_error(e: &AgentError) -> CallError {
    match e {
        AgentError::Overloaded { retry_after, .. } => CallError::Status {
            code: 503,
            retry_after: *retry_after,
        },
        AgentError::Timeout { .. } => CallError::Timeout,
        e if e.is_retryable() => CallError::Status {
            code: 502,
            retry_after: None,
        },
        _ => CallError::Status {
            code: 400,
            retry_after: None,
        },
    }
}

/// How a result counts for the instance's health: only failures that
/// another try might fix (a worker that died, a 5xx, a refused connection)
/// are the instance's fault; a bad request is the caller's.
fn outcome(r: &Result<Value, AgentError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(AgentError::Overloaded { .. }) => Outcome::Overloaded,
        Err(AgentError::Timeout { .. }) => Outcome::Timeout,
        Err(e) if e.is_retryable() => Outcome::Failure,
        Err(_) => Outcome::Success,
    }
}

impl Agent for BalancedAgent {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        // Instances are all of one kind: any of them checks as well.
        let any = read(&self.members).values().next().cloned();
        match any {
            Some(a) => a.validate(args),
            None => crate::agent::args_object(args),
        }
    }

    fn token_estimate(&self, args: &Value) -> Option<u64> {
        let any = read(&self.members).values().next().cloned();
        any.and_then(|a| a.token_estimate(args))
    }

    fn balanced(&self) -> Option<&BalancedAgent> {
        Some(self)
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            let key = self.key(&input.args);
            self.budget.deposit();
            let mut rng = fastrand::Rng::new();
            let mut retries = 0;
            let mut vanished = 0;
            loop {
                let Some(pick) = self.balancer.pick(key.as_deref()) else {
                    return Err(AgentError::Overloaded {
                        message: "the department has no instance".into(),
                        retry_after: None,
                    });
                };
                let Some(agent) = read(&self.members).get(pick.id()).cloned() else {
                    // Removed between the pick and here: pick again.
                    vanished += 1;
                    if vanished > 3 {
                        return Err(AgentError::Overloaded {
                            message: "the department's instances are being replaced".into(),
                            retry_after: None,
                        });
                    }
                    continue;
                };
                let mut c = ctx.clone();
                c.instance = pick.id().to_string();
                ctx.placed.set(pick.id());
                // Which instance runs each attempt, for the task's event stream.
                ctx.progress.report(serde_json::json!({
                    "step": "instance",
                    "instance": pick.id(),
                    "attempt": retries + 1,
                }));
                let started = Instant::now();
                let r = agent.run(c, input.clone()).await;
                pick.complete(started.elapsed(), outcome(&r));
                let Err(e) = &r else { return r };
                if ctx.cancel.is_cancelled() {
                    return r;
                }
                // A retry that could not start before the deadline spends
                // no budget.
                let Some(wait) = self.retry.decide_within(
                    retries,
                    &call_error(e),
                    true,
                    &self.budget,
                    &mut rng,
                    ctx.remaining(),
                ) else {
                    return r;
                };
                retries += 1;
                tracing::debug!(task = %ctx.task_id, error = %e, retries, "retrying on another pick");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.cancel.cancelled() => return r,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoAgent;
    use swarm_sched::balance::{InstanceState, OutlierConfig};

    /// Instances named by `url` (or `id`), each running the echo agent.
    fn pool(urls: &[&str], outlier: OutlierConfig) -> BalancedAgent {
        let factory: Factory = Arc::new(|spec: &InstanceSpec| {
            let id = spec
                .url
                .clone()
                .or_else(|| spec.id.clone())
                .ok_or_else(|| FieldError::missing("url"))?;
            Ok(Member {
                id,
                agent: Arc::new(EchoAgent),
            })
        });
        let specs: Vec<InstanceSpec> = urls
            .iter()
            .map(|u| InstanceSpec {
                url: Some(u.to_string()),
                ..InstanceSpec::default()
            })
            .collect();
        let balance = BalanceConfig {
            outlier,
            seed: Some(7),
            ..BalanceConfig::default()
        };
        BalancedAgent::new(
            "echo",
            factory,
            &specs,
            balance,
            RetryConfig::default(),
            None,
        )
        .unwrap()
    }

    fn state(b: &BalancedAgent, id: &str) -> Option<InstanceState> {
        b.balancer().instance(id).map(|i| i.state)
    }

    const A: &str = "http://10.0.0.1:8000/run";
    const B: &str = "http://10.0.0.2:8000/run";
    const C: &str = "http://10.0.0.3:9000/run";

    #[test]
    fn duplicate_ids_are_refused_naming_the_entry() {
        let factory: Factory = Arc::new(|spec: &InstanceSpec| {
            Ok(Member {
                id: spec.url.clone().unwrap_or_default(),
                agent: Arc::new(EchoAgent),
            })
        });
        let spec = InstanceSpec {
            url: Some(A.into()),
            ..InstanceSpec::default()
        };
        let err = BalancedAgent::new(
            "echo",
            factory,
            &[spec.clone(), spec],
            BalanceConfig::default(),
            RetryConfig::default(),
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.field.as_deref(), Some("1"));
    }

    #[test]
    fn an_instance_is_named_by_id_or_by_a_unique_host_and_port() {
        let b = pool(
            &[A, B, "http://10.0.0.2:8000/other"],
            OutlierConfig::default(),
        );
        assert_eq!(b.resolve(A).as_deref(), Some(A));
        assert_eq!(b.resolve("10.0.0.1:8000").as_deref(), Some(A));
        // Two instances share 10.0.0.2:8000: ambiguous, so no match.
        assert_eq!(b.resolve("10.0.0.2:8000"), None);
        assert_eq!(b.resolve("10.0.0.9:8000"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_instance_leaves_only_after_its_calls_end() {
        let b = pool(&[A, B], OutlierConfig::default());
        // Hold a call on A.
        let mut held = None;
        for _ in 0..10 {
            let p = b.balancer().pick(None).unwrap();
            if p.id() == A {
                held = Some(p);
                break;
            }
        }
        let held = held.expect("A picked");
        let snap = b.remove(A).unwrap();
        assert_eq!((snap.state, snap.outstanding), (InstanceState::Draining, 1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            state(&b, A),
            Some(InstanceState::Draining),
            "still in flight"
        );
        for _ in 0..20 {
            assert_eq!(
                b.balancer().pick(None).unwrap().id(),
                B,
                "no new calls to A"
            );
        }
        held.complete(Duration::from_millis(5), Outcome::Success);
        tokio::time::sleep(REMOVE_POLL * 2).await;
        assert_eq!(state(&b, A), None, "gone once idle");
        assert!(b.resolve(A).is_none());
        assert!(matches!(b.remove(A), Err(InstanceError::NotFound(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn adding_back_a_draining_instance_keeps_it() {
        let b = pool(&[A, B], OutlierConfig::default());
        let held = b.balancer().pick(Some("k")).unwrap();
        let id = held.id().to_string();
        b.remove(&id).unwrap();
        let spec = InstanceSpec {
            url: Some(id.clone()),
            weight: Some(3),
            ..InstanceSpec::default()
        };
        let (snap, created) = b.add(&spec).unwrap();
        assert!(!created);
        assert_eq!((snap.state, snap.weight), (InstanceState::Healthy, 3));
        drop(held);
        tokio::time::sleep(REMOVE_POLL * 4).await;
        assert_eq!(state(&b, &id), Some(InstanceState::Healthy));
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_adds_the_new_drains_the_missing_and_reweights() {
        let b = pool(&[A, B], OutlierConfig::default());
        let want = [
            InstanceSpec {
                url: Some(B.into()),
                weight: Some(2),
                ..InstanceSpec::default()
            },
            InstanceSpec {
                url: Some(C.into()),
                ..InstanceSpec::default()
            },
        ];
        let r = b.reconcile(&want).unwrap();
        assert_eq!(r.added, vec![C.to_string()]);
        assert_eq!(r.removed, vec![A.to_string()]);
        assert_eq!(r.reweighted, vec![B.to_string()]);
        tokio::time::sleep(REMOVE_POLL * 2).await;
        let ids: Vec<String> = b.snapshot().instances.into_iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![B.to_string(), C.to_string()]);
        // The same list again changes nothing; a bad one changes nothing either.
        assert_eq!(b.reconcile(&want).unwrap(), Reconciled::default());
        let bad = [want[0].clone(), want[0].clone()];
        assert_eq!(b.check(&bad).unwrap_err().field.as_deref(), Some("1"));
        assert!(b.reconcile(&bad).is_err());
        assert_eq!(b.snapshot().instances.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_check_restores_only_what_a_check_took_out() {
        let outlier = OutlierConfig {
            consecutive_failures: 1,
            ..OutlierConfig::default()
        };
        let b = pool(&[A, B, C], outlier);
        b.checked(A, Err("connection refused".into()));
        assert_eq!(state(&b, A), Some(InstanceState::Ejected));
        b.checked(A, Ok(()));
        assert_eq!(state(&b, A), Some(InstanceState::Healthy));
        // B is ejected passively (it failed a call); its health endpoint
        // answering does not put it back before its ejection ends.
        let mut p = b.balancer().pick(None).unwrap();
        while p.id() != B {
            p = b.balancer().pick(None).unwrap();
        }
        p.complete(Duration::from_millis(5), Outcome::Failure);
        assert_eq!(state(&b, B), Some(InstanceState::Ejected));
        b.checked(B, Ok(()));
        assert_eq!(state(&b, B), Some(InstanceState::Ejected));
    }
}
