//! Admission bookkeeping: per-tenant outstanding counts (quotas), per-tenant
//! admission rates (fair shedding) and drain rates (for `Retry-After`).
//! The decisions made from them are `admission`'s.
//!
//! Every read here is in memory, so a refusal costs microseconds and happens
//! before the task touches the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Queued plus running tasks per tenant on this node, and, on a cluster,
/// what the other nodes last said they hold (so a quota counts them all).
#[derive(Debug, Default)]
pub(crate) struct TenantLedger {
    counts: Mutex<HashMap<Arc<str>, usize>>,
    elsewhere: Mutex<HashMap<String, usize>>,
    /// Whether other nodes are alive (set by the cluster loop each tick).
    clustered: std::sync::atomic::AtomicBool,
    /// Slots of tasks that left this node for another, held until the
    /// cluster loop has read the others' counts twice (see [`TenantLedger::park`]).
    parked: Mutex<Vec<TenantSlot>>,
}

/// One outstanding task of a tenant; gives its count back when dropped, so
/// every path out of the engine (finish, cancel, hand-back, panic) releases
/// it. It also carries the task's token reservation, if admission made
/// one: the two live exactly as long.
#[derive(Debug)]
pub(crate) struct TenantSlot {
    ledger: Arc<TenantLedger>,
    tenant: Arc<str>,
    tokens: Option<crate::tokens::TokenHold>,
}

