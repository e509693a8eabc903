//! The durable store on real databases: group commit under concurrency,
//! idempotency, guarded state changes, recovery and rescue.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::{Backend, TestDb};
use swarm_core::clock::now_ms;
use swarm_core::config::DatabaseConfig;
use swarm_core::{Priority, Task, TaskId, TaskStatus, Timings};
use swarm_store::{Expect, Finish, InsertOutcome, ListQuery, NewTask, Store};

async fn store(backend: Backend) -> Option<(Store, TestDb)> {
    let db = TestDb::new(backend).await?;
    let cfg = DatabaseConfig {
        url: db.url.clone(),
        ..DatabaseConfig::default()
    };
    Some((Store::connect(&cfg).await.expect("connect"), db))
}

fn task(tenant: &str, key: Option<&str>) -> Task {
    let now = now_ms();
    Task {
        id: TaskId::new(),
        tenant: tenant.into(),
        task_type: "echo".into(),
        status: TaskStatus::Queued,
        priority: Priority::High,
        department: "echo".into(),
        agent: "echo".into(),
        instance: None,
        title: Some("t".into()),
        description: None,
        args: json!({"k": [1, 2, {"x": "y"}]}),
        result: None,
        error: None,
        idempotency_key: key.map(str::to_string),
        timeout_ms: 1000,
        deadline_at: now + 1000,
        created_at: now,
        started_at: None,
        finished_at: None,
        attempts: 0,
        nodes: Vec::new(),
        waiting_for: None,
        retry: None,
        run_after: None,
        history: Vec::new(),
        callback_url: None,
        callback_state: None,
        timings: Timings::default(),
    }
}

fn new(t: Task, hash: Option<&str>, owner: &str) -> NewTask {
    NewTask {
        task: t,
        request_hash: hash.map(str::to_string),
        owner: owner.into(),
    }
}

