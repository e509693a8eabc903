//! The OpenAPI 3.1 document, served at `GET /api/openapi.json` (no key
//! needed: it holds no data).
//!
//! Nothing here is written beside the code it describes:
//! - the paths and operations come from the `#[utoipa::path]` annotation of
//!   each handler, and the route table (`routes::api`) registers handlers
//!   only through `utoipa_axum::routes!`, which builds the axum route and
//!   the document's operation from that one annotation;
//! - the schemas are derived (`utoipa::ToSchema`) from the types the
//!   handlers really serialize: `swarm_core::Task` through the view it is
//!   written with, the engine's status types, [`crate::error`]'s envelope;
//! - the error answers each handler can give are the response sets below,
//!   named in its annotation by what it does (names its caller, reads a
//!   body, admits work, …).
//!
//! What only the configuration decides (the departments a list can filter
//! by, `server.max_wait_ms`) is filled in by [`document`] when the router is
//! built, so the document a server serves describes that server.

use std::collections::BTreeMap;

use axum::Extension;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use swarm_core::config::Config;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::link::Link;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, OpenApi, RefOr, ResponseBuilder};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};

use crate::error::Envelope;

/// The error envelope, for `body = ErrorBody` in annotations.
pub(crate) type ErrorBody = Envelope<'static>;

/// The serialized document, shared by every request.
#[derive(Clone)]
pub(crate) struct Document(pub(crate) Bytes);

/// `GET /api/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "system",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.0,
    )
        .into_response()
}

/// The document for a server with configuration `cfg`, from the route
/// table's annotations.
pub(crate) fn document(mut doc: OpenApi, cfg: &Config) -> OpenApi {
    doc.info.title = "SwarmDirector API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "The HTTP API of `swarmd`. With `[[tenants]]` keys configured every \
         operation but the health checks, the dashboard and this document needs \
         `Authorization: Bearer <key>`; without keys, `X-Tenant` names the tenant. \
         Errors are always the `Error` object."
            .into(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(Envelope::name().into(), Envelope::schema());
    components.security_schemes.insert(
        "bearer".into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key of `[[tenants]]` (only when keys are configured).",
                ))
                .build(),
        ),
    );
    tailor(&mut doc, cfg);
    fit_auth(&mut doc, !cfg.tenants.is_empty());
    doc
}

fn operations_mut(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .flatten()
}

/// With keys, `X-Tenant` is ignored: it leaves the document. Without keys,
/// no operation takes a key and none answers 401.
fn fit_auth(doc: &mut OpenApi, keys: bool) {
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            if keys {
                if let Some(params) = op.parameters.as_mut() {
                    params.retain(|p| p.name != TENANT_HEADER);
                }
            } else {
                op.security = None;
                op.responses.responses.remove("401");
            }
        }
    }
}

/// Fills in what the configuration decides.
fn tailor(doc: &mut OpenApi, cfg: &Config) {
    let departments: Vec<serde_json::Value> = cfg.pools.keys().map(|k| k.as_str().into()).collect();
    let one_of_departments = || {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(departments.clone()))
                .build(),
        ))
    };
    if let Some(op) = doc
        .paths
        .paths
        .get_mut("/api/tasks")
        .and_then(|p| p.get.as_mut())
    {
        for p in op.parameters.iter_mut().flatten() {
            if p.name == "department" {
                p.schema = Some(one_of_departments());
            }
            // The list reads an empty filter as no filter (`?status=`).
            if matches!(p.name.as_str(), "department" | "status" | "cursor")
                && let Some(schema) = p.schema.take()
            {
                p.schema = Some(or_empty(schema));
            }
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/api/pools/{pool}") {
            continue;
        }
        for op in operations_mut(item) {
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "pool" && p.parameter_in == ParameterIn::Path {
                    p.schema = Some(one_of_departments());
                }
            }
        }
    }
    if let Some(RefOr::T(Schema::Object(spec))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut(swarm_core::TaskSpec::name().as_ref()))
        && let Some(RefOr::T(Schema::Object(wait))) = spec.properties.get_mut("wait_ms")
    {
        wait.maximum = Some(cfg.server.max_wait_ms.into());
    }
    batch_items(doc);
}

