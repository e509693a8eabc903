//! The balancer: instances, picks and their completions under one mutex.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{BalanceConfig, Policy};
use super::ewma::PeakEwma;
use super::hash;
use super::health::{Avail, Health, InstanceState};

/// How a call to an instance ended, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call worked: its RTT is a latency sample.
    Success,
    /// The instance failed the call (a connect error, a 5xx other than
    /// 503): counts toward ejection.
    Failure,
    /// The instance refused for load (429, 503): steers load away, but does
    /// not eject (see the module docs).
    Overloaded,
    /// No answer in time: counts toward ejection, and its RTT (the timeout)
    /// is a sample.
    Timeout,
}

/// An overload's RTT counts as at least this many times the current
/// estimate, so an instance answering 429 fast does not look fast and
/// attract more calls (the "black hole" of least-latency balancing), and
/// repeated refusals push load away harder. Failures and timeouts count as
/// at least the estimate, not more: ejection deals with broken instances,
/// and a compounding penalty would starve one that fails now and then.
const OVERLOAD_PENALTY: f64 = 2.0;

/// Chooses instances for calls and tracks their health. Cloning shares it.
///
/// ```
/// use std::time::Duration;
/// use swarm_sched::balance::{BalanceConfig, Balancer, Outcome, Policy};
///
/// let b = Balancer::new(BalanceConfig {
///     policy: Policy::RoundRobin,
///     seed: Some(1),
///     ..BalanceConfig::default()
/// });
/// b.add("a", 1);
/// b.add("b", 1);
/// let p = b.pick(None).unwrap();
/// assert_eq!(p.id(), "a");
/// assert_eq!(b.pick(None).unwrap().id(), "b"); // dropped: cancelled
/// p.complete(Duration::from_millis(20), Outcome::Success);
/// b.drain("a");
/// assert_eq!(b.pick(None).unwrap().id(), "b");
/// let snap = b.snapshot();
/// assert_eq!((snap.instances[0].successes, snap.instances[1].cancelled), (1, 2));
/// ```
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: BalanceConfig,
    state: Mutex<State>,
}

struct State {
    instances: Vec<Inst>,
    rng: fastrand::Rng,
    rr_next: usize,
    next_serial: u64,
    picks: u64,
    /// Candidates of the pick in progress; kept to avoid an allocation per pick.
    scratch: Vec<usize>,
}

struct Inst {
    id: Arc<str>,
    id_hash: u64,
    /// Unique per `add`, so a pick outliving its instance's removal (and a
    /// re-add under the same id) finds nothing instead of the wrong one.
    serial: u64,
    weight: u32,
    draining: bool,
    outstanding: u32,
    ewma: PeakEwma,
    health: Health,
    /// Smooth weighted round robin's running weight.
    swrr: i64,
    picks: u64,
    successes: u64,
    failures: u64,
    cancelled: u64,
}

impl Inst {
    fn snapshot(&mut self, now: Instant, total_picks: u64) -> InstanceSnapshot {
        self.health.refresh(now);
        InstanceSnapshot {
            id: self.id.to_string(),
            state: if self.draining {
                InstanceState::Draining
            } else {
                self.health.state()
            },
            weight: self.weight,
            outstanding: self.outstanding,
            ewma_rtt_us: (self.ewma.get(now) / 1e3) as u64,
            successes: self.successes,
            failures: self.failures,
            cancelled: self.cancelled,
            ejections: self.health.ejections,
            picks: self.picks,
            pick_share: if total_picks == 0 {
                0.0
            } else {
                self.picks as f64 / total_picks as f64
            },
        }
    }
}

/// A point-in-time view of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceSnapshot {
    /// The caller's id.
    pub id: String,
    /// Healthy, ejected, half-open or draining.
    pub state: InstanceState,
    /// Weight (weighted round robin and hash).
    pub weight: u32,
    /// Calls in flight.
    pub outstanding: u32,
    /// Peak-EWMA round-trip estimate now, µs.
    pub ewma_rtt_us: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed, timed out or met overload.
    pub failures: u64,
    /// Picks dropped without an outcome.
    pub cancelled: u64,
    /// Outlier ejections so far.
    pub ejections: u64,
    /// Calls picked for it.
    pub picks: u64,
    /// Its share of all picks since it was added (0–1).
    pub pick_share: f64,
}