async fn concurrent_inserts_are_all_durable(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let mut handles = Vec::new();
    for i in 0..2000 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let t = task(if i % 2 == 0 { "a" } else { "b" }, None);
            match store.insert(new(t, None, "n1")).await.unwrap() {
                InsertOutcome::Created(t) => t.id,
                other => panic!("expected Created, got {other:?}"),
            }
        }));
    }
    let mut ids = HashSet::new();
    for h in handles {
        ids.insert(h.await.unwrap());
    }
    assert_eq!(ids.len(), 2000);
    let listed = store
        .list(&ListQuery {
            tenant: Some("a".into()),
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1000);
    assert!(listed.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    // Round trip of every field.
    let one = listed[0].clone();
    let back = store.get(one.id).await.unwrap().unwrap();
    assert_eq!(back, one);
    assert_eq!(back.args, json!({"k": [1, 2, {"x": "y"}]}));
    // A list may leave the large fields unread.
    let light = store
        .list(&ListQuery {
            tenant: Some("a".into()),
            limit: 3,
            skip_args: true,
            skip_result: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(light.len(), 3);
    assert_eq!(light[0].id, one.id);
    assert_eq!((&light[0].args, &light[0].result), (&Value::Null, &None));
    assert_eq!(light[0].tenant, one.tenant);
    assert_eq!(back.priority, Priority::High);
}

async fn idempotency_within_and_across_batches(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let mut handles = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .insert(new(task("a", Some("k1")), Some("h1"), "n1"))
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for h in handles {
        match h.await.unwrap() {
            InsertOutcome::Created(t) => {
                created += 1;
                ids.insert(t.id);
            }
            InsertOutcome::Existing { task, same_request } => {
                assert!(same_request);
                ids.insert(task.id);
            }
        }
    }
    assert_eq!((created, ids.len()), (1, 1));
    match store
        .insert(new(task("a", Some("k1")), Some("h2"), "n1"))
        .await
        .unwrap()
    {
        InsertOutcome::Existing { same_request, .. } => assert!(!same_request),
        other => panic!("{other:?}"),
    }
    // Another tenant may use the same key.
    assert!(matches!(
        store
            .insert(new(task("b", Some("k1")), Some("h1"), "n1"))
            .await
            .unwrap(),
        InsertOutcome::Created(_)
    ));
}

async fn state_changes_are_guarded(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let t = task("a", None);
    let id = t.id;
    store.insert(new(t, None, "n1")).await.unwrap();
    let at = now_ms();
    // Another node cannot start it.
    assert_eq!(store.start(id, "i0", at, "n2").await.unwrap(), None);
    assert_eq!(store.start(id, "i0", at, "n1").await.unwrap(), Some(1));
    assert_eq!(
        store.start(id, "i0", at, "n1").await.unwrap(),
        Some(1),
        "the same start again (its answer was lost) finds itself, one attempt"
    );
    assert_eq!(
        store.start(id, "i0", at + 1, "n1").await.unwrap(),
        None,
        "another start of a running task is refused"
    );
    let fin = |expect, status| Finish {
        id,
        expect,
        status,
        result: Some(json!({"ok": true})),
        error: None,
        finished_at: now_ms(),
        timings: Timings {
            run_ms: Some(1.0),
            ..Default::default()
        },
        instance: None,
        owner: "n1".into(),
    };
    let mut foreign = fin(Expect::Running, TaskStatus::Failed);
    foreign.owner = "n2".into();
    assert!(
        !store.finish(foreign).await.unwrap(),
        "only the owner ends a task"
    );
    assert!(
        !store
            .finish(fin(Expect::Queued, TaskStatus::Cancelled))
            .await
            .unwrap()
    );
    assert!(
        store
            .finish(fin(Expect::Running, TaskStatus::Succeeded))
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish(fin(Expect::Unfinished, TaskStatus::Failed))
            .await
            .unwrap(),
        "terminal is final"
    );
    let back = store.get(id).await.unwrap().unwrap();
    assert_eq!(back.status, TaskStatus::Succeeded);
    assert_eq!(back.result, Some(json!({"ok": true})));
    assert_eq!(back.instance.as_deref(), Some("i0"));
    assert_eq!(back.attempts, 1);
    assert_eq!(back.timings.run_ms, Some(1.0));
}

async fn restart_claims_unfinished_tasks(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let (a, b, c) = (task("a", None), task("a", None), task("a", None));
    let (ida, idb, idc) = (a.id, b.id, c.id);
    for t in [a, b, c] {
        store.insert(new(t, None, "n1")).await.unwrap();
    }
    store.start(ida, "i0", now_ms(), "n1").await.unwrap();
    store.start(idc, "i0", now_ms(), "n1").await.unwrap();
    store
        .finish(Finish {
            id: idc,
            expect: Expect::Running,
            status: TaskStatus::Succeeded,
            result: None,
            error: None,
            finished_at: now_ms(),
            timings: Timings::default(),
            // Known only at the end (a balanced department): replaces "i0".
            instance: Some("http://10.0.0.7/run".into()),
            owner: "n1".into(),
        })
        .await
        .unwrap();
    let done = store.get(idc).await.unwrap().unwrap();
    assert_eq!(done.instance.as_deref(), Some("http://10.0.0.7/run"));
    let mut claimed: Vec<TaskId> = store
        .claim_at_start("n1")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    claimed.sort();
    let mut want = vec![ida, idb];
    want.sort();
    assert_eq!(claimed, want);
    assert_eq!(
        store.get(ida).await.unwrap().unwrap().status,
        TaskStatus::Queued,
        "running → queued"
    );
}

async fn rescue_takes_a_dead_nodes_tasks(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let now = now_ms();
    store.register_node("dead", now - 60_000, "").await.unwrap();
    store.register_node("alive", now, "").await.unwrap();
    let (a, b) = (task("a", None), task("a", None));
    let (ida, idb) = (a.id, b.id);
    store.insert(new(a, None, "dead")).await.unwrap();
    store.insert(new(b, None, "alive")).await.unwrap();
    store.start(ida, "i0", now, "dead").await.unwrap();
    let rescued = store.rescue("me", now - 30_000, 100).await.unwrap();
    match backend {
        Backend::Postgres => {
            assert_eq!(rescued.iter().map(|t| t.id).collect::<Vec<_>>(), vec![ida]);
            assert_eq!(rescued[0].status, TaskStatus::Queued);
            // Now ours: the dead node can no longer start it, we can.
            assert_eq!(store.start(ida, "i1", now, "dead").await.unwrap(), None);
            assert_eq!(store.start(ida, "i1", now, "me").await.unwrap(), Some(2));
            assert!(
                store
                    .rescue("me", now - 30_000, 100)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let _ = idb;
        }
        Backend::Sqlite => assert!(rescued.is_empty(), "one process owns a SQLite file"),
    }
}

async fn cancel_requests_reach_the_owner(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let t = task("a", None);
    let id = t.id;
    store.insert(new(t, None, "n1")).await.unwrap();
    assert!(store.request_cancel(id).await.unwrap());
    assert_eq!(store.cancel_requests("n1").await.unwrap(), vec![id]);
    assert!(store.cancel_requests("n2").await.unwrap().is_empty());
}

async fn writes_repeated_after_a_lost_answer_are_harmless(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    // An insert whose commit landed but whose answer was lost, run again:
    // the task is there once and the second run answers as the first.
    let t = task("a", None);
    let id = t.id;
    for _ in 0..2 {
        assert!(matches!(
            store.insert(new(t.clone(), None, "n1")).await.unwrap(),
            InsertOutcome::Created(c) if c.id == id
        ));
    }
    let keyed = task("a", Some("k"));
    for _ in 0..2 {
        assert!(matches!(
            store.insert(new(keyed.clone(), Some("h"), "n1")).await.unwrap(),
            InsertOutcome::Created(c) if c.id == keyed.id
        ));
    }
    let all = store
        .list(&ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    // The same outbox message twice is stored once.
    let row = swarm_store::OutboxRow {
        id: TaskId::new().to_string(),
        task_id: id.to_string(),
        tenant: "a".into(),
        sender: "a@x".into(),
        recipients: vec!["b@x".into()],
        cc: vec![],
        subject: "s".into(),
        body: "b".into(),
        created_at: now_ms(),
    };
    store.outbox_insert(row.clone()).await.unwrap();
    store.outbox_insert(row).await.unwrap();
    assert_eq!(store.outbox_list(None, 10).await.unwrap().len(), 1);
}

async fn retention_deletes_only_old_finished_work(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let now = now_ms();
    let mut ids = Vec::new();
    for _ in 0..7 {
        let t = task("a", None);
        ids.push(t.id);
        store.insert(new(t, None, "n1")).await.unwrap();
    }
    // Five finished long ago, one just now, one still queued.
    for (i, id) in ids.iter().take(6).enumerate() {
        store.start(*id, "i0", now, "n1").await.unwrap();
        let finished_at = if i < 5 { now - 3_600_000 } else { now };
        assert!(
            store
                .finish(Finish {
                    id: *id,
                    expect: Expect::Running,
                    status: TaskStatus::Succeeded,
                    result: None,
                    error: None,
                    finished_at,
                    timings: Timings::default(),
                    instance: None,
                    owner: "n1".into(),
                })
                .await
                .unwrap()
        );
    }
    let cutoff = now - 60_000;
    let first = store.prune(cutoff, 3).await.unwrap();
    assert_eq!(first.tasks, 3, "a batch is bounded");
    let second = store.prune(cutoff, 3).await.unwrap();
    assert_eq!(second.tasks, 2);
    assert_eq!(store.prune(cutoff, 3).await.unwrap().tasks, 0);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            store.get(*id).await.unwrap().is_some(),
            i >= 5,
            "task {i}: recent and unfinished tasks stay"
        );
    }
}

async fn own_unfinished_rows_can_be_reclaimed(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let (a, b, c) = (task("a", None), task("a", None), task("a", None));
    let (ida, idb, idc) = (a.id, b.id, c.id);
    store.insert(new(a, None, "n1")).await.unwrap();
    store.insert(new(b, None, "n1")).await.unwrap();
    store.insert(new(c, None, "n2")).await.unwrap();
    store.start(idb, "i0", now_ms(), "n1").await.unwrap();
    let mut mine = store.own_unfinished("n1").await.unwrap();
    mine.sort();
    let mut want = vec![ida, idb];
    want.sort();
    assert_eq!(mine, want);
    // Reclaiming takes back only this node's unfinished rows, as queued.
    let back = store.reclaim("n1", &[idb, idc]).await.unwrap();
    assert_eq!(back.iter().map(|t| t.id).collect::<Vec<_>>(), vec![idb]);
    assert_eq!(back[0].status, TaskStatus::Queued);
    assert_eq!(
        store.get(idc).await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
}

async fn connect_errors_say_where_and_why(backend: Backend) {
    if backend != Backend::Postgres {
        return;
    }
    let admin = support::pg_url();
    // Nothing listens on this port.
    let port = support::free_port();
    let refused = DatabaseConfig {
        url: format!("postgres://postgres@127.0.0.1:{port}/test"),
        acquire_timeout_ms: 2_000,
        ..DatabaseConfig::default()
    };
    let asked = std::time::Instant::now();
    let err = Store::connect(&refused).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("connection refused"),
        "{err}"
    );
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(2),
        "at once, not after the acquire timeout"
    );
    // A database that does not exist: the server's words, without the
    // driver's source line.
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let missing = DatabaseConfig {
        url: format!("{base}/no_such_database_here"),
        ..DatabaseConfig::default()
    };
    let err = Store::connect(&missing).await.unwrap_err().to_string();
    assert!(
        err.contains("\"no_such_database_here\" does not exist"),
        "{err}"
    );
    assert!(!err.contains(" at line "), "{err}");
}

async fn pg_sessions_carry_statement_timeouts(backend: Backend) {
    if backend != Backend::Postgres {
        return;
    }
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // A 1 ms statement_timeout cannot even migrate the schema: the setting
    // is on the pool's sessions.
    let cfg = DatabaseConfig {
        url: db.url.clone(),
        statement_timeout_ms: 1,
        ..DatabaseConfig::default()
    };
    let err = Store::connect(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("statement timeout"), "{err}");
    // The defaults migrate fine.
    let cfg = DatabaseConfig {
        url: db.url.clone(),
        ..DatabaseConfig::default()
    };
    Store::connect(&cfg)
        .await
        .expect("connect with the default timeouts");
}

async fn second_process_on_one_sqlite_file_is_refused(backend: Backend) {
    if backend != Backend::Sqlite {
        return;
    }
    let Some((_store, db)) = store(backend).await else {
        return;
    };
    let cfg = DatabaseConfig {
        url: db.url.clone(),
        ..DatabaseConfig::default()
    };
    let err = Store::connect(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("in use by another swarmd"), "{err}");
}

on_both_backends!(
    concurrent_inserts_are_all_durable,
    idempotency_within_and_across_batches,
    state_changes_are_guarded,
    restart_claims_unfinished_tasks,
    rescue_takes_a_dead_nodes_tasks,
    cancel_requests_reach_the_owner,
    writes_repeated_after_a_lost_answer_are_harmless,
    retention_deletes_only_old_finished_work,
    own_unfinished_rows_can_be_reclaimed,
    connect_errors_say_where_and_why,
    pg_sessions_carry_statement_timeouts,
    second_process_on_one_sqlite_file_is_refused,
);
