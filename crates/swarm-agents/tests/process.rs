//! The `process` backend against real Python workers
//! (`examples/python-agent/agent.py`; without `python3` every test here is
//! reported as ignored, unless `SWARMD_TEST_REQUIRE_ALL=1`).

#[path = "support/needs.rs"]
mod needs;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use swarm_agents::process::{ProcessAgent, ProcessConfig};
use swarm_agents::{Agent, AgentContext, AgentError, AgentInput, Progress};
use swarm_core::TaskId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const AGENT_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/python-agent/agent.py"
);

fn config(workers: usize) -> ProcessConfig {
    ProcessConfig {
        workers,
        ..ProcessConfig::new(["python3", AGENT_PY])
    }
}

/// A started agent whose workers are all ready.
async fn agent(cfg: ProcessConfig) -> Arc<ProcessAgent> {
    needs::require_python3();
    let workers = cfg.workers;
    let agent = Arc::new(ProcessAgent::new(cfg).expect("valid config"));
    agent.start();
    wait_for(|| agent.stats().alive == workers, "workers ready").await;
    agent
}

fn ctx(deadline: Duration) -> AgentContext {
    AgentContext {
        task_id: TaskId::new(),
        tenant: "acme".into(),
        attempt: 1,
        instance: "process-0".into(),
        deadline: Instant::now() + deadline,
        cancel: CancellationToken::new(),
        children: None,
        progress: Progress::default(),
        request_id: None,
        placed: Default::default(),
        provider: Default::default(),
    }
}

fn input(args: Value) -> AgentInput {
    AgentInput {
        task_type: "demo".into(),
        title: Some("A title".into()),
        description: None,
        args,
    }
}

async fn run(agent: &Arc<ProcessAgent>, args: Value) -> Result<Value, AgentError> {
    agent
        .clone()
        .run(ctx(Duration::from_secs(30)), input(args))
        .await
}