/// A batch's items are task specs without `wait_ms` (a batch answers at
/// once): schema `BatchTaskSpec`, derived from `TaskSpec` so the two never
/// drift.
fn batch_items(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(spec))) = components
        .schemas
        .get(swarm_core::TaskSpec::name().as_ref())
    else {
        return;
    };
    let mut item = spec.clone();
    item.properties.remove("wait_ms");
    item.description =
        Some("A task of a batch: the body of `POST /api/tasks` without `wait_ms`.".into());
    components
        .schemas
        .insert("BatchTaskSpec".into(), RefOr::T(Schema::Object(item)));
    if let Some(RefOr::T(Schema::Object(req))) = components
        .schemas
        .get_mut(crate::routes::batch::BatchRequest::name().as_ref())
        && let Some(RefOr::T(Schema::Array(tasks))) = req.properties.get_mut("tasks")
    {
        tasks.items = RefOr::<Schema>::Ref(openapi::Ref::from_schema_name("BatchTaskSpec")).into();
    }
}

/// `schema`, or the empty string.
fn or_empty(schema: RefOr<Schema>) -> RefOr<Schema> {
    let empty = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(0))
        .build();
    RefOr::T(Schema::AnyOf(
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(schema)
            .item(empty)
            .build(),
    ))
}

/// The document as served: serialized once, when the router is built.
pub(crate) fn serialized(doc: &OpenApi) -> Document {
    let mut v = serde_json::to_value(doc).unwrap_or_default();
    camel_case_links(&mut v);
    Document(Bytes::from(
        serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec()),
    ))
}

/// utoipa 5.5 writes a Link object's fields in snake case
/// (`operation_id`); OpenAPI spells them `operationId`, `operationRef`,
/// `requestBody`, and tools ignore a link without them.
fn camel_case_links(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut() {
                    if let serde_json::Value::Object(link) = link {
                        for (from, to) in [
                            ("operation_id", "operationId"),
                            ("operation_ref", "operationRef"),
                            ("request_body", "requestBody"),
                        ] {
                            if let Some(x) = link.remove(from) {
                                link.insert(to.into(), x);
                            }
                        }
                    }
                }
            }
            map.values_mut().for_each(camel_case_links);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(camel_case_links),
        _ => {}
    }
}

// === response sets ===

/// A unit type whose `IntoResponses` is `$body`, for `responses(...)` in
/// handler annotations.
macro_rules! response_set {
    ($(#[$doc:meta])* $name:ident => $body:block) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl IntoResponses for $name {
            fn responses() -> Responses $body
        }
    };
}

type Responses = BTreeMap<String, RefOr<openapi::Response>>;

fn error(description: &str) -> openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(openapi::Ref::from_schema_name(
                Envelope::name(),
            )))),
        )
        .build()
}

fn retry_later(description: &str) -> openapi::Response {
    let mut r = error(description);
    r.headers.insert(
        "Retry-After".into(),
        Header::builder()
            .schema(u64::schema())
            .description(Some("Seconds to wait before trying again."))
            .build(),
    );
    r
}

fn set(entries: &[(&str, openapi::Response)]) -> Responses {
    entries
        .iter()
        .map(|(status, r)| (status.to_string(), RefOr::T(r.clone())))
        .collect()
}

response_set! {
    /// Any operation that names its caller ([`crate::auth::Caller`]).
    CallerErrors => {
        set(&[
            (
                "401",
                error(
                    "Keys are configured and the request has no valid `Authorization: Bearer` key (`unauthorized`).",
                ),
            ),
            (
                "422",
                error(
                    "Invalid input, named in `field` (e.g. `X-Tenant` when no keys are configured).",
                ),
            ),
        ])
    }
}

response_set! {
    /// Admin-only operations ([`crate::auth::Admin`]).
    AdminErrors => {
        let mut r = CallerErrors::responses();
        r.extend(set(&[(
            "403",
            error("Not an admin: a client's key, or (without keys) a peer that is not on loopback (`forbidden`)."),
        )]));
        r
    }
}

