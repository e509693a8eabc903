//! The cluster on one PostgreSQL database: node liveness by advisory lock,
//! shared work by `FOR UPDATE SKIP LOCKED`, wake-ups by `LISTEN/NOTIFY`.
//!
//! - **Liveness** ([`NodeLock`]): each node holds a session-level advisory
//!   lock, keyed by its row in `nodes`, on a connection of its own.
//!   PostgreSQL releases it the moment that connection dies, so a node
//!   killed with `SIGKILL` is seen dead by the others ([`Store::nodes`])
//!   within a check or two, not after the heartbeat lease (which stays as
//!   the fallback for a node that is alive but cut off). A second process
//!   with the same node id cannot take the lock, so it waits for the first
//!   to die and then takes back only what the first left (Oban #862: reused
//!   node names left jobs stuck because two incarnations looked alike).
//! - **Shared work** ([`Store::claim_queued`]): a node with spare capacity
//!   moves queued rows of one department to itself in one statement, most
//!   urgent first. Rows being started by their owner are locked, so they are
//!   skipped, and a claimed row's old owner fails its start (guarded by
//!   owner) and learns of the move from the `swarmd_claimed` notification.
//! - **Notifications** ([`Notifications`]): `swarmd_backlog` (a node has
//!   more queued work in a department than it can start) and
//!   `swarmd_claimed` (tasks moved, so their old owner drops its copies).
//!
//! On SQLite there is one node per file: every call here is a no-op.

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnection, PgListener, PgPoolOptions};
use sqlx::{Connection, Row};
use swarm_core::Task;

use crate::Store;
use crate::db::{self, Db, task_from_row};
use crate::error::StoreError;

/// The advisory-lock namespace ("SWMD"): the first key of every node lock,
/// so other applications' advisory locks on the same database never clash.
const LOCK_NAMESPACE: i32 = 0x5357_4D44;

/// Channel of backlog announcements; the payload is the department and the
/// announcing node, separated by a newline (see [`backlog_payload`]).
pub const CHANNEL_BACKLOG: &str = "swarmd_backlog";
/// Channel of claims; the payload is a [`Claimed`] as JSON.
pub const CHANNEL_CLAIMED: &str = "swarmd_claimed";

/// PostgreSQL's limit on a notification payload is 8000 bytes; claims are
/// announced in chunks that stay under it.
const IDS_PER_NOTICE: usize = 150;

/// Tasks one node took from another (the `swarmd_claimed` payload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claimed {
    /// The node the tasks belonged to.
    pub from: String,
    /// The node that took them.
    pub by: String,
    /// Their ids.
    pub ids: Vec<String>,
}

/// One node as `nodes` records it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Its id.
    pub node_id: String,
    /// Where it serves HTTP.
    pub address: String,
    /// When it (last) started, epoch ms.
    pub started_at: i64,
    /// Its last heartbeat, epoch ms (0: it left).
    pub heartbeat_at: i64,
    /// Its process id on its machine.
    pub pid: i64,
    /// Its version.
    pub version: String,
    /// Whether it holds its liveness lock now.
    pub alive: bool,
    /// Its per-department load as it last published it.
    pub load: serde_json::Value,
    /// Its outstanding tasks per tenant as it last published them (while
    /// other nodes were alive).
    pub tenants: std::collections::HashMap<String, usize>,
    /// What it holds of each token budget as it last published it (an
    /// object keyed `pool:NAME` and `tenant:NAME`).
    pub tokens: serde_json::Value,
}

impl NodeRow {
    /// Registered and not gone (a node that left has heartbeat 0).
    pub fn registered(&self) -> bool {
        self.heartbeat_at > 0
    }
}

/// A task another node held, now this node's, and who held it.
#[derive(Debug)]
pub struct ClaimedTask {
    /// The task, queued and owned by the claimer.
    pub task: Task,
    /// Its previous owner.
    pub from: String,
}

/// A notification, or news that some may have been missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A node has more queued work in this department than it starts.
    Backlog {
        /// The department.
        department: String,
        /// The node that has it.
        node: String,
        /// That node is shutting down: take all of it, not just what fits.
        draining: bool,
    },
    /// Tasks moved between nodes.
    Claimed(Claimed),
    /// The listening connection was lost and re-made: anything sent
    /// meanwhile is gone, so the caller should look for itself.
    Reconnected,
}

