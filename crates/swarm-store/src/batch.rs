//! The writer's three hot multi-row statements (new tasks, starts,
//! finishes of running tasks), one implementation per backend.
//!
//! SQLite gets `VALUES (…), (…)` lists built per chunk. PostgreSQL gets one
//! `UNNEST` of arrays per statement, one array per column: the statement's
//! text is the same whatever the batch holds, so PostgreSQL parses and plans
//! it once per connection (sqlx prepares it), where a `VALUES` list of a new
//! length is a new statement to parse and plan each time, and the whole
//! batch travels as 17 (or 8, or 4) parameters instead of thousands. This
//! is River's and Oban's way of inserting batches (`unnest` of arrays).

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, QueryBuilder, Row, SqliteConnection};

use crate::db::{self, to_json};
use crate::model::{Finish, NewTask};

/// Rows per multi-row statement on SQLite: 20 binds each stays far below
/// its bind-parameter limit.
const CHUNK: usize = 500;

/// One start: `(id, instance, started_at, owner)`.
pub(crate) type StartRow<'a> = (&'a str, &'a str, i64, &'a str);

/// The hot statements on one backend's connection.
pub(crate) trait BatchWrites {
    /// Inserts new tasks (conflicts insert nothing); returns the ids stored.
    async fn insert_tasks(&mut self, rows: &[&NewTask]) -> Result<HashSet<String>, sqlx::Error>;
    /// Marks queued tasks running (see `db::SQL_START`); returns the
    /// attempts of those it started, by id. Ids are distinct.
    async fn start_tasks(
        &mut self,
        rows: &[StartRow<'_>],
    ) -> Result<HashMap<String, i64>, sqlx::Error>;
    /// Stores outcomes of running tasks (guarded by state and owner);
    /// returns the ids stored. Ids are distinct.
    async fn finish_running(&mut self, rows: &[&Finish]) -> Result<HashSet<String>, sqlx::Error>;
}

impl BatchWrites for SqliteConnection {
    async fn insert_tasks(&mut self, rows: &[&NewTask]) -> Result<HashSet<String>, sqlx::Error> {
        let mut created = HashSet::new();
        for chunk in rows.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(db::SQL_INSERT_HEAD);
            qb.push_values(chunk, |mut b, n| {
                let t = &n.task;
                b.push_bind(t.id.to_string())
                    .push_bind(t.tenant.clone())
                    .push_bind(t.task_type.clone())
                    .push_bind(t.status.as_str())
                    .push_bind(t.priority.index() as i64)
                    .push_bind(t.department.clone())
                    .push_bind(t.agent.clone())
                    .push_bind(t.title.clone())
                    .push_bind(t.description.clone())
                    .push_bind(to_json(&t.args))
                    .push_bind(t.idempotency_key.clone())
                    .push_bind(n.request_hash.clone())
                    .push_bind(t.timeout_ms)
                    .push_bind(t.deadline_at)
                    .push_bind(t.created_at)
                    .push_bind(n.owner.clone())
                    .push_bind(to_json(&t.timings))
                    .push_bind(t.retry.as_ref().map(to_json))
                    .push_bind(t.run_after)
                    .push_bind(t.callback_url.clone());
            });
            qb.push(db::SQL_INSERT_TAIL);
            for row in qb.build().fetch_all(&mut *self).await? {
                created.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(created)
    }

    async fn start_tasks(
        &mut self,
        rows: &[StartRow<'_>],
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        let mut started = HashMap::new();
        for chunk in rows.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(db::SQL_START_MANY_HEAD);
            qb.push_values(chunk, |mut b, (id, instance, at, owner)| {
                b.push_bind(id.to_string())
                    .push_bind(instance.to_string())
                    .push_bind(*at)
                    .push_bind(owner.to_string());
            });
            qb.push(db::SQL_START_MANY_TAIL);
            for row in qb.build().fetch_all(&mut *self).await? {
                started.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
            }
        }
        Ok(started)
    }

    async fn finish_running(&mut self, rows: &[&Finish]) -> Result<HashSet<String>, sqlx::Error> {
        let mut done = HashSet::new();
        for chunk in rows.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(db::SQL_FINISH_MANY_HEAD);
            qb.push_values(chunk, |mut b, f| {
                b.push_bind(f.id.to_string())
                    .push_bind(f.status.as_str())
                    .push_bind(f.result.as_ref().map(to_json))
                    .push_bind(f.error.as_ref().map(to_json))
                    .push_bind(f.finished_at)
                    .push_bind(to_json(&f.timings))
                    .push_bind(f.instance.clone())
                    .push_bind(f.owner.clone());
            });
            qb.push(db::SQL_FINISH_MANY_TAIL);
            for row in qb.build().fetch_all(&mut *self).await? {
                done.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(done)
    }
}

/// New tasks as one `UNNEST` of column arrays.
const PG_INSERT: &str = "INSERT INTO tasks (id, tenant, type, status, priority, department, agent, \
     title, description, args, idempotency_key, request_hash, timeout_ms, deadline_at, created_at, \
     owner, timings, retry, run_after, callback_url) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[], \
       $14::int8[], $15::int8[], $16::text[], $17::text[], $18::text[], $19::int8[], $20::text[]) \
     ON CONFLICT DO NOTHING RETURNING id";

/// [`db::SQL_START`] for many tasks, from arrays.
const PG_START: &str = "UPDATE tasks SET status = 'running', instance = v.instance, \
     started_at = v.at, attempts = tasks.attempts + CASE WHEN tasks.status = 'queued' THEN 1 ELSE 0 END, \
     nodes = CASE WHEN tasks.status = 'queued' THEN (CASE WHEN tasks.nodes = '' THEN v.owner \
       ELSE tasks.nodes || ',' || v.owner END) ELSE tasks.nodes END \
     FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]) AS v(id, instance, at, owner) \
     WHERE tasks.id = v.id AND tasks.owner = v.owner \
       AND (tasks.status = 'queued' OR (tasks.status = 'running' AND tasks.started_at = v.at)) \
     RETURNING tasks.id, tasks.attempts";

/// [`db::SQL_FINISH_RUNNING`] for many tasks, from arrays.
const PG_FINISH: &str = "UPDATE tasks SET status = v.status, result = v.result, error = v.error, \
     finished_at = v.finished_at, timings = v.timings, instance = COALESCE(v.instance, tasks.instance), \
     owner = NULL, cancel_requested = FALSE, \
     callback_state = CASE WHEN tasks.callback_url IS NULL THEN NULL ELSE 'pending' END, \
     callback_next_at = v.finished_at \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], \
       $8::text[]) AS v(id, status, result, error, finished_at, timings, instance, owner) \
     WHERE tasks.id = v.id AND tasks.owner = v.owner AND tasks.status = 'running' \
     RETURNING tasks.id";

impl BatchWrites for PgConnection {
    async fn insert_tasks(&mut self, rows: &[&NewTask]) -> Result<HashSet<String>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let col = |f: &dyn Fn(&NewTask) -> String| rows.iter().map(|n| f(n)).collect::<Vec<_>>();
        let opt =
            |f: &dyn Fn(&NewTask) -> Option<String>| rows.iter().map(|n| f(n)).collect::<Vec<_>>();
        let int = |f: &dyn Fn(&NewTask) -> i64| rows.iter().map(|n| f(n)).collect::<Vec<_>>();
        let out = sqlx::query(PG_INSERT)
            .bind(col(&|n| n.task.id.to_string()))
            .bind(col(&|n| n.task.tenant.clone()))
            .bind(col(&|n| n.task.task_type.clone()))
            .bind(col(&|n| n.task.status.as_str().to_string()))
            .bind(int(&|n| n.task.priority.index() as i64))
            .bind(col(&|n| n.task.department.clone()))
            .bind(col(&|n| n.task.agent.clone()))
            .bind(opt(&|n| n.task.title.clone()))
            .bind(opt(&|n| n.task.description.clone()))
            .bind(col(&|n| to_json(&n.task.args)))
            .bind(opt(&|n| n.task.idempotency_key.clone()))
            .bind(opt(&|n| n.request_hash.clone()))
            .bind(int(&|n| n.task.timeout_ms))
            .bind(int(&|n| n.task.deadline_at))
            .bind(int(&|n| n.task.created_at))
            .bind(col(&|n| n.owner.clone()))
            .bind(col(&|n| to_json(&n.task.timings)))
            .bind(opt(&|n| n.task.retry.as_ref().map(to_json)))
            .bind(rows.iter().map(|n| n.task.run_after).collect::<Vec<_>>())
            .bind(opt(&|n| n.task.callback_url.clone()))
            .fetch_all(&mut *self)
            .await?;
        out.iter().map(|r| r.try_get::<String, _>(0)).collect()
    }

    async fn start_tasks(
        &mut self,
        rows: &[StartRow<'_>],
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let out = sqlx::query(PG_START)
            .bind(rows.iter().map(|r| r.0.to_string()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.to_string()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.3.to_string()).collect::<Vec<_>>())
            .fetch_all(&mut *self)
            .await?;
        out.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect()
    }

    async fn finish_running(&mut self, rows: &[&Finish]) -> Result<HashSet<String>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let out = sqlx::query(PG_FINISH)
            .bind(rows.iter().map(|f| f.id.to_string()).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|f| f.status.as_str().to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|f| f.result.as_ref().map(to_json))
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|f| f.error.as_ref().map(to_json))
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|f| f.finished_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|f| to_json(&f.timings)).collect::<Vec<_>>())
            .bind(rows.iter().map(|f| f.instance.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|f| f.owner.clone()).collect::<Vec<_>>())
            .fetch_all(&mut *self)
            .await?;
        out.iter().map(|r| r.try_get::<String, _>(0)).collect()
    }
}
