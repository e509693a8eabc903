//! Following one task's changes, for `wait_ms` and server-sent events.
//!
//! A task held on this node is followed through the hub (every state and
//! progress report as it happens, starting with the last [`REPLAY`]
//! progress reports it made before the watch began). A task held elsewhere
//! (another node, or already ended) is read from the store, and re-read
//! every [`POLL`] until it ends or shows up in this node's hub.
//!
//! [`REPLAY`]: crate::hub::REPLAY

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use swarm_core::Task;
use swarm_store::Store;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use crate::hub::{Hub, Subscription, TaskEvent};

/// How often a watch polls the store for a task another node runs.
const POLL: Duration = Duration::from_millis(250);

/// A task's changes as they happen.
pub struct Watch {
    hub: Arc<Hub>,
    store: Store,
    current: Arc<Task>,
    rx: Option<broadcast::Receiver<TaskEvent>>,
    /// Progress reported before the watch began, not yet returned.
    replay: VecDeque<Value>,
    ended: bool,
}

impl Watch {
    /// Follows a task held here.
    pub(crate) fn live(hub: Arc<Hub>, store: Store, sub: Subscription) -> Self {
        Self {
            hub,
            store,
            current: sub.current,
            rx: Some(sub.rx),
            replay: sub.recent.into(),
            ended: false,
        }
    }

    /// Follows a task read from the store.
    pub(crate) fn stored(hub: Arc<Hub>, store: Store, task: Task) -> Self {
        Self {
            hub,
            store,
            current: Arc::new(task),
            rx: None,
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
                tokio::time::sleep(POLL).await;
                if let Some(sub) = self.hub.subscribe(self.current.id) {
                    self.rx = Some(sub.rx);
                    if *sub.current != *self.current {
                        self.current = sub.current.clone();
                        return Some(TaskEvent::State(sub.current));
                    }
                    continue;
                }
                if let Some(t) = self.refresh().await {
                    return Some(TaskEvent::State(t));
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
            timings: Timings::default(),
        }
    }

    #[tokio::test]
    async fn a_late_subscriber_first_sees_the_last_progress_reports() {
        let dir = std::env::temp_dir().join(format!("swarmd-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.join("w.db").display()),
            ..DatabaseConfig::default()
        })
        .await
        .unwrap();
        let hub = Arc::new(Hub::new());
        let t = task();
        hub.register(t.clone()).unwrap();
        for step in 0..20 {
            hub.progress(t.id, json!({ "step": step }));
        }
        let mut w = Watch::live(hub.clone(), store, hub.subscribe(t.id).unwrap());
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
}
