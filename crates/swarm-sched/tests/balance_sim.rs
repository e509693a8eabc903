//! Simulations of the balancer under paused tokio time (deterministic,
//! seeded). `cargo test -p swarm-sched --test balance_sim -- --nocapture`
//! prints the figures.
//!
//! The backend model: each instance answers after `base × U(0.8, 1.3)`,
//! plus queueing once more than `capacity` calls are in flight on it
//! (about processor sharing: every call beyond capacity at the start adds
//! `base / capacity`). Two variants: instances with 4 slots, which 32
//! clients saturate (an agent worker with a few model sessions), and
//! instances with 64, where latency does not depend on load at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarm_sched::balance::{
    BalanceConfig, Balancer, InstanceState, Outcome, OutlierConfig, Policy,
};
use tokio::time::Instant;

const CLIENTS: usize = 32;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(30);

struct Backend {
    base: Vec<Duration>,
    capacity: u32,
    in_flight: Mutex<Vec<u32>>,
}

impl Backend {
    /// Starts a call on instance `i`; returns its latency.
    fn start(&self, i: usize, rng: &mut fastrand::Rng) -> Duration {
        let mut inf = self.in_flight.lock().unwrap();
        inf[i] += 1;
        let base = self.base[i].as_secs_f64();
        let queue = f64::from(inf[i].saturating_sub(self.capacity)) / f64::from(self.capacity);
        Duration::from_secs_f64(base * (0.8 + 0.5 * rng.f64()) + base * queue)
    }

    fn end(&self, i: usize) {
        self.in_flight.lock().unwrap()[i] -= 1;
    }
}

#[derive(Debug)]
struct Figures {
    policy: Policy,
    slow_share: f64,
    p50_ms: f64,
    p99_ms: f64,
    throughput: f64,
}

fn index(id: &str) -> usize {
    id.trim_start_matches('i').parse().unwrap()
}

