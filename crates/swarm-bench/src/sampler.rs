//! Samples the target's `/api/status` while a step runs: queue depth,
//! running tasks, database connections in use, succeeded count — summed
//! over pools, or for one pool (`target.pool`) along with its concurrency
//! limit.

use std::time::Duration;

use reqwest::Client;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::result::StatusSeries;

/// A running sampler; `stop` returns what it saw.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<StatusSeries>,
}

fn sum(pools: &Value, key: &str) -> u64 {
    pools
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p[key].as_u64()).sum())
        .unwrap_or(0)
}

/// Adds one `/api/status` answer to `series` at `t_s`.
pub fn push_sample(series: &mut StatusSeries, t_s: f64, status: &Value) {
    series.t_s.push(t_s);
    series.queued.push(sum(&status["pools"], "queued"));
    series.running.push(sum(&status["pools"], "running"));
    series.succeeded.push(sum(&status["pools"], "succeeded"));
    series
        .db_in_use
        .push(status["database"]["in_use"].as_u64().unwrap_or(0));
}

/// Adds one `/api/status` answer to `series` at `t_s`: with `pool`, that
/// pool's figures and its limit (`concurrency`, else `limit.limit`); an
/// answer without that pool adds nothing (and returns false).
pub fn push_sample_for(
    series: &mut StatusSeries,
    t_s: f64,
    status: &Value,
    pool: Option<&str>,
) -> bool {
    let Some(name) = pool else {
        push_sample(series, t_s, status);
        return true;
    };
    let Some(p) = status["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"].as_str() == Some(name)))
    else {
        return false;
    };
    let get = |k: &str| p[k].as_u64().unwrap_or(0);
    series.t_s.push(t_s);
    series.queued.push(get("queued"));
    series.running.push(get("running"));
    series.succeeded.push(get("succeeded"));
    series
        .db_in_use
        .push(status["database"]["in_use"].as_u64().unwrap_or(0));
    series.limit.push(
        p["concurrency"]
            .as_u64()
            .or_else(|| p["limit"]["limit"].as_u64())
            .unwrap_or(0),
    );
    true
}

impl Sampler {
    /// Samples `base/api/status` every `every`, times relative to `from`.
    pub fn start(client: Client, base: &str, every: Duration, from: Instant) -> Self {
        Self::start_for(client, base, every, from, None)
    }

    /// As [`Self::start`], for one pool when `pool` is given.
    pub fn start_for(
        client: Client,
        base: &str,
        every: Duration,
        from: Instant,
        pool: Option<String>,
    ) -> Self {
        let (tx, mut rx) = oneshot::channel();
        let url = format!("{}/api/status", base.trim_end_matches('/'));
        let handle = tokio::spawn(async move {
            let mut series = StatusSeries::default();
            loop {
                if let Ok(r) = client.get(&url).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    let t = Instant::now().saturating_duration_since(from).as_secs_f64();
                    push_sample_for(&mut series, t, &v, pool.as_deref());
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = &mut rx => break,
                }
            }
            // One last look at the end of the window.
            if let Ok(r) = client.get(&url).send().await
                && let Ok(v) = r.json::<Value>().await
            {
                let t = Instant::now().saturating_duration_since(from).as_secs_f64();
                push_sample_for(&mut series, t, &v, pool.as_deref());
            }
            series
        });
        Self { stop: tx, handle }
    }

    /// Stops and returns the series.
    pub async fn stop(self) -> StatusSeries {
        let _ = self.stop.send(());
        self.handle.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn samples_sum_over_pools_and_give_goodput() {
        let mut s = StatusSeries::default();
        let st = |q: u64, succ: u64| {
            json!({"pools": [{"queued": q, "running": 2, "succeeded": succ}, {"queued": 1, "running": 0, "succeeded": 0}],
                   "database": {"in_use": 3}})
        };
        push_sample(&mut s, 0.0, &st(5, 100));
        push_sample(&mut s, 2.0, &st(9, 300));
        assert_eq!(s.queued, vec![6, 10]);
        assert_eq!(s.running, vec![2, 2]);
        assert_eq!(s.db_in_use, vec![3, 3]);
        assert_eq!(s.max_queued(), 10);
        assert_eq!(s.goodput(), Some(100.0));
        assert_eq!(StatusSeries::default().goodput(), None);
    }

    #[test]
    fn one_pool_is_sampled_with_its_limit() {
        let mut s = StatusSeries::default();
        let st = |limit: u64| {
            json!({"pools": [
                {"name": "echo", "queued": 7, "running": 1, "succeeded": 5, "concurrency": 64},
                {"name": "sim", "queued": 3, "running": 2, "succeeded": 40,
                 "concurrency": limit, "limit": {"limit": limit, "in_flight": 2}},
                {"name": "old", "queued": 0, "running": 0, "succeeded": 0, "limit": {"limit": 9}}
            ], "database": {"in_use": 1}})
        };
        assert!(push_sample_for(&mut s, 0.0, &st(10), Some("sim")));
        assert!(push_sample_for(&mut s, 1.0, &st(4), Some("sim")));
        assert!(!push_sample_for(&mut s, 2.0, &st(4), Some("nope")));
        assert_eq!(s.t_s, vec![0.0, 1.0]);
        assert_eq!(s.queued, vec![3, 3]);
        assert_eq!(s.succeeded, vec![40, 40]);
        assert_eq!(s.limit, vec![10, 4]);
        assert_eq!(s.limit_range(), Some((4, 10)));
        let mut old = StatusSeries::default();
        push_sample_for(&mut old, 0.0, &st(1), Some("old"));
        assert_eq!(
            old.limit,
            vec![9],
            "`limit.limit` when there is no `concurrency`"
        );
        let mut all = StatusSeries::default();
        push_sample_for(&mut all, 0.0, &st(1), None);
        assert_eq!(all.queued, vec![10]);
        assert!(all.limit.is_empty() && all.limit_range().is_none());
    }
}
