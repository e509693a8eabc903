//! Configuration errors name the key; `serve` refuses an invalid one.

use swarm_simbackend::{SimConfig, serve};

#[test]
fn unknown_key_is_named() {
    let err = SimConfig::from_toml("latency_ms = 5\nlatncy_ms = 9\n").unwrap_err();
    assert!(err.contains("latncy_ms"), "{err}");
}

#[test]
fn out_of_range_error_rate_is_named() {
    let err = SimConfig::from_toml("error_rate = 2.0").unwrap_err();
    assert!(err.contains("error_rate"), "{err}");
    let err = SimConfig::from_toml("[[schedule]]\nat_s = 1.0\nerror_rate = 2.0").unwrap_err();
    assert!(err.contains("schedule[0].error_rate"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let err = SimConfig::from_toml("capacity = \"lots\"").unwrap_err();
    assert!(err.contains("capacity"), "{err}");
}

#[tokio::test]
async fn serve_rejects_invalid_config() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = SimConfig {
        error_status: 200,
        ..SimConfig::default()
    };
    let err = serve(listener, cfg, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("error_status"), "{err}");
}