/// The listening end of the cluster's notifications (PostgreSQL only).
pub struct Notifications {
    listener: PgListener,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl Notifications {
    /// The next notice. Errors (the database unreachable) are returned as
    /// they come; the caller waits and asks again.
    pub async fn next(&mut self) -> Result<Notice, StoreError> {
        loop {
            let Some(n) = self.listener.try_recv().await? else {
                return Ok(Notice::Reconnected);
            };
            match n.channel() {
                CHANNEL_BACKLOG => {
                    let mut parts = n.payload().split('\n');
                    let department = parts.next().unwrap_or("").to_string();
                    let node = parts.next().unwrap_or("").to_string();
                    let draining = parts.next() == Some("draining");
                    return Ok(Notice::Backlog {
                        department,
                        node,
                        draining,
                    });
                }
                CHANNEL_CLAIMED => {
                    if let Ok(c) = serde_json::from_str::<Claimed>(n.payload()) {
                        return Ok(Notice::Claimed(c));
                    }
                }
                _ => {}
            }
        }
    }
}

/// This node's liveness lock: held while the process lives, on a
/// connection of its own (PostgreSQL only).
pub struct NodeLock {
    opts: sqlx::postgres::PgConnectOptions,
    key: i32,
    conn: Option<PgConnection>,
}

impl std::fmt::Debug for NodeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLock")
            .field("key", &self.key)
            .field("held", &self.conn.is_some())
            .finish()
    }
}

impl NodeLock {
    /// Checks the lock's connection and, if it died, takes the lock again
    /// on a new one. Returns whether the lock is held now.
    pub async fn keep(&mut self) -> bool {
        if let Some(conn) = self.conn.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return true;
            }
            self.conn = None;
        }
        match try_lock(&self.opts, self.key).await {
            Ok(Some(conn)) => {
                self.conn = Some(conn);
                true
            }
            _ => false,
        }
    }

    /// Gives the lock up (shutdown), so the others see this node gone now.
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

async fn try_lock(
    opts: &sqlx::postgres::PgConnectOptions,
    key: i32,
) -> Result<Option<PgConnection>, StoreError> {
    let mut conn = PgConnection::connect_with(opts).await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// The payload of a backlog announcement (department names and node ids
/// hold no newline).
pub fn backlog_payload(department: &str, node: &str, draining: bool) -> String {
    if draining {
        format!("{department}\n{node}\ndraining")
    } else {
        format!("{department}\n{node}")
    }
}

/// A node id may not hold a comma: the `nodes` column of a task lists them
/// comma-separated.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 || id.contains(',') || id.chars().any(char::is_control) {
        Err(format!(
            "node id `{id}` must be 1 to 200 characters without commas or control characters"
        ))
    } else {
        Ok(())
    }
}

const SQL_LOCK_KEY: &str = "SELECT lock_key FROM nodes WHERE node_id = $1";

/// Every node, and whether its process lives (it holds its liveness lock):
/// read once per cluster tick for liveness, peers and their tenant counts,
/// and by `GET /api/nodes`.
const SQL_NODES: &str = "SELECT n.node_id, n.address, n.started_at, n.heartbeat_at, n.pid, n.version, n.load, \
     n.tenants, n.tokens, EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND l.classid = $1 AND int8(l.objid) = n.lock_key AND l.objsubid = 2) AS alive \
     FROM nodes n ORDER BY n.node_id";

/// A dead node has left once its tasks are all taken.
const SQL_MARK_GONE: &str = "UPDATE nodes SET heartbeat_at = 0 WHERE node_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM tasks WHERE owner = $1 AND status IN ('queued', 'running'))";

/// The unfinished tasks of the named dead nodes, most urgent first.
const SQL_RESCUE_FROM: &str = "WITH c AS MATERIALIZED (SELECT id FROM tasks \
       WHERE owner = ANY($2) AND status IN ('queued', 'running') \
       ORDER BY priority, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE tasks t SET status = 'queued', owner = $1 FROM c \
     WHERE t.id = c.id AND t.owner = ANY($2) AND t.status IN ('queued', 'running') RETURNING ";

