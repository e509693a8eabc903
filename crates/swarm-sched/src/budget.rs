//! Token budgets: how many model tokens a tenant or a department may spend
//! per minute and per day, both windows enforced together.
//!
//! **Windows.** Each window is a sliding-window counter over fixed slots
//! (the approximation of a sliding log that Cloudflare's and most Redis
//! rate limiters use): tokens are added to the slot of the time they were
//! spent, and a slot leaves the window once its *end* is a whole span old.
//! A spend is therefore remembered for between one span and one span plus
//! a slot (1 s of a minute, 1 min of a day), never less, so no span ever
//! holds more than the limit. Sums of windows add up across nodes, which a
//! token bucket's clamped level does not: that is what lets a cluster
//! enforce one budget by adding what each node publishes ([`Usage`]).
//!
//! **Reservations.** Admission cannot know what a call will cost, so it
//! charges an estimate (the prompt's size plus `max_tokens`) as a
//! *reservation*, kept apart from the windows. When an attempt ends, the
//! tokens the provider reported (or the estimate, when it reported none)
//! are spent into the windows; when the task ends, its reservation is
//! released. A task is admitted while, in each window,
//! `spent + reserved + elsewhere + estimate <= limit`. Estimates are
//! usually high (`max_tokens` is a ceiling), so reported usage gives most
//! of them back; a low one can push the spend past the limit, and then
//! [`TokenBudget::spent_until`] says how long starts must wait.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Slots per window: how finely a window forgets.
const SLOTS: u64 = 60;
const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// A budget's limits; `None` is no limit in that window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Tokens per sliding minute (`tokens_per_minute`).
    pub per_minute: Option<u64>,
    /// Tokens per sliding day (`tokens_per_day`).
    pub per_day: Option<u64>,
}

impl Limits {
    /// Whether either window is limited.
    pub fn any(&self) -> bool {
        self.per_minute.is_some() || self.per_day.is_some()
    }
}

/// The two windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    /// The sliding minute.
    Minute,
    /// The sliding day.
    Day,
}

impl Span {
    fn ms(self) -> u64 {
        match self {
            Self::Minute => MINUTE_MS,
            Self::Day => DAY_MS,
        }
    }

    /// The configuration key of its limit.
    pub fn key(self) -> &'static str {
        match self {
            Self::Minute => "tokens_per_minute",
            Self::Day => "tokens_per_day",
        }
    }
}

/// A sliding window of spent tokens, in slots of `span / 60`.
#[derive(Debug)]
struct Window {
    span: Span,
    slot_ms: u64,
    /// (slot number, tokens), oldest first; only slots that hold tokens.
    slots: VecDeque<(u64, u64)>,
    total: u64,
}

impl Window {
    fn new(span: Span) -> Self {
        Self {
            span,
            slot_ms: span.ms() / SLOTS,
            slots: VecDeque::new(),
            total: 0,
        }
    }

    /// When (ms since the budget's origin) slot `n` leaves the window.
    fn leaves_at(&self, n: u64) -> u64 {
        (n + 1) * self.slot_ms + self.span.ms()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(n, t)) = self.slots.front() {
            if self.leaves_at(n) > now_ms {
                break;
            }
            self.slots.pop_front();
            self.total -= t;
        }
    }

    fn add(&mut self, now_ms: u64, tokens: u64) {
        if tokens == 0 {
            return;
        }
        self.expire(now_ms);
        let n = now_ms / self.slot_ms;
        match self.slots.back_mut() {
            Some((last, t)) if *last == n => *t += tokens,
            _ => self.slots.push_back((n, tokens)),
        }
        self.total += tokens;
    }

    fn used(&mut self, now_ms: u64) -> u64 {
        self.expire(now_ms);
        self.total
    }

    /// When (ms since the origin) at least `n` of the tokens in the window
    /// have left it; `None` if it holds fewer than `n`.
    fn frees_at(&mut self, now_ms: u64, n: u64) -> Option<u64> {
        self.expire(now_ms);
        let mut freed = 0u64;
        for &(slot, t) in &self.slots {
            freed += t;
            if freed >= n {
                return Some(self.leaves_at(slot));
            }
        }
        None
    }

    /// How long until at least `n` of the tokens in the window have left
    /// it; `None` if it holds fewer than `n`.
    fn frees_in(&mut self, now_ms: u64, n: u64) -> Option<Duration> {
        self.frees_at(now_ms, n)
            .map(|at| Duration::from_millis(at - now_ms))
    }
}

