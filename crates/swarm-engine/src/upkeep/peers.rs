//! The cluster, seen from one node: liveness, failover and shared work
//! (PostgreSQL only; see `swarm_store::cluster` for the SQL).
//!
//! One loop ([`Peers`]) does, every [`TICK`] and on each notification:
//! - **keeps this node's liveness lock** (a session advisory lock on a
//!   connection of its own) and takes it again if that connection died;
//! - **failover**: a node whose lock is free is dead (PostgreSQL released
//!   the lock when its connection closed, which a `SIGKILL` does at once);
//!   after it has been seen dead for [`DEAD_AFTER`] (long enough for a live
//!   node whose lock connection broke to take it again), its unfinished
//!   tasks are taken over. The heartbeat lease (`upkeep::heartbeat`) stays
//!   the fallback for a node alive but cut off from the database;
//! - **shared work**: a node with more queued tasks in a department than it
//!   can start announces a backlog (`NOTIFY swarmd_backlog`, at most once a
//!   tick per department, and only while other nodes are alive); a node
//!   with spare capacity in that department claims queued tasks from the
//!   others (`FOR UPDATE SKIP LOCKED`, most urgent first), at most its
//!   spare, and tells their old owner (`NOTIFY swarmd_claimed`), which drops
//!   its copies. While a backlog was heard recently, spare capacity is
//!   filled again every tick; otherwise a node does no cluster reads per
//!   task, so a lone node or a cluster that keeps up pays nothing.
//! - **tenant quotas**: while other nodes are alive, each tick publishes
//!   this node's outstanding tasks per tenant and reads the others' sums,
//!   so `max_outstanding` counts the cluster (to within what the nodes
//!   admit in one tick). A claimer publishes its counts before it tells
//!   the old owner, and the old owner keeps counting a task claimed away
//!   until its next read of the others' counts: a moving task counts twice
//!   for a moment, never nowhere;
//! - **token budgets** the same way: each node publishes what it holds of
//!   every department's and tenant's budget (spent per window, reserved)
//!   with its tenant counts, and adds the other live nodes' sums to its
//!   own (`tokens`). A node that dies stops counting once it is seen dead:
//!   its spend leaves the cluster's windows early, which errs generous for
//!   the rest of that window;
//! - **draining** (SIGTERM): the node stops starting stored tasks and
//!   announces its queue as draining; the others take all of it, not only
//!   what fits their spare capacity, so a rolling restart leaves nothing
//!   waiting for the node's exit.
//!
//! What stays per node: the fair queue's order and CoDel see only the tasks
//! a node holds. A claim takes the most urgent tasks first, so priorities
//! hold across nodes, but tenant fairness across nodes is only as fair as
//! the spread of submissions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use swarm_sched::budget::Usage;
use swarm_sched::limit::Scope;
use swarm_store::Store;
use swarm_store::cluster::{
    CHANNEL_BACKLOG, Claimed, NodeLock, NodeRow, Notice, Notifications, PermitRound,
};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::ledger::{TenantLedger, TenantSlot};
use crate::lifecycle::Lifecycle;
use crate::pool::Pools;
use crate::shutdown::Shutdown;
use crate::tokens::TenantBudgets;

/// How often the loop looks: lock, dead nodes, backlogs, spare capacity.
pub(crate) const TICK: Duration = Duration::from_millis(200);

/// How long a node must be seen without its lock before its tasks are
/// taken: a live node whose lock connection broke takes it again within a
/// tick.
pub(crate) const DEAD_AFTER: Duration = Duration::from_millis(500);

/// How often spare capacity is looked for while another node is backlogged:
/// a node draining a backlog of 50 ms tasks, 32 at once, frees a slot every
/// 1.6 ms, so a tick-long wait would leave most of its capacity idle.
const REFILL: Duration = Duration::from_millis(5);

/// A backlog announcement keeps a department worth claiming from for this
/// long (it is renewed every tick while the backlog lasts).
const HEARD_FOR: Duration = Duration::from_secs(1);