impl TenantSlot {
    /// Adds the task's token reservation.
    pub(crate) fn hold_tokens(&mut self, hold: crate::tokens::TokenHold) {
        self.tokens = Some(hold);
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut m = self.ledger.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

impl TenantLedger {
    /// Takes a slot if the tenant has fewer than `max` outstanding; else
    /// returns how many it has.
    pub(crate) fn try_take(
        self: &Arc<Self>,
        tenant: &str,
        max: usize,
    ) -> Result<TenantSlot, usize> {
        let others = if max == usize::MAX {
            0
        } else {
            let e = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
            e.get(tenant).copied().unwrap_or(0)
        };
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.get(tenant).copied().unwrap_or(0) + others;
        if n >= max {
            return Err(n);
        }
        let key: Arc<str> = match m.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => Arc::from(tenant),
        };
        *m.entry(key.clone()).or_insert(0) += 1;
        Ok(TenantSlot {
            ledger: self.clone(),
            tenant: key,
            tokens: None,
        })
    }

    /// Takes a slot regardless of the quota (recovered tasks were accepted
    /// before; they are never refused).
    pub(crate) fn take(self: &Arc<Self>, tenant: &str) -> TenantSlot {
        self.try_take(tenant, usize::MAX)
            .expect("an unbounded take cannot fail")
    }

    /// Holds the slot of a task that left this node for another (a start
    /// that found it claimed) until the cluster loop has read the others'
    /// counts twice: the claimer may not have published its count yet at
    /// the first read, and until it has, dropping the slot would count the
    /// task on no node and let a quota admit one too many. Alone, there is
    /// nobody to wait for: the slot is dropped at once.
    pub(crate) fn park(&self, slot: TenantSlot) {
        if self.clustered.load(Ordering::Relaxed) {
            self.parked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(slot);
        }
    }

    /// The slots parked since the last call (the cluster loop holds them
    /// past its next read).
    pub(crate) fn take_parked(&self) -> Vec<TenantSlot> {
        std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether other nodes are alive (so slots leaving are parked).
    pub(crate) fn set_clustered(&self, clustered: bool) {
        self.clustered.store(clustered, Ordering::Relaxed);
    }

    /// This node's outstanding tasks per tenant (what it tells the others).
    pub(crate) fn snapshot(&self) -> HashMap<String, usize> {
        let m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// What the other nodes hold per tenant, as this node last read it.
    pub(crate) fn elsewhere(&self) -> HashMap<String, usize> {
        self.elsewhere
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the other nodes hold per tenant, as they last published it.
    pub(crate) fn set_elsewhere(&self, counts: HashMap<String, usize>) {
        *self.elsewhere.lock().unwrap_or_else(|p| p.into_inner()) = counts;
    }

    /// Outstanding tasks of `tenant`.
    #[cfg(test)]
    pub(crate) fn outstanding(&self, tenant: &str) -> usize {
        let m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        m.get(tenant).copied().unwrap_or(0)
    }
}

/// Admissions per second per tenant, exponentially decayed (time constant
/// [`RATE_TAU`]): who is taking a pool's capacity right now.
///
/// While a pool sheds, a tenant admitted at a lower rate than some other
/// tenant is still admitted; only the heaviest are refused. That is
/// max-min fairness on rates: a tenant asking for less than its share keeps
/// getting all of it, the floods share the rest, and a lone tenant is never
/// exempt (it alone is the load). Rates, not queue lengths, because
/// shedding keeps the queue at a few tasks, too few to tell shares apart.
///
/// It also keeps each tenant's *offered* rate (submissions, refused ones
/// included), from which [`TenantRates::within_share`] finds the tenants
/// asking for less than their max-min fair share; the pool serves those
/// first (`FairQueue::set_favoured`).
#[derive(Debug, Default)]
pub(crate) struct TenantRates {
    rates: Mutex<HashMap<Arc<str>, Rate>>,
}

/// One tenant's decayed rates, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Rate {
    at: Instant,
    admitted: f64,
    offered: f64,
}

/// A tenant offering up to this much more than its computed fair share
/// still counts as within it: rates are estimates (a tenant at exactly its
/// share reads above it half the time), and the margin is what keeps such
/// a tenant favoured.
pub(crate) const SHARE_MARGIN: f64 = 1.1;

/// Memory of [`TenantRates`], seconds.
pub(crate) const RATE_TAU: f64 = 1.0;

fn decayed(at: Instant, rate: f64, now: Instant) -> f64 {
    rate * (-(now.saturating_duration_since(at).as_secs_f64()) / RATE_TAU).exp()
}

impl TenantRates {
    fn bump(&self, tenant: &str, now: Instant, admitted: f64, offered: f64) {
        let mut m = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(tenant) {
            Some(r) => {
                r.admitted = decayed(r.at, r.admitted, now) + admitted / RATE_TAU;
                r.offered = decayed(r.at, r.offered, now) + offered / RATE_TAU;
                r.at = now;
            }
            None => {
                m.insert(
                    Arc::from(tenant),
                    Rate {
                        at: now,
                        admitted: admitted / RATE_TAU,
                        offered: offered / RATE_TAU,
                    },
                );
            }
        }
    }

    /// Counts one submission of `tenant` at `now`, before it is judged.
    pub(crate) fn offered(&self, tenant: &str, now: Instant) {
        self.bump(tenant, now, 0.0, 1.0);
    }

    /// Counts one admission of `tenant` at `now`.
    pub(crate) fn admitted(&self, tenant: &str, now: Instant) {
        self.bump(tenant, now, 1.0, 0.0);
    }

    /// Whether some other tenant, not `ignored`, is being admitted faster
    /// than `tenant`.
    pub(crate) fn is_light(
        &self,
        tenant: &str,
        now: Instant,
        ignored: impl Fn(&str) -> bool,
    ) -> bool {
        let m = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mine = m
            .get(tenant)
            .map_or(0.0, |r| decayed(r.at, r.admitted, now));
        m.iter()
            .any(|(t, r)| **t != *tenant && !ignored(t) && decayed(r.at, r.admitted, now) > mine)
    }

    /// The tenants offering at most their max-min fair share of `capacity`
    /// (tasks per second), by water-filling (Bertsekas & Gallager, *Data
    /// Networks*, §6.5.2): in order of offered rate per unit weight, each
    /// tenant's share is what is left divided by the weights left; a tenant
    /// within it (with [`SHARE_MARGIN`]) is satisfied and leaves the rest to
    /// the others. Empty unless some tenant asks for more than its share:
    /// without contention there is no one to favour.
    pub(crate) fn within_share(
        &self,
        capacity: f64,
        weight: impl Fn(&str) -> u32,
        now: Instant,
    ) -> Vec<Arc<str>> {
        if capacity <= 0.0 {
            return Vec::new();
        }
        let m = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mut tenants: Vec<(Arc<str>, f64, f64)> = m
            .iter()
            .map(|(t, r)| {
                let w = f64::from(weight(t).max(1));
                (t.clone(), decayed(r.at, r.offered, now), w)
            })
            .filter(|(_, offered, _)| *offered > 0.01)
            .collect();
        drop(m);
        tenants.sort_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2)));
        let mut left = capacity;
        let mut weights: f64 = tenants.iter().map(|t| t.2).sum();
        let mut within = Vec::new();
        for (t, offered, w) in tenants {
            let share = left * w / weights;
            if offered > share * SHARE_MARGIN {
                // This tenant and every one after it ask for more.
                return within;
            }
            within.push(t);
            left = (left - offered).max(0.0);
            weights -= w;
        }
        Vec::new()
    }

    /// Forgets tenants idle for a while (bounded memory).
    pub(crate) fn prune(&self, now: Instant) {
        let mut m = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, r| decayed(r.at, r.offered.max(r.admitted), now) > 0.01);
    }
}

/// Completions per second, smoothed: the basis of `Retry-After`.
///
/// Each governor tick turns the completions counted since the last tick
/// into a rate and folds it into an exponentially weighted moving average
/// (weight 0.3 for the newest tick: about three ticks of memory, so the
/// estimate follows a backend that slows down within seconds).
#[derive(Debug, Default)]
pub(crate) struct DrainRate {
    completed: AtomicU64,
    /// f64 bits of the smoothed rate (tasks per second).
    rate_bits: AtomicU64,
}