/// Another node's queued tasks of one department: the most urgent first,
/// and within a priority the newest. The owner starts its oldest first, so
/// a claim taken from the other end never waits on the owner's starts (nor
/// makes them wait: a start blocked on a claimed row held up the owner's
/// whole group commit, and three nodes ran no faster than one).
///
/// The candidates are a materialised CTE: as a plain subquery of `UPDATE …
/// FROM` (or `IN`), PostgreSQL may scan it more than once, and with `SKIP
/// LOCKED` each scan finds other rows, so `LIMIT` would not bound the claim
/// (seen here: a claim of 4 took 15).
const SQL_CLAIM: &str = "WITH c AS MATERIALIZED (SELECT id, owner FROM tasks \
       WHERE department = $2 AND status = 'queued' AND owner IS NOT NULL AND owner <> $1 \
       AND (run_after IS NULL OR run_after <= (extract(epoch from clock_timestamp()) * 1000)::bigint) \
       ORDER BY priority, id DESC LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE tasks t SET owner = $1 FROM c WHERE t.id = c.id AND t.status = 'queued' RETURNING ";

/// [`SQL_CLAIM`] from the named nodes only (a draining node's queue).
const SQL_CLAIM_FROM: &str = "WITH c AS MATERIALIZED (SELECT id, owner FROM tasks \
       WHERE department = $2 AND status = 'queued' AND owner = ANY($4) AND owner <> $1 \
       AND (run_after IS NULL OR run_after <= (extract(epoch from clock_timestamp()) * 1000)::bigint) \
       ORDER BY priority, id DESC LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE tasks t SET owner = $1 FROM c WHERE t.id = c.id AND t.status = 'queued' RETURNING ";

impl Store {
    /// Takes this (registered) node's liveness lock, waiting up to `wait`
    /// for a previous process with the same id to die. `None` on SQLite.
    /// Fails if another live process holds the id.
    pub async fn lock_node(
        &self,
        node: &str,
        wait: Duration,
    ) -> Result<Option<NodeLock>, StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(None);
        };
        let key: i64 = sqlx::query_scalar(SQL_LOCK_KEY)
            .bind(node)
            .fetch_one(pool)
            .await?;
        let key = i32::try_from(key).map_err(|_| {
            StoreError::Database(format!("lock key {key} of node `{node}` is out of range"))
        })?;
        let opts = (*pool.connect_options()).clone();
        let until = tokio::time::Instant::now() + wait;
        loop {
            if let Some(conn) = try_lock(&opts, key).await? {
                return Ok(Some(NodeLock {
                    opts,
                    key,
                    conn: Some(conn),
                }));
            }
            if tokio::time::Instant::now() >= until {
                return Err(StoreError::Config(format!(
                    "node id `{node}` is held by another live swarmd process on this database; \
                     give each node its own `node_id`"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Listens to the cluster's channels. `None` on SQLite.
    pub async fn notifications(&self) -> Result<Option<Notifications>, StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(None);
        };
        // A pool of its own: the listener keeps its connection for good and
        // must not take one of the writer's.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*pool.connect_options()).clone())
            .await?;
        let mut listener = PgListener::connect_with(&own).await?;
        listener
            .listen_all([CHANNEL_BACKLOG, CHANNEL_CLAIMED])
            .await?;
        Ok(Some(Notifications { listener }))
    }

    /// Announces on a cluster channel.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(());
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Announces a claim to the tasks' old owner, in payloads PostgreSQL
    /// accepts.
    pub async fn notify_claimed(&self, claimed: &Claimed) -> Result<(), StoreError> {
        for ids in claimed.ids.chunks(IDS_PER_NOTICE) {
            let part = Claimed {
                from: claimed.from.clone(),
                by: claimed.by.clone(),
                ids: ids.to_vec(),
            };
            self.notify(CHANNEL_CLAIMED, &db::to_json(&part)).await?;
        }
        Ok(())
    }

    /// Takes up to `limit` unfinished tasks of the `dead` nodes, as queued;
    /// a dead node whose tasks are all taken is marked gone.
    pub async fn rescue_from(
        &self,
        me: &str,
        dead: &[String],
        limit: i64,
    ) -> Result<Vec<Task>, StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(Vec::new());
        };
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("{SQL_RESCUE_FROM}{}", qualified_task_cols()));
        let tasks = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(me)
            .bind(dead)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if (tasks.len() as i64) < limit {
            for node in dead {
                sqlx::query(SQL_MARK_GONE).bind(node).execute(pool).await?;
            }
        }
        Ok(tasks)
    }

    /// Moves up to `limit` of other nodes' queued tasks of `department`
    /// (only those of the `from` nodes, if given) to `me`, most urgent
    /// first.
    pub async fn claim_queued(
        &self,
        me: &str,
        department: &str,
        limit: i64,
        from: Option<&[String]>,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(Vec::new());
        };
        // Built once: a claim runs every few milliseconds under a backlog.
        static CLAIM: LazyLock<[String; 2]> = LazyLock::new(|| {
            let tail = format!("{}, c.owner AS previous_owner", qualified_task_cols());
            [
                format!("{SQL_CLAIM}{tail}"),
                format!("{SQL_CLAIM_FROM}{tail}"),
            ]
        });
        let sql = &CLAIM[usize::from(from.is_some())];
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(me)
            .bind(department)
            .bind(limit);
        if let Some(from) = from {
            q = q.bind(from);
        }
        // The claim must walk `tasks_claimable` in its order and stop after
        // `limit` rows. With statistics older than the backlog (a burst, a
        // young table: autovacuum analyses a minute later at best) the
        // planner instead fetched every queued row and sorted them, 6 ms a
        // claim instead of 0.07 ms; without the sort it has one plan.
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        let rows = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let from: String = row.try_get("previous_owner")?;
            out.push(ClaimedTask {
                task: task_from_row(row)?,
                from,
            });
        }
        Ok(out)
    }

    /// Every registered node, with whether it is alive now.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = match &self.inner.db {
            Db::Pg(pool) => sqlx::query(SQL_NODES)
                .bind(LOCK_NAMESPACE)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| node_row(r, r.try_get::<bool, _>(9)))
                .collect::<Result<Vec<_>, _>>()?,
            Db::Sqlite(pool) => sqlx::query(
                "SELECT node_id, address, started_at, heartbeat_at, pid, version, load, tenants, \
                 tokens FROM nodes ORDER BY node_id",
            )
            .fetch_all(pool)
            .await?
            .iter()
            // One process owns the file, and it is the one asking.
            .map(|r| node_row(r, Ok(true)))
            .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(rows)
    }
}

