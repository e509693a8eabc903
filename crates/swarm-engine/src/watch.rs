//! Following one task's changes, for `wait_ms` and server-sent events.
//!
//! A task held on this node is followed through the hub (every state and
//! progress report as it happens, starting with the last [`REPLAY`]
//! progress reports it made before the watch began). A task held elsewhere
//! (another node, or already ended) is followed through [`Remote`]: one
//! poller for the whole node reads every such task in one statement each
//! [`POLL`] and wakes the watches whose task changed, or whose task showed
//! up in this node's hub (they switch to it). A thousand event streams of
//! tasks on another node therefore cost one read per tick, not a thousand.
//!
//! [`REPLAY`]: crate::hub::REPLAY

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use swarm_core::{Task, TaskId};
use swarm_store::Store;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tracing::debug;

use crate::hub::{Hub, Subscription, TaskEvent};

/// How often the shared poller reads the tasks held elsewhere.
const POLL: Duration = Duration::from_millis(250);

/// Ids per statement of the shared poller.
const POLL_BATCH: usize = 500;

/// The shared poller of tasks followed here but held elsewhere.
pub(crate) struct Remote {
    hub: Arc<Hub>,
    store: Store,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    followed: HashMap<TaskId, Followed>,
    /// Whether the poller task runs (it stops when nothing is followed).
    polling: bool,
    /// Statements run by the poller since start.
    reads: u64,
}

struct Followed {
    tx: watch::Sender<Arc<Task>>,
    watches: usize,
}