/// What one node holds of a budget, as it tells the others (and as the
/// sum of the others is kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// Spent in the last minute.
    pub minute: u64,
    /// Spent in the last day.
    pub day: u64,
    /// Reserved by tasks admitted and not yet ended.
    pub reserved: u64,
}

impl Usage {
    /// The two summed.
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            minute: self.minute.saturating_add(o.minute),
            day: self.day.saturating_add(o.day),
            reserved: self.reserved.saturating_add(o.reserved),
        }
    }

    fn spent(&self, span: Span) -> u64 {
        match span {
            Span::Minute => self.minute,
            Span::Day => self.day,
        }
    }

    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The estimate alone is more than the window's whole limit: it can
    /// never be admitted.
    TooLarge {
        /// The window.
        span: Span,
        /// Its limit.
        limit: u64,
    },
    /// The window has no room for it now.
    Spent {
        /// The first window without room.
        span: Span,
        /// Its limit.
        limit: u64,
        /// Tokens left in it (spent and reserved counted).
        remaining: u64,
        /// When it may have room: when enough of this node's spend has
        /// left the window, or, for room held by reservations or by other
        /// nodes, a guess (see [`TokenBudget::try_reserve`]).
        retry_after: Duration,
    },
}

/// One window's figures, for `/api/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WindowStatus {
    /// The limit (`tokens_per_minute` or `tokens_per_day`).
    pub limit: u64,
    /// Tokens spent in the window, on every node.
    pub spent: u64,
    /// Tokens reserved by tasks admitted and not yet ended, on every node.
    pub reserved: u64,
    /// What a new task may still reserve: `limit - spent - reserved`.
    pub remaining: u64,
}

/// A budget's figures, per limited window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    /// The sliding minute, if limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minute: Option<WindowStatus>,
    /// The sliding day, if limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<WindowStatus>,
}

/// The token budget of one tenant or department on this node, with what
/// the other nodes last said they hold of it.
#[derive(Debug)]
pub struct TokenBudget {
    origin: Instant,
    limits: Limits,
    minute: Window,
    day: Window,
    reserved: u64,
    elsewhere: Usage,
}

