//! Live task state for waiters (`wait_ms`) and server-sent event streams.
//!
//! Each task this process accepted or claimed has an entry with its current
//! state and a broadcast channel. The store is written first and the hub
//! second, so anything a waiter sees is already durable. Subscribing takes
//! the current state and a receiver under one lock, so a subscriber misses
//! no change after the state it starts from. The entry is removed when the
//! task ends; a later reader finds the ended task in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use swarm_core::{Task, TaskId};
use tokio::sync::broadcast;

/// Something that happened to a task.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// A new state (the whole task as it now is).
    State(Arc<Task>),
    /// An intermediate step reported by the agent.
    Progress(Value),
}

struct Entry {
    current: Arc<Task>,
    tx: broadcast::Sender<TaskEvent>,
}

/// Events a slow subscriber may fall behind by before it skips to the
/// current state (a task has few state changes; progress may be chattier).
const CHANNEL: usize = 64;

/// Shards keep lock hold times independent across tasks under load.
const SHARDS: usize = 16;

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

    /// Starts tracking a task (accepted or claimed by this process).
    pub(crate) fn register(&self, task: Task) {
        let (tx, _) = broadcast::channel(CHANNEL);
        self.shard(&task.id).insert(
            task.id,
            Entry {
                current: Arc::new(task),
                tx,
            },
        );
    }

    /// Records a new state and tells subscribers; forgets ended tasks.
    pub(crate) fn publish(&self, task: Task) {
        let id = task.id;
        let terminal = task.status.is_terminal();
        let task = Arc::new(task);
        let mut shard = self.shard(&id);
        if let Some(entry) = shard.get_mut(&id) {
            entry.current = task.clone();
            let _ = entry.tx.send(TaskEvent::State(task));
            if terminal {
                shard.remove(&id);
            }
        }
    }

    /// Passes an agent's progress report to subscribers.
    pub(crate) fn progress(&self, id: TaskId, value: Value) {
        if let Some(entry) = self.shard(&id).get(&id) {
            let _ = entry.tx.send(TaskEvent::Progress(value));
        }
    }

    /// The current state and a receiver for what follows, if tracked here.
    pub(crate) fn subscribe(
        &self,
        id: TaskId,
    ) -> Option<(Arc<Task>, broadcast::Receiver<TaskEvent>)> {
        self.shard(&id)
            .get(&id)
            .map(|e| (e.current.clone(), e.tx.subscribe()))
    }

    /// The current state, if tracked here.
    pub(crate) fn current(&self, id: TaskId) -> Option<Arc<Task>> {
        self.shard(&id).get(&id).map(|e| e.current.clone())
    }

    /// Live tasks tracked.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}
