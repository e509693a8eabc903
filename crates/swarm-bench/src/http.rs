//! The HTTP exchange: task submissions to SwarmDirector (followed to their
//! end if asked), or plain requests to any server (`raw`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::{Client, Method};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::BenchError;
use crate::load::Exchange;
use crate::recorder::{Observation, Outcome};
use crate::scenario::{E2e, MixEntry, RawRequest, RequestSpec};

/// Sends a scenario's requests over HTTP.
pub struct HttpExchange {
    client: Client,
    base: String,
    request: RequestSpec,
    /// Cumulative weights of the mix, for picking by seeded random numbers.
    cumulative: Vec<u32>,
    seed: u64,
}

/// A client that opens as many connections as the load needs and keeps
/// them.
pub fn client(api_key: Option<&str>, timeout: Duration) -> Result<Client, BenchError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = api_key {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
            .map_err(|_| BenchError::Input("the API key cannot be sent in a header".into()))?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    Client::builder()
        .default_headers(headers)
        .timeout(timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .map_err(|e| BenchError::Input(format!("cannot build an HTTP client: {e}")))
}

impl HttpExchange {
    /// An exchange for `request` against `base`.
    pub fn new(client: Client, base: &str, request: RequestSpec, seed: u64) -> Self {
        let mut acc = 0;
        let cumulative = request
            .mix
            .iter()
            .map(|m| {
                acc += m.weight;
                acc
            })
            .collect();
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            request,
            cumulative,
            seed,
        }
    }

    /// The mix entry for request `seq`: deterministic for a seed, so runs
    /// repeat the same sequence.
    fn pick(&self, seq: u64) -> Option<&MixEntry> {
        let total = *self.cumulative.last()?;
        let mut rng = fastrand::Rng::with_seed(self.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let r = rng.u32(0..total);
        let i = self.cumulative.partition_point(|&c| c <= r);
        self.request.mix.get(i)
    }
}

fn task_body(m: &MixEntry, req: &RequestSpec) -> Value {
    let mut body =
        json!({ "type": m.task_type, "args": m.args.clone().unwrap_or_else(|| json!({})) });
    if let Some(p) = &m.priority {
        body["priority"] = json!(p);
    }
    if let Some(t) = m.timeout_ms {
        body["timeout_ms"] = json!(t);
    }
    if let Some(a) = &m.agent {
        body["agent"] = json!(a);
    }
    if req.e2e == E2e::Wait {
        body["wait_ms"] = json!(req.wait_ms);
    }
    body
}

fn classify(code: u16) -> Outcome {
    match code {
        200..=299 => Outcome::Accepted(code),
        429 | 503 => Outcome::Rejected(code),
        _ => Outcome::Failed(code),
    }
}

fn transport(e: &reqwest::Error) -> Outcome {
    let kind = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "transport"
    };
    // The innermost source says the most ("Connection refused").
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    Outcome::Transport(format!("{kind}: {source}"))
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "timed_out", "cancelled"];

impl Exchange for HttpExchange {
    fn exchange(&self, seq: u64) -> BoxFuture<'static, Observation> {
        let client = self.client.clone();
        let base = self.base.clone();
        if let Some(raw) = &self.request.raw {
            return Box::pin(raw_exchange(client, base, raw.clone()));
        }
        let Some(m) = self.pick(seq) else {
            return Box::pin(async {
                Observation {
                    outcome: Outcome::Transport("empty request mix".into()),
                    acked_at: None,
                    finished: None,
                }
            });
        };
        let body = task_body(m, &self.request);
        let tenant = m.tenant.clone();
        let (e2e, poll) = (
            self.request.e2e,
            Duration::from_millis(self.request.poll_ms.max(1)),
        );
        Box::pin(async move {
            let mut req = client.post(format!("{base}/api/tasks")).json(&body);
            if let Some(t) = &tenant {
                req = req.header("x-tenant", t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    return Observation {
                        outcome: transport(&e),
                        acked_at: None,
                        finished: None,
                    };
                }
            };
            let code = resp.status().as_u16();
            let task: Value = resp.json().await.unwrap_or(Value::Null);
            let at = Instant::now();
            let outcome = classify(code);
            let status = task["status"].as_str().unwrap_or("").to_string();
            let accepted = matches!(outcome, Outcome::Accepted(_));
            match e2e {
                E2e::None => Observation {
                    outcome,
                    acked_at: Some(at),
                    finished: None,
                },
                E2e::Wait => Observation {
                    acked_at: (!accepted).then_some(at),
                    finished: accepted.then(|| {
                        (
                            at,
                            if status.is_empty() {
                                "unknown".into()
                            } else {
                                status
                            },
                        )
                    }),
                    outcome,
                },
                E2e::Poll | E2e::Sse if accepted => {
                    let finished = if TERMINAL.contains(&status.as_str()) {
                        Some((at, status))
                    } else {
                        let id = task["id"].as_str().unwrap_or("").to_string();
                        match e2e {
                            E2e::Sse => follow_sse(&client, &base, &id, &tenant).await,
                            _ => follow_poll(&client, &base, &id, &tenant, poll).await,
                        }
                    };
                    Observation {
                        outcome,
                        acked_at: Some(at),
                        finished,
                    }
                }
                _ => Observation {
                    outcome,
                    acked_at: Some(at),
                    finished: None,
                },
            }
        })
    }
}

