//! Delayed and periodic tasks over a real socket, on SQLite and PostgreSQL
//! (issue 17, part 2): `delay_ms` and `run_at` hold a task until its time,
//! counted as scheduled; `[[schedules]]` submits one task per cron tick and
//! `GET /api/schedules` shows the next and last runs; after downtime the
//! missed ticks are skipped unless `catch_up` asks for them. (Three nodes
//! ticking one schedule exactly once: `cluster.rs`.)

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Backend, TestServer, pool};

fn at(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
}

async fn a_delayed_task_waits_as_scheduled_then_runs(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "args": {"n": 1}, "delay_ms": 1500, "timeout_ms": 500}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "queued", "{}", r.text);
    let run_after = at(&r.body["run_after"]);
    let created = at(&r.body["created_at"]);
    let delay = run_after.duration_since(created).unwrap();
    assert!(
        (Duration::from_millis(1400)..=Duration::from_millis(1600)).contains(&delay),
        "{delay:?}"
    );
    // Its deadline counts from its start time, not from acceptance.
    assert!(at(&r.body["deadline_at"]) > run_after, "{}", r.text);
    let st = s.get("/api/status").await;
    let echo = pool(&st.body, "echo");
    assert_eq!(echo["scheduled"], 1, "{}", st.text);
    assert_eq!(echo["queued"], 0, "{}", st.text);
    let done = s.wait_done(&r.id()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(at(&done["started_at"]) >= run_after, "{done}");

    // `run_at` in the past runs now.
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "run_at": "2020-01-01T00:00:00+02:00", "wait_ms": 5000}),
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    // `run_at` with an offset is read as such.
    let soon = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(3600));
    let r = s
        .post(
            "/api/tasks",
            &json!({"type": "echo", "run_at": soon.to_string()}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let want = at(&json!(soon.to_string()));
    assert_eq!(at(&r.body["run_after"]), want, "{}", r.text);
    // A scheduled task can be cancelled.
    let c = s
        .post(&format!("/api/tasks/{}/cancel", r.id()), &json!({}))
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["status"], "cancelled", "{}", c.text);
}

async fn bad_start_times_are_refused(backend: Backend) {
    let Some(s) = TestServer::start(backend, "").await else {
        return;
    };
    s.post("/api/tasks", &json!({"type": "echo", "run_at": "tomorrow"}))
        .await
        .assert_error(422, "invalid_field", Some("run_at"));
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "run_at": "2026-01-01T00:00:00Z", "delay_ms": 5}),
    )
    .await
    .assert_error(422, "invalid_field", Some("delay_ms"));
    let far = humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(31 * 86_400));
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "run_at": far.to_string()}),
    )
    .await
    .assert_error(422, "invalid_field", Some("run_at"));
    s.post(
        "/api/tasks",
        &json!({"type": "echo", "delay_ms": 2_592_000_001u64}),
    )
    .await
    .assert_error(422, "invalid_field", Some("delay_ms"));
}

/// A schedule that ticks every second.
fn every_second(name: &str, catch_up: bool) -> String {
    format!(
        "[[schedules]]\nname = \"{name}\"\ncron = \"* * * * * *\"\ncatch_up = {catch_up}\n\
         [schedules.task]\ntype = \"echo\"\nargs = {{ from = \"{name}\" }}\n"
    )
}

/// The ticks (ms) of `name`'s tasks in the store, from their keys.
async fn ticks(s: &TestServer, name: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let r = s
            .get(&format!("/api/tasks?limit=500&fields=args{cursor}"))
            .await;
        for t in r.body["tasks"].as_array().expect("tasks") {
            if let Some(k) = t["idempotency_key"].as_str()
                && let Some(tick) = k.strip_prefix(&format!("schedule:{name}:"))
            {
                assert!(
                    out.insert(tick.parse::<i64>().expect("a tick")),
                    "tick {tick} twice"
                );
                assert_eq!(t["args"]["from"], name, "{t}");
            }
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn a_schedule_ticks_and_shows_its_runs(backend: Backend) {
    let Some(s) = TestServer::start(backend, &every_second("tick", false)).await else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let got = ticks(&s, "tick").await;
    assert!(got.len() >= 2, "{got:?}");
    // One task per second, on the second, none skipped.
    let v: Vec<i64> = got.iter().copied().collect();
    for w in v.windows(2) {
        assert_eq!(w[1] - w[0], 1_000, "{v:?}");
    }
    assert!(v.iter().all(|t| t % 1_000 == 0), "{v:?}");
    let r = s.get("/api/schedules").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sch = &r.body["schedules"][0];
    assert_eq!(sch["name"], "tick", "{}", r.text);
    assert_eq!(sch["timezone"], "UTC", "{}", r.text);
    assert_eq!(sch["type"], "echo", "{}", r.text);
    assert!(sch["submitted_here"].as_u64().unwrap() >= 2, "{}", r.text);
    let next = at(&sch["next_run"]);
    assert!(
        next > SystemTime::now() - Duration::from_millis(100),
        "{}",
        r.text
    );
    let last = at(&sch["last_run"]);
    assert!(
        last.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 >= v[v.len() - 1] - 1_000,
        "{}",
        r.text
    );
    let id = sch["last_task"].as_str().expect("last task");
    let done = s.wait_done(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

async fn missed_ticks_are_skipped_unless_catch_up_asks(backend: Backend) {
    for catch_up in [false, true] {
        let name = if catch_up { "caught" } else { "skipped" };
        let Some(s) = TestServer::start(backend, &every_second(name, catch_up)).await else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let before = ticks(&s, name).await;
        assert!(!before.is_empty(), "{before:?}");
        let db = s.stop().await;
        let down_from = now_ms();
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let up_at = now_ms();
        let s = TestServer::start_on(db, &every_second(name, catch_up)).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let after = ticks(&s, name).await;
        let missed: Vec<i64> = after
            .iter()
            .copied()
            .filter(|t| *t > down_from + 1_000 && *t < up_at - 1_000)
            .collect();
        if catch_up {
            assert!(
                !missed.is_empty(),
                "catch_up submits the missed ticks: {after:?}"
            );
            let v: Vec<i64> = after.iter().copied().collect();
            for w in v.windows(2) {
                assert_eq!(w[1] - w[0], 1_000, "no tick is missing: {v:?}");
            }
        } else {
            assert!(
                missed.is_empty(),
                "ticks of the downtime ran: {missed:?} in {after:?}"
            );
            assert!(after.len() > before.len(), "it ticks again: {after:?}");
        }
    }
}

on_both_backends!(
    a_delayed_task_waits_as_scheduled_then_runs,
    bad_start_times_are_refused,
    a_schedule_ticks_and_shows_its_runs,
    missed_ticks_are_skipped_unless_catch_up_asks,
);
