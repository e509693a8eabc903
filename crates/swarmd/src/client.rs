//! `swarmd submit`, `swarmd status`, `swarmd top`, `swarmd hash-key`.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io::Read;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::cli::{ClientArgs, HashKeyArgs, StatusArgs, SubmitArgs};

/// A client for the server's API with the caller's credentials.
pub(crate) fn http_client(args: &ClientArgs, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = &args.api_key {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
            .map_err(|_| "the API key has characters a header cannot carry".to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    if let Some(t) = &args.tenant {
        let v = reqwest::header::HeaderValue::from_str(t)
            .map_err(|_| "the tenant name has characters a header cannot carry".to_string())?;
        headers.insert("x-tenant", v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

fn url(args: &ClientArgs, path: &str) -> String {
    format!("{}{path}", args.server.trim_end_matches('/'))
}

/// How long `status` and `top` wait for an answer.
pub(crate) const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// `cannot reach <server>: <why>` for a request that got no answer.
/// reqwest's own message (`error sending request for url (…)`) only says
/// that something failed; the cause is further down the error's source
/// chain: a refused connection, a name that does not resolve, a timeout.
pub(crate) fn unreachable(server: &str, timeout: Duration, e: &reqwest::Error) -> String {
    let mut causes: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut next = e.source();
    while let Some(c) = next {
        causes.push(c);
        next = c.source();
    }
    let io_kind = causes
        .iter()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    // The innermost cause names the failure most precisely.
    let detail = causes
        .last()
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string());
    let url = e.url();
    let host = url.and_then(|u| u.host_str()).unwrap_or(server);
    let at = match url.and_then(|u| u.port_or_known_default()) {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    use std::io::ErrorKind as K;
    let why = if e.is_builder() {
        format!("`{server}` is not a usable URL ({detail}); give one like http://127.0.0.1:8080")
    } else if e.is_timeout() || io_kind == Some(K::TimedOut) {
        format!(
            "timed out: no answer within {} (is {at} the swarmd server?)",
            humantime::format_duration(timeout)
        )
    } else if causes.iter().any(|c| c.to_string() == "dns error") {
        // hyper-util's connector wraps a failed name lookup as "dns error".
        format!("the name `{host}` did not resolve ({detail})")
    } else if io_kind == Some(K::ConnectionRefused) {
        format!(
            "connection refused at {at}: nothing listens there (is `swarmd serve` running, \
             and are --server / SWARMD_URL right?)"
        )
    } else if matches!(
        io_kind,
        Some(K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe)
    ) {
        format!("{at} closed the connection without an answer ({detail}); is it a swarmd server?")
    } else if let Some(kind @ (K::NetworkUnreachable | K::HostUnreachable)) = io_kind {
        format!("{at} cannot be reached: {kind} ({detail})")
    } else {
        let chain: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        if chain.is_empty() {
            e.to_string()
        } else {
            chain.join(": ")
        }
    };
    format!("cannot reach {server}: {why}")
}

/// Turns a response into its JSON body, or an error that carries the server's
/// error envelope.
async fn json_or_error(resp: reqwest::Response) -> Result<(u16, Value), String> {
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status >= 400 {
        let code = body["error_code"].as_str().unwrap_or("error");
        let msg = body["message"].as_str().unwrap_or("");
        let field = body["field"]
            .as_str()
            .map(|f| format!(" (field `{f}`)"))
            .unwrap_or_default();
        return Err(format!("server answered {status} {code}: {msg}{field}"));
    }
    Ok((status, body))
}

pub(crate) async fn submit(a: SubmitArgs) -> Result<(), String> {
    let args: Value =
        serde_json::from_str(&a.args).map_err(|e| format!("--args is not JSON: {e}"))?;
    let mut body = Map::new();
    body.insert("type".into(), json!(a.task_type));
    body.insert("args".into(), args);
    let opt = |body: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    opt(&mut body, "title", a.title.map(Value::from));
    opt(&mut body, "description", a.description.map(Value::from));
    opt(&mut body, "priority", a.priority.map(Value::from));
    opt(&mut body, "agent", a.agent.map(Value::from));
    opt(&mut body, "timeout_ms", a.timeout_ms.map(Value::from));
    opt(
        &mut body,
        "idempotency_key",
        a.idempotency_key.map(Value::from),
    );
    if a.wait {
        body.insert("wait_ms".into(), json!(a.wait_ms));
    }
    let timeout = Duration::from_millis(a.wait_ms + 30_000);
    let client = http_client(&a.client, timeout)?;
    let resp = client
        .post(url(&a.client, "/api/tasks"))
        .json(&Value::Object(body))
        .send()
        .await
        .map_err(|e| unreachable(&a.client.server, timeout, &e))?;
    let (_, task) = json_or_error(resp).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&task).unwrap_or_default()
    );
    match task["status"].as_str() {
        Some("failed" | "timed_out" | "cancelled") => Err(format!(
            "task {} ended {}",
            task["id"].as_str().unwrap_or("?"),
            task["status"].as_str().unwrap_or("?")
        )),
        _ => Ok(()),
    }
}

/// `GET /api/status`, with a client from [`http_client`] built with
/// [`STATUS_TIMEOUT`].
pub(crate) async fn fetch_status(
    client: &reqwest::Client,
    args: &ClientArgs,
) -> Result<Value, String> {
    let resp = client
        .get(url(args, "/api/status"))
        .send()
        .await
        .map_err(|e| unreachable(&args.server, STATUS_TIMEOUT, &e))?;
    Ok(json_or_error(resp).await?.1)
}

pub(crate) async fn status(a: StatusArgs) -> Result<(), String> {
    let client = http_client(&a.client, STATUS_TIMEOUT)?;
    let mut s = fetch_status(&client, &a.client).await?;
    // The cluster's nodes, from `GET /api/nodes` (a database read, so not
    // part of `/api/status`).
    let nodes = match client.get(url(&a.client, "/api/nodes")).send().await {
        Ok(resp) => json_or_error(resp).await.ok().map(|(_, v)| v),
        Err(_) => None,
    };
    if a.json {
        if let Some(n) = nodes {
            s["cluster"] = n;
        }
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    print!("{}", render_status(&s, None));
    if let Some(n) = &nodes {
        print!("{}", render_nodes(n));
    }
    Ok(())
}

/// The nodes section of `swarmd status`: one line per node sharing the
/// database, with its heartbeat age and, per department, what it runs and
/// queues against its limit (its part, for a cluster-wide limit).
pub(crate) fn render_nodes(n: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let Some(nodes) = n["nodes"].as_array() else {
        return o;
    };
    let _ = writeln!(
        o,
        "nodes ({} on this database; this node claimed {}, gave {}, took over {})",
        nodes.len(),
        n["this_node"]["claimed"],
        n["this_node"]["claimed_from_here"],
        n["this_node"]["taken_over"],
    );
    for node in nodes {
        let state = if node["left"].as_bool() == Some(true) {
            "left".to_string()
        } else if node["alive"].as_bool() == Some(true) {
            format!("alive, beat {} ms ago", node["heartbeat_age_ms"])
        } else {
            "DEAD".to_string()
        };
        let mut busy = Vec::new();
        if let Some(pools) = node["pools"].as_object() {
            for (name, p) in pools {
                let (run, queued) = (
                    p["running"].as_u64().unwrap_or(0),
                    p["queued"].as_u64().unwrap_or(0),
                );
                if run > 0 || queued > 0 {
                    busy.push(format!("{name} {run}/{} +{queued}", p["limit"]));
                }
            }
        }
        let _ = writeln!(
            o,
            "  {}{:<20} {:<22} {:<28} {}",
            if node["this"].as_bool() == Some(true) {
                "*"
            } else {
                " "
            },
            node["node_id"].as_str().unwrap_or("?"),
            node["address"].as_str().unwrap_or(""),
            state,
            if busy.is_empty() {
                "idle".to_string()
            } else {
                busy.join(", ")
            }
        );
    }
    o
}

/// One pool's rates between two polls, per second (`swarmd top`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolRates {
    /// Tasks ended: succeeded, failed, timed out or cancelled.
    pub(crate) done: f64,
    /// Submissions refused.
    pub(crate) rejected: f64,
    /// Tasks timed out.
    pub(crate) timed_out: f64,
}

/// Per-pool rates from two `/api/status` answers. The time between them is
/// the server's own (`uptime_s`), so the client's request latency does not
/// skew it. A restart in between (uptime or a counter went backwards) gives
/// no rates rather than wrong ones.
pub(crate) fn pool_rates(prev: &Value, now: &Value) -> BTreeMap<String, PoolRates> {
    let mut out = BTreeMap::new();
    let dt = now["uptime_s"].as_f64().unwrap_or(0.0) - prev["uptime_s"].as_f64().unwrap_or(0.0);
    if dt <= 0.0 {
        return out;
    }
    let pools = |s: &Value| -> BTreeMap<String, Value> {
        s["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_string(), p.clone())))
            .collect()
    };
    let before = pools(prev);
    for (name, p) in pools(now) {
        let Some(q) = before.get(&name) else { continue };
        let delta = |keys: &[&str]| -> Option<f64> {
            let sum = |v: &Value| {
                keys.iter()
                    .map(|k| v[*k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            sum(&p).checked_sub(sum(q)).map(|d| d as f64 / dt)
        };
        if let (Some(done), Some(rejected), Some(timed_out)) = (
            delta(&["succeeded", "failed", "timed_out", "cancelled"]),
            delta(&["rejected"]),
            delta(&["timed_out"]),
        ) {
            out.insert(
                name,
                PoolRates {
                    done,
                    rejected,
                    timed_out,
                },
            );
        }
    }
    out
}

/// The `swarmd status` picture of an `/api/status` answer; with `rates`
/// (`swarmd top`), three more columns per pool (`-` where a pool has none
/// yet).
pub(crate) fn render_status(s: &Value, rates: Option<&BTreeMap<String, PoolRates>>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "swarmd {} on node {} · up {:.0} s{}",
        s["version"].as_str().unwrap_or("?"),
        s["node_id"].as_str().unwrap_or("?"),
        s["uptime_s"].as_f64().unwrap_or(0.0),
        if s["draining"].as_bool() == Some(true) {
            " · DRAINING"
        } else {
            ""
        }
    );
    let db = &s["database"];
    let _ = writeln!(
        o,
        "database {}: {} open, {} idle, {} in use, max {}",
        db["backend"].as_str().unwrap_or("?"),
        db["size"],
        db["idle"],
        db["in_use"],
        db["max"]
    );
    let g = &s["global"];
    let r = &s["resources"];
    let c = &s["cpu_pool"];
    let _ = writeln!(
        o,
        "global cap: {} running of {}{} · process CPU {:.0}%, RSS {:.0} MiB · CPU pool {} of {} threads busy, {} queued",
        g["in_flight"],
        g["limit"],
        if g["cap"].is_null() {
            String::new()
        } else {
            format!(" (lowered: {})", g["cap"])
        },
        r["cpu_pct"].as_f64().unwrap_or(0.0),
        r["rss_mib"].as_f64().unwrap_or(0.0),
        c["busy"],
        c["threads"],
        c["queued"]
    );
    let _ = write!(
        o,
        "\n{:<16} {:<15} {:<9} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>9} {:>9}",
        "POOL",
        "AGENT",
        "ALGORITHM",
        "LIMIT",
        "RUNNING",
        "QUEUED",
        "OLDEST_MS",
        "SUCCEEDED",
        "FAILED",
        "TIMED_OUT",
        "REJECTED"
    );
    if rates.is_some() {
        let _ = write!(o, " {:>8} {:>8} {:>8}", "DONE/S", "REJ/S", "TMO/S");
    }
    o.push('\n');
    // `Value`'s Display ignores width, so numbers go through strings.
    let n = |v: &serde_json::Value| v.to_string();
    for p in s["pools"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        let _ = write!(
            o,
            "{:<16} {:<15} {:<9} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>9} {:>9}",
            name,
            p["agent"].as_str().unwrap_or("?"),
            p["limit"]["algorithm"].as_str().unwrap_or("?"),
            n(&p["concurrency"]),
            n(&p["running"]),
            n(&p["queued"]),
            n(&p["oldest_queued_ms"]),
            n(&p["succeeded"]),
            n(&p["failed"]),
            n(&p["timed_out"]),
            n(&p["rejected"])
        );
        if let Some(rates) = rates {
            match rates.get(name) {
                Some(r) => {
                    let _ = write!(
                        o,
                        " {:>8.1} {:>8.1} {:>8.1}",
                        r.done, r.rejected, r.timed_out
                    );
                }
                None => {
                    let _ = write!(o, " {:>8} {:>8} {:>8}", "-", "-", "-");
                }
            }
        }
        o.push('\n');
    }
    o
}

pub(crate) fn hash_key(a: HashKeyArgs) -> Result<(), String> {
    let key = match a.key {
        Some(k) => k,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("reading the key from standard input: {e}"))?;
            s.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    println!("{}", swarm_server::auth::hash_key(&key));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `unreachable` says for a GET of `server` with `timeout`.
    async fn why(server: &str, timeout: Duration) -> String {
        swarm_agents::install_crypto_provider();
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
        let e = client
            .get(format!("{server}/api/status"))
            .send()
            .await
            .expect_err("the request fails");
        unreachable(server, timeout, &e)
    }

    #[tokio::test]
    async fn unreachable_says_refused_timed_out_or_unresolved() {
        // Refused: a port that was free a moment ago, with nothing on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = format!("http://127.0.0.1:{port}");
        let m = why(&server, Duration::from_secs(5)).await;
        assert!(
            m.starts_with(&format!(
                "cannot reach {server}: connection refused at 127.0.0.1:{port}"
            )),
            "{m}"
        );
        assert!(!m.contains("error sending request"), "{m}");

        // Timed out: a listener that accepts and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = format!("http://{}", silent.local_addr().unwrap());
        let m = why(&server, Duration::from_millis(300)).await;
        assert!(m.contains("timed out: no answer within 300ms"), "{m}");
        drop(silent);

        // Not resolved: `.invalid` never resolves (RFC 6761).
        let m = why("http://swarmd.invalid:8080", Duration::from_secs(10)).await;
        assert!(
            m.contains("the name `swarmd.invalid` did not resolve"),
            "{m}"
        );

        // Not a URL at all.
        let m = why("127.0.0.1:8080", Duration::from_secs(5)).await;
        assert!(m.contains("is not a usable URL"), "{m}");
    }

    fn status(uptime_s: f64, pools: &[(&str, u64, u64, u64)]) -> Value {
        json!({
            "uptime_s": uptime_s,
            "pools": pools.iter().map(|(name, succeeded, rejected, timed_out)| json!({
                "name": name, "agent": "sim", "limit": {"algorithm": "aimd"},
                "succeeded": succeeded, "failed": 1, "cancelled": 0,
                "rejected": rejected, "timed_out": timed_out,
            })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn rates_are_deltas_over_server_time() {
        let a = status(10.0, &[("sim", 100, 5, 1), ("echo", 0, 0, 0)]);
        let b = status(12.0, &[("sim", 140, 9, 3), ("new", 7, 0, 0)]);
        let r = pool_rates(&a, &b);
        assert_eq!(
            r["sim"],
            PoolRates {
                done: 21.0,
                rejected: 2.0,
                timed_out: 1.0
            }
        );
        // Only in one of the two polls: no rate.
        assert!(!r.contains_key("new") && !r.contains_key("echo"));
        // A restart in between (uptime or counters backwards): none.
        assert!(pool_rates(&b, &a).is_empty());
        let restarted_counters = status(14.0, &[("sim", 3, 0, 0)]);
        assert!(pool_rates(&b, &restarted_counters).is_empty());
    }

    #[test]
    fn nodes_show_liveness_and_busy_departments() {
        let n = serde_json::json!({
            "this_node": {"claimed": 3, "claimed_from_here": 1, "taken_over": 0},
            "nodes": [
                {"node_id": "n1", "address": "127.0.0.1:8081", "alive": true, "left": false,
                 "heartbeat_age_ms": 120, "this": true,
                 "pools": {"llm": {"running": 4, "queued": 7, "limit": 4}, "echo": {"running": 0, "queued": 0, "limit": 1024}}},
                {"node_id": "n2", "address": "127.0.0.1:8082", "alive": false, "left": false,
                 "heartbeat_age_ms": 9000, "this": false, "pools": {}},
            ]
        });
        let out = render_nodes(&n);
        assert!(
            out.contains("2 on this database; this node claimed 3"),
            "{out}"
        );
        assert!(out.contains("*n1"), "{out}");
        assert!(out.contains("alive, beat 120 ms ago"), "{out}");
        assert!(out.contains("llm 4/4 +7"), "{out}");
        assert!(
            !out.contains("echo"),
            "idle departments are left out: {out}"
        );
        assert!(out.contains("DEAD"), "{out}");
    }

    #[test]
    fn rate_columns_only_with_rates() {
        let s = status(12.0, &[("sim", 140, 9, 3), ("echo", 0, 0, 0)]);
        let plain = render_status(&s, None);
        assert!(
            plain.contains("REJECTED") && !plain.contains("DONE/S"),
            "{plain}"
        );
        let rates = pool_rates(&status(10.0, &[("sim", 100, 5, 1)]), &s);
        let top = render_status(&s, Some(&rates));
        let line = |name: &str| {
            top.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} row in {top}"))
                .to_string()
        };
        assert!(top.contains("DONE/S") && top.contains("TMO/S"), "{top}");
        assert!(line("sim").ends_with("    21.0      2.0      1.0"), "{top}");
        assert!(
            line("echo").ends_with("       -        -        -"),
            "{top}"
        );
    }
}
