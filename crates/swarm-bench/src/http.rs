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
    /// Statistics label of each mix entry.
    labels: Vec<Option<Arc<str>>>,
    /// Per phase of a phased step: args merged into every request's.
    phase_args: Vec<Option<serde_json::Map<String, Value>>>,
}

/// Installs rustls' *ring* provider as the process-wide default unless
/// one is. Built together with swarm-agents, reqwest has TLS through
/// `rustls-no-provider` and panics building any client before a provider
/// is installed; this crate's clients call this first.
pub fn install_crypto_provider() {
    // `Err`: a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    install_crypto_provider();
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
        let labels = (0..request.mix.len())
            .map(|i| request.label(i).map(Arc::from))
            .collect();
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            request,
            cumulative,
            seed,
            labels,
            phase_args: Vec::new(),
        }
    }

    /// Args per phase (index = phase), merged key by key into the args of
    /// every task submitted during that phase (for raw requests: into the
    /// JSON body).
    pub fn with_phase_args(mut self, args: Vec<Option<Value>>) -> Self {
        self.phase_args = args
            .into_iter()
            .map(|a| match a {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            })
            .collect();
        self
    }

    /// The mix entry index for request `seq`: deterministic for a seed, so
    /// runs repeat the same sequence.
    fn pick_index(&self, seq: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let mut rng = fastrand::Rng::with_seed(self.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let r = rng.u32(0..total);
        let i = self.cumulative.partition_point(|&c| c <= r);
        (i < self.request.mix.len()).then_some(i)
    }

    #[cfg(test)]
    fn pick(&self, seq: u64) -> Option<&MixEntry> {
        self.request.mix.get(self.pick_index(seq)?)
    }

    fn overrides(&self, phase: Option<usize>) -> Option<&serde_json::Map<String, Value>> {
        self.phase_args.get(phase?)?.as_ref()
    }

    fn send(&self, seq: u64, phase: Option<usize>) -> BoxFuture<'static, Observation> {
        let client = self.client.clone();
        let base = self.base.clone();
        let over = self.overrides(phase);
        if let Some(raw) = &self.request.raw {
            let mut raw = raw.clone();
            if let Some(o) = over {
                let mut body = match raw.body.take() {
                    Some(Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                merge(&mut body, o);
                raw.body = Some(Value::Object(body));
            }
            return Box::pin(raw_exchange(client, base, raw));
        }
        let Some(i) = self.pick_index(seq) else {
            return Box::pin(async {
                Observation {
                    outcome: Outcome::Transport("empty request mix".into()),
                    acked_at: None,
                    finished: None,
                    label: None,
                }
            });
        };
        let m = &self.request.mix[i];
        let mut body = task_body(m, &self.request);
        if let Some(o) = over
            && let Some(args) = body["args"].as_object_mut()
        {
            merge(args, o);
        }
        Box::pin(submit(
            client,
            base,
            body,
            m.tenant.clone(),
            self.request.e2e,
            Duration::from_millis(self.request.poll_ms.max(1)),
            self.labels[i].clone(),
        ))
    }
}

/// Shallow merge: each key of `over` replaces the same key of `into`.
fn merge(into: &mut serde_json::Map<String, Value>, over: &serde_json::Map<String, Value>) {
    for (k, v) in over {
        into.insert(k.clone(), v.clone());
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
        self.send(seq, None)
    }

    fn exchange_in_phase(&self, seq: u64, phase: usize) -> BoxFuture<'static, Observation> {
        self.send(seq, Some(phase))
    }
}

/// Submits one task and follows it as `e2e` says.
async fn submit(
    client: Client,
    base: String,
    body: Value,
    tenant: Option<String>,
    e2e: E2e,
    poll: Duration,
    label: Option<Arc<str>>,
) -> Observation {
    let mut obs = submit_unlabelled(client, base, body, tenant, e2e, poll).await;
    obs.label = label;
    obs
}

async fn submit_unlabelled(
    client: Client,
    base: String,
    body: Value,
    tenant: Option<String>,
    e2e: E2e,
    poll: Duration,
) -> Observation {
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
                label: None,
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
            label: None,
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
            label: None,
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
                label: None,
            }
        }
        _ => Observation {
            outcome,
            acked_at: Some(at),
            finished: None,
            label: None,
        },
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
                label: None,
            }
        }
        Err(e) => Observation {
            outcome: transport(&e),
            acked_at: None,
            finished: None,
            label: None,
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

    fn new_client() -> Client {
        install_crypto_provider();
        Client::new()
    }

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
        let ex = HttpExchange::new(new_client(), "http://x", spec(&[1, 3]), 7);
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
    fn labels_default_to_the_tenant_and_phase_args_merge() {
        let mut r = spec(&[1, 1, 1]);
        r.mix[0].tenant = Some("acme".into());
        r.mix[1].tenant = Some("globex".into());
        r.labels = vec![None, Some("vip".into())];
        r.mix[2].args = Some(json!({"capacity": 50, "latency_ms": 5}));
        let ex = HttpExchange::new(new_client(), "http://x", r, 1)
            .with_phase_args(vec![None, Some(json!({"capacity": 10, "extra": true}))]);
        assert_eq!(ex.labels[0].as_deref(), Some("acme"));
        assert_eq!(ex.labels[1].as_deref(), Some("vip"));
        assert_eq!(ex.labels[2], None);
        assert!(ex.overrides(None).is_none());
        assert!(ex.overrides(Some(0)).is_none());
        assert!(ex.overrides(Some(7)).is_none());
        let mut args = ex.request.mix[2].args.clone().unwrap();
        merge(
            args.as_object_mut().unwrap(),
            ex.overrides(Some(1)).unwrap(),
        );
        assert_eq!(
            args,
            json!({"capacity": 10, "latency_ms": 5, "extra": true}),
            "shallow, key by key"
        );
    }

    /// A one-shot HTTP server that answers 202 and hands back the body.
    async fn capture_one() -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        let body = text[head_end + 4..].to_string();
                        let answer = "{\"id\":\"t1\",\"status\":\"queued\"}";
                        let resp = format!(
                            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        s.write_all(resp.as_bytes()).await.unwrap();
                        return body;
                    }
                }
                if n == 0 {
                    return String::new();
                }
            }
        });
        (base, h)
    }

    #[tokio::test]
    async fn the_phase_args_reach_the_wire() {
        let (base, server) = capture_one().await;
        let mut r = spec(&[1]);
        r.mix[0].args = Some(json!({"capacity": 50}));
        r.mix[0].tenant = Some("acme".into());
        let ex = HttpExchange::new(new_client(), &base, r, 1)
            .with_phase_args(vec![None, Some(json!({"capacity": 10}))]);
        let obs = ex.exchange_in_phase(0, 1).await;
        assert_eq!(obs.outcome, Outcome::Accepted(202));
        assert_eq!(obs.label.as_deref(), Some("acme"));
        let body: Value = serde_json::from_str(&server.await.unwrap()).unwrap();
        assert_eq!(body["args"], json!({"capacity": 10}));
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
        let err = check_reachable(&new_client(), &base, "/health")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&base) && err.contains("connect"), "{err}");
    }
}
