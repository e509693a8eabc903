//! `swarmd top` against a live server: the real binary, two frames.

mod support;

use std::time::Duration;

use support::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_redraws_pools_with_rates() {
    let s = TestServer::start(Backend::Sqlite, "")
        .await
        .expect("sqlite");
    // Some finished work, so the counters are not all zero.
    for _ in 0..5 {
        let r = s
            .post(
                "/api/tasks",
                &serde_json::json!({"type": "echo", "wait_ms": 5000}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_swarmd"))
            .args([
                "top",
                "--server",
                &s.base,
                "--iterations",
                "2",
                "--interval",
                "200ms",
            ])
            .output(),
    )
    .await
    .expect("top ended within 30 s")
    .expect("top runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Piped, so no escapes: two frames, one after the other.
    assert!(!stdout.contains('\x1b'), "escapes on a pipe: {stdout:?}");
    assert_eq!(stdout.matches("swarmd top ·").count(), 2, "{stdout}");
    for pool in ["communications", "reviewers", "email", "sim", "echo"] {
        assert!(stdout.contains(pool), "no {pool} in {stdout}");
    }
    let frames: Vec<&str> = stdout.split("swarmd top ·").skip(1).collect();
    assert!(frames[0].contains("DONE/S"), "{stdout}");
    let echo_row = |frame: &str| {
        frame
            .lines()
            .find(|l| l.starts_with("echo "))
            .unwrap_or_else(|| panic!("no echo row in {frame}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // First frame: no previous poll, no rates; second: rates (no new work,
    // so 0.0 done per second).
    assert_eq!(echo_row(frames[0]).last().map(String::as_str), Some("-"));
    assert_eq!(
        echo_row(frames[1])[echo_row(frames[1]).len() - 3..],
        ["0.0", "0.0", "0.0"]
    );
    assert!(echo_row(frames[1]).contains(&"5".to_string()), "{stdout}");

    // A server that is not there is an error at once, not a blank screen.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_swarmd"))
        .args([
            "top",
            "--server",
            &format!("http://127.0.0.1:{}", support::free_port()),
            "--iterations",
            "1",
        ])
        .output()
        .await
        .expect("top runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