/// Most tasks taken from a draining node per announcement.
const DRAIN_BATCH: usize = 500;

/// Most tasks taken from dead nodes per pass.
const RESCUE_BATCH: i64 = 1000;

/// A node's part of a cluster-wide limit that it has not renewed for this
/// long is free for the others (a node killed returns its part then).
pub(crate) const PERMIT_LEASE: Duration = Duration::from_secs(2);

/// The cluster loop of one node.
pub(crate) struct Peers {
    pub(crate) store: Store,
    pub(crate) hub: Arc<Hub>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) pools: Arc<Pools>,
    /// Tenant quotas count the other nodes' tasks too.
    pub(crate) tenants: Arc<TenantLedger>,
    /// So do the tenants' token budgets (the pools hold their own).
    pub(crate) tokens: Arc<TenantBudgets>,
    pub(crate) node_id: String,
    pub(crate) lock: NodeLock,
    pub(crate) shutdown: Shutdown,
    /// Lifetime counts, for `/api/status`.
    pub(crate) stats: Arc<PeerStats>,
}

/// What the cluster loop has done.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    pub(crate) claimed: std::sync::atomic::AtomicU64,
    pub(crate) claimed_from_us: std::sync::atomic::AtomicU64,
    pub(crate) rescued: std::sync::atomic::AtomicU64,
    pub(crate) peers: std::sync::atomic::AtomicU64,
}

impl Peers {
    /// Every token budget this node knows, by its published key.
    fn budgets(&self) -> Vec<(String, crate::tokens::Budget)> {
        let pools = self
            .pools
            .iter()
            .filter_map(|p| Some((format!("pool:{}", p.name()), p.tokens()?.clone())));
        let tenants = self
            .tokens
            .all()
            .into_iter()
            .map(|(t, b)| (format!("tenant:{t}"), b));
        pools.chain(tenants).collect()
    }

    /// Sets what the other live nodes hold of each token budget (nothing,
    /// with no other node alive).
    fn count_tokens_elsewhere(&self, alive: &[&NodeRow]) {
        let budgets = self.budgets();
        if budgets.is_empty() {
            return;
        }
        for (key, b) in budgets {
            let sum = alive
                .iter()
                .filter_map(|n| n.tokens.get(&key))
                .filter_map(|v| serde_json::from_value::<Usage>(v.clone()).ok())
                .fold(Usage::default(), Usage::plus);
            crate::tokens::set_elsewhere(&b, sum);
        }
    }

    /// Publishes this node's tenant counts and token holdings.
    async fn publish_counts(&self) {
        let tokens: serde_json::Map<String, serde_json::Value> = self
            .budgets()
            .into_iter()
            .filter_map(|(k, b)| {
                let u = crate::tokens::local(&b);
                (!u.is_empty()).then(|| Some((k, serde_json::to_value(u).ok()?)))?
            })
            .collect();
        if let Err(e) = self
            .store
            .publish_tenants(
                &self.node_id,
                &self.tenants.snapshot(),
                &serde_json::Value::Object(tokens),
            )
            .await
        {
            debug!(error = %e, "publishing tenant counts failed");
        }
    }