/// Four instances, `i3` five times slower; `CLIENTS` closed-loop clients.
async fn run_slow_instance(policy: Policy, capacity: u32) -> Figures {
    let b = Balancer::new(BalanceConfig {
        policy,
        seed: Some(11),
        default_rtt_ms: 20,
        ..BalanceConfig::default()
    });
    for i in 0..4 {
        b.add(format!("i{i}"), 1);
    }
    let ms = Duration::from_millis;
    let backend = Arc::new(Backend {
        base: vec![ms(20), ms(20), ms(20), ms(100)],
        capacity,
        in_flight: Mutex::new(vec![0; 4]),
    });
    let t0 = Instant::now();
    let (from, to) = (t0 + WARMUP, t0 + WARMUP + MEASURE);
    // (instance, latency) of calls started in the measuring window.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (b, backend, log) = (b.clone(), backend.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(1000 + c as u64);
            while Instant::now() < to {
                let pick = b.pick(None).expect("instances");
                let i = index(pick.id());
                let start = Instant::now();
                let lat = backend.start(i, &mut rng);
                tokio::time::sleep(lat).await;
                backend.end(i);
                pick.complete(lat, Outcome::Success);
                if start >= from && start < to {
                    log.lock().unwrap().push((i, lat));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap();
    let mut lat: Vec<f64> = log.iter().map(|(_, l)| l.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Figures {
        policy,
        slow_share: log.iter().filter(|(i, _)| *i == 3).count() as f64 / log.len() as f64,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        throughput: log.len() as f64 / MEASURE.as_secs_f64(),
    }
}

async fn compare(capacity: u32) -> HashMap<Policy, Figures> {
    let mut figs = HashMap::new();
    println!("\n{CLIENTS} clients, instances with {capacity} slots, i3 5× slower:");
    println!("| policy | share to slow | p50 ms | p99 ms | calls/s |");
    println!("|---|---:|---:|---:|---:|");
    for policy in [Policy::P2c, Policy::RoundRobin, Policy::LeastOutstanding] {
        let f = run_slow_instance(policy, capacity).await;
        println!(
            "| {:?} | {:.1}% | {:.1} | {:.1} | {:.0} |",
            f.policy,
            f.slow_share * 100.0,
            f.p50_ms,
            f.p99_ms,
            f.throughput
        );
        figs.insert(policy, f);
    }
    figs
}

#[tokio::test(start_paused = true)]
async fn p2c_avoids_a_slow_instance() {
    let figs = compare(4).await;
    let (p2c, rr, lo) = (
        &figs[&Policy::P2c],
        &figs[&Policy::RoundRobin],
        &figs[&Policy::LeastOutstanding],
    );
    // The targets.
    assert!(p2c.slow_share < 0.10, "{p2c:?}");
    assert!(p2c.p99_ms * 2.0 <= rr.p99_ms, "{p2c:?} vs {rr:?}");
    // The model is sane: round robin gives the slow one its quarter, and
    // p2c does not lose throughput to avoid it.
    assert!((0.24..0.26).contains(&rr.slow_share), "{rr:?}");
    assert!(lo.slow_share < rr.slow_share, "{lo:?}");
    assert!(p2c.throughput > 1.5 * rr.throughput, "{p2c:?} vs {rr:?}");
}

/// Where load does not raise latency, the `(outstanding + 1)` factor
/// overrates queueing that never happens, so p2c still gives the slow
/// instance a little work; enough to set the p99 when that share is above
/// 1%. Recorded, not a target.
#[tokio::test(start_paused = true)]
async fn p2c_with_load_independent_latency() {
    let figs = compare(64).await;
    let (p2c, rr) = (&figs[&Policy::P2c], &figs[&Policy::RoundRobin]);
    assert!(p2c.slow_share < 0.03, "{p2c:?}");
    assert!(p2c.p99_ms < rr.p99_ms, "{p2c:?} vs {rr:?}");
    assert!(p2c.throughput > 1.5 * rr.throughput, "{p2c:?} vs {rr:?}");
}

#[tokio::test(start_paused = true)]
async fn failing_instance_is_ejected_and_returns_through_half_open() {
    let b = Balancer::new(BalanceConfig {
        policy: Policy::P2c,
        seed: Some(5),
        default_rtt_ms: 20,
        outlier: OutlierConfig {
            consecutive_failures: 5,
            base_ejection_ms: 2_000,
            max_ejection_ms: 16_000,
            half_open_probes: 3,
            ..OutlierConfig::default()
        },
        ..BalanceConfig::default()
    });
    for i in 0..4 {
        b.add(format!("i{i}"), 1);
    }
    let t0 = Instant::now();
    let recover_at = t0 + Duration::from_secs(20);
    let end = t0 + Duration::from_secs(45);
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c);
            while Instant::now() < end {
                let pick = b.pick(None).expect("instances");
                // i0 fails every call, fast, until `recover_at`.
                if pick.id() == "i0" && Instant::now() < recover_at {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    pick.complete(Duration::from_millis(2), Outcome::Failure);
                    continue;
                }
                let lat = Duration::from_millis(15 + rng.u64(..10));
                tokio::time::sleep(lat).await;
                pick.complete(lat, Outcome::Success);
            }
        }));
    }
    // Watch i0 every 50 ms.
    let mut states = Vec::new();
    let mut picks_at = Vec::new();
    while Instant::now() < end {
        let s = b.snapshot();
        states.push((Instant::now() - t0, s.instances[0].state));
        picks_at.push((Instant::now() - t0, s.instances[0].picks, s.picks));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let first_ejected = states
        .iter()
        .find(|(_, s)| *s == InstanceState::Ejected)
        .unwrap()
        .0;
    assert!(
        first_ejected < Duration::from_millis(200),
        "{first_ejected:?}"
    );
    // While failing it never counts as healthy again; half-open probes
    // fail and re-eject it for longer: 2, 4, 8, 16 s.
    let failing: Vec<_> = states
        .iter()
        .filter(|(t, _)| *t > first_ejected && *t < Duration::from_secs(20))
        .collect();
    // (Half-open lasts one 2 ms probe each time, too short for the 50 ms
    // watch; the ejection count shows the failed probes.)
    assert!(failing.iter().all(|(_, s)| *s != InstanceState::Healthy));
    let snap = b.snapshot();
    assert_eq!(snap.instances[0].ejections, 4, "{snap:?}");
    // Back after recovery (the fourth ejection ends at ~30 s), via half-open.
    let back = states
        .iter()
        .find(|(t, s)| *t > Duration::from_secs(20) && *s == InstanceState::Healthy)
        .expect("returned")
        .0;
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(31)).contains(&back),
        "{back:?}"
    );
    assert_eq!(snap.instances[0].state, InstanceState::Healthy);
    // Few calls were wasted on it while failing; a fair share after.
    let at = |secs: u64| {
        *picks_at
            .iter()
            .find(|(t, _, _)| *t >= Duration::from_secs(secs))
            .unwrap()
    };
    let (_, i0_20, all_20) = at(20);
    let (_, i0_35, all_35) = at(35);
    let (_, i0_45, all_45) = (
        picks_at.last().unwrap().0,
        snap.instances[0].picks,
        snap.picks,
    );
    let failing_share = i0_20 as f64 / all_20 as f64;
    let recovered_share = (i0_45 - i0_35) as f64 / (all_45 - all_35) as f64;
    println!(
        "i0 ejected at {first_ejected:?}, back at {back:?}; share while failing {:.2}%, after {:.1}%",
        failing_share * 100.0,
        recovered_share * 100.0
    );
    assert!(failing_share < 0.01, "{failing_share}");
    assert!((0.18..0.32).contains(&recovered_share), "{recovered_share}");
}

