//! `[[schedules]]` parsed: each schedule's cron expression, time zone and
//! what its ticker has seen; the view `GET /api/schedules` shows. The
//! tickers themselves are `schedules.rs` (they submit through the engine).

use std::sync::{Arc, Mutex};

use chrono::{TimeZone as _, Utc};
use serde::Serialize;
use swarm_core::config::ScheduleConfig;

use crate::error::EngineError;

/// One schedule as `GET /api/schedules` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone it is read in.
    pub timezone: String,
    /// The tenant its tasks belong to.
    pub tenant: String,
    /// Whether missed ticks are submitted after downtime.
    pub catch_up: bool,
    /// The task template's `type`.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The next tick, RFC 3339 (`null` if the expression has no future
    /// time).
    pub next_run: Option<String>,
    /// The last tick submitted, by any node, RFC 3339.
    pub last_run: Option<String>,
    /// The task of the last tick.
    pub last_task: Option<String>,
    /// Ticks this node submitted itself since it started (the others'
    /// were replays of another node's).
    pub submitted_here: u64,
    /// The last tick this node could not submit, and why.
    pub last_error: Option<String>,
}

/// What a ticker has seen, for the view.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) submitted_here: u64,
    pub(crate) last_error: Option<String>,
}

/// A parsed schedule.
pub(crate) struct Schedule {
    pub(crate) cfg: ScheduleConfig,
    pub(crate) cron: croner::Cron,
    pub(crate) tz: chrono_tz::Tz,
    pub(crate) seen: Mutex<Seen>,
}

impl Schedule {
    /// The first tick strictly after `after_ms`.
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        // Ticks fall on whole seconds; croner keeps a start's fraction.
        let t = Utc
            .timestamp_millis_opt(after_ms - after_ms.rem_euclid(1_000))
            .single()?
            .with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|d| d.timestamp_millis())
    }
}

/// The schedules of one engine.
pub(crate) struct Schedules(pub(crate) Vec<Arc<Schedule>>);

impl Schedules {
    /// Parses `[[schedules]]` (checked at load, so a failure here is a bug
    /// reported as such).
    pub(crate) fn new(cfgs: &[ScheduleConfig]) -> Result<Self, EngineError> {
        let mut out = Vec::with_capacity(cfgs.len());
        for cfg in cfgs {
            let (cron, tz) = cfg
                .parse()
                .map_err(|e| EngineError::Internal(format!("schedule `{}`: {e}", cfg.name)))?;
            out.push(Arc::new(Schedule {
                cfg: cfg.clone(),
                cron,
                tz,
                seen: Mutex::default(),
            }));
        }
        Ok(Self(out))
    }
}

pub(crate) fn lock(m: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use std::str::FromStr as _;
    use swarm_core::TaskSpec;

    fn schedule(cron: &str, tz: &str) -> Schedule {
        let cfg = ScheduleConfig {
            name: "s".into(),
            cron: cron.into(),
            timezone: tz.into(),
            tenant: "default".into(),
            catch_up: false,
            task: TaskSpec {
                task_type: "echo".into(),
                ..TaskSpec::default()
            },
        };
        let (cron, tz) = cfg.parse().unwrap();
        Schedule {
            cfg,
            cron,
            tz,
            seen: Mutex::default(),
        }
    }

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn ticks_follow_the_zone_and_its_daylight_saving() {
        // 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
        let s = schedule("0 9 * * *", "Europe/Paris");
        assert_eq!(
            s.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-07-10T12:00:00Z")),
            Some(ms("2026-07-11T07:00:00Z"))
        );
        // Strictly after: a tick is never its own successor.
        let t = ms("2026-07-11T07:00:00Z");
        assert_eq!(s.next_after(t), Some(ms("2026-07-12T07:00:00Z")));
    }

    #[test]
    fn seconds_are_optional() {
        let s = schedule("*/2 * * * * *", "UTC");
        let t = ms("2026-01-01T00:00:01Z");
        assert_eq!(s.next_after(t), Some(ms("2026-01-01T00:00:02Z")));
        // From within a second, the next whole one.
        let t = ms("2026-01-01T00:00:02.600Z");
        assert_eq!(s.next_after(t), Some(ms("2026-01-01T00:00:04Z")));
        assert!(chrono_tz::Tz::from_str("Mars/Olympus").is_err());
    }
}