    pub(crate) async fn run(mut self) {
        let stopped = self.shutdown.stopped().clone();
        let mut notices: Option<Notifications> = None;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut suspects: HashMap<String, Instant> = HashMap::new();
        let mut heard: BTreeMap<String, Instant> = BTreeMap::new();
        let mut lock_lost = false;
        let mut leased_at: Option<Instant> = None;
        // Tenant slots of tasks claimed away, held until a read of the
        // others' counts that began after the claimer published them.
        let mut parting: Vec<TenantSlot> = Vec::new();
        loop {
            if notices.is_none() && self.store.health().is_up() {
                match self.store.notifications().await {
                    Ok(n) => {
                        notices = n;
                        // Anything sent before we listened is gone: look.
                        self.mark_all(&mut heard);
                    }
                    Err(e) => debug!(error = %e, "cannot listen for cluster notifications yet"),
                }
            }
            let notice = tokio::select! {
                _ = stopped.cancelled() => break,
                _ = ticker.tick() => None,
                n = next(&mut notices) => Some(n),
                // While another node is backlogged, capacity freed here is
                // refilled at once, not at the next tick: looking costs
                // nothing (memory), claiming a read only when there is room.
                _ = tokio::time::sleep(REFILL), if !heard.is_empty() => {
                    self.fill_heard(&mut heard).await;
                    continue;
                }
            };
            match notice {
                None => {}
                Some(Ok(Notice::Backlog {
                    department,
                    node,
                    draining,
                })) => {
                    if node == self.node_id {
                        continue;
                    }
                    heard.insert(department.clone(), Instant::now());
                    if draining {
                        self.take_from_draining(&department, &node).await;
                    } else if self.fill(&department).await == Some(false) {
                        heard.remove(&department);
                    }
                    continue;
                }
                Some(Ok(Notice::Claimed(c))) => {
                    if c.from == self.node_id {
                        parting.extend(self.drop_claimed(&c));
                    }
                    continue;
                }
                Some(Ok(Notice::Reconnected)) => {
                    self.mark_all(&mut heard);
                    continue;
                }
                Some(Err(e)) => {
                    debug!(error = %e, "cluster notifications lost; listening again");
                    notices = None;
                    tokio::time::sleep(TICK).await;
                    continue;
                }
            }

            // --- a tick ---
            if !self.store.health().is_up() {
                continue;
            }
            let held = self.lock.keep().await;
            if held == lock_lost {
                if held {
                    info!(node = %self.node_id, "liveness lock held again");
                } else {
                    warn!(node = %self.node_id, "lost the liveness lock's connection; other nodes may take this node's tasks");
                }
                lock_lost = !held;
            }
            // One read of `nodes` a tick: who lives, who died, and the
            // others' tenant counts. Slots parted before it began are
            // counted by their claimers in what it reads.
            let parted = std::mem::take(&mut parting);
            // Slots of tasks a start found claimed: kept past this read too,
            // since their claimer may publish only after it began.
            parting.extend(self.tenants.take_parked());
            let nodes = match self.store.nodes().await {
                Ok(n) => n,
                Err(e) => {
                    debug!(error = %e, "reading the cluster's nodes failed");
                    parting.extend(parted);
                    continue;
                }
            };
            let others: Vec<&NodeRow> = nodes
                .iter()
                .filter(|n| n.node_id != self.node_id && n.registered())
                .collect();
            let peers = others.iter().filter(|n| n.alive).count();
            self.stats
                .peers
                .store(peers as u64, std::sync::atomic::Ordering::Relaxed);
            self.lease_limits(&mut leased_at).await;
            let dead: Vec<String> = others
                .iter()
                .filter(|n| !n.alive)
                .map(|n| n.node_id.clone())
                .collect();
            self.failover(dead, &mut suspects).await;
            // Claims crossing between nodes can leave a task owned here
            // but not held; take such ones back now, not at the next sweep.
            self.lifecycle.recheck().await;
            let now = Instant::now();
            heard.retain(|_, at| now.duration_since(*at) < HEARD_FOR);
            let alive: Vec<&NodeRow> = others.iter().copied().filter(|n| n.alive).collect();
            self.count_tokens_elsewhere(&alive);
            self.tenants.set_clustered(peers > 0);
            if peers == 0 {
                self.tenants.set_elsewhere(HashMap::new());
                drop(parted);
                heard.clear();
                continue;
            }
            let mut elsewhere: HashMap<String, usize> = HashMap::new();
            for n in &alive {
                for (tenant, count) in &n.tenants {
                    *elsewhere.entry(tenant.clone()).or_insert(0) += count;
                }
            }
            self.tenants.set_elsewhere(elsewhere);
            drop(parted);
            self.publish_counts().await;
            self.announce().await;
            self.fill_heard(&mut heard).await;
        }
        if let Err(e) = self.store.release_permits(&self.node_id).await {
            debug!(error = %e, "could not give back cluster permits; they expire");
        }
        self.lock.release().await;
    }

