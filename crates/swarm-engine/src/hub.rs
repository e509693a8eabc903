//! The tasks this node holds, live: their current state for waiters
//! (`wait_ms`) and event streams, and the token that cancels each.
//!
//! Each task this process accepted or claimed has an entry from the moment
//! it is registered until it ends here (or leaves this node). The store is
//! written first and the hub second, so anything a waiter sees is already
//! durable. Subscribing takes the current state, the last few progress
//! reports and a receiver under one lock, so a subscriber misses no change
//! after the state it starts from, and sees the recent steps of a task it
//! joins late. A later reader of an ended task finds it in the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use swarm_core::{Task, TaskId};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Something that happened to a task.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// A new state (the whole task as it now is).
    State(Arc<Task>),
    /// An intermediate step reported by the agent. Shared: the replay
    /// buffer and every subscriber hold the same report (an LLM task
    /// reports once per network read, so a deep copy each was measurable).
    Progress(Arc<Value>),
}

struct Entry {
    current: Arc<Task>,
    /// Made by the first subscriber: a channel allocates all its slots at
    /// once (about 3.5 KiB at [`CHANNEL`]), and most tasks are never
    /// watched, so a deep backlog held that much per queued task for
    /// nothing. Events before the first subscriber have no one to reach.
    tx: Option<broadcast::Sender<TaskEvent>>,
    /// Fired to cancel the task, whoever holds it at the moment (the queue,
    /// a start in progress, the run).
    cancel: CancellationToken,
    /// The last [`REPLAY`] progress reports, for subscribers who join late.
    recent: VecDeque<Arc<Value>>,
}

/// Events a slow subscriber may fall behind by before it skips to the
/// current state (a task has few state changes; progress may be chattier).
const CHANNEL: usize = 64;

/// Progress reports replayed to a new subscriber.
pub const REPLAY: usize = 16;

/// Shards keep lock hold times independent across tasks under load.
const SHARDS: usize = 16;

/// What a new subscriber starts from.
pub(crate) struct Subscription {
    pub(crate) current: Arc<Task>,
    pub(crate) recent: Vec<Arc<Value>>,
    pub(crate) rx: broadcast::Receiver<TaskEvent>,
}

/// The registry of live tasks.
pub(crate) struct Hub {
    shards: Vec<Mutex<HashMap<TaskId, Entry>>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, id: &TaskId) -> MutexGuard<'_, HashMap<TaskId, Entry>> {
        let h = id.as_bytes()[15] as usize;
        // A poisoned shard only means another thread panicked while holding
        // it; the map itself is still consistent (every update is one insert
        // or remove), so keep serving.
        self.shards[h % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a task (accepted or claimed by this process) and
    /// returns its cancel token; `None`, changing nothing, if it is tracked
    /// already (a task is never held twice).
    pub(crate) fn register(&self, task: Task) -> Option<CancellationToken> {
        let mut shard = self.shard(&task.id);
        if shard.contains_key(&task.id) {
            return None;
        }
        let cancel = CancellationToken::new();
        shard.insert(
            task.id,
            Entry {
                current: Arc::new(task),
                tx: None,
                cancel: cancel.clone(),
                recent: VecDeque::new(),
            },
        );
        Some(cancel)
    }

    /// Records a new state and tells subscribers; forgets ended tasks.
    pub(crate) fn publish(&self, task: Task) {
        let id = task.id;
        let terminal = task.status.is_terminal();
        let task = Arc::new(task);
        let mut shard = self.shard(&id);
        if let Some(entry) = shard.get_mut(&id) {
            if let Some(tx) = &entry.tx {
                let _ = tx.send(TaskEvent::State(task.clone()));
            }
            entry.current = task;
            if terminal {
                shard.remove(&id);
            }
        }
    }

    /// Stops tracking a task that left this node unfinished (taken over by
    /// another, or never stored); its subscribers' channels close and they
    /// read the store instead.
    pub(crate) fn forget(&self, id: TaskId) {
        self.shard(&id).remove(&id);
    }

    /// Passes an agent's progress report to subscribers.
    pub(crate) fn progress(&self, id: TaskId, value: Value) {
        if let Some(entry) = self.shard(&id).get_mut(&id) {
            if entry.recent.len() == REPLAY {
                entry.recent.pop_front();
            }
            let value = Arc::new(value);
            if let Some(tx) = &entry.tx {
                let _ = tx.send(TaskEvent::Progress(value.clone()));
            }
            entry.recent.push_back(value);
        }
    }

    /// The current state, recent progress and a receiver for what follows,
    /// if tracked here.
    pub(crate) fn subscribe(&self, id: TaskId) -> Option<Subscription> {
        self.shard(&id).get_mut(&id).map(|e| Subscription {
            current: e.current.clone(),
            recent: e.recent.iter().cloned().collect(),
            rx: e
                .tx
                .get_or_insert_with(|| broadcast::channel(CHANNEL).0)
                .subscribe(),
        })
    }

    /// The current state, if tracked here.
    pub(crate) fn current(&self, id: TaskId) -> Option<Arc<Task>> {
        self.shard(&id).get(&id).map(|e| e.current.clone())
    }

    /// The token that cancels a task tracked here.
    pub(crate) fn cancel_token(&self, id: TaskId) -> Option<CancellationToken> {
        self.shard(&id).get(&id).map(|e| e.cancel.clone())
    }

    /// Whether a task is tracked here.
    pub(crate) fn contains(&self, id: TaskId) -> bool {
        self.shard(&id).contains_key(&id)
    }

    /// Live tasks tracked.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}
