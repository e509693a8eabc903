//! Model tests under paused tokio time: every duration is exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use super::{Model, Outcome, scaled_ms};
use crate::config::{SimConfig, Step};

fn cfg(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        seed: Some(1),
        ..SimConfig::default()
    }
}

fn step(at_s: f64) -> Step {
    Step {
        at_s,
        capacity: None,
        hard_limit: None,
        latency_ms: None,
        error_rate: None,
    }
}

/// What one request saw: inflight at arrival (0 when refused), elapsed ms,
/// and a short label of the outcome.
type Seen = (u64, u128, &'static str);

async fn one(model: &Arc<Model>) -> Seen {
    let t0 = Instant::now();
    let out = model.process().await;
    let ms = t0.elapsed().as_millis();
    match out {
        Outcome::Ready(r) => (r.inflight_at_arrival, ms, "ok"),
        Outcome::Refused { .. } => (0, ms, "429"),
        Outcome::Failed { .. } => (0, ms, "5xx"),
    }
}

/// Starts `k` requests at the same instant, in order.
fn burst(model: &Arc<Model>, k: usize) -> Vec<JoinHandle<Seen>> {
    (0..k)
        .map(|_| {
            let m = Arc::clone(model);
            tokio::spawn(async move { one(&m).await })
        })
        .collect()
}

async fn join(handles: Vec<JoinHandle<Seen>>) -> Vec<Seen> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn base_latency() {
    let model = Model::new(cfg(200));
    assert_eq!(one(&model).await, (1, 200, "ok"));
    let s = model.stats();
    assert_eq!((s.served, s.inflight, s.inflight_max), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_in_bounds_and_varies() {
    let model = Model::new(SimConfig {
        jitter_ms: 50,
        ..cfg(100)
    });
    let mut seen = Vec::new();
    for _ in 0..200 {
        let (_, ms, what) = one(&model).await;
        assert_eq!(what, "ok");
        assert!((100..=150).contains(&ms), "{ms}");
        seen.push(ms);
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 20, "jitter too regular: {seen:?}");
}

#[test]
fn scaling_arithmetic() {
    assert_eq!(scaled_ms(100, 5, 0), 100);
    assert_eq!(scaled_ms(100, 1, 2), 100);
    assert_eq!(scaled_ms(100, 3, 2), 150);
    assert_eq!(scaled_ms(u64::MAX, u64::MAX, 1), u64::MAX);
}

#[tokio::test(start_paused = true)]
async fn knee_scales_latency_with_inflight() {
    let model = Model::new(SimConfig {
        capacity: 2,
        ..cfg(200)
    });
    let seen = join(burst(&model, 4)).await;
    assert_eq!(
        seen,
        vec![
            (1, 200, "ok"),
            (2, 200, "ok"),
            (3, 300, "ok"),
            (4, 400, "ok")
        ]
    );
    assert_eq!(model.stats().inflight_max, 4);
}

#[tokio::test(start_paused = true)]
async fn hard_limit_refuses_excess_then_admits_again() {
    let model = Model::new(SimConfig {
        hard_limit: 2,
        ..cfg(200)
    });
    let first = burst(&model, 3);
    sleep(Duration::from_millis(100)).await;
    // Two are in flight: a fourth is refused at once, too.
    assert_eq!(one(&model).await, (0, 0, "429"));
    assert_eq!(model.stats().inflight, 2);
    let seen = join(first).await;
    assert_eq!(seen, vec![(1, 200, "ok"), (2, 200, "ok"), (0, 0, "429")]);
    // Inflight dropped back to zero: admitted again.
    assert_eq!(one(&model).await, (1, 200, "ok"));
    let s = model.stats();
    assert_eq!(
        (s.served, s.refused, s.inflight, s.inflight_max),
        (3, 2, 0, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn schedule_steps_and_repeats() {
    let model = Model::new(SimConfig {
        schedule: vec![
            // Deliberately out of order: the model sorts by `at_s`.
            Step {
                capacity: Some(5),
                latency_ms: Some(50),
                ..step(2.0)
            },
            Step {
                capacity: Some(1),
                ..step(1.0)
            },
        ],
        repeat_s: Some(3.0),
        ..cfg(100)
    });
    let cap = |s: f64| model.params_at(Duration::from_secs_f64(s)).capacity;
    let caps: Vec<u64> = [0.0, 0.99, 1.0, 1.5, 2.0, 2.9, 3.0, 4.2, 5.5]
        .map(cap)
        .to_vec();
    assert_eq!(caps, vec![0, 0, 1, 1, 5, 5, 0, 1, 5]);
    assert_eq!(model.params_at(Duration::from_secs(2)).latency_ms, 50);
    assert_eq!(model.params_at(Duration::from_secs(4)).latency_ms, 100);

    // The steps change behaviour at the right times.
    let seen = join(burst(&model, 2)).await;
    assert_eq!(seen, vec![(1, 100, "ok"), (2, 100, "ok")]);
    sleep(Duration::from_millis(900)).await; // t = 1.0 s: capacity 1
    assert_eq!(model.stats().capacity, 1);
    let seen = join(burst(&model, 2)).await;
    assert_eq!(seen, vec![(1, 100, "ok"), (2, 200, "ok")]);
    sleep(Duration::from_millis(800)).await; // t = 2.0 s: capacity 5, 50 ms
    let seen = join(burst(&model, 2)).await;
    assert_eq!(seen, vec![(1, 50, "ok"), (2, 50, "ok")]);
    sleep(Duration::from_millis(1950)).await; // t = 4.0 s: capacity 1 again
    let s = model.stats();
    assert_eq!((s.capacity, s.latency_ms), (1, 100));
    let seen = join(burst(&model, 2)).await;
    assert_eq!(seen, vec![(1, 100, "ok"), (2, 200, "ok")]);
}

#[tokio::test(start_paused = true)]
async fn error_rate_one_always_fails_after_base_latency() {
    let model = Model::new(SimConfig {
        error_rate: 1.0,
        error_status: 503,
        capacity: 1,
        ..cfg(80)
    });
    let t0 = Instant::now();
    for _ in 0..10 {
        assert!(matches!(
            model.process().await,
            Outcome::Failed { status: 503 }
        ));
    }
    assert_eq!(t0.elapsed(), Duration::from_millis(800));
    let s = model.stats();
    assert_eq!((s.errors, s.served, s.inflight), (10, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn error_rate_zero_never_fails_and_schedule_can_raise_it() {
    let model = Model::new(SimConfig {
        schedule: vec![Step {
            error_rate: Some(1.0),
            ..step(10.0)
        }],
        ..cfg(10)
    });
    for _ in 0..100 {
        assert_eq!(one(&model).await.2, "ok");
    }
    sleep(Duration::from_secs(10)).await;
    assert_eq!(one(&model).await, (0, 10, "5xx"));
}

#[tokio::test(start_paused = true)]
async fn stall_hangs_then_serves() {
    let model = Model::new(SimConfig {
        stall_rate: 1.0,
        stall_ms: 5_000,
        ..cfg(100)
    });
    let m = Arc::clone(&model);
    let task = tokio::spawn(async move { one(&m).await });
    sleep(Duration::from_millis(4_000)).await;
    let s = model.stats();
    assert_eq!((s.inflight, s.stalled, s.served), (1, 1, 0));
    assert_eq!(task.await.unwrap(), (1, 5_100, "ok"));
    let s = model.stats();
    assert_eq!((s.inflight, s.stalled, s.served), (0, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn guard_decrements_when_request_is_dropped() {
    let model = Model::new(cfg(1_000));
    assert!(
        timeout(Duration::from_millis(50), model.process())
            .await
            .is_err()
    );
    let s = model.stats();
    assert_eq!((s.inflight, s.inflight_max, s.served), (0, 1, 0));

    // A served request stays in flight while its guard lives.
    let out = model.process().await;
    assert_eq!(model.stats().inflight, 1);
    drop(out);
    assert_eq!(model.stats().inflight, 0);
}

#[tokio::test(start_paused = true)]
async fn timeline_samples_inflight_over_time() {
    let model = Model::new(SimConfig {
        sample_ms: 100,
        ..cfg(250)
    });
    assert_eq!(one(&model).await.2, "ok");
    sleep(Duration::from_millis(150)).await;
    let pts: Vec<(u64, u64, u64)> = model
        .stats()
        .timeline
        .iter()
        .map(|s| (s.t_ms, s.inflight, s.served))
        .collect();
    assert_eq!(
        pts,
        vec![
            (0, 0, 0),
            (100, 1, 0),
            (200, 1, 0),
            (300, 0, 1),
            (400, 0, 1)
        ]
    );
}