async fn raw_exchange(client: Client, base: String, raw: RawRequest) -> Observation {
    let method = Method::from_bytes(raw.method.as_bytes()).unwrap_or(Method::GET);
    let mut req = client.request(method, format!("{base}{}", raw.path));
    for (k, v) in &raw.headers {
        req = req.header(k, v);
    }
    if let Some(b) = &raw.body {
        req = req.json(b);
    }
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            // The body is part of the answer: read it all.
            let _ = resp.bytes().await;
            Observation {
                outcome: classify(code),
                acked_at: Some(Instant::now()),
                finished: None,
            }
        }
        Err(e) => Observation {
            outcome: transport(&e),
            acked_at: None,
            finished: None,
        },
    }
}

async fn follow_poll(
    client: &Client,
    base: &str,
    id: &str,
    tenant: &Option<String>,
    every: Duration,
) -> Option<(Instant, String)> {
    loop {
        tokio::time::sleep(every).await;
        let mut req = client.get(format!("{base}/api/tasks/{id}"));
        if let Some(t) = tenant {
            req = req.header("x-tenant", t);
        }
        let task: Value = match req.send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
            Ok(_) | Err(_) => return Some((Instant::now(), "lost".into())),
        };
        if let Some(s) = task["status"].as_str()
            && TERMINAL.contains(&s)
        {
            return Some((Instant::now(), s.to_string()));
        }
    }
}

async fn follow_sse(
    client: &Client,
    base: &str,
    id: &str,
    tenant: &Option<String>,
) -> Option<(Instant, String)> {
    let mut req = client.get(format!("{base}/api/tasks/{id}/events"));
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    let mut resp = match req.send().await {
        Ok(r) if r.status().is_success() => r,
        _ => return Some((Instant::now(), "lost".into())),
    };
    let mut buf = String::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => buf.push_str(&String::from_utf8_lossy(&c)),
            _ => return Some((Instant::now(), "lost".into())),
        }
        // A `result` event carries the ended task.
        if let Some(pos) = buf.find("event: result") {
            let rest = &buf[pos..];
            if let Some(end) = rest.find("\n\n") {
                let data: String = rest[..end]
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                let s = v["status"].as_str().unwrap_or("unknown").to_string();
                return Some((Instant::now(), s));
            }
        }
    }
}

/// Checks that `base` answers at all, for a clear error before a run.
pub async fn check_reachable(client: &Client, base: &str, path: &str) -> Result<(), BenchError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    match tokio::time::timeout(Duration::from_secs(10), client.get(&url).send()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(BenchError::Unreachable {
            url,
            message: match transport(&e) {
                Outcome::Transport(m) => m,
                _ => e.to_string(),
            },
        }),
        Err(_) => Err(BenchError::Unreachable {
            url,
            message: "no answer within 10 s".into(),
        }),
    }
}

/// A shared handle, as the load loops take it.
pub fn shared(ex: HttpExchange) -> Arc<dyn Exchange> {
    Arc::new(ex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(weights: &[u32]) -> RequestSpec {
        RequestSpec {
            mix: weights
                .iter()
                .enumerate()
                .map(|(i, w)| MixEntry {
                    weight: *w,
                    task_type: format!("t{i}"),
                    args: None,
                    priority: None,
                    tenant: None,
                    timeout_ms: None,
                    agent: None,
                })
                .collect(),
            ..RequestSpec::default()
        }
    }

    #[test]
    fn the_mix_follows_its_weights_and_repeats_for_a_seed() {
        let ex = HttpExchange::new(Client::new(), "http://x", spec(&[1, 3]), 7);
        let picks: Vec<String> = (0..4000)
            .map(|s| ex.pick(s).unwrap().task_type.clone())
            .collect();
        let t1 = picks.iter().filter(|t| *t == "t1").count();
        assert!((2800..3200).contains(&t1), "about 3/4 are t1: {t1}");
        let again: Vec<String> = (0..4000)
            .map(|s| ex.pick(s).unwrap().task_type.clone())
            .collect();
        assert_eq!(picks, again);
    }

    #[test]
    fn bodies_carry_the_template() {
        let mut r = spec(&[1]);
        r.e2e = E2e::Wait;
        r.wait_ms = 1234;
        r.mix[0].priority = Some("high".into());
        r.mix[0].timeout_ms = Some(50);
        let b = task_body(&r.mix[0], &r);
        assert_eq!(
            b,
            json!({"type": "t0", "args": {}, "priority": "high", "timeout_ms": 50, "wait_ms": 1234})
        );
    }

    #[test]
    fn status_codes_are_classified() {
        assert_eq!(classify(202), Outcome::Accepted(202));
        assert_eq!(classify(429), Outcome::Rejected(429));
        assert_eq!(classify(503), Outcome::Rejected(503));
        assert_eq!(classify(500), Outcome::Failed(500));
        assert_eq!(classify(422), Outcome::Failed(422));
    }

    #[tokio::test]
    async fn an_unreachable_target_is_a_clear_error() {
        // Bind then drop: the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let err = check_reachable(&Client::new(), &base, "/health")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&base) && err.contains("connect"), "{err}");
    }
}
