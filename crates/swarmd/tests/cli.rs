//! The binary's own messages, run as a user would: `--help` lists every
//! command, a client command that cannot reach its server says why, and a
//! server whose port is taken says how to choose another.

mod support;

use std::process::Output;

use support::free_port;

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
