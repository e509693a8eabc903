//! `swarmd submit`, `swarmd status`, `swarmd hash-key`.

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
    let client = http_client(&a.client, Duration::from_millis(a.wait_ms + 30_000))?;
    let resp = client
        .post(url(&a.client, "/api/tasks"))
        .json(&Value::Object(body))
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", a.client.server))?;
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

pub(crate) async fn status(a: StatusArgs) -> Result<(), String> {
    let client = http_client(&a.client, Duration::from_secs(10))?;
    let resp = client
        .get(url(&a.client, "/api/status"))
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", a.client.server))?;
    let (_, s) = json_or_error(resp).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!(
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
    println!(
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
    println!(
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
    println!(
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
    // `Value`'s Display ignores width, so numbers go through strings.
    let n = |v: &serde_json::Value| v.to_string();
    for p in s["pools"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<15} {:<9} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>9} {:>9}",
            p["name"].as_str().unwrap_or("?"),
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
    }
    Ok(())
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
