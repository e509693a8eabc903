//! The transitions against a real SQLite file: every pair of states, and
//! the races (cancel against finish, expire against start).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use swarm_core::clock::now_ms;
use swarm_core::config::{DatabaseConfig, PoolConfig};
use swarm_core::{Priority, Task, TaskId, TaskStatus, Timings};
use swarm_store::{NewTask, Store};
use tokio::time::Instant;

use super::*;
use crate::hub::Hub;
use crate::ledger::TenantLedger;
use crate::pool::{Pool, Pools};
use crate::shutdown::Shutdown;
use crate::stats::Metrics;

/// A lifecycle over a fresh SQLite file, with one department `echo`.
struct Fx {
    dir: PathBuf,
    store: Store,
    hub: Arc<Hub>,
    pools: Arc<Pools>,
    ledger: Arc<TenantLedger>,
    lc: Lifecycle,
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Fx {
    async fn new() -> Fx {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("swarmd-lifecycle-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.join("t.db").display()),
            ..DatabaseConfig::default()
        })
        .await
        .unwrap();
        let metrics = Arc::new(Metrics::new(false, 1));
        let pool = Pool::new(
            "echo",
            &PoolConfig::default(),
            &[],
            Arc::new(swarm_agents::echo::EchoAgent),
            metrics.pool("echo"),
        );
        let pools = Arc::new(Pools::new(BTreeMap::from([(
            "echo".to_string(),
            Arc::new(pool),
        )])));
        let hub = Arc::new(Hub::new());
        let ledger = Arc::new(TenantLedger::default());
        let lc = Lifecycle::new(
            store.clone(),
            hub.clone(),
            pools.clone(),
            ledger.clone(),
            "n1".into(),
            metrics,
            0,
            Shutdown::default(),
        );
        Fx {
            dir,
            store,
            hub,
            pools,
            ledger,
            lc,
        }
    }

    fn pool(&self) -> &Arc<Pool> {
        self.pools.get("echo").unwrap()
    }