response_set! {
    /// Operations that read a JSON body ([`crate::extract::JsonBody`]).
    BodyErrors => {
        set(&[
            (
                "400",
                error("The body is not JSON (`malformed_json`) or could not be read (`bad_body`)."),
            ),
            (
                "408",
                error(
                    "The body did not arrive within `server.body_read_timeout_ms` (`request_timeout`).",
                ),
            ),
            (
                "413",
                error("The body is larger than `server.max_body_bytes` (`payload_too_large`)."),
            ),
            (
                "415",
                error("`Content-Type` is not JSON (`unsupported_media_type`)."),
            ),
            (
                "422",
                error(
                    "JSON of the wrong shape or value, the field named in `field` (`invalid_field`, `missing_field`, `unknown_field`, …).",
                ),
            ),
        ])
    }
}

response_set! {
    /// Operations that need the database to answer.
    StoreErrors => {
        set(&[(
            "503",
            retry_later(
                "The database is unavailable (`database_unavailable`) or the server is shutting down (`shutting_down`).",
            ),
        )])
    }
}

response_set! {
    /// Operations that admit new work.
    AdmissionErrors => {
        set(&[
            (
                "409",
                error(
                    "The idempotency key was used for a different request (`idempotency_conflict`).",
                ),
            ),
            (
                "429",
                retry_later("The tenant is over its quota (`tenant_quota`), a token budget has no room for the task's estimate (`token_budget`), or the tenant has `server.max_waiters_per_tenant` requests waiting (`too_many_waiters`)."),
            ),
            (
                "503",
                retry_later(
                    "Load is shed (`queue_full`, `queue_delay`, `deadline_unmeetable`, `process_overloaded`, `database_busy`), the database is unavailable, or the server is shutting down.",
                ),
            ),
        ])
    }
}

response_set! {
    /// Event streams beyond the tenant's cap.
    StreamErrors => {
        set(&[(
            "429",
            retry_later("The tenant holds `server.max_streams_per_tenant` event streams (`too_many_streams`)."),
        )])
    }
}

response_set! {
    /// An unknown task, or another tenant's (`not_found`).
    TaskNotFound => {
        set(&[(
            "404",
            error("No such task, or another tenant's (`not_found`)."),
        )])
    }
}

response_set! {
    /// An unknown department or instance.
    PoolNotFound => {
        set(&[(
            "404",
            error("No such department (`pool_not_found`) or instance (`instance_not_found`)."),
        )])
    }
}

response_set! {
    /// A department whose instances are fixed (`instances_fixed`).
    InstancesFixed => {
        set(&[(
            "409",
            error(
                "The department runs one agent; its instances cannot change (`instances_fixed`).",
            ),
        )])
    }
}

/// A link's parameters: name and runtime expression.
type LinkParams = &'static [(&'static str, &'static str)];

/// A JSON response of schema `schema`, with a link to each of `links`
/// (name, operation id, parameters).
fn linked(
    description: &str,
    schema: &str,
    links: &[(&str, &str, LinkParams)],
) -> openapi::Response {
    let mut r = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(openapi::Ref::from_schema_name(schema)))),
        )
        .build();
    for (name, operation, params) in links {
        let link = params
            .iter()
            .fold(Link::builder().operation_id(*operation), |l, (k, v)| {
                l.parameter(*k, *v)
            });
        r.links.insert(name.to_string(), RefOr::T(link.build()));
    }
    r
}

/// A task in a response, with links to the operations that take its id.
fn task(description: &str) -> openapi::Response {
    const ID: LinkParams = &[("id", "$response.body#/id")];
    linked(
        description,
        &swarm_core::Task::name(),
        &[
            ("GetTask", "get_task", ID),
            ("CancelTask", "cancel_task", ID),
            ("RetryTask", "retry_task", ID),
            ("TaskEvents", "task_events", ID),
        ],
    )
}