impl TokenBudget {
    /// A budget with nothing spent.
    pub fn new(limits: Limits) -> Self {
        Self {
            origin: Instant::now(),
            limits,
            minute: Window::new(Span::Minute),
            day: Window::new(Span::Day),
            reserved: 0,
            elsewhere: Usage::default(),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// New limits (a reload); what was spent and reserved stays.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn limit(&self, span: Span) -> Option<u64> {
        match span {
            Span::Minute => self.limits.per_minute,
            Span::Day => self.limits.per_day,
        }
    }

    fn window(&mut self, span: Span) -> &mut Window {
        match span {
            Span::Minute => &mut self.minute,
            Span::Day => &mut self.day,
        }
    }

    /// Spent and reserved in `span`, on every node.
    fn held(&mut self, span: Span, now_ms: u64) -> (u64, u64) {
        let spent = self.window(span).used(now_ms) + self.elsewhere.spent(span);
        (spent, self.reserved + self.elsewhere.reserved)
    }

    /// Reserves `estimate` tokens if every limited window has room.
    ///
    /// A refusal's `retry_after` is exact for room this node's own spend
    /// holds (the time its slots leave the window). Room held by
    /// reservations frees as their tasks end, so it says 1 s; room held by
    /// other nodes' spend is assumed to leave evenly over the span.
    pub fn try_reserve(&mut self, now: Instant, estimate: u64) -> Result<(), Refused> {
        let now_ms = self.ms(now);
        for span in [Span::Minute, Span::Day] {
            let Some(limit) = self.limit(span) else {
                continue;
            };
            if estimate > limit {
                return Err(Refused::TooLarge { span, limit });
            }
            let (spent, reserved) = self.held(span, now_ms);
            let held = spent.saturating_add(reserved);
            if held.saturating_add(estimate) > limit {
                let need = held + estimate - limit;
                let own = self.window(span).used(now_ms);
                let retry_after = if need <= own {
                    self.window(span)
                        .frees_in(now_ms, need)
                        .unwrap_or(Duration::from_secs(1))
                } else if reserved > 0 {
                    Duration::from_secs(1)
                } else {
                    let others = self.elsewhere.spent(span).max(1);
                    Duration::from_millis(span.ms().saturating_mul(need - own) / others)
                };
                return Err(Refused::Spent {
                    span,
                    limit,
                    remaining: limit.saturating_sub(held),
                    retry_after: retry_after.max(Duration::from_secs(1)),
                });
            }
        }
        self.reserved += estimate;
        Ok(())
    }

    /// Gives back a reservation (its task ended, or left this node).
    pub fn release(&mut self, estimate: u64) {
        self.reserved = self.reserved.saturating_sub(estimate);
    }

    /// Records tokens spent now (an attempt's reported usage).
    pub fn spend(&mut self, now: Instant, tokens: u64) {
        let now_ms = self.ms(now);
        self.minute.add(now_ms, tokens);
        self.day.add(now_ms, tokens);
    }

    /// While the tokens already spent (here and elsewhere) fill a limited
    /// window, the time its room comes back: starts wait until then.
    /// Reservations do not count: they are the waiting tasks themselves.
    pub fn spent_until(&mut self, now: Instant) -> Option<Instant> {
        let now_ms = self.ms(now);
        let mut until: Option<Instant> = None;
        for span in [Span::Minute, Span::Day] {
            let Some(limit) = self.limit(span) else {
                continue;
            };
            let own = self.window(span).used(now_ms);
            let spent = own + self.elsewhere.spent(span);
            if spent < limit {
                continue;
            }
            let need = spent - limit + 1;
            // The instant is computed from the origin, so asking again
            // gives the same answer (a pause that never seems to lengthen).
            let at = if need <= own {
                self.window(span).frees_at(now_ms, need)
            } else {
                None
            }
            // Held by other nodes: look again at the next whole second
            // after a second from now, when their next publication has come.
            .unwrap_or((now_ms / 1000 + 2) * 1000);
            let at = self.origin + Duration::from_millis(at);
            until = Some(until.map_or(at, |u| u.max(at)));
        }
        until
    }

    /// What this node holds, to publish to the others.
    pub fn local(&mut self, now: Instant) -> Usage {
        let now_ms = self.ms(now);
        Usage {
            minute: self.minute.used(now_ms),
            day: self.day.used(now_ms),
            reserved: self.reserved,
        }
    }

    /// What the other nodes hold, summed, as last read.
    pub fn set_elsewhere(&mut self, u: Usage) {
        self.elsewhere = u;
    }

    /// The figures of every limited window.
    pub fn status(&mut self, now: Instant) -> BudgetStatus {
        let now_ms = self.ms(now);
        let mut one = |span: Span| {
            let limit = self.limit(span)?;
            let (spent, reserved) = self.held(span, now_ms);
            Some(WindowStatus {
                limit,
                spent,
                reserved,
                remaining: limit.saturating_sub(spent.saturating_add(reserved)),
            })
        };
        BudgetStatus {
            minute: one(Span::Minute),
            day: one(Span::Day),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(n: u64) -> Limits {
        Limits {
            per_minute: Some(n),
            per_day: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_and_spend_share_the_limit() {
        let mut b = TokenBudget::new(minute(1000));
        b.try_reserve(Instant::now(), 600).unwrap();
        match b.try_reserve(Instant::now(), 500) {
            Err(Refused::Spent {
                remaining,
                retry_after,
                ..
            }) => {
                assert_eq!(remaining, 400);
                // Held by a reservation: look again soon.
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The task ends having spent 100 of its 600.
        b.release(600);
        b.spend(Instant::now(), 100);
        b.try_reserve(Instant::now(), 900).unwrap();
        assert_eq!(b.status(Instant::now()).minute.unwrap().remaining, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn spend_leaves_the_window_after_a_minute_and_never_sooner() {
        let mut b = TokenBudget::new(minute(100));
        tokio::time::advance(Duration::from_millis(10_500)).await;
        b.spend(Instant::now(), 100);
        let Err(Refused::Spent { retry_after, .. }) = b.try_reserve(Instant::now(), 1) else {
            panic!("the minute is spent");
        };
        // Spent in slot [10 s, 11 s): it leaves at 71 s, 60.5 s from now.
        assert_eq!(retry_after, Duration::from_millis(60_500));
        tokio::time::advance(Duration::from_millis(60_499)).await;
        assert!(b.try_reserve(Instant::now(), 1).is_err());
        assert!(b.spent_until(Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.spent_until(Instant::now()).is_none());
        b.try_reserve(Instant::now(), 100).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn both_windows_hold_at_once() {
        let mut b = TokenBudget::new(Limits {
            per_minute: Some(100),
            per_day: Some(250),
        });
        for _ in 0..2 {
            b.try_reserve(Instant::now(), 100).unwrap();
            b.release(100);
            b.spend(Instant::now(), 100);
            tokio::time::advance(Duration::from_secs(62)).await;
        }
        // The minute has room again, the day has 50 left.
        match b.try_reserve(Instant::now(), 60) {
            Err(Refused::Spent {
                span, remaining, ..
            }) => assert_eq!((span, remaining), (Span::Day, 50)),
            other => panic!("expected the day to refuse, got {other:?}"),
        }
        b.try_reserve(Instant::now(), 50).unwrap();
        assert_eq!(
            b.try_reserve(Instant::now(), 300),
            Err(Refused::TooLarge {
                span: Span::Minute,
                limit: 100
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_nodes_count_and_an_overspend_pauses_until_it_leaves() {
        let mut b = TokenBudget::new(minute(1000));
        b.set_elsewhere(Usage {
            minute: 700,
            day: 700,
            reserved: 200,
        });
        assert!(b.try_reserve(Instant::now(), 101).is_err());
        b.try_reserve(Instant::now(), 100).unwrap();
        b.set_elsewhere(Usage::default());
        // An estimate of 100 that turned out to cost 1,500.
        tokio::time::advance(Duration::from_millis(200)).await;
        b.release(100);
        b.spend(Instant::now(), 1500);
        let until = b.spent_until(Instant::now()).expect("over the limit");
        assert_eq!(until - Instant::now(), Duration::from_millis(60_800));
        // Asked again a moment later, the answer is the same instant (the
        // dispatcher waits for it; a moving one would wake it again).
        tokio::time::advance(Duration::from_micros(1_700)).await;
        assert_eq!(b.spent_until(Instant::now()), Some(until));
        // Spend held by another node: a whole second, stable within it.
        let mut c = TokenBudget::new(minute(100));
        c.set_elsewhere(Usage {
            minute: 100,
            day: 100,
            reserved: 0,
        });
        let at = c.spent_until(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(c.spent_until(Instant::now()), Some(at));
        assert_eq!(b.status(Instant::now()).minute.unwrap().remaining, 0);
        assert_eq!(
            b.local(Instant::now()),
            Usage {
                minute: 1500,
                day: 1500,
                reserved: 0
            }
        );
    }
}