/// The pid of the worker that runs the next task (with one worker: the only one).
async fn worker_pid(agent: &Arc<ProcessAgent>) -> u64 {
    run(agent, json!({})).await.expect("a plain task")["pid"]
        .as_u64()
        .unwrap()
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(pid: u64) {
    wait_for(
        || !Path::new(&format!("/proc/{pid}")).exists(),
        &format!("pid {pid} gone"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn results_carry_the_task_and_request_id() {
    let agent = agent(config(1)).await;
    let mut c = ctx(Duration::from_secs(30));
    c.request_id = Some("req-4711".into());
    let out = agent
        .clone()
        .run(c, input(json!({"x": [1, 2]})))
        .await
        .unwrap();
    assert_eq!(out["echo"], json!({"x": [1, 2]}));
    assert_eq!(out["type"], "demo");
    assert_eq!(out["title"], "A title");
    assert_eq!(out["request_id"], "req-4711");
    let left = out["deadline_ms"].as_u64().unwrap();
    assert!(left > 20_000 && left <= 30_000, "{left}");
    assert_eq!(
        agent.stats().pids,
        vec![out["pid"].as_u64().unwrap() as u32]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn worker_errors_fail_the_task_and_keep_the_worker() {
    let agent = agent(config(1)).await;
    let pid = worker_pid(&agent).await;
    let e = run(&agent, json!({"fail": "no such customer"}))
        .await
        .unwrap_err();
    assert_eq!(e, AgentError::failed("agent_failed", "no such customer"));
    let e = run(&agent, json!({"fail": true, "retryable": true}))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    // An error answer is part of the protocol: the same worker goes on.
    assert_eq!(worker_pid(&agent).await, pid);
    let s = agent.stats();
    assert_eq!((s.restarts, s.kills, s.busy), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn progress_is_forwarded_in_order() {
    let agent = agent(config(1)).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut c = ctx(Duration::from_secs(30));
    let sink = seen.clone();
    c.progress = Progress::new(move |v| sink.lock().unwrap().push(v));
    agent
        .clone()
        .run(c, input(json!({"progress": 3})))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            json!({"step": 1, "of": 3}),
            json!({"step": 2, "of": 3}),
            json!({"step": 3, "of": 3}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn two_workers_run_tasks_concurrently_one_worker_does_not() {
    let agent2 = agent(config(2)).await;
    let sleepy = |a: &Arc<ProcessAgent>| {
        let a = a.clone();
        tokio::spawn(async move { run(&a, json!({"sleep_ms": 800})).await })
    };
    let start = std::time::Instant::now();
    let (a, b) = (sleepy(&agent2), sleepy(&agent2));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let both = start.elapsed();
    assert!(both < Duration::from_millis(1500), "took {both:?}");
    assert_ne!(a["pid"], b["pid"], "both ran on one worker");

    // With one worker the second task waits for the first.
    let agent1 = agent(config(1)).await;
    let start = std::time::Instant::now();
    let (a, b) = (sleepy(&agent1), sleepy(&agent1));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(1600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_crash_fails_its_task_and_the_worker_is_restarted() {
    let agent = agent(config(1)).await;
    let pid = worker_pid(&agent).await;
    let e = run(&agent, json!({"crash": true})).await.unwrap_err();
    assert_eq!(e.code(), "worker_died", "{e:?}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("exit status 3"), "{e}");
    let next = worker_pid(&agent).await;
    assert_ne!(next, pid);
    assert_eq!(agent.stats().restarts, 1);
    assert_eq!(agent.stats().kills, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_hung_task_times_out_and_its_worker_is_replaced() {
    let agent = agent(config(1)).await;
    let pid = worker_pid(&agent).await;
    let start = std::time::Instant::now();
    let e = agent
        .clone()
        .run(
            ctx(Duration::from_millis(500)),
            input(json!({"hang": true})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    wait_gone(pid).await;
    assert_ne!(worker_pid(&agent).await, pid);
    let s = agent.stats();
    assert_eq!((s.kills, s.restarts), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn cancel_kills_the_worker() {
    let agent = agent(config(1)).await;
    let pid = worker_pid(&agent).await;
    let c = ctx(Duration::from_secs(30));
    let token = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
    });
    let start = std::time::Instant::now();
    let e = agent
        .clone()
        .run(c, input(json!({"hang": true})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "cancelled");
    assert!(start.elapsed() < Duration::from_secs(3));
    wait_gone(pid).await;
    assert_ne!(worker_pid(&agent).await, pid);
    assert_eq!(agent.stats().kills, 1);
}

/// The engine drops a run's future at the deadline or on cancel; the
/// worker must not be left running the abandoned task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_dropped_run_kills_its_worker() {
    let agent = agent(config(1)).await;
    let pid = worker_pid(&agent).await;
    let run = agent
        .clone()
        .run(ctx(Duration::from_secs(30)), input(json!({"hang": true})));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), run)
            .await
            .is_err()
    );
    wait_gone(pid).await;
    assert_ne!(worker_pid(&agent).await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn bad_output_fails_the_task_and_replaces_the_worker() {
    let agent = agent(config(1)).await;
    let pid = worker_pid(&agent).await;
    let e = run(&agent, json!({"bad_output": true})).await.unwrap_err();
    assert_eq!(e.code(), "bad_worker_output", "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("this is not JSON"), "{e}");
    wait_gone(pid).await;
    assert_ne!(worker_pid(&agent).await, pid);
    assert_eq!(agent.stats().kills, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_full_queue_is_overload() {
    let agent = agent(ProcessConfig {
        max_waiting: 1,
        ..config(1)
    })
    .await;
    let spawn_hang = || {
        let a = agent.clone();
        let c = ctx(Duration::from_secs(30));
        let token = c.cancel.clone();
        (
            tokio::spawn(async move { a.run(c, input(json!({"hang": true}))).await }),
            token,
        )
    };
    let (first, t1) = spawn_hang();
    wait_for(|| agent.stats().busy == 1, "first task running").await;
    let (second, t2) = spawn_hang();
    wait_for(|| agent.stats().waiting == 1, "second task waiting").await;
    let e = run(&agent, json!({})).await.unwrap_err();
    assert!(matches!(e, AgentError::Overloaded { .. }), "{e:?}");
    t1.cancel();
    t2.cancel();
    assert_eq!(first.await.unwrap().unwrap_err().code(), "cancelled");
    assert_eq!(second.await.unwrap().unwrap_err().code(), "cancelled");
    // Replaced: the killed worker counted as alive until it was reaped, so
    // wait for the restart, not only for a live worker.
    wait_for(
        || {
            let s = agent.stats();
            s.restarts == 1 && s.alive == 1
        },
        "worker replaced",
    )
    .await;
    wait_for(|| agent.stats().waiting == 0, "the waiting task taken").await;
    // The waiting task was skipped, not run (running it would have killed
    // a second worker, as its caller is gone).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = agent.stats();
    assert_eq!((s.kills, s.waiting, s.busy), (1, 0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn stderr_is_drained() {
    let agent = agent(config(1)).await;
    // Far beyond a pipe's buffer: blocks forever unless stderr is read.
    let out = agent
        .clone()
        .run(
            ctx(Duration::from_secs(20)),
            input(json!({"stderr_kb": 1024})),
        )
        .await
        .unwrap();
    assert_eq!(out["echo"]["stderr_kb"], 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn a_worker_that_cannot_start_is_retried_and_tasks_time_out() {
    needs::require_python3();
    let agent = Arc::new(
        ProcessAgent::new(ProcessConfig::new([
            "python3",
            "-c",
            "import sys; print('no ready line here'); sys.exit(2)",
        ]))
        .unwrap(),
    );
    let e = agent
        .clone()
        .run(ctx(Duration::from_millis(1500)), input(json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    let s = agent.stats();
    assert_eq!(s.alive, 0);
    // Backoff: 100 + 200 + 400 ms between attempts, so a few, not hundreds.
    assert!((1..=6).contains(&s.restarts), "{s:?}");

    let missing =
        Arc::new(ProcessAgent::new(ProcessConfig::new(["/surely/not/a/program"])).unwrap());
    let e = missing
        .clone()
        .run(ctx(Duration::from_millis(300)), input(json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn dropping_the_agent_stops_its_workers() {
    let agent = agent(config(2)).await;
    let pids = agent.stats().pids;
    assert_eq!(pids.len(), 2);
    drop(agent);
    for pid in pids {
        wait_gone(pid.into()).await;
    }
}

/// A worker that answers each task with the environment it was given.
const ENV_WORKER: &str = concat!(
    "import json, os, sys\n",
    "print(json.dumps({'ready': True}), flush=True)\n",
    "for line in sys.stdin:\n",
    "    t = json.loads(line)\n",
    "    print(json.dumps({'id': t['id'], 'result': dict(os.environ)}), flush=True)\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(test_missing = "python3", ignore = "needs python3")]
async fn workers_get_a_cleared_environment_plus_the_allowed_variables() {
    // Everything this test process has besides PATH must stay behind
    // (cargo runs tests with CARGO_* set, so there is always some).
    let ours: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    assert!(ours.iter().any(|k| k.starts_with("CARGO_")), "{ours:?}");
    let mut cfg = ProcessConfig::new(["python3", "-c", ENV_WORKER]);
    cfg.inherit_env = vec!["PATH".into(), "NOT_SET_ANYWHERE_42".into()];
    cfg.env = [("SET_HERE".to_string(), "1".to_string())].into();
    let agent = agent(cfg).await;
    let env = run(&agent, json!({})).await.unwrap();
    assert_eq!(env["SET_HERE"], "1", "{env}");
    assert!(env.get("PATH").is_some(), "{env}");
    // (`python3` may be a shim that sets variables of its own, so only
    // ours are looked for.)
    for k in ours.iter().filter(|k| *k != "PATH") {
        if k.starts_with("CARGO") || k == "HOME" || k.starts_with("RUST") {
            assert!(env.get(k).is_none(), "{k} reached the worker: {env}");
        }
    }
    let defaults = ProcessConfig::new(["x"]).inherit_env;
    assert_eq!(defaults, ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]);
}