fn hash_balancer(n: usize) -> Balancer {
    let b = Balancer::new(BalanceConfig {
        policy: Policy::Hash,
        seed: Some(1),
        ..BalanceConfig::default()
    });
    for i in 0..n {
        b.add(format!("agent-{i}.internal:8080"), 1);
    }
    b
}

fn map_keys(b: &Balancer, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| b.pick(Some(k)).unwrap().id().to_owned())
        .collect()
}

#[test]
fn hash_moves_only_the_removed_instances_keys() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("conversation-{i}")).collect();
    let b = hash_balancer(5);
    let before = map_keys(&b, &keys);
    // Sticky: the same key lands on the same instance while it is healthy,
    // whatever else is in flight.
    let held: Vec<_> = (0..50)
        .map(|_| b.pick(Some("conversation-7")).unwrap())
        .collect();
    assert!(held.iter().all(|p| p.id() == before[7]));
    drop(held);
    assert_eq!(map_keys(&b, &keys), before);
    // Balanced: each holds about a fifth.
    for i in 0..5 {
        let id = format!("agent-{i}.internal:8080");
        let n = before.iter().filter(|x| **x == id).count();
        assert!((1800..2200).contains(&n), "{id}: {n}");
    }
    let gone = "agent-2.internal:8080";
    b.remove(gone);
    let after = map_keys(&b, &keys);
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    let held_by_gone = before.iter().filter(|x| *x == gone).count();
    println!("removing 1 of 5 moved {moved} of 10000 keys");
    assert_eq!(moved, held_by_gone, "only the removed instance's keys move");
    assert!((1800..2200).contains(&moved), "about 1/5: {moved}");
    // And they spread over the four survivors, not onto one.
    for i in [0, 1, 3, 4] {
        let id = format!("agent-{i}.internal:8080");
        let got = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| *x == gone && **y == id)
            .count();
        assert!((350..650).contains(&got), "{id}: {got}");
    }
    // Adding one back takes ~1/5, all of it to the newcomer.
    b.add("agent-5.internal:8080", 1);
    let grown = map_keys(&b, &keys);
    let moved: Vec<_> = after.iter().zip(&grown).filter(|(x, y)| x != y).collect();
    // Five instances now, so a fifth.
    assert!((1800..2200).contains(&moved.len()), "{}", moved.len());
    assert!(moved.iter().all(|(_, y)| *y == "agent-5.internal:8080"));
}

#[test]
fn hash_key_follows_its_own_order_while_its_instance_is_out() {
    let keys: Vec<String> = (0..2_000).map(|i| format!("conversation-{i}")).collect();
    let b = hash_balancer(5);
    let before = map_keys(&b, &keys);
    let out = "agent-0.internal:8080";
    b.mark_unhealthy(out);
    let during = map_keys(&b, &keys);
    for (x, y) in before.iter().zip(&during) {
        if x == out {
            assert_ne!(y, out);
        } else {
            assert_eq!(x, y, "keys of healthy instances stay");
        }
    }
    b.mark_healthy(out);
    assert_eq!(map_keys(&b, &keys), before, "and come back");
}