impl Remote {
    pub(crate) fn new(hub: Arc<Hub>, store: Store) -> Arc<Self> {
        Arc::new(Self {
            hub,
            store,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Statements the poller has run (for tests and status).
    pub(crate) fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Tasks followed now.
    pub(crate) fn followed(&self) -> usize {
        self.lock().followed.len()
    }

    /// Starts following `task`; the poller starts if it was idle.
    fn follow(self: &Arc<Self>, task: Arc<Task>) -> Follow {
        let id = task.id;
        let mut st = self.lock();
        let f = st.followed.entry(id).or_insert_with(|| Followed {
            tx: watch::channel(task).0,
            watches: 0,
        });
        f.watches += 1;
        let rx = f.tx.subscribe();
        if !st.polling {
            st.polling = true;
            tokio::spawn(self.clone().poll());
        }
        Follow {
            remote: self.clone(),
            id,
            rx,
        }
    }

    async fn poll(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let ids: Vec<TaskId> = {
                let mut st = self.lock();
                if st.followed.is_empty() {
                    // Under the lock, so a `follow` now sees `polling`
                    // false and starts a new poller.
                    st.polling = false;
                    return;
                }
                st.followed.keys().copied().collect()
            };
            // A task that came to this node's hub: wake its watches so they
            // switch to the hub (no read needed).
            let (here, elsewhere): (Vec<TaskId>, Vec<TaskId>) = ids
                .into_iter()
                .partition(|id| self.hub.current(*id).is_some());
            {
                let st = self.lock();
                for id in &here {
                    if let Some(f) = st.followed.get(id) {
                        f.tx.send_modify(|_| {});
                    }
                }
            }
            for chunk in elsewhere.chunks(POLL_BATCH) {
                let read = self.store.get_many(chunk).await;
                let mut st = self.lock();
                st.reads += 1;
                match read {
                    Ok(tasks) => {
                        for t in tasks {
                            if let Some(f) = st.followed.get(&t.id) {
                                f.tx.send_if_modified(|cur| {
                                    let changed = **cur != t;
                                    if changed {
                                        *cur = Arc::new(t);
                                    }
                                    changed
                                });
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "watch poller could not read its tasks"),
                }
            }
        }
    }
}

/// One watch's share of [`Remote`]; dropping it stops following the task
/// once no other watch follows it.
struct Follow {
    remote: Arc<Remote>,
    id: TaskId,
    rx: watch::Receiver<Arc<Task>>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        let mut st = self.remote.lock();
        if let Some(f) = st.followed.get_mut(&self.id) {
            f.watches -= 1;
            if f.watches == 0 {
                st.followed.remove(&self.id);
            }
        }
    }
}

/// A task's changes as they happen.
pub struct Watch {
    hub: Arc<Hub>,
    store: Store,
    remote: Arc<Remote>,
    current: Arc<Task>,
    rx: Option<broadcast::Receiver<TaskEvent>>,
    /// Following through the shared poller (while `rx` is `None`).
    follow: Option<Follow>,
    /// Progress reported before the watch began, not yet returned.
    replay: VecDeque<Arc<Value>>,
    ended: bool,
}

impl Watch {
    /// Follows a task held here.
    pub(crate) fn live(remote: Arc<Remote>, sub: Subscription) -> Self {
        Self {
            hub: remote.hub.clone(),
            store: remote.store.clone(),
            remote,
            current: sub.current,
            rx: Some(sub.rx),
            follow: None,
            replay: sub.recent.into(),
            ended: false,
        }
    }

    /// Follows a task read from the store.
    pub(crate) fn stored(remote: Arc<Remote>, task: Task) -> Self {
        Self {
            hub: remote.hub.clone(),
            store: remote.store.clone(),
            remote,
            current: Arc::new(task),
            rx: None,
            follow: None,
            replay: VecDeque::new(),
            ended: false,
        }
    }

    /// The latest state seen.
    pub fn current(&self) -> &Task {
        &self.current
    }

    /// The next event; `None` after the task has ended.
    pub async fn next(&mut self) -> Option<TaskEvent> {
        if let Some(v) = self.replay.pop_front() {
            return Some(TaskEvent::Progress(v));
        }
        if self.ended || self.current.status.is_terminal() {
            self.ended = true;
            self.follow = None;
            return None;
        }
        loop {
            if let Some(rx) = &mut self.rx {
                match rx.recv().await {
                    Ok(TaskEvent::State(t)) => {
                        self.current = t.clone();
                        return Some(TaskEvent::State(t));
                    }
                    Ok(ev @ TaskEvent::Progress(_)) => return Some(ev),
                    Err(RecvError::Lagged(_)) => {
                        if let Some(t) = self.refresh().await {
                            return Some(TaskEvent::State(t));
                        }
                    }
                    Err(RecvError::Closed) => {
                        // The hub forgot the task: it ended, or it left this
                        // node. The store has the truth.
                        self.rx = None;
                        if let Some(t) = self.refresh().await {
                            return Some(TaskEvent::State(t));
                        }
                    }
                }
            } else {
                let remote = &self.remote;
                let current = &self.current;
                let follow = self
                    .follow
                    .get_or_insert_with(|| remote.follow(current.clone()));
                if follow.rx.changed().await.is_err() {
                    // Never while `follow` lives (it keeps the sender).
                    return None;
                }
                if let Some(sub) = self.hub.subscribe(self.current.id) {
                    self.follow = None;
                    self.rx = Some(sub.rx);
                    if *sub.current != *self.current {
                        self.current = sub.current.clone();
                        return Some(TaskEvent::State(sub.current));
                    }
                    continue;
                }
                let latest = follow.rx.borrow_and_update().clone();
                if *latest != *self.current {
                    self.current = latest.clone();
                    return Some(TaskEvent::State(latest));
                }
            }
        }
    }

    /// Re-reads the task; returns it if it changed.
    async fn refresh(&mut self) -> Option<Arc<Task>> {
        let id = self.current.id;
        let latest = match self.hub.current(id) {
            Some(t) => Some(t),
            None => match self.store.get(id).await {
                Ok(Some(t)) => Some(Arc::new(t)),
                Ok(None) => None,
                Err(e) => {
                    debug!(task = %id, error = %e, "watch could not re-read its task");
                    None
                }
            },
        }?;
        if *latest != *self.current {
            self.current = latest.clone();
            Some(latest)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use swarm_core::config::DatabaseConfig;
    use swarm_core::{Priority, TaskId, TaskStatus, Timings};

    use super::*;
    use crate::hub::REPLAY;

    fn task() -> Task {
        Task {
            id: TaskId::new(),
            tenant: "t".into(),
            task_type: "echo".into(),
            status: TaskStatus::Running,
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
            timeout_ms: 1000,
            deadline_at: 0,
            created_at: 0,
            started_at: None,
            finished_at: None,
            attempts: 1,
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

    /// A store on a new SQLite file in a directory of its own.
    async fn temp_store(name: &str) -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.join("t.db").display()),
            ..DatabaseConfig::default()
        })
        .await
        .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_late_subscriber_first_sees_the_last_progress_reports() {
        let (dir, store) = temp_store("swarmd-watch").await;
        let hub = Arc::new(Hub::new());
        let t = task();
        hub.register(t.clone()).unwrap();
        for step in 0..20 {
            hub.progress(t.id, json!({ "step": step }));
        }
        let remote = Remote::new(hub.clone(), store);
        let mut w = Watch::live(remote, hub.subscribe(t.id).unwrap());
        let mut replayed = Vec::new();
        for _ in 0..REPLAY {
            match w.next().await {
                Some(TaskEvent::Progress(v)) => replayed.push(v["step"].as_i64().unwrap()),
                other => panic!("expected progress, got {other:?}"),
            }
        }
        assert_eq!(replayed, (20 - REPLAY as i64..20).collect::<Vec<_>>());
        // Then what happens next, as it happens.
        hub.progress(t.id, json!({ "step": 20 }));
        let mut done = t.clone();
        done.status = TaskStatus::Succeeded;
        hub.publish(done);
        assert!(matches!(w.next().await, Some(TaskEvent::Progress(v)) if v["step"] == 20));
        assert!(
            matches!(w.next().await, Some(TaskEvent::State(s)) if s.status == TaskStatus::Succeeded)
        );
        assert!(w.next().await.is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn watches_of_a_task_held_elsewhere_share_one_poller() {
        let (dir, store) = temp_store("swarmd-remote").await;
        let mut t = task();
        t.status = TaskStatus::Queued;
        t.attempts = 0;
        store
            .insert(swarm_store::NewTask {
                task: t.clone(),
                request_hash: None,
                owner: "elsewhere".into(),
            })
            .await
            .unwrap();
        let stored = store.get(t.id).await.unwrap().unwrap();
        let remote = Remote::new(Arc::new(Hub::new()), store.clone());
        const WATCHES: usize = 50;
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..WATCHES {
            let mut w = Watch::stored(remote.clone(), stored.clone());
            waiting.spawn(async move { w.next().await });
        }
        // Let every watch register and the poller run a few ticks.
        while remote.followed() == 0 || remote.reads() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = remote.reads();
        store
            .finish(swarm_store::Finish {
                id: t.id,
                expect: swarm_store::Expect::Queued,
                status: TaskStatus::Cancelled,
                result: None,
                error: None,
                finished_at: 1,
                timings: Timings::default(),
                instance: None,
                owner: "elsewhere".into(),
            })
            .await
            .unwrap();
        let mut seen = 0;
        while let Some(r) = waiting.join_next().await {
            match r.unwrap() {
                Some(TaskEvent::State(s)) => assert_eq!(s.status, TaskStatus::Cancelled),
                other => panic!("expected the cancelled state, got {other:?}"),
            }
            seen += 1;
        }
        assert_eq!(seen, WATCHES);
        // One statement per tick for all fifty, not fifty: the change was
        // seen within a few ticks, so only a few reads happened meanwhile.
        let during = remote.reads() - before;
        assert!(
            (1..=WATCHES as u64 / 5).contains(&during),
            "{during} reads for {WATCHES} watches"
        );
        // Every watch ended: nothing is followed and the poller stops.
        assert_eq!(remote.followed(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