/// An instance in a response, with links to draining and removing it.
fn instance(description: &str) -> openapi::Response {
    const POOL_AND_ID: LinkParams = &[("pool", "$request.path.pool"), ("id", "$response.body#/id")];
    linked(
        description,
        &swarm_engine::instances::InstanceSnapshot::name(),
        &[
            ("DrainInstance", "drain_instance", POOL_AND_ID),
            ("RemoveInstance", "remove_instance", POOL_AND_ID),
        ],
    )
}

response_set! {
    /// `POST /api/pools/{pool}/instances`.
    InstanceAdded => {
        set(&[
            ("201", instance("The new instance.")),
            (
                "200",
                instance("The instance was there: its weight is set, its draining ended."),
            ),
        ])
    }
}

response_set! {
    /// `POST /api/tasks`: the task, finished or not.
    Submitted => {
        let mut ok = task(
            "The task ended within `wait_ms` (or was an idempotent replay of one that ended); `Location` names it.",
        );
        let mut accepted = task("The task is stored and queued or running; `Location` names it.");
        for r in [&mut ok, &mut accepted] {
            r.headers.insert(
                "Location".into(),
                Header::builder()
                    .schema(String::schema())
                    .description(Some("`/api/tasks/{id}`"))
                    .build(),
            );
    }
    set(&[("200", ok), ("202", accepted)])
    }
}

response_set! {
    /// `POST /api/tasks/{id}/cancel`.
    CancelAnswers => {
        set(&[
            ("200", task("The task is now `cancelled`.")),
            (
                "202",
                task(
                    "Cancellation is requested; the task still runs (its agent or another node has not yet stopped it).",
                ),
            ),
            ("409", error("The task already ended (`already_finished`).")),
        ])
    }
}

response_set! {
    /// `POST /api/tasks/{id}/retry`.
    RetryAnswers => {
        set(&[
            ("202", task("The task is queued again as a new attempt, with a new deadline.")),
            (
                "409",
                error("The task is queued, running or succeeded (`not_retryable`), or its department is gone (`department_gone`)."),
            ),
        ])
    }
}

response_set! {
    /// `GET /api/tasks/{id}`.
    OneTask => {
        set(&[("200", task("The task."))])
    }
}

// === parameters ===

/// `X-Tenant`: honoured only when no keys are configured (the document of a
/// server with keys leaves it out).
pub(crate) struct TenantHeader;

/// The header's name.
pub(crate) const TENANT_HEADER: &str = "X-Tenant";