    fn task(&self, deadline_in_ms: i64) -> Task {
        let now = now_ms();
        Task {
            id: TaskId::new(),
            tenant: "t".into(),
            task_type: "echo".into(),
            status: TaskStatus::Queued,
            priority: Priority::Normal,
            department: "echo".into(),
            agent: "echo".into(),
            instance: None,
            title: None,
            description: None,
            args: json!({}),
            result: None,
            error: None,
            idempotency_key: None,
            timeout_ms: deadline_in_ms.max(1),
            deadline_at: now + deadline_in_ms,
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

    /// Accepts a task; it waits in the pool's queue.
    async fn accept(&self, deadline_in_ms: i64) -> TaskId {
        let task = self.task(deadline_in_ms);
        let id = task.id;
        let pending = self.pool().begin_pending("t");
        let slot = self.ledger.take("t");
        let new = NewTask {
            task,
            request_hash: None,
            owner: "n1".into(),
        };
        match self
            .lc
            .accept(self.pool(), new, pending, slot, Instant::now(), None)
            .await
            .unwrap()
        {
            Accepted::New(t) => assert_eq!(t.id, id),
            other => panic!("{other:?}"),
        }
        id
    }

    /// Takes the next task out of the queue, as a dispatcher would.
    fn take(&self) -> Queued {
        self.pool().pop_task().expect("a queued task")
    }

    /// A copy of a held task, as a stale holder would have it.
    fn stale_copy(&self, q: &Queued) -> Queued {
        Queued {
            task: q.task.clone(),
            enqueued_at: q.enqueued_at,
            received_at: None,
            stored_at: None,
            slot: self.ledger.take("t"),
            request_id: None,
            started: None,
            start_at: None,
        }
    }

    async fn stored(&self, id: TaskId) -> Task {
        self.store.get(id).await.unwrap().unwrap()
    }

    /// A task brought to `state` through the lifecycle.
    async fn in_state(&self, state: TaskStatus) -> Held {
        let id = self.accept(60_000).await;
        let mut q = self.take();
        assert_eq!(q.task.id, id);
        if state == TaskStatus::Queued {
            // Back where a cancel finds it.
            self.pool().push(q);
            return Held::Queued(id);
        }
        let running = match self.lc.start(&mut q, "echo-0").await {
            Begun::Running(t, _) => *t,
            other => panic!("{other:?}"),
        };
        if state == TaskStatus::Running {
            return Held::Running(q, running);
        }
        let verdict = verdict(state);
        self.lc
            .finish(self.pool(), &q, running.clone(), verdict, Instant::now())
            .await;
        Held::Ended(q, running)
    }
}

/// A task in a given state, with what its holder keeps.
enum Held {
    Queued(TaskId),
    Running(Queued, Task),
    Ended(Queued, Task),
}

impl Held {
    fn id(&self) -> TaskId {
        match self {
            Held::Queued(id) => *id,
            Held::Running(q, _) | Held::Ended(q, _) => q.task.id,
        }
    }
}

fn verdict(status: TaskStatus) -> Verdict {
    match status {
        TaskStatus::Succeeded => Verdict::succeeded(json!({"ok": true})),
        TaskStatus::Cancelled => Verdict::cancelled("run"),
        s => Verdict::ended(s, "test", "ended by the test", "run"),
    }
}

/// The edges of the state machine.
fn allowed(from: TaskStatus, to: TaskStatus) -> bool {
    use TaskStatus::*;
    match from {
        Queued => matches!(to, Running | Failed | TimedOut | Cancelled),
        Running => matches!(to, Queued | Succeeded | Failed | TimedOut | Cancelled),
        _ => false,
    }
}

/// Every transition that can move a task to `to`, tried against a task in
/// `from` the way a holder of it (or a stale copy of it) would.
async fn try_to_move(fx: &Fx, held: Held, to: TaskStatus) {
    let pool = fx.pool();
    match (held, to) {
        (Held::Queued(id), TaskStatus::Running) => {
            let mut q = fx.take();
            assert_eq!(q.task.id, id);
            fx.lc.start(&mut q, "echo-0").await;
        }
        (Held::Queued(id), TaskStatus::Cancelled) => {
            let t = fx.stored(id).await;
            fx.lc.cancel(&t).await.unwrap();
        }
        (Held::Queued(_), TaskStatus::Queued) => {
            let q = fx.take();
            fx.lc.hand_back(q.task.clone()).await;
        }
        (Held::Queued(_), TaskStatus::Succeeded) => {
            // Only a run succeeds, and this one never started.
            let q = fx.take();
            fx.lc
                .finish(
                    pool,
                    &q,
                    q.task.clone(),
                    verdict(TaskStatus::Succeeded),
                    Instant::now(),
                )
                .await;
            pool.push(q);
        }
        (Held::Queued(_), s) => {
            // Expired, or failed before it ran: ended by its holder. A
            // run's finish cannot end a task that never started.
            let q = fx.take();
            fx.lc
                .finish(pool, &q, q.task.clone(), verdict(s), Instant::now())
                .await;
            fx.lc.end_held(Some(pool), &q, verdict(s)).await;
        }
        (Held::Running(mut q, running) | Held::Ended(mut q, running), TaskStatus::Running) => {
            // A second start: a new attempt's token.
            q.start_at = Some(q.start_at.unwrap() + 1);
            fx.lc.start(&mut q, "echo-1").await;
            let mut stale = fx.stale_copy(&q);
            fx.lc.start(&mut stale, "echo-2").await;
            let _ = running;
        }
        (Held::Running(_, running) | Held::Ended(_, running), TaskStatus::Queued) => {
            fx.lc.hand_back(running).await;
        }
        (Held::Running(q, running) | Held::Ended(q, running), s) => {
            fx.lc
                .finish(pool, &q, running.clone(), verdict(s), Instant::now())
                .await;
            if s == TaskStatus::Cancelled {
                fx.lc.cancel(&running).await.unwrap();
            }
            let stale = fx.stale_copy(&q);
            fx.lc.end_held(Some(pool), &stale, verdict(s)).await;
        }
    }
}

#[tokio::test]
async fn every_state_pair_moves_only_along_an_edge() {
    use TaskStatus::*;
    let fx = Fx::new().await;
    let states = [Queued, Running, Succeeded, Failed, TimedOut, Cancelled];
    let mut checked = 0;
    for from in states {
        for to in states {
            let held = fx.in_state(from).await;
            let id = held.id();
            assert_eq!(fx.stored(id).await.status, from, "set-up of {from}");
            try_to_move(&fx, held, to).await;
            let want = if allowed(from, to) { to } else { from };
            let got = fx.stored(id).await;
            assert_eq!(got.status, want, "{from} → {to}");
            // What a waiter sees is what is stored.
            match fx.hub.current(id) {
                Some(live) => assert_eq!(live.status, want, "hub for {from} → {to}"),
                None => assert!(
                    want.is_terminal() || want == Queued,
                    "{from} → {to}: a live task left the hub"
                ),
            }
            if want.is_terminal() && allowed(from, to) {
                assert!(got.finished_at.is_some() && got.error.is_some() == (want != Succeeded));
            }
            checked += 1;
            // Leave nothing queued for the next pair.
            while let Some(q) = fx.pool().pop_task() {
                fx.lc
                    .end_held(Some(fx.pool()), &q, Verdict::cancelled("queue"))
                    .await;
            }
        }
    }
    assert_eq!(checked, 36);
    let c = fx.lc.counts();
    assert_eq!((c.replaced, c.abandoned), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_finish_racing_store_exactly_one_outcome() {
    let fx = Arc::new(Fx::new().await);
    let n = 80;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(fx.accept(60_000).await);
    }
    let mut joins = Vec::new();
    // Clients cancel every task while dispatchers take them out, start
    // them and finish them, as a run would: cancelled if its token fired
    // before its agent ended, succeeded otherwise.
    for id in ids.iter().copied() {
        let client = fx.clone();
        joins.push(tokio::spawn(async move {
            let fx = client;
            let t = fx.stored(id).await;
            match fx.lc.cancel(&t).await.unwrap() {
                Cancelled::Ended(t) => assert_eq!(t.status, TaskStatus::Cancelled),
                Cancelled::Signalled | Cancelled::NotHere => {}
            }
        }));
        let fx = fx.clone();
        joins.push(tokio::spawn(async move {
            let Some(mut q) = fx.pool().pop_task() else {
                return;
            };
            if let Begun::Running(running, cancel) = fx.lc.start(&mut q, "echo-0").await {
                let running = *running;
                tokio::task::yield_now().await;
                let v = if cancel.is_cancelled() {
                    Verdict::cancelled("run")
                } else {
                    verdict(TaskStatus::Succeeded)
                };
                fx.lc
                    .finish(fx.pool(), &q, running, v, Instant::now())
                    .await;
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let mut outcomes: std::collections::HashMap<TaskStatus, u64> = Default::default();
    for id in &ids {
        let t = fx.stored(*id).await;
        assert!(
            matches!(t.status, TaskStatus::Succeeded | TaskStatus::Cancelled),
            "{}",
            t.status
        );
        assert!(fx.hub.current(*id).is_none(), "an ended task left the hub");
        *outcomes.entry(t.status).or_default() += 1;
    }
    assert!(fx.pool().pop_task().is_none());
    // The pool counted each task once, as what was stored.
    let st = fx.pool().status();
    assert_eq!(st.succeeded + st.cancelled, n as u64);
    assert_eq!(
        st.succeeded,
        outcomes.get(&TaskStatus::Succeeded).copied().unwrap_or(0)
    );
    assert_eq!(fx.ledger.outstanding("t"), 0, "every tenant slot came back");
}

#[tokio::test]
async fn expire_and_start_racing_leave_one_of_them() {
    let fx = Arc::new(Fx::new().await);
    let n = 60;
    for _ in 0..n {
        fx.accept(60_000).await;
    }
    // Each task is taken by one holder; a stale copy tries the other
    // transition, in either order, or both at once.
    let mut joins = Vec::new();
    for i in 0..n {
        let mut q = fx.take();
        let stale = fx.stale_copy(&q);
        let fx = fx.clone();
        joins.push(tokio::spawn(async move {
            let id = q.task.id;
            let expire = async {
                let v = Lifecycle::expired(&stale.task);
                fx.lc.end_held(Some(fx.pool()), &stale, v).await;
            };
            let start = async { fx.lc.start(&mut q, "echo-0").await };
            let began = match i % 3 {
                0 => {
                    expire.await;
                    start.await
                }
                1 => {
                    let b = start.await;
                    expire.await;
                    b
                }
                _ => tokio::join!(start, expire).0,
            };
            (id, matches!(began, Begun::Running(..)))
        }));
    }
    let (mut started, mut expired) = (0, 0);
    for j in joins {
        let (id, began) = j.await.unwrap();
        let t = fx.stored(id).await;
        match t.status {
            TaskStatus::Running => {
                assert!(began, "running in the store means its start won");
                started += 1;
            }
            TaskStatus::TimedOut => {
                assert!(!began, "a started task is never expired");
                assert!(fx.hub.current(id).is_none());
                expired += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(started + expired, n);
    assert!(started > 0 && expired > 0, "both orders happened");
    assert_eq!(fx.pool().status().expired_in_queue, expired as u64);
}

#[tokio::test]
async fn a_start_repeated_after_a_lost_answer_is_one_attempt() {
    let fx = Fx::new().await;
    fx.accept(60_000).await;
    let mut q = fx.take();
    let Begun::Running(first, _) = fx.lc.start(&mut q, "echo-0").await else {
        panic!("start");
    };
    // The same holder tries again with its token (its first answer lost).
    let Begun::Running(again, _) = fx.lc.start(&mut q, "echo-0").await else {
        panic!("the repeated start must find itself");
    };
    assert_eq!((first.attempts, again.attempts), (1, 1));
    assert_eq!(fx.stored(q.task.id).await.attempts, 1);
}

#[tokio::test]
async fn the_sweep_takes_back_only_rows_this_node_holds_nowhere() {
    let fx = Fx::new().await;
    let held = fx.accept(60_000).await;
    // A row committed whose answer was lost: stored, owned by this node,
    // but not in memory.
    let orphan = fx.task(60_000);
    let orphan_id = orphan.id;
    fx.store
        .insert(NewTask {
            task: orphan,
            request_hash: None,
            owner: "n1".into(),
        })
        .await
        .unwrap();
    assert_eq!(fx.lc.sweep().await.unwrap(), 1);
    assert!(fx.hub.current(orphan_id).is_some());
    let mut queued: Vec<TaskId> = std::iter::from_fn(|| fx.pool().pop_task())
        .map(|q| q.task.id)
        .collect();
    queued.sort();
    let mut want = vec![held, orphan_id];
    want.sort();
    assert_eq!(
        queued, want,
        "the orphan joined the queue once, the held task stayed once"
    );
    assert_eq!(fx.lc.sweep().await.unwrap(), 0, "nothing twice");
    assert_eq!(fx.lc.counts().swept, 1);
}

#[tokio::test]
async fn a_claim_race_never_strands_a_task_owned_here() {
    let fx = Fx::new().await;
    // Held properly (queued here): the recheck leaves it alone.
    let held = fx.accept(60_000).await;
    fx.lc.suspect(held);
    // Dropped by a stale claim notice: owned here in the store, held nowhere.
    let dropped = fx.task(60_000);
    let dropped_id = dropped.id;
    // Claimed back while a refused start still had it in the hub, not queued.
    let passing = fx.task(60_000);
    let passing_id = passing.id;
    // Claimed by another node for real: not ours, not taken back.
    let theirs = fx.task(60_000);
    let theirs_id = theirs.id;
    for (task, owner) in [(dropped, "n1"), (passing.clone(), "n1"), (theirs, "n2")] {
        fx.store
            .insert(NewTask {
                task,
                request_hash: None,
                owner: owner.into(),
            })
            .await
            .unwrap();
    }
    fx.hub.register(passing).unwrap();
    for id in [dropped_id, passing_id, theirs_id] {
        fx.lc.suspect(id);
    }
    assert_eq!(fx.lc.recheck().await, 1, "the dropped one, at once");
    assert_eq!(fx.lc.recheck().await, 0, "a start may still be in flight");
    assert_eq!(fx.lc.recheck().await, 1, "then the passing one");
    assert_eq!(fx.lc.recheck().await, 0, "nothing is left to check");
    let mut queued: Vec<TaskId> = std::iter::from_fn(|| fx.pool().pop_task())
        .map(|q| q.task.id)
        .collect();
    queued.sort();
    let mut want = vec![held, dropped_id, passing_id];
    want.sort();
    assert_eq!(
        queued, want,
        "each queued once; the other node's left alone"
    );
}

#[tokio::test]
async fn an_adopted_task_of_a_removed_department_fails_visibly() {
    let fx = Fx::new().await;
    let mut t = fx.task(60_000);
    t.department = "gone".into();
    let id = t.id;
    fx.store
        .insert(NewTask {
            task: t,
            request_hash: None,
            owner: "n1".into(),
        })
        .await
        .unwrap();
    let back = fx.store.claim_at_start("n1").await.unwrap();
    assert_eq!(back.len(), 1);
    assert!(!fx.lc.adopt(back.into_iter().next().unwrap()).await);
    let t = fx.stored(id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.error.unwrap().code, "department_gone");
}