/// A point-in-time view of a [`Balancer`] for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BalancerSnapshot {
    /// The policy.
    pub policy: Policy,
    /// Picks so far.
    pub picks: u64,
    /// Instances in the order they were added.
    pub instances: Vec<InstanceSnapshot>,
}

impl Balancer {
    /// A balancer with no instances. Expects `cfg.validate()` to have
    /// passed, but clamps instead of panicking.
    pub fn new(cfg: BalanceConfig) -> Self {
        let rng = cfg
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            shared: Arc::new(Shared {
                cfg,
                state: Mutex::new(State {
                    instances: Vec::new(),
                    rng,
                    rr_next: 0,
                    next_serial: 0,
                    picks: 0,
                    scratch: Vec::new(),
                }),
            }),
        }
    }

    /// Adds instance `id` with `weight` (at least 1), healthy. If `id` is
    /// already there, sets its weight and ends its draining instead, and
    /// returns false.
    pub fn add(&self, id: impl Into<Arc<str>>, weight: u32) -> bool {
        let id = id.into();
        let cfg = &self.shared.cfg;
        let mut st = self.shared.lock();
        if let Some(i) = st.find(&id) {
            let inst = &mut st.instances[i];
            inst.weight = weight.max(1);
            inst.draining = false;
            return false;
        }
        let now = Instant::now();
        let serial = st.next_serial;
        st.next_serial += 1;
        st.instances.push(Inst {
            id_hash: hash::hash_str(&id),
            id,
            serial,
            weight: weight.max(1),
            draining: false,
            outstanding: 0,
            ewma: PeakEwma::new(cfg.default_rtt(), cfg.decay(), now),
            health: Health::new(&cfg.outlier, now),
            swrr: 0,
            picks: 0,
            successes: 0,
            failures: 0,
            cancelled: 0,
        });
        true
    }

    /// Stops new calls to `id`; calls in flight finish and are recorded.
    /// Remove it once its `outstanding` is 0. False if unknown.
    pub fn drain(&self, id: &str) -> bool {
        let mut st = self.shared.lock();
        st.find(id)
            .map(|i| st.instances[i].draining = true)
            .is_some()
    }

    /// Removes `id` at once; outcomes of its calls still in flight are
    /// ignored. False if unknown.
    pub fn remove(&self, id: &str) -> bool {
        let mut st = self.shared.lock();
        st.find(id).map(|i| st.instances.remove(i)).is_some()
    }

    /// An active health check passed: `id` takes calls again at once,
    /// whatever its passive state. False if unknown.
    pub fn mark_healthy(&self, id: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(i) = st.find(id) else { return false };
        st.instances[i].health.close(Instant::now());
        true
    }

    /// An active health check failed: `id` takes no calls until
    /// [`mark_healthy`](Self::mark_healthy). Not bound by
    /// `max_ejected_percent` (an active check is a verdict, not an
    /// inference); if every instance is out, picks fall back to all of them.
    /// False if unknown.
    pub fn mark_unhealthy(&self, id: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(i) = st.find(id) else { return false };
        st.instances[i].health.force_open();
        true
    }

    /// Chooses an instance for one call; `key` matters to [`Policy::Hash`]
    /// only. `None` when there is no instance that is not draining.
    ///
    /// Healthy instances, and half-open ones with a probe slot free, are
    /// candidates. If there are none (everything ejected or marked
    /// unhealthy), every non-draining instance is, as in Envoy's panic
    /// mode: a guess beats refusing all work.
    pub fn pick(&self, key: Option<&str>) -> Option<Pick> {
        let cfg = &self.shared.cfg;
        let now = Instant::now();
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let mut cands = std::mem::take(&mut st.scratch);
        cands.clear();
        for (i, inst) in st.instances.iter_mut().enumerate() {
            inst.health.refresh(now);
            if !inst.draining && inst.health.avail(&cfg.outlier) != Avail::No {
                cands.push(i);
            }
        }
        if cands.is_empty() {
            cands.extend((0..st.instances.len()).filter(|&i| !st.instances[i].draining));
        }
        // A half-open instance with a probe slot free goes first (hash keys
        // excepted, which keep their order): probes are few, and waiting
        // for p2c to find it cheap would delay its return by chance.
        let sticky = cfg.policy == Policy::Hash && key.is_some();
        let probe_first = (!sticky)
            .then(|| {
                cands
                    .iter()
                    .copied()
                    .find(|&i| st.instances[i].health.avail(&cfg.outlier) == Avail::Probe)
            })
            .flatten();
        let chosen = match (probe_first, cands.len()) {
            (Some(i), _) => Some(i),
            (None, 0) => None,
            (None, 1) => Some(cands[0]),
            _ => Some(st.choose(cfg, &cands, key, now)),
        };
        st.scratch = cands;
        let i = chosen?;
        st.picks += 1;
        let inst = &mut st.instances[i];
        inst.picks += 1;
        inst.outstanding += 1;
        let probe =
            (inst.health.avail(&cfg.outlier) == Avail::Probe).then(|| inst.health.start_probe());
        Some(Pick {
            shared: Some(Arc::clone(&self.shared)),
            id: Arc::clone(&inst.id),
            serial: inst.serial,
            probe,
            started: now,
        })
    }

    /// A point-in-time view.
    pub fn snapshot(&self) -> BalancerSnapshot {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let total = st.picks;
        let instances = st
            .instances
            .iter_mut()
            .map(|inst| inst.snapshot(now, total))
            .collect();
        BalancerSnapshot {
            policy: self.shared.cfg.policy,
            picks: total,
            instances,
        }
    }

    /// A point-in-time view of instance `id`, if it is there.
    pub fn instance(&self, id: &str) -> Option<InstanceSnapshot> {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let total = st.picks;
        let i = st.find(id)?;
        Some(st.instances[i].snapshot(now, total))
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &BalanceConfig {
        &self.shared.cfg
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Balancer").field(&self.snapshot()).finish()
    }
}