impl DrainRate {
    pub(crate) fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Folds the completions since the last call over `elapsed` into the rate.
    pub(crate) fn tick(&self, elapsed: Duration) {
        let n = self.completed.swap(0, Ordering::Relaxed) as f64;
        let secs = elapsed.as_secs_f64().max(1e-3);
        let now = n / secs;
        let old = self.per_second();
        let new = if old == 0.0 {
            now
        } else {
            0.7 * old + 0.3 * now
        };
        self.rate_bits.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Smoothed completions per second (0 before the first completion).
    pub(crate) fn per_second(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Seconds until `backlog` tasks have drained at the measured rate,
    /// rounded up and clamped to 1–60 (an idle or unmeasured pool says 1).
    pub(crate) fn retry_after_s(&self, backlog: usize) -> u64 {
        let rate = self.per_second();
        if rate <= 0.0 {
            return 1;
        }
        ((backlog as f64 / rate).ceil() as u64).clamp(1, 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_share_is_max_min_by_water_filling() {
        let r = TenantRates::default();
        let now = Instant::now();
        let offer = |t: &str, n: usize| (0..n).for_each(|_| r.offered(t, now));
        offer("a", 1000);
        offer("b", 150);
        offer("c", 50);
        let names = |v: Vec<Arc<str>>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        // Shares of 364/s: c 121 (asks 50), then b 157 (asks 150), a the
        // remaining 164 (asks 1000).
        assert_eq!(names(r.within_share(364.0, |_| 1, now)), ["c", "b"]);
        // Less capacity: b's share (107) is below what it asks.
        assert_eq!(names(r.within_share(200.0, |_| 1, now)), ["c"]);
        // Weight 4 for a: nobody is over its share, so nobody is favoured.
        assert!(
            r.within_share(2000.0, |t| if t == "a" { 4 } else { 1 }, now)
                .is_empty()
        );
        // No contention at all: empty too.
        assert!(r.within_share(5000.0, |_| 1, now).is_empty());
        assert!(r.within_share(0.0, |_| 1, now).is_empty());
    }

    #[test]
    fn tenant_slots_count_and_release() {
        let l = Arc::new(TenantLedger::default());
        let a = l.try_take("a", 2).unwrap();
        let b = l.try_take("a", 2).unwrap();
        assert_eq!(l.try_take("a", 2).unwrap_err(), 2);
        assert!(l.try_take("b", 2).is_ok(), "another tenant is unaffected");
        drop(a);
        assert_eq!(l.outstanding("a"), 1);
        let _c = l.try_take("a", 2).unwrap();
        drop(b);
        let forced = l.take("a");
        assert_eq!(l.outstanding("a"), 2);
        drop(forced);
        drop(_c);
        assert_eq!(l.outstanding("a"), 0);
        assert!(
            l.counts.lock().unwrap().is_empty(),
            "empty tenants are forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_slower_admitted_tenant_is_light() {
        let r = TenantRates::default();
        let t0 = Instant::now();
        for i in 0..100 {
            r.admitted("a", t0 + Duration::from_millis(i * 5));
        }
        for i in 0..20 {
            r.admitted("b", t0 + Duration::from_millis(i * 25));
        }
        let now = t0 + Duration::from_millis(500);
        assert!(
            r.is_light("b", now, |_| false),
            "b at 40/s beside a at 200/s"
        );
        assert!(!r.is_light("a", now, |_| false));
        assert!(r.is_light("new", now, |_| false), "a newcomer is light");
        assert!(
            !r.is_light("b", now, |t| t == "a"),
            "lighter only than a tenant that does not count"
        );
        let lone = TenantRates::default();
        lone.admitted("x", t0);
        assert!(
            !lone.is_light("x", t0, |_| false),
            "a lone tenant is the load"
        );
        r.prune(now + Duration::from_secs(30));
        assert!(
            r.rates.lock().unwrap().is_empty(),
            "idle tenants are forgotten"
        );
    }

    #[test]
    fn drain_rate_smooths_and_sets_retry_after() {
        let d = DrainRate::default();
        assert_eq!(d.retry_after_s(1000), 1, "unmeasured says 1");
        for _ in 0..100 {
            d.completed();
        }
        d.tick(Duration::from_secs(1));
        assert_eq!(d.per_second(), 100.0);
        assert_eq!(d.retry_after_s(250), 3);
        assert_eq!(d.retry_after_s(1_000_000), 60);
        d.tick(Duration::from_secs(1));
        assert!((d.per_second() - 70.0).abs() < 1e-9);
    }
}
