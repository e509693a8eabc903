//! `swarmd bench`: a closed-loop load generator for SwarmDirector.
//!
//! `--concurrency` clients each send a submission, wait for the answer and
//! send the next, until `--requests` have been sent. Latency is measured per
//! request with an HDR histogram (microseconds). Without `--wait-ms` the
//! latency is the acknowledgement (task durable and queued); the tool then
//! follows every task to its end and reports the time until all finished,
//! from the server's own timestamps. With `--wait-ms` each answer carries the
//! finished task, so latency is end-to-end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::cli::BenchArgs;
use crate::client::http_client;

#[derive(Default)]
struct Tally {
    codes: BTreeMap<u16, usize>,
    statuses: BTreeMap<String, usize>,
    transport_errors: usize,
    ids: Vec<String>,
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) async fn run(a: BenchArgs) -> Result<(), String> {
    if a.concurrency == 0 || a.requests == 0 {
        return Err("--concurrency and --requests must be at least 1".into());
    }
    let args: Value =
        serde_json::from_str(&a.args).map_err(|e| format!("--args is not JSON: {e}"))?;
    let mut body = json!({ "type": a.task_type, "args": args });
    if let Some(w) = a.wait_ms {
        body["wait_ms"] = json!(w);
    }
    let timeout = Duration::from_millis(a.wait_ms.unwrap_or(0) + 60_000);
    let client = http_client(&a.client, timeout)?;
    let url = format!("{}/api/tasks", a.client.server.trim_end_matches('/'));
    // Fail fast with a clear message when the target is not there.
    client
        .get(format!("{}/health", a.client.server.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", a.client.server))?;

    let next = Arc::new(AtomicUsize::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let body = Arc::new(body);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency {
        let (client, url, body, next, hist, tally) = (
            client.clone(),
            url.clone(),
            body.clone(),
            next.clone(),
            hist.clone(),
            tally.clone(),
        );
        let total = a.requests;
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static bounds are valid");
            let mut mine = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t0 = Instant::now();
                match client.post(&url).json(&*body).send().await {
                    Ok(resp) => {
                        let code = resp.status().as_u16();
                        let v: Value = resp.json().await.unwrap_or(Value::Null);
                        let _ = local.record((t0.elapsed().as_micros() as u64).max(1));
                        *mine.codes.entry(code).or_default() += 1;
                        if let Some(s) = v["status"].as_str() {
                            *mine.statuses.entry(s.to_string()).or_default() += 1;
                        }
                        if let Some(id) = v["id"].as_str() {
                            mine.ids.push(id.to_string());
                        }
                    }
                    Err(_) => mine.transport_errors += 1,
                }
            }
            let _ = hist.lock().await.add(&local);
            let mut t = tally.lock().await;
            for (k, v) in mine.codes {
                *t.codes.entry(k).or_default() += v;
            }
            for (k, v) in mine.statuses {
                *t.statuses.entry(k).or_default() += v;
            }
            t.transport_errors += mine.transport_errors;
            t.ids.extend(mine.ids);
        }));
    }
    for w in workers {
        w.await.map_err(|e| format!("a bench worker failed: {e}"))?;
    }
    let submit_elapsed = started.elapsed();
    let hist = hist.lock().await.clone();
    let tally = std::mem::take(&mut *tally.lock().await);

    // Follow every task to its end, then take the span from the server's
    // timestamps: first accepted to last finished.
    let (final_statuses, span_ms) =
        follow(&client, &a.client.server, &tally.ids, a.concurrency).await?;
    let wall = started.elapsed();

    let summary = json!({
        "type": a.task_type,
        "concurrency": a.concurrency,
        "requests": a.requests,
        "wait_ms": a.wait_ms,
        "latency_ms": {
            "p50": percentile_ms(&hist, 0.50),
            "p90": percentile_ms(&hist, 0.90),
            "p99": percentile_ms(&hist, 0.99),
            "max": hist.max() as f64 / 1000.0,
            "mean": hist.mean() / 1000.0,
        },
        "latency_is": if a.wait_ms.is_some() { "end-to-end (response held until the task ended)" } else { "acknowledgement (task durable and queued)" },
        "submit_phase_s": submit_elapsed.as_secs_f64(),
        "submit_throughput_per_s": a.requests as f64 / submit_elapsed.as_secs_f64(),
        "http_codes": tally.codes,
        "transport_errors": tally.transport_errors,
        "final_statuses": final_statuses,
        "all_tasks_span_ms": span_ms,
        "wall_s": wall.as_secs_f64(),
    });
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        let l = &summary["latency_ms"];
        println!(
            "{} × {} (concurrency {}): latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms [{}]",
            a.requests,
            a.task_type,
            a.concurrency,
            l["p50"].as_f64().unwrap_or(0.0),
            l["p90"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
            summary["latency_is"].as_str().unwrap_or("")
        );
        println!(
            "submitted in {:.3} s ({:.0}/s); all tasks done within {} ms of the first acceptance; HTTP {}; final {}; transport errors {}",
            submit_elapsed.as_secs_f64(),
            a.requests as f64 / submit_elapsed.as_secs_f64(),
            span_ms.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            summary["http_codes"],
            summary["final_statuses"],
            tally.transport_errors
        );
    }
    Ok(())
}

/// Polls each task until it ended; returns final status counts and the span
/// from the first `created_at` to the last `finished_at`, in ms.
async fn follow(
    client: &reqwest::Client,
    server: &str,
    ids: &[String],
    concurrency: usize,
) -> Result<(BTreeMap<String, usize>, Option<i64>), String> {
    let base = server.trim_end_matches('/').to_string();
    let pending = Arc::new(Mutex::new(ids.to_vec()));
    let done: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, 64) {
        let (client, base, pending, done) =
            (client.clone(), base.clone(), pending.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(id) = pending.lock().await.pop() else {
                    return;
                };
                let task: Value = match client.get(format!("{base}/api/tasks/{id}")).send().await {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                let ended = matches!(
                    task["status"].as_str(),
                    Some("succeeded" | "failed" | "timed_out" | "cancelled")
                );
                if ended || Instant::now() > deadline {
                    done.lock().await.push(task);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    pending.lock().await.insert(0, id);
                }
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| format!("a follower failed: {e}"))?;
    }
    let done = done.lock().await;
    let mut statuses = BTreeMap::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for t in done.iter() {
        *statuses
            .entry(t["status"].as_str().unwrap_or("unknown").to_string())
            .or_insert(0usize) += 1;
        if let Some(c) = t["created_at"].as_str().and_then(parse_rfc3339_ms) {
            first = first.min(c);
        }
        if let Some(f) = t["finished_at"].as_str().and_then(parse_rfc3339_ms) {
            last = last.max(f);
        }
    }
    let span = (first != i64::MAX && last != i64::MIN).then_some(last - first);
    Ok((statuses, span))
}

fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime_parse(s)?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

fn humantime_parse(s: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(s).ok()
}