/// [`db::TASK_COLS`] of the table aliased `t`.
fn qualified_task_cols() -> String {
    db::TASK_COLS
        .split(',')
        .map(|c| format!("t.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn node_row<R>(r: &R, alive: Result<bool, sqlx::Error>) -> Result<NodeRow, StoreError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let load: String = r.try_get(6)?;
    let tenants: String = r.try_get(7)?;
    let tokens: String = r.try_get(8)?;
    Ok(NodeRow {
        node_id: r.try_get(0)?,
        address: r.try_get(1)?,
        started_at: r.try_get(2)?,
        heartbeat_at: r.try_get(3)?,
        pid: r.try_get(4)?,
        version: r.try_get(5)?,
        alive: alive?,
        load: serde_json::from_str(&load).unwrap_or(serde_json::Value::Null),
        tenants: serde_json::from_str(&tenants).unwrap_or_default(),
        tokens: serde_json::from_str(&tokens).unwrap_or(serde_json::Value::Null),
    })
}

/// The advisory-lock namespace of permit rounds ("SWMP"): one transaction
/// lock per department serialises the nodes' rounds.
const PERMIT_NAMESPACE: i32 = 0x5357_4D50;

/// One node's round of a cluster-wide limit: what it asks, what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitRound {
    /// The department's cluster-wide limit.
    pub limit: usize,
    /// Tasks this node wants to run there now (running plus queued).
    pub demand: usize,
    /// Permits this node's runs hold now.
    pub in_flight: usize,
    /// Rows not renewed for this long are free again, ms.
    pub lease_ms: i64,
}

/// Max-min fair shares of `total` over `demands`, every demand counted as
/// at least 1 while there are permits for all (so an idle node can start a
/// task at once); what no demand takes is spread evenly, so a burst starts
/// before the next round. The shares add up to `total` at most.
pub fn fair_shares(total: usize, demands: &[usize]) -> Vec<usize> {
    let n = demands.len();
    let mut shares = vec![0; n];
    if n == 0 {
        return shares;
    }
    let floor = usize::from(total >= n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| demands[i]);
    let mut left = total;
    for (k, &i) in order.iter().enumerate() {
        let fair = left / (n - k);
        let give = demands[i].max(floor).min(fair);
        shares[i] = give;
        left -= give;
    }
    // The rest, evenly (the lowest demands first get the odd ones).
    let each = left / n;
    let mut odd = left % n;
    for &i in &order {
        shares[i] += each + usize::from(odd > 0);
        odd = odd.saturating_sub(1);
    }
    shares
}

impl Store {
    /// One round of this node's part of `department`'s cluster-wide limit:
    /// under the department's transaction lock, reads every node's part,
    /// computes this node's fair share of the demands, takes at most what
    /// the others leave free, and records it. Returns the share this node
    /// may run now (possibly 0). `None` on SQLite (one node has it all).
    pub async fn lease_permits(
        &self,
        me: &str,
        department: &str,
        round: PermitRound,
    ) -> Result<Option<usize>, StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(None);
        };
        let now = swarm_core::clock::now_ms();
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(PERMIT_NAMESPACE)
            .bind(department)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM cluster_permits WHERE department = $1 AND renewed_at < $2")
            .bind(department)
            .bind(now - round.lease_ms)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT node_id, held, demand FROM cluster_permits WHERE department = $1 AND node_id <> $2",
        )
        .bind(department)
        .bind(me)
        .fetch_all(&mut *tx)
        .await?;
        let mut held_by_others = 0usize;
        let mut demands = vec![round.demand];
        for r in &rows {
            held_by_others += r.try_get::<i64, _>(1)?.max(0) as usize;
            demands.push(r.try_get::<i64, _>(2)?.max(0) as usize);
        }
        let target = fair_shares(round.limit, &demands)[0];
        let free = round.limit.saturating_sub(held_by_others);
        let share = target.min(free);
        // Runs already started are not revoked: the row says what is held,
        // so the others never count on permits still in use.
        let held = share.max(round.in_flight);
        sqlx::query(
            "INSERT INTO cluster_permits (department, node_id, held, demand, renewed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (department, node_id) DO UPDATE SET \
             held = excluded.held, demand = excluded.demand, renewed_at = excluded.renewed_at",
        )
        .bind(department)
        .bind(me)
        .bind(held as i64)
        .bind(round.demand as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(share))
    }

    /// Publishes this node's outstanding tasks per tenant and what it
    /// holds of each token budget, for the others' quotas and budgets
    /// ([`NodeRow::tenants`], [`NodeRow::tokens`]). Nothing on SQLite.
    pub async fn publish_tenants(
        &self,
        me: &str,
        mine: &std::collections::HashMap<String, usize>,
        tokens: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(());
        };
        sqlx::query("UPDATE nodes SET tenants = $2, tokens = $3 WHERE node_id = $1")
            .bind(me)
            .bind(db::to_json(mine))
            .bind(db::to_json(tokens))
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Gives up this node's parts of every cluster-wide limit (shutdown).
    pub async fn release_permits(&self, me: &str) -> Result<(), StoreError> {
        let Db::Pg(pool) = &self.inner.db else {
            return Ok(());
        };
        sqlx::query("DELETE FROM cluster_permits WHERE node_id = $1")
            .bind(me)
            .execute(pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fair_shares;

    #[test]
    fn shares_are_max_min_fair_and_never_exceed_the_total() {
        assert_eq!(fair_shares(20, &[100, 100, 100]), vec![6, 7, 7]);
        // Small demands are met; the rest split what is left.
        assert_eq!(fair_shares(20, &[2, 100, 100]), vec![2, 9, 9]);
        // Nobody wants much: the spare is spread so bursts start at once.
        assert_eq!(fair_shares(20, &[0, 1, 2]), vec![7, 6, 7]);
        // Fewer permits than nodes: no floor, some get none.
        assert_eq!(fair_shares(2, &[5, 5, 5]).iter().sum::<usize>(), 2);
        for total in 0..40 {
            for a in 0..12 {
                for b in 0..12 {
                    let s = fair_shares(total, &[a, b, 7]);
                    assert!(s.iter().sum::<usize>() <= total, "{total} {a} {b}: {s:?}");
                }
            }
        }
        assert!(fair_shares(5, &[]).is_empty());
    }
}
