//! The bench instrument against a real server, the shipped scenarios, and
//! its errors for bad input.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Backend, TestServer};
use swarm_bench::scenario::{E2e, Mode, Scenario};
use swarm_bench::{RunOptions, report, svg};

fn scenario(url: &str, extra: &str) -> Scenario {
    let text = format!(
        "name = \"t\"\n[target]\nurl = \"{url}\"\nsample_ms = 100\n[load]\nsteps = [4]\nwarmup = \"200ms\"\nduration = \"800ms\"\n{extra}"
    );
    Scenario::from_toml(&text).expect("scenario parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_against_swarmd_measures_and_follows_tasks() {
    for e2e in ["none", "wait", "poll", "sse"] {
        // A server per mode: the backlog that "none" leaves (its acks do not
        // wait for the runs) would otherwise be shed against the next mode.
        let Some(s) = TestServer::start(Backend::Sqlite, "").await else {
            return;
        };
        let sc = scenario(
            &s.base,
            &format!(
                "[request]\ne2e = \"{e2e}\"\n[[request.mix]]\ntype = \"sim\"\nargs = {{ latency_ms = 20 }}\n"
            ),
        );
        let r = swarm_bench::run(
            &sc,
            &RunOptions {
                quiet: true,
                command: "test".into(),
            },
        )
        .await
        .unwrap();
        let step = &r.steps[0];
        assert!(step.sent > 10, "{e2e}: {step:?}");
        assert_eq!(step.errors, 0, "{e2e}: {:?}", step.codes);
        // The server may shed some (503): acks that do not wait for the
        // runs outpace them, and a machine busy with other tests trips
        // its overload guard. How many depends on the machine, so only
        // the split of what was sent is checked.
        assert!(step.accepted > 10, "{e2e}: {:?}", step.codes);
        assert_eq!(
            step.accepted + step.rejected,
            step.sent,
            "{e2e}: {:?}",
            step.codes
        );
        match sc.request.e2e {
            E2e::None => {
                let submit = step.submit.unwrap();
                assert!(
                    submit.p50 < 20.0,
                    "acks do not wait for the 20 ms run: {submit:?}"
                );
                let status = step.status.as_ref().unwrap();
                assert!(status.t_s.len() >= 3, "status was sampled: {status:?}");
                assert!(step.goodput.unwrap() > 0.0);
            }
            E2e::Wait => {
                assert!(step.submit.is_none());
                assert!(step.e2e.unwrap().p50 >= 20.0);
                assert!(step.outcomes["succeeded"] > 0);
            }
            E2e::Poll | E2e::Sse => {
                assert!(step.submit.unwrap().p50 < step.e2e.unwrap().p50);
                assert!(step.e2e.unwrap().p50 >= 20.0, "{e2e}: {:?}", step.e2e);
                assert_eq!(
                    step.outcomes.get("succeeded").copied().unwrap_or(0),
                    step.e2e.unwrap().count
                );
            }
        }
        // Closed loop, 4 clients, ~20 ms per task end to end (or less when
        // only acknowledged): throughput is bounded by clients / latency.
        if sc.request.e2e != E2e::None {
            assert!(
                step.throughput < 4.0 / 0.020 * 1.1,
                "{e2e}: {}",
                step.throughput
            );
        }
        let md = report::markdown(&r, None);
        assert!(md.contains("| 4 |"), "{md}");
        assert!(svg::plot(&r).contains("<polyline"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_offers_the_rate_and_counts_refusals() {
    let cfg = "[pools.slow]\nagent = \"sim\"\nconcurrency = 1\n[pools.slow.queue]\ncapacity = 5\n";
    let Some(s) = TestServer::start(Backend::Sqlite, cfg).await else {
        return;
    };
    let mut sc = scenario(
        &s.base,
        "[request]\n[[request.mix]]\ntype = \"sim\"\nagent = \"slow\"\nargs = { latency_ms = 200 }\n",
    );
    sc.load.mode = Mode::Open;
    sc.load.steps = vec![50.0];
    sc.load.warmup = Duration::ZERO;
    sc.load.duration = Duration::from_secs(1);
    let r = swarm_bench::run(
        &sc,
        &RunOptions {
            quiet: true,
            command: "t".into(),
        },
    )
    .await
    .unwrap();
    let step = &r.steps[0];
    assert!(
        (45..=55).contains(&step.sent),
        "50/s for 1 s: {}",
        step.sent
    );
    // One slot, five queue places: most are refused with 503, fast.
    assert!(step.rejected >= 30, "{step:?}");
    assert!(step.rejection.unwrap().p99 < 200.0);
    assert_eq!(step.accepted + step.rejected, step.sent);
    assert!(step.send_lag.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_measures_any_endpoint() {
    let Some(s) = TestServer::start(Backend::Sqlite, "").await else {
        return;
    };
    let sc = scenario(&s.base, "[request.raw]\npath = \"/health\"\n");
    let r = swarm_bench::run(
        &sc,
        &RunOptions {
            quiet: true,
            command: "t".into(),
        },
    )
    .await
    .unwrap();
    assert!(r.steps[0].accepted > 10);
    assert!(
        r.steps[0].status.is_none(),
        "raw runs do not sample /api/status"
    );
}

#[tokio::test]
async fn an_unreachable_target_fails_clearly() {
    let port = support::free_port();
    let sc = scenario(
        &format!("http://127.0.0.1:{port}"),
        "[[request.mix]]\ntype = \"echo\"\n",
    );
    let err = swarm_bench::run(&sc, &RunOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot reach http://127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn shipped_scenarios_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml")
            && !path.to_string_lossy().contains("/configs/")
        {
            Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 5, "found {n} scenarios in {}", dir.display());
}

#[test]
fn the_cli_reports_bad_input_clearly() {
    let bin = env!("CARGO_BIN_EXE_swarmd");
    let out = Command::new(bin)
        .args(["bench", "--scenario", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/file.toml") && err.contains("cannot read"),
        "{err}"
    );

    let out = Command::new(bin)
        .args(["bench", "--concurrency", "1,x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`x` is not a number"));

    let out = Command::new(bin)
        .args(["bench", "--args", "{nope"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--args is not JSON"));

    let port = support::free_port();
    let out = Command::new(bin)
        .args([
            "bench",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
