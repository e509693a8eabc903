//! Samples the target's `/api/status` while a step runs: queue depth,
//! running tasks, database connections in use, succeeded count.

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

impl Sampler {
    /// Samples `base/api/status` every `every`, times relative to `from`.
    pub fn start(client: Client, base: &str, every: Duration, from: Instant) -> Self {
        let (tx, mut rx) = oneshot::channel();
        let url = format!("{}/api/status", base.trim_end_matches('/'));
        let handle = tokio::spawn(async move {
            let mut series = StatusSeries::default();
            loop {
                if let Ok(r) = client.get(&url).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    let t = Instant::now().saturating_duration_since(from).as_secs_f64();
                    push_sample(&mut series, t, &v);
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
                push_sample(&mut series, t, &v);
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
}