impl IntoParams for TenantHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name(TENANT_HEADER)
                .parameter_in(ParameterIn::Header)
                .description(Some(
                    "The tenant (default `default`); only when no keys are configured.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(r"^[A-Za-z0-9_.\-]{1,64}$"))
                        .build(),
                ))
                .build(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use swarm_core::config::{Config, Role, TenantConfig};

    use super::*;

    fn served(cfg: &Config) -> Value {
        let doc = serialized(&crate::routes::openapi(cfg));
        serde_json::from_slice(&doc.0).unwrap()
    }

    fn with_keys() -> Config {
        let mut cfg = Config::default();
        cfg.tenants.push(TenantConfig {
            name: "acme".into(),
            role: Role::Client,
            key_sha256: crate::auth::hash_key("k"),
            weight: 1,
            max_outstanding: None,
            tokens_per_minute: None,
            tokens_per_day: None,
        });
        cfg
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.to_uppercase(), path.clone(), op));
            }
        }
        out
    }

    /// Routes reach the router only through `routes!` in `routes::api`,
    /// which documents them: an axum `.route(…)`, `.nest(…)` or
    /// `.merge(…)` in the route modules would serve a path the document
    /// does not have.
    #[test]
    fn every_route_goes_through_the_documented_table() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut files = vec![format!("{dir}/routes.rs")];
        for e in std::fs::read_dir(format!("{dir}/routes")).unwrap() {
            files.push(e.unwrap().path().display().to_string());
        }
        let mut offenders = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            // Tests (this one included) build no routes.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (i, line) in code.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for bad in [
                    ".route(",
                    ".route_service(",
                    ".nest(",
                    ".nest_service(",
                    ".merge(",
                    "routing::",
                ] {
                    if code.contains(bad) {
                        offenders.push(format!("{f}:{}: {}", i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "routes outside `routes!` (not in the OpenAPI document):\n{}",
            offenders.join("\n")
        );
        // And the table is what the document lists: one operation per
        // handler named in `routes!(…)`.
        let table = std::fs::read_to_string(format!("{dir}/routes.rs")).unwrap();
        let handlers: usize = table
            .split("routes!(")
            .skip(1)
            .map(|rest| rest.split(')').next().unwrap().split(',').count())
            .sum();
        assert_eq!(operations(&served(&Config::default())).len(), handlers);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_operation_ids_and_errors() {
        let doc = served(&Config::default());
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut ids = std::collections::HashSet::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} twice");
            for (status, r) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
        for path in [
            "/api/tasks",
            "/task",
            "/dashboard",
            "/metrics",
            "/health",
            "/ready",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        let submit = &doc["paths"]["/api/tasks"]["post"]["responses"];
        for status in [
            "200", "202", "400", "408", "409", "413", "415", "422", "429", "503",
        ] {
            assert!(submit.get(status).is_some(), "POST /api/tasks {status}");
        }
        assert!(
            submit["503"]["headers"].get("Retry-After").is_some(),
            "{submit}"
        );
        let error = &doc["components"]["schemas"]["Error"];
        assert_eq!(error["required"], json!(["error_code", "message"]));
    }

    #[test]
    fn links_lead_from_a_new_task_to_its_operations() {
        let doc = served(&Config::default());
        let text = doc.to_string();
        assert!(!text.contains("operation_id"), "snake-case link fields");
        let links = &doc["paths"]["/api/tasks"]["post"]["responses"]["202"]["links"];
        assert_eq!(links["GetTask"]["operationId"], "get_task");
        assert_eq!(links["GetTask"]["parameters"]["id"], "$response.body#/id");
        let ids: Vec<&str> = operations(&doc)
            .iter()
            .filter_map(|(_, _, op)| op["operationId"].as_str())
            .collect();
        for (_, _, op) in operations(&doc) {
            for r in op["responses"].as_object().unwrap().values() {
                for link in r["links"].as_object().into_iter().flat_map(|l| l.values()) {
                    let target = link["operationId"].as_str().unwrap();
                    assert!(ids.contains(&target), "link to unknown {target}");
                }
            }
        }
    }

    #[test]
    fn the_document_follows_the_auth_mode_and_the_configuration() {
        let open = served(&Config::default());
        let keyed = served(&with_keys());
        for (method, path, op) in operations(&open) {
            assert!(op["responses"].get("401").is_none(), "{method} {path}");
            assert!(op.get("security").is_none(), "{method} {path}");
        }
        let status = &keyed["paths"]["/api/status"]["get"];
        assert_eq!(status["security"], json!([{"bearer": []}]));
        assert!(status["responses"].get("401").is_some());
        let tenant_param = |doc: &Value| {
            doc["paths"]["/api/status"]["get"]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == TENANT_HEADER)
        };
        assert!(tenant_param(&open));
        assert!(!tenant_param(&keyed));
        // No key needed for the document itself, the health checks and the
        // dashboard.
        for path in ["/api/openapi.json", "/health", "/ready", "/dashboard"] {
            assert!(
                keyed["paths"][path]["get"].get("security").is_none(),
                "{path}"
            );
        }
        // Configuration: the departments and `server.max_wait_ms`.
        let mut cfg = Config::default();
        cfg.server.max_wait_ms = 1234;
        let doc = served(&cfg);
        assert_eq!(
            doc["components"]["schemas"]["TaskSpec"]["properties"]["wait_ms"]["maximum"],
            1234
        );
        let list = doc["paths"]["/api/tasks"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let department = list.iter().find(|p| p["name"] == "department").unwrap();
        let names = &department["schema"]["anyOf"][0]["enum"];
        assert_eq!(
            names.as_array().unwrap().len(),
            cfg.pools.len(),
            "{department}"
        );
    }
}