    /// One round of every cluster-wide limit: this node's fair part of each,
    /// as much as the other nodes leave free. A node that cannot renew for
    /// half the permit lease starts nothing more until it can: the others
    /// will soon count its part as free.
    async fn lease_limits(&self, leased_at: &mut Option<Instant>) {
        let mut ok = true;
        for p in self.pools.iter() {
            let limiter = p.limiter();
            if limiter.config().scope != Scope::Cluster {
                continue;
            }
            let round = PermitRound {
                limit: limiter.config().cluster_limit(),
                // No more than this node's own law would run.
                demand: (limiter.in_flight() + p.queued_len()).min(limiter.own_limit()),
                in_flight: limiter.in_flight(),
                lease_ms: PERMIT_LEASE.as_millis() as i64,
            };
            match self
                .store
                .lease_permits(&self.node_id, p.name(), round)
                .await
            {
                Ok(share) => limiter.set_share(share),
                Err(e) => {
                    ok = false;
                    debug!(error = %e, pool = p.name(), "renewing cluster permits failed");
                }
            }
        }
        if ok {
            *leased_at = Some(Instant::now());
        } else if leased_at.is_none_or(|t| t.elapsed() >= PERMIT_LEASE / 2) {
            for p in self.pools.iter() {
                if p.limiter().config().scope == Scope::Cluster {
                    p.limiter().set_share(Some(0));
                }
            }
        }
    }

    /// After notices may have been missed: every department is worth a
    /// look.
    fn mark_all(&self, heard: &mut BTreeMap<String, Instant>) {
        let now = Instant::now();
        for p in self.pools.iter() {
            heard.insert(p.name().to_string(), now);
        }
    }

    /// Takes over the tasks of nodes that have been seen `dead` (their lock
    /// free) for [`DEAD_AFTER`].
    async fn failover(&self, dead: Vec<String>, suspects: &mut HashMap<String, Instant>) {
        let now = Instant::now();
        suspects.retain(|n, _| dead.contains(n));
        let mut due = Vec::new();
        for node in dead {
            let since = *suspects.entry(node.clone()).or_insert(now);
            if now.duration_since(since) >= DEAD_AFTER {
                due.push(node);
            }
        }
        if due.is_empty() || self.shutdown.is_draining() {
            return;
        }
        match self
            .store
            .rescue_from(&self.node_id, &due, RESCUE_BATCH)
            .await
        {
            Ok(tasks) => {
                let mut n = 0;
                for t in tasks {
                    n += usize::from(self.lifecycle.adopt(t).await);
                }
                if n > 0 {
                    self.stats
                        .rescued
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    info!(count = n, nodes = ?due, "took over the tasks of dead nodes");
                }
            }
            Err(e) => debug!(error = %e, "taking over dead nodes' tasks failed"),
        }
    }

    /// Announces every department whose queue holds more than it starts.
    /// While draining, every queued task is backlog.
    async fn announce(&self) {
        let draining = self.shutdown.is_draining();
        for p in self.pools.iter() {
            let queued = p.queued_len();
            if queued == 0 {
                continue;
            }
            let backlogged = draining || p.limiter().in_flight() >= p.limiter().limit();
            let payload = swarm_store::cluster::backlog_payload(p.name(), &self.node_id, draining);
            if backlogged && let Err(e) = self.store.notify(CHANNEL_BACKLOG, &payload).await {
                debug!(error = %e, "announcing a backlog failed");
            }
        }
    }

