//! `GET /debug/pprof/profile`: CPU profiles of the server, admin only.
//!
//! The profiler is process-wide, so everything that takes a profile is in
//! one test, in sequence.

mod support;

#[cfg(feature = "pprof")]
use std::sync::Arc;
#[cfg(feature = "pprof")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "pprof")]
use std::time::Duration;

#[cfg(feature = "pprof")]
use serde_json::json;
use support::{Backend, TestServer};

const ADMIN: (&str, &str) = ("authorization", "Bearer ops-key");
const CLIENT: (&str, &str) = ("authorization", "Bearer acme-key");

fn keys_toml() -> String {
    let acme = swarm_server::auth::hash_key("acme-key");
    let ops = swarm_server::auth::hash_key("ops-key");
    format!(
        "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{acme}\"\n\
         [[tenants]]\nname = \"ops\"\nrole = \"admin\"\nkey_sha256 = \"{ops}\"\n"
    )
}

/// Keeps two `sim` tasks burning CPU at a time until `stop` is set, so the
/// profiler has samples to take.
#[cfg(feature = "pprof")]
fn cpu_load(s: &TestServer, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let (client, url, stop) = (s.client.clone(), s.url("/api/tasks"), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = client
                        .post(&url)
                        .header(ADMIN.0, ADMIN.1)
                        .json(&json!({"type": "sim", "args": {"latency_ms": 0, "cpu_ms": 50}, "wait_ms": 5000}))
                        .send()
                        .await;
                }
            })
        })
        .collect()
}

#[cfg(feature = "pprof")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profiles_as_svg_and_pprof_for_admins_only() {
    let s = TestServer::start(Backend::Sqlite, &keys_toml())
        .await
        .expect("sqlite");
    let path = "/debug/pprof/profile";

    // Refusals come before any profiling, in the usual envelope.
    s.get(&format!("{path}?seconds=1"))
        .await
        .assert_error(401, "unauthorized", None);
    s.get_with(&format!("{path}?seconds=1"), &[CLIENT])
        .await
        .assert_error(403, "forbidden", None);
    for bad in ["0", "61", "x"] {
        s.get_with(&format!("{path}?seconds={bad}"), &[ADMIN])
            .await
            .assert_error(422, "invalid_field", Some("seconds"));
    }
    s.get_with(&format!("{path}?seconds=1&format=png"), &[ADMIN])
        .await
        .assert_error(422, "invalid_field", Some("format"));

    let stop = Arc::new(AtomicBool::new(false));
    let load = cpu_load(&s, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let r = s.get_with(&format!("{path}?seconds=1"), &[ADMIN]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "image/svg+xml");
    assert!(r.text.contains("<svg"), "not an SVG: {:.200}", r.text);
    assert!(
        !r.text.contains("no samples"),
        "the profile under load took no samples"
    );

    // A pprof profile, and a second request while it runs is refused.
    let first = {
        let (client, url) = (
            s.client.clone(),
            s.url(&format!("{path}?seconds=2&format=pprof")),
        );
        tokio::spawn(async move { client.get(url).header(ADMIN.0, ADMIN.1).send().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.get_with(&format!("{path}?seconds=1"), &[ADMIN])
        .await
        .assert_error(409, "profile_in_progress", None);
    let resp = first.await.expect("join").expect("profile request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let bytes = resp.bytes().await.expect("body");
    // A pprof `Profile` opens with field 1 (`sample_type`, length-delimited).
    assert!(bytes.len() > 100, "{} bytes", bytes.len());
    assert_eq!(bytes[0], 0x0a, "not a pprof protobuf");

    // The slot is free again.
    let r = s
        .get_with(&format!("{path}?seconds=1&format=pprof"), &[ADMIN])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await.expect("load task");
    }

    // Without keys, a peer on loopback may profile where the operator
    // said so (`[auth] loopback_admin`), and not by default.
    let closed = TestServer::start(Backend::Sqlite, "")
        .await
        .expect("sqlite");
    closed
        .get(&format!("{path}?seconds=1"))
        .await
        .assert_error(403, "forbidden", None);
    let open = TestServer::start(Backend::Sqlite, "[auth]\nloopback_admin = true\n")
        .await
        .expect("sqlite");
    let r = open.get(&format!("{path}?seconds=1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("<svg"));
}

#[cfg(not(feature = "pprof"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feature_the_route_says_so() {
    let s = TestServer::start(Backend::Sqlite, &keys_toml())
        .await
        .expect("sqlite");
    s.get_with("/debug/pprof/profile?seconds=1", &[ADMIN])
        .await
        .assert_error(501, "not_built", None);
    s.get_with("/debug/pprof/profile?seconds=1", &[CLIENT])
        .await
        .assert_error(403, "forbidden", None);
}
