//! The binary's command line, run as a user would: `swarmd top` against a
//! live server (two frames), `--help` listing every command, a client
//! command that cannot reach its server saying why, and a server whose
//! port is taken saying how to choose another. (One test binary for all of
//! them: each binary here links the whole server.)

mod support;

use std::process::Output;
use std::time::Duration;

use support::{Backend, TestServer, free_port};

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

fn swarmd(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_swarmd"))
        .args(args)
        .env_remove("SWARMD_URL")
        .env_remove("SWARMD_LISTEN")
        .env_remove("SWARMD_CONFIG")
        .env_remove("SWARMD_DATABASE_URL")
        .output()
        .expect("run swarmd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_every_command_with_a_description() {
    let out = swarmd(&["--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    // The first line is the binary's own description.
    assert!(help.starts_with("SwarmDirector: "), "{help}");
    let commands = help
        .split_once("Commands:\n")
        .unwrap_or_else(|| panic!("no Commands section in:\n{help}"))
        .1;
    for name in [
        "serve",
        "submit",
        "status",
        "top",
        "bench",
        "bench-report",
        "hash-key",
        "sim-backend",
    ] {
        let line = commands
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("`{name}` is not listed in:\n{help}"));
        let description = line.trim_start().trim_start_matches(name).trim();
        assert!(
            description.len() > 10,
            "`{name}` has no description: {line:?}"
        );
    }
}

#[test]
fn a_client_command_says_why_the_server_cannot_be_reached() {
    // Nothing listens on a port that was free a moment ago.
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let at = server.as_str();
    for args in [
        vec!["submit", "--server", at, "--type", "echo"],
        vec!["status", "--server", at],
    ] {
        let out = swarmd(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(&format!(
                "cannot reach {server}: connection refused at 127.0.0.1:{port}"
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("error sending request"), "{args:?}: {err}");
    }
    let out = swarmd(&["status", "--server", "http://swarmd.invalid:8080"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("the name `swarmd.invalid` did not resolve"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_suggests_another_listen_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(support::unique("swarmd-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("swarmd.db").display());
    let out = swarmd(&["serve", "--listen", &addr, "--database-url", &db]);
    let _ = std::fs::remove_dir_all(&dir);
    let err = stderr(&out);
    assert!(!out.status.success(), "serve started on a taken port");
    assert!(
        err.contains(&format!(
            "cannot listen on {addr}: the address is already in use"
        )),
        "{err}"
    );
    assert!(err.contains("--listen or SWARMD_LISTEN"), "{err}");

    let out = swarmd(&["sim-backend", "--listen", &addr]);
    let err = stderr(&out);
    assert!(!out.status.success(), "sim-backend started on a taken port");
    assert!(err.contains("already in use"), "{err}");
    assert!(err.contains("choose another with --listen"), "{err}");
    drop(taken);
}