impl State {
    fn find(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|inst| &*inst.id == id)
    }

    /// One of `cands` (at least two) by `policy`.
    fn choose(
        &mut self,
        cfg: &BalanceConfig,
        cands: &[usize],
        key: Option<&str>,
        now: Instant,
    ) -> usize {
        let slots = f64::from(cfg.slots.max(1));
        match (cfg.policy, key) {
            (Policy::P2c, _) | (Policy::Hash, None) => {
                let a = self.rng.usize(..cands.len());
                // A second, distinct one: draw from the others.
                let mut b = self.rng.usize(..cands.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (cands[a], cands[b]);
                if self.cost(b, now, slots) < self.cost(a, now, slots) {
                    b
                } else {
                    a
                }
            }
            (Policy::LeastOutstanding, _) => {
                // Scan from a random start so ties do not all go to the
                // first instance.
                let start = self.rng.usize(..cands.len());
                (0..cands.len())
                    .map(|k| cands[(start + k) % cands.len()])
                    .min_by_key(|&i| self.instances[i].outstanding)
                    .expect("at least two candidates")
            }
            (Policy::RoundRobin, _) => {
                // The first candidate at or after the cursor, in index
                // order, so skipped instances do not shift the others.
                let next = self.rr_next;
                let i = cands
                    .iter()
                    .copied()
                    .find(|&i| i >= next)
                    .unwrap_or(cands[0]);
                self.rr_next = i + 1;
                i
            }
            (Policy::Weighted, _) => {
                // nginx's smooth weighted round robin (ngx_http_upstream_round_robin.c).
                let mut total = 0i64;
                let mut best = cands[0];
                for &i in cands {
                    let inst = &mut self.instances[i];
                    inst.swrr += i64::from(inst.weight);
                    total += i64::from(inst.weight);
                    if inst.swrr > self.instances[best].swrr {
                        best = i;
                    }
                }
                self.instances[best].swrr -= total;
                best
            }
            (Policy::Hash, Some(key)) => {
                let kh = hash::hash_str(key);
                cands
                    .iter()
                    .copied()
                    .max_by(|&i, &j| {
                        let (a, b) = (&self.instances[i], &self.instances[j]);
                        hash::score(kh, a.id_hash, a.weight)
                            .total_cmp(&hash::score(kh, b.id_hash, b.weight))
                    })
                    .expect("at least two candidates")
            }
        }
    }

    /// Peak-EWMA load: the RTT estimate × (calls in flight + 1).
    /// Expected wait of one more call: the latency estimate, scaled by
    /// how many calls are ahead of it per slot (see [`BalanceConfig::slots`]).
    fn cost(&self, i: usize, now: Instant, slots: f64) -> f64 {
        let inst = &self.instances[i];
        inst.ewma.get(now) * (1.0 + f64::from(inst.outstanding) / slots)
    }

    fn finish(&mut self, cfg: &BalanceConfig, pick: &Pick, done: Option<(Duration, Outcome)>) {
        let now = Instant::now();
        let Some(i) = self.instances.iter().position(|x| x.serial == pick.serial) else {
            return;
        };
        let inst = &mut self.instances[i];
        inst.outstanding = inst.outstanding.saturating_sub(1);
        let Some((rtt, outcome)) = done else {
            inst.cancelled += 1;
            if let Some(e) = pick.probe {
                inst.health.cancel_probe(e);
            }
            return;
        };
        let floor = match outcome {
            Outcome::Success => {
                inst.successes += 1;
                0.0
            }
            Outcome::Failure | Outcome::Timeout => {
                inst.failures += 1;
                inst.ewma.get(now)
            }
            Outcome::Overloaded => {
                inst.failures += 1;
                inst.ewma.get(now) * OVERLOAD_PENALTY
            }
        };
        let sample = rtt.max(Duration::from_nanos(floor as u64));
        inst.ewma.update(sample, now);
        if inst
            .health
            .on_outcome(&cfg.outlier, outcome, pick.probe, now)
            && self.may_eject(cfg.outlier.max_ejected_percent)
        {
            self.instances[i].health.eject(&cfg.outlier, now);
        }
    }

    /// Whether one more outlier ejection stays within
    /// `max_ejected_percent` of the non-draining instances, and leaves at
    /// least one in. At least one may be ejected whatever the percentage
    /// (as in Envoy), if there are two or more.
    fn may_eject(&self, max_percent: u32) -> bool {
        let live = self.instances.iter().filter(|x| !x.draining);
        let (n, out) = live.fold((0usize, 0usize), |(n, out), x| {
            (n + 1, out + usize::from(x.health.is_out()))
        });
        let allowed = (n * max_percent as usize / 100)
            .max(1)
            .min(n.saturating_sub(1));
        out < allowed
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the counts stay consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One call placed on an instance. Complete it with
/// [`complete`](Self::complete); dropping it instead (any path, panics
/// included) counts as cancelled: the call stops counting as outstanding
/// and gives no sample.
pub struct Pick {
    shared: Option<Arc<Shared>>,
    id: Arc<str>,
    serial: u64,
    /// The half-open epoch when this call is a probe.
    probe: Option<u64>,
    started: Instant,
}

impl Pick {
    /// The chosen instance.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this call is a half-open probe that decides the instance's
    /// return.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// When the pick was made.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records how the call ended and releases it.
    pub fn complete(mut self, rtt: Duration, outcome: Outcome) {
        if let Some(s) = self.shared.take() {
            s.lock().finish(&s.cfg, &self, Some((rtt, outcome)));
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.lock().finish(&s.cfg, self, None);
        }
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("id", &self.id)
            .field("probe", &self.probe.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::OutlierConfig;

    const MS: Duration = Duration::from_millis(1);

    fn balancer(policy: Policy, ids: &[&str]) -> Balancer {
        let b = Balancer::new(BalanceConfig {
            policy,
            seed: Some(42),
            // Small, so the first samples (peaks) set the estimates.
            default_rtt_ms: 1,
            outlier: OutlierConfig {
                consecutive_failures: 3,
                base_ejection_ms: 1000,
                max_ejection_ms: 8000,
                half_open_probes: 2,
                ..OutlierConfig::default()
            },
            ..BalanceConfig::default()
        });
        for id in ids {
            b.add(*id, 1);
        }
        b
    }

    fn ids(picks: &[Pick]) -> String {
        picks.iter().map(|p| p.id()).collect()
    }

    fn state(b: &Balancer, id: &str) -> InstanceState {
        let s = b.snapshot();
        s.instances.iter().find(|i| i.id == id).unwrap().state
    }

    fn fail(b: &Balancer, id: &str, n: usize) {
        let mut done = 0;
        while done < n {
            let p = b.pick(None).unwrap();
            if p.id() == id {
                p.complete(MS, Outcome::Failure);
                done += 1;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_draining_and_ejected() {
        let b = balancer(Policy::RoundRobin, &["a", "b", "c", "d"]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(None).unwrap()).collect();
        assert_eq!(ids(&picks), "abcdab");
        drop(picks);
        b.drain("b");
        b.mark_unhealthy("d");
        let picks: Vec<_> = (0..5).map(|_| b.pick(None).unwrap()).collect();
        assert_eq!(ids(&picks), "cacac");
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_is_smooth() {
        let b = balancer(Policy::Weighted, &[]);
        b.add("a", 5);
        b.add("b", 1);
        b.add("c", 1);
        let picks: Vec<_> = (0..14).map(|_| b.pick(None).unwrap()).collect();
        // nginx's documented sequence for 5:1:1, twice.
        assert_eq!(ids(&picks), "aabacaaaabacaa");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_takes_the_cheaper_of_two() {
        let b = balancer(Policy::P2c, &["a", "b"]);
        // Estimates 10 ms and 105 ms.
        for (id, rtt) in [("a", 10), ("b", 105)] {
            loop {
                let p = b.pick(None).unwrap();
                if p.id() == id {
                    p.complete(MS * rtt, Outcome::Success);
                    break;
                }
            }
        }
        // With two instances both are always compared: a until its cost
        // 10 × (outstanding + 1) passes 105, then b.
        let held: Vec<_> = (0..11).map(|_| b.pick(None).unwrap()).collect();
        assert_eq!(ids(&held), "aaaaaaaaaab");
        // A fast failure does not make an instance look fast; a fast
        // overload makes it look twice as slow.
        drop(held);
        let complete_a = |o| loop {
            let p = b.pick(None).unwrap();
            if p.id() == "a" {
                p.complete(MS, o);
                break b.snapshot().instances[0].ewma_rtt_us;
            }
        };
        assert_eq!(complete_a(Outcome::Failure), 10_000);
        assert_eq!(complete_a(Outcome::Timeout), 10_000);
        assert_eq!(complete_a(Outcome::Overloaded), 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_with_slots_counts_calls_in_flight_per_slot() {
        let b = Balancer::new(BalanceConfig {
            policy: Policy::P2c,
            seed: Some(42),
            default_rtt_ms: 1,
            slots: 4,
            ..BalanceConfig::default()
        });
        b.add("a", 1);
        b.add("b", 1);
        for (id, rtt) in [("a", 10), ("b", 103)] {
            loop {
                let p = b.pick(None).unwrap();
                if p.id() == id {
                    p.complete(MS * rtt, Outcome::Success);
                    break;
                }
            }
        }
        // a's cost 10 × (1 + outstanding / 4) passes 103 only at 38 in
        // flight (with one slot it would at 10: see the test above).
        let held: Vec<_> = (0..39).map(|_| b.pick(None).unwrap()).collect();
        assert_eq!(ids(&held), format!("{}b", "a".repeat(38)));
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_picks_two_distinct_at_random() {
        let b = balancer(Policy::P2c, &["a", "b", "c", "d"]);
        // Equal costs: ties go to the first draw, so the share is uniform.
        for _ in 0..4000 {
            drop(b.pick(None).unwrap());
        }
        for inst in b.snapshot().instances {
            assert!((900..1100).contains(&inst.picks), "{inst:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn least_outstanding_fills_evenly() {
        let b = balancer(Policy::LeastOutstanding, &["a", "b", "c"]);
        let mut held: Vec<_> = (0..9).map(|_| b.pick(None).unwrap()).collect();
        let snap = b.snapshot();
        assert!(
            snap.instances.iter().all(|i| i.outstanding == 3),
            "{snap:?}"
        );
        held.retain(|p| p.id() != "b");
        let next: Vec<_> = (0..3).map(|_| b.pick(None).unwrap()).collect();
        assert_eq!(ids(&next), "bbb");
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_within_the_cap_and_half_open_returns() {
        let b = balancer(Policy::RoundRobin, &["a", "b", "c", "d"]);
        fail(&b, "a", 3);
        assert_eq!(state(&b, "a"), InstanceState::Ejected);
        fail(&b, "b", 3);
        assert_eq!(state(&b, "b"), InstanceState::Ejected);
        // 50% of 4: the third stays in, however badly it does.
        fail(&b, "c", 10);
        assert_eq!(state(&b, "c"), InstanceState::Healthy);
        let picks: Vec<_> = (0..4).map(|_| b.pick(None).unwrap()).collect();
        let mut got: Vec<_> = picks.iter().map(Pick::id).collect();
        got.sort();
        assert_eq!(got, ["c", "c", "d", "d"]);
        drop(picks);
        // After 1 s a and b are half-open: two probes each, then no more.
        tokio::time::advance(MS * 1000).await;
        let picks: Vec<_> = (0..12).map(|_| b.pick(None).unwrap()).collect();
        let count = |id| picks.iter().filter(|p| p.id() == id).count();
        assert_eq!(
            [count("a"), count("b"), count("c"), count("d")],
            [2, 2, 4, 4]
        );
        for p in &picks {
            assert_eq!(p.is_probe(), p.id() == "a" || p.id() == "b");
        }
        assert_eq!(state(&b, "a"), InstanceState::HalfOpen);
        // a: both probes succeed → healthy. b: one fails → ejected for 2 s.
        let (first, rest): (Vec<_>, Vec<_>) = picks.into_iter().partition(|p| p.id() != "b");
        let mut b_probes = rest.into_iter();
        b_probes.next().unwrap().complete(MS * 5, Outcome::Failure);
        let picks = first.into_iter().chain(b_probes);
        assert_eq!(state(&b, "b"), InstanceState::Ejected);
        for p in picks {
            p.complete(MS * 5, Outcome::Success);
        }
        assert_eq!(state(&b, "a"), InstanceState::Healthy);
        tokio::time::advance(MS * 1999).await;
        assert_eq!(state(&b, "b"), InstanceState::Ejected);
        tokio::time::advance(MS).await;
        assert_eq!(state(&b, "b"), InstanceState::HalfOpen);
        let snap = b.snapshot();
        assert_eq!(
            snap.instances
                .iter()
                .map(|i| i.ejections)
                .collect::<Vec<_>>(),
            [1, 2, 0, 0]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_frees_its_slot_and_overload_does_not_eject() {
        let b = balancer(Policy::RoundRobin, &["a", "b"]);
        for _ in 0..10 {
            b.pick(None).unwrap().complete(MS, Outcome::Overloaded);
        }
        assert_eq!(state(&b, "a"), InstanceState::Healthy);
        fail(&b, "a", 3);
        // Two instances at 50%: one may go.
        assert_eq!(state(&b, "a"), InstanceState::Ejected);
        fail(&b, "b", 5);
        assert_eq!(state(&b, "b"), InstanceState::Healthy, "never all");
        tokio::time::advance(MS * 1000).await;
        // Round robin alternates, so of four picks two are a's probes.
        let mut picks: Vec<_> = (0..4).map(|_| b.pick(None).unwrap()).collect();
        picks.sort_by_key(|p| p.id().to_owned());
        assert_eq!(ids(&picks), "aabb");
        assert!(picks[0].is_probe() && picks[1].is_probe() && !picks[2].is_probe());
        // Both probe slots taken: a is skipped until one comes back.
        assert_eq!(ids(&[b.pick(None).unwrap(), b.pick(None).unwrap()]), "bb");
        let r = picks.remove(1);
        drop(r);
        let again = [b.pick(None).unwrap(), b.pick(None).unwrap()];
        assert_eq!(again.iter().filter(|p| p.is_probe()).count(), 1);
        let snap = b.snapshot();
        assert_eq!(
            (snap.instances[0].outstanding, snap.instances[0].cancelled),
            (2, 1)
        );
        drop((picks, again));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_and_remove_with_calls_in_flight() {
        let b = balancer(Policy::RoundRobin, &["a", "b"]);
        let pa = b.pick(None).unwrap();
        assert!(b.drain("a"));
        assert!(!b.drain("zz"));
        let snap = b.snapshot();
        assert_eq!(
            (snap.instances[0].state, snap.instances[0].outstanding),
            (InstanceState::Draining, 1)
        );
        assert_eq!(ids(&[b.pick(None).unwrap(), b.pick(None).unwrap()]), "bb");
        pa.complete(MS * 7, Outcome::Success);
        let a = &b.snapshot().instances[0];
        assert_eq!((a.outstanding, a.successes, a.ewma_rtt_us), (0, 1, 7000));
        // Removed while a call is in flight; re-added under the same id:
        // the old call's outcome belongs to neither.
        let pb = b.pick(None).unwrap();
        assert!(b.remove("b"));
        assert!(b.add("b", 1));
        pb.complete(MS, Outcome::Failure);
        let snap = b.snapshot();
        assert_eq!(snap.instances.len(), 2);
        assert_eq!(
            (snap.instances[1].id.as_str(), snap.instances[1].failures),
            ("b", 0)
        );
        // Re-adding a draining instance brings it back.
        assert!(!b.add("a", 1));
        assert_eq!(state(&b, "a"), InstanceState::Healthy);
        b.drain("a");
        b.drain("b");
        assert!(b.pick(None).is_none(), "nothing but draining instances");
    }

    #[tokio::test(start_paused = true)]
    async fn all_marked_unhealthy_falls_back_to_all() {
        let b = balancer(Policy::RoundRobin, &["a", "b"]);
        b.mark_unhealthy("a");
        assert_eq!(ids(&[b.pick(None).unwrap(), b.pick(None).unwrap()]), "bb");
        b.mark_unhealthy("b");
        assert_eq!(ids(&[b.pick(None).unwrap(), b.pick(None).unwrap()]), "ab");
        // Still out after any time: only an active check brings it back.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(state(&b, "a"), InstanceState::Ejected);
        assert!(b.mark_healthy("a") && !b.mark_healthy("zz"));
        assert_eq!(ids(&[b.pick(None).unwrap(), b.pick(None).unwrap()]), "aa");
    }

    #[tokio::test(start_paused = true)]
    async fn hash_is_sticky_and_falls_through_in_key_order() {
        let b = balancer(Policy::Hash, &["a", "b", "c", "d", "e"]);
        let home = b.pick(Some("conv-17")).unwrap().id().to_owned();
        for _ in 0..20 {
            assert_eq!(b.pick(Some("conv-17")).unwrap().id(), home);
        }
        b.mark_unhealthy(&home);
        let second = b.pick(Some("conv-17")).unwrap().id().to_owned();
        assert_ne!(second, home);
        b.mark_unhealthy(&second);
        let third = b.pick(Some("conv-17")).unwrap().id().to_owned();
        assert!(third != home && third != second);
        // The second choice comes back first: the order is the key's own.
        b.mark_healthy(&second);
        assert_eq!(b.pick(Some("conv-17")).unwrap().id(), second);
        b.mark_healthy(&home);
        assert_eq!(b.pick(Some("conv-17")).unwrap().id(), home);
    }

    #[test]
    fn pick_is_send_and_snapshot_serialises() {
        fn is_send_static<T: Send + Sync + 'static>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let b = balancer(Policy::P2c, &["a"]);
        let p = b.pick(None).unwrap();
        is_send_static(&p);
        is_send_static(&b);
        let json = serde_json::to_value(b.snapshot()).unwrap();
        assert_eq!(json["policy"], "p2c");
        assert_eq!(json["instances"][0]["state"], "healthy");
        assert_eq!(json["instances"][0]["outstanding"], 1);
        assert_eq!(json["instances"][0]["pick_share"], 1.0);
    }
}