    /// [`fill`](Self::fill)s every department a backlog was heard in; one
    /// whose claim found nothing is forgotten until announced again, so a
    /// stale hint costs one read, not one every [`REFILL`].
    async fn fill_heard(&self, heard: &mut BTreeMap<String, Instant>) {
        let mut empty = Vec::new();
        for d in heard.keys() {
            if self.fill(d).await == Some(false) {
                empty.push(d.clone());
            }
        }
        for d in empty {
            heard.remove(&d);
        }
    }

    /// Claims other nodes' queued tasks of `department`, up to this node's
    /// spare capacity there. `None` when it did not look (no room, or
    /// draining); else whether it found any.
    async fn fill(&self, department: &str) -> Option<bool> {
        if self.shutdown.is_draining() {
            return None;
        }
        let pool = self.pools.get(department)?;
        // Room for the free slots and a buffer of half the limit, claimed
        // only once a quarter of the limit is wanted: fewer, larger claims
        // (each is a statement on the owner's rows), and the buffer keeps
        // the slots busy between them.
        let limit = pool.limiter().limit();
        let want = (limit + limit / 2)
            .saturating_sub(pool.limiter().in_flight())
            .saturating_sub(pool.queued_len());
        if want == 0 || want < (limit / 4).max(1) {
            return None;
        }
        // From any other node: the newest queued tasks, which the claim
        // takes, are the backlogged node's fresh submissions, not another
        // claimer's small buffer of older ones.
        Some(self.claim(department, want, None).await > 0)
    }

    /// A node shutting down announced its queue: take it all (up to a
    /// batch per announcement), so it leaves nothing waiting for its exit.
    async fn take_from_draining(&self, department: &str, node: &str) {
        if self.shutdown.is_draining() || self.pools.get(department).is_none() {
            return;
        }
        self.claim(department, DRAIN_BATCH, Some(&[node.to_string()]))
            .await;
    }

    /// Claims up to `limit` queued tasks of `department` from other nodes
    /// (only `from`'s, if given), queues them here and tells their owners.
    /// Returns how many it took.
    async fn claim(&self, department: &str, limit: usize, from: Option<&[String]>) -> usize {
        let claimed = match self
            .store
            .claim_queued(&self.node_id, department, limit as i64, from)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, department, "claiming queued tasks failed");
                return 0;
            }
        };
        let n = claimed.len();
        if n == 0 {
            return 0;
        }
        let mut by_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in claimed {
            by_owner
                .entry(c.from)
                .or_default()
                .push(c.task.id.to_string());
            self.lifecycle.adopt(c.task).await;
        }
        // Counted here before the old owners hear of it, so their next read
        // of the counts has these tasks (see `drop_claimed`).
        self.publish_counts().await;
        for (from, ids) in by_owner {
            self.stats
                .claimed
                .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
            debug!(department, from = %from, count = ids.len(), "claimed queued tasks");
            let note = Claimed {
                from,
                by: self.node_id.clone(),
                ids,
            };
            if let Err(e) = self.store.notify_claimed(&note).await {
                // The old owner finds out when its start is refused.
                debug!(error = %e, "announcing a claim failed");
            }
        }
        n
    }

    /// Another node took these of our queued tasks: drop our copies.
    /// Returns their tenant slots: the caller holds them until its next
    /// read of the others' counts, which has them (the claimer published
    /// before it told us), so a quota never sees them on neither node.
    fn drop_claimed(&self, c: &Claimed) -> Vec<TenantSlot> {
        let mut n = 0u64;
        let mut parting = Vec::new();
        for id in &c.ids {
            let Ok(id) = id.parse() else { continue };
            for p in self.pools.iter() {
                if let Some(q) = p.remove_queued(id) {
                    parting.push(q.slot);
                    self.hub.forget(id);
                    // The notice may be stale: this node may have claimed
                    // the task back since. The recheck asks the store.
                    self.lifecycle.suspect(id);
                    n += 1;
                    break;
                }
            }
        }
        self.stats
            .claimed_from_us
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        parting
    }
}

async fn next(n: &mut Option<Notifications>) -> Result<Notice, swarm_store::StoreError> {
    match n {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}
