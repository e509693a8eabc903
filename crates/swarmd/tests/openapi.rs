//! The OpenAPI document against the server that serves it: served without
//! a key, every operation it lists is routed, every method it does not list
//! is refused, and what the server sends has the documented shape.
//! (schemathesis, `.ci/schemathesis.sh`, fuzzes the same contract.)

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backend, TestServer};

fn keys() -> String {
    let admin = swarm_server::auth::hash_key("ops-key");
    format!("[[tenants]]\nname = \"ops\"\nrole = \"admin\"\nkey_sha256 = \"{admin}\"\n")
}

/// `path` with each `{param}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

async fn send(s: &TestServer, method: &Method, path: &str) -> (u16, Value) {
    let r = s
        .client
        .request(method.clone(), s.url(&concrete(path)))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body = serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, body)
}

async fn document_is_the_route_table(backend: Backend) {
    let Some(s) = TestServer::start(backend, &keys()).await else {
        return;
    };
    // No key, though keys are configured.
    let r = s.get("/api/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    for (path, item) in paths {
        for method in &methods {
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            // Without a key every documented operation answers at once:
            // 401 where a key is needed, the thing itself where not
            // (nothing here waits or profiles).
            let (status, body) = send(&s, method, path).await;
            if documented {
                assert!(
                    status != 404 || body["error_code"] != "not_found",
                    "{method} {path} is documented but not routed: {body}"
                );
                assert_ne!(status, 405, "{method} {path} is documented but refused");
                let op = &item[method.as_str().to_lowercase()];
                assert!(
                    op["responses"].get(status.to_string()).is_some(),
                    "{method} {path} answered {status}, not documented: {body}"
                );
            } else {
                assert_eq!(
                    (status, body["error_code"].as_str()),
                    (405, Some("method_not_allowed")),
                    "{method} {path} is not documented but answered"
                );
            }
        }
    }
    // A path the document does not have is not routed.
    let (status, body) = send(&s, &Method::GET, "/api/undocumented").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("not_found"))
    );
}

/// Fields a schema object requires and allows, following `$ref` and
/// `allOf` (a flattened struct).
fn fields(doc: &Value, schema: &Value) -> (Vec<String>, Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return fields(doc, &doc["components"]["schemas"][name]);
    }
    let mut required: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut allowed: Vec<String> = schema["properties"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.keys().cloned())
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        let (r, a) = fields(doc, part);
        required.extend(r);
        allowed.extend(a);
    }
    (required, allowed)
}

/// `body`'s top-level fields are those of the response schema of `method`
/// `path` at `status`.
fn assert_shape(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} {status}: no schema");
    assert_fields(doc, schema, body, &format!("{method} {path} {status}"));
}

fn assert_fields(doc: &Value, schema: &Value, body: &Value, what: &str) {
    let (required, allowed) = fields(doc, schema);
    let obj = body.as_object().unwrap_or_else(|| panic!("{what}: {body}"));
    for k in &required {
        assert!(obj.contains_key(k), "{what}: `{k}` missing in {body}");
    }
    for k in obj.keys() {
        assert!(allowed.contains(k), "{what}: `{k}` is not documented");
    }
}

async fn answers_have_the_documented_shape(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let doc = s.get("/api/openapi.json").await.body;
    let t = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "args": {"n": 1}, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text);
    assert_shape(&doc, "post", "/api/tasks", 200, &t.body);
    let id = t.id();
    let g = s.get(&format!("/api/tasks/{id}")).await;
    assert_shape(&doc, "get", "/api/tasks/{id}", 200, &g.body);
    let l = s.get("/api/tasks?limit=1").await;
    assert_shape(&doc, "get", "/api/tasks", 200, &l.body);
    let task = json!({"$ref": "#/components/schemas/Task"});
    assert_fields(&doc, &task, &l.body["tasks"][0], "a listed task");
    // A task that did not succeed: `result` and the like are `null`, not
    // left out (the schema requires them).
    let late = s
        .post(
            "/api/tasks",
            &json!({"type": "sim", "args": {"latency_ms": 2000}, "timeout_ms": 50, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(late.body["status"], "timed_out", "{}", late.text);
    assert_shape(&doc, "post", "/api/tasks", 200, &late.body);
    assert!(late.body["result"].is_null() && late.body.get("result").is_some());
    // Enums are sent as the lower-case strings the schema lists.
    let schemas = &doc["components"]["schemas"];
    for (t, field, schema) in [
        (&late.body, "status", "TaskStatus"),
        (&late.body, "priority", "Priority"),
        (&g.body, "status", "TaskStatus"),
    ] {
        let values = schemas[schema]["enum"].as_array().unwrap();
        assert!(
            values.contains(&t[field]),
            "{field} {} not in {values:?}",
            t[field]
        );
    }
    for st in swarm_core::TaskStatus::ALL {
        assert!(
            schemas["TaskStatus"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!(st.as_str()))
        );
    }
    for path in [
        "/api/status",
        "/api/alerts",
        "/api/nodes",
        "/api/outbox",
        "/health",
        "/ready",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_shape(&doc, "get", path, 200, &r.body);
    }
    let i = s.get("/api/pools/echo/instances").await;
    assert_shape(&doc, "get", "/api/pools/{pool}/instances", 200, &i.body);
    // Errors are the envelope, `field` left out when none is to blame.
    let e = s.get("/api/tasks/not-a-task").await;
    assert_eq!(e.status, 404);
    assert_shape(&doc, "get", "/api/tasks/{id}", 404, &e.body);
    assert!(e.body.get("field").is_none(), "{}", e.text);
    let e = s
        .post("/api/tasks", &json!({"type": "echo", "wait_ms": "x"}))
        .await;
    assert_eq!(e.status, 422);
    assert_shape(&doc, "post", "/api/tasks", 422, &e.body);
    assert_eq!(e.body["field"], "wait_ms");
    // `5.0` is the whole number the schema's `integer` allows.
    let t = s
        .post("/api/tasks", &json!({"type": "echo", "wait_ms": 5000.0}))
        .await;
    assert_eq!(t.status, 200, "{}", t.text);
}

on_both_backends!(
    document_is_the_route_table,
    answers_have_the_documented_shape
);
