//! Per-minute quotas (`rpm`, `tpm`) as a provider's rate limiter applies
//! them, and the OpenAI-style headers that report them.
//!
//! The model is a **fixed window**: windows of `window_ms` (60 000 by
//! default: a minute) follow each other from the server's start, and each
//! starts with the whole quota. A request arriving in a window uses one
//! request of `rpm` and its tokens (prompt + completion, as the reply's
//! `usage` counts them; `/work` uses none) of `tpm`, whatever its answer
//! turns out to be. One that would take the window past either quota is
//! answered `429` at once (it uses nothing), with `Retry-After` the
//! seconds, rounded up, until the window ends. A request asking for more
//! tokens than `tpm` is always refused, as a real provider's would be.
//!
//! Every answer of `/v1/chat/completions` and `/work`, 429s included,
//! carries `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`
//! and `x-ratelimit-reset-requests` (when `rpm` is set) and the `-tokens`
//! trio (when `tpm` is set), as OpenAI does
//! (<https://platform.openai.com/docs/guides/rate-limits>): the reset is
//! the time until the window ends, as a Go-style duration (`20ms`,
//! `1.5s`, `1m0s`), measured when the answer is sent; the remaining counts
//! are those left when the request was admitted (or refused).

use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

/// The quotas and the current window's use.
#[derive(Debug)]
pub(crate) struct Quotas {
    rpm: u64,
    tpm: u64,
    window: Duration,
    start: Instant,
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    /// Index of the window the counts belong to.
    index: u128,
    requests: u64,
    tokens: u64,
}

/// What the quotas looked like for one request, for its headers.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    rpm: u64,
    tpm: u64,
    remaining_requests: u64,
    remaining_tokens: u64,
    window_end: Instant,
    /// The quota that refused the request (`requests` or `tokens`).
    pub(crate) exceeded: Option<&'static str>,
}

impl Quotas {
    /// `0` for `rpm` or `tpm` means no such quota; `window_ms` is at least 1.
    pub(crate) fn new(rpm: u64, tpm: u64, window_ms: u64) -> Self {
        Self {
            rpm,
            tpm,
            window: Duration::from_millis(window_ms.max(1)),
            start: Instant::now(),
            used: Mutex::new(Used::default()),
        }
    }

    /// Admits one request costing `tokens` (counting it) or refuses it
    /// (`exceeded` set); `None` without quotas.
    pub(crate) fn admit(&self, tokens: u64) -> Option<Status> {
        if self.rpm == 0 && self.tpm == 0 {
            return None;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let window_ns = self.window.as_nanos();
        let index = elapsed.as_nanos() / window_ns;
        // Below `window_ns`, which came from a `Duration` of u64 ms.
        let into = u64::try_from(elapsed.as_nanos() % window_ns).unwrap_or(0);
        let window_end = now + self.window.saturating_sub(Duration::from_nanos(into));
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.index != index {
            *used = Used {
                index,
                ..Used::default()
            };
        }
        let over_requests = self.rpm > 0 && used.requests + 1 > self.rpm;
        let over_tokens = self.tpm > 0 && used.tokens.saturating_add(tokens) > self.tpm;
        let exceeded = if over_requests {
            Some("requests")
        } else if over_tokens {
            Some("tokens")
        } else {
            used.requests += 1;
            used.tokens = used.tokens.saturating_add(tokens);
            None
        };
        Some(Status {
            rpm: self.rpm,
            tpm: self.tpm,
            remaining_requests: self.rpm.saturating_sub(used.requests),
            remaining_tokens: self.tpm.saturating_sub(used.tokens),
            window_end,
            exceeded,
        })
    }
}

impl Status {
    /// Time from `now` until the window ends.
    pub(crate) fn reset(&self, now: Instant) -> Duration {
        self.window_end.saturating_duration_since(now)
    }

    /// `Retry-After` for a refusal: whole seconds until the window ends,
    /// rounded up, at least 1.
    pub(crate) fn retry_after_s(&self, now: Instant) -> u64 {
        let ms = self.reset(now).as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
    }

    /// The `x-ratelimit-*` headers, the reset measured at `now`.
    pub(crate) fn headers(&self, now: Instant) -> HeaderMap {
        let mut h = HeaderMap::new();
        let reset = go_duration(self.reset(now));
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        if self.rpm > 0 {
            put("x-ratelimit-limit-requests", self.rpm.to_string());
            put(
                "x-ratelimit-remaining-requests",
                self.remaining_requests.to_string(),
            );
            put("x-ratelimit-reset-requests", reset.clone());
        }
        if self.tpm > 0 {
            put("x-ratelimit-limit-tokens", self.tpm.to_string());
            put(
                "x-ratelimit-remaining-tokens",
                self.remaining_tokens.to_string(),
            );
            put("x-ratelimit-reset-tokens", reset);
        }
        h
    }
}

/// A Go-style duration as OpenAI writes resets: `20ms` below a second,
/// else `1.5s`, `1m0s`, `1h2m3s`; rounded up to the millisecond, so a
/// reset still ahead never reads as `0ms`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, ms / 60_000 % 60);
    let (s, frac) = (ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let frac = format!("{frac:03}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_read_like_openai_resets() {
        let d = |ms: u64| go_duration(Duration::from_millis(ms));
        assert_eq!(d(0), "0ms");
        assert_eq!(d(20), "20ms");
        assert_eq!(d(1000), "1s");
        assert_eq!(d(1500), "1.5s");
        assert_eq!(d(60_000), "1m0s");
        assert_eq!(d(90_500), "1m30.5s");
        assert_eq!(d(3_723_040), "1h2m3.04s");
        assert_eq!(go_duration(Duration::from_micros(1)), "1ms");
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_window_counts_requests_and_tokens() {
        let q = Quotas::new(2, 100, 1000);
        assert!(Quotas::new(0, 0, 1000).admit(5).is_none());
        let a = q.admit(60).unwrap();
        assert_eq!(
            (a.exceeded, a.remaining_requests, a.remaining_tokens),
            (None, 1, 40)
        );
        // Over the tokens: refused, nothing used.
        let b = q.admit(41).unwrap();
        assert_eq!((b.exceeded, b.remaining_requests), (Some("tokens"), 1));
        let c = q.admit(40).unwrap();
        assert_eq!(
            (c.exceeded, c.remaining_requests, c.remaining_tokens),
            (None, 0, 0)
        );
        let d = q.admit(0).unwrap();
        assert_eq!(d.exceeded, Some("requests"));
        tokio::time::advance(Duration::from_millis(300)).await;
        let now = Instant::now();
        assert_eq!(d.reset(now), Duration::from_millis(700));
        assert_eq!(d.retry_after_s(now), 1);
        let h = d.headers(now);
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "700ms");
        assert_eq!(h["x-ratelimit-limit-tokens"], "100");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
        // The next window starts with the whole quota.
        tokio::time::advance(Duration::from_millis(700)).await;
        let e = q.admit(10).unwrap();
        assert_eq!(
            (e.exceeded, e.remaining_requests, e.remaining_tokens),
            (None, 1, 90)
        );
        assert_eq!(e.reset(Instant::now()), Duration::from_millis(1000));
        // No tpm: no token headers.
        let only_rpm = Quotas::new(1, 0, 1000).admit(1_000_000).unwrap();
        assert_eq!(only_rpm.exceeded, None);
        let h = only_rpm.headers(Instant::now());
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    }
}
