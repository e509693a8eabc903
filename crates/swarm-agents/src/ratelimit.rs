//! `ratelimit`: reads a provider's rate-limit headers into a pause.
//!
//! LLM providers say on every response how much of each quota is left and
//! when it resets. A client that waits for a 429 to learn a quota is spent
//! wastes a request (and, on a busy pool, many); one that reads the headers
//! of the last success can stop before. [`rate_limit`] turns those headers
//! into a [`ProviderPause`]: how long until every spent quota allows a call
//! again, and which quota it was.
//!
//! # Header families
//! - **OpenAI** (and the many servers that copy it; see
//!   <https://platform.openai.com/docs/guides/rate-limits>):
//!   `x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens`
//!   (integers) and `x-ratelimit-reset-requests`,
//!   `x-ratelimit-reset-tokens`: the time until the quota is full again, as
//!   a Go-style duration (`1s`, `6m0s`, `20ms`, `1m30.5s`, `0.5s`; units
//!   `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`). A bare number is read as
//!   seconds, as some compatible servers send it.
//! - **Anthropic** (<https://docs.anthropic.com/en/api/rate-limits>):
//!   `anthropic-ratelimit-requests-remaining`,
//!   `anthropic-ratelimit-tokens-remaining`,
//!   `anthropic-ratelimit-input-tokens-remaining`,
//!   `anthropic-ratelimit-output-tokens-remaining` (integers) and the
//!   matching `…-reset` headers: the moment the quota is full again, as an
//!   RFC 3339 timestamp (`2024-10-15T12:00:30Z`). The input and output
//!   token quotas count as [`Quota::Tokens`].
//!
//! # Rules
//! - A quota is *spent* when its remaining count is `0` and its reset is
//!   readable; a quota with something left, or whose reset is missing or
//!   malformed, says nothing (a pause needs an end).
//! - Several spent quotas: the pause lasts until **all** of them allow a
//!   call, so the longest reset wins (and names the quota).
//! - Malformed values are ignored, never an error; a reset already past
//!   (or zero) is no pause.
//! - `Retry-After` is not read here ([`crate::http::retry_after`] does); the
//!   HTTP backends combine both: on a 429 whose only signal is
//!   `Retry-After`, the pause is that delay ([`Quota::Unknown`]).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Which provider quota is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Requests per period.
    Requests,
    /// Tokens per period (input, output or both).
    Tokens,
    /// The provider refused (`429`) with only `Retry-After`: it did not
    /// say which quota.
    Unknown,
}

impl Quota {
    /// `requests`, `tokens` or `unknown`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Unknown => "unknown",
        }
    }
}

/// "This provider is spent for `delay`": no call would succeed before.
/// Or, from [`headroom`], "only `remaining` calls are left until `delay`
/// has passed": the engine pauses once its calls in flight would use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderPause {
    /// Time from the response until every spent quota allows a call.
    pub delay: Duration,
    /// The quota whose reset is the latest (the one the pause waits for).
    pub quota: Quota,
    /// Calls the quota still allows before its reset (0: spent).
    pub remaining: u64,
}

/// `(remaining, reset, quota)` header names of the OpenAI family.
const OPENAI: [(&str, &str, Quota); 2] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        Quota::Requests,
    ),
    (
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        Quota::Tokens,
    ),
];

/// `(remaining, reset, quota)` header names of the Anthropic family.
const ANTHROPIC: [(&str, &str, Quota); 4] = [
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        Quota::Requests,
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        Quota::Tokens,
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        Quota::Tokens,
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
        Quota::Tokens,
    ),
];

/// The pause the rate-limit headers ask for, if a quota is spent; see the
/// module docs. `now` is when the response arrived (Anthropic's resets are
/// timestamps).
pub fn rate_limit(headers: &HeaderMap, now: SystemTime) -> Option<ProviderPause> {
    let text = |name: &str| header(headers, name);
    let spent = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok()) == Some(0);
    let openai = OPENAI.iter().filter_map(|(rem, reset, quota)| {
        if !spent(rem) {
            return None;
        }
        Some((parse_go_duration(text(reset)?)?, *quota))
    });
    let anthropic = ANTHROPIC.iter().filter_map(|(rem, reset, quota)| {
        if !spent(rem) {
            return None;
        }
        let at = parse_rfc3339(text(reset)?)?;
        Some((at.duration_since(now).unwrap_or(Duration::ZERO), *quota))
    });
    let (delay, quota) = openai.chain(anthropic).max_by_key(|(d, _)| *d)?;
    (!delay.is_zero()).then_some(ProviderPause {
        delay,
        quota,
        remaining: 0,
    })
}

/// The request quota's headroom when nothing is spent: how many requests
/// it still allows (more than 0) and how long until it resets, from the
/// `x-ratelimit-*-requests` or `anthropic-ratelimit-requests-*` pair.
/// With several calls in flight, a success that leaves `remaining` below
/// their number means the next start would be refused: the caller pauses
/// before it instead of spending a request on a `429`.
pub fn headroom(headers: &HeaderMap, now: SystemTime) -> Option<ProviderPause> {
    let text = |name: &str| header(headers, name);
    let left = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    let (rem, reset, _) = OPENAI[0];
    let openai = left(rem).zip(text(reset).and_then(parse_go_duration));
    let (rem, reset, _) = ANTHROPIC[0];
    let anthropic = || {
        let at = parse_rfc3339(text(reset)?)?;
        Some((left(rem)?, at.duration_since(now).unwrap_or(Duration::ZERO)))
    };
    let (remaining, delay) = openai.or_else(anthropic)?;
    (remaining > 0 && !delay.is_zero()).then_some(ProviderPause {
        delay,
        quota: Quota::Requests,
        remaining,
    })
}

/// A header's value as trimmed text, if it is text.
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A Go-style duration (`1m30.5s`, `20ms`, `6m0s`), or a bare number of
/// seconds; `None` when malformed, negative or absurdly large.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = tail;
    }
    secs_to_duration(total)
}

fn secs_to_duration(secs: f64) -> Option<Duration> {
    // A year is far past any quota period: anything longer is garbage.
    if !(secs.is_finite() && (0.0..=366.0 * 86_400.0).contains(&secs)) {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// An RFC 3339 timestamp (`2024-10-15T12:00:30Z`, `…30.25+02:00`); `None`
/// when malformed.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u64> {
        let part = b.get(from..from + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    let year = digits(0, 4)?;
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (month, day) = (digits(5, 2)?, digits(8, 2)?);
    let (hour, min, sec) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let padded: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = padded.parse().ok()?;
    }
    let offset: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::try_from(oh * 3600 + om * 60).ok()?;
            if *c == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::try_from(year).ok()?, month, day);
    let secs = days * 86_400 + i64::try_from(hour * 3600 + min * 60 + sec).ok()? - offset;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, u32::try_from(nanos).ok()?))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn now() -> SystemTime {
        // 2023-11-14T22:13:20Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn pause(pairs: &[(&str, &str)]) -> Option<ProviderPause> {
        rate_limit(&headers(pairs), now())
    }

    fn p(ms: u64, quota: Quota) -> Option<ProviderPause> {
        Some(ProviderPause {
            delay: Duration::from_millis(ms),
            quota,
            remaining: 0,
        })
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| parse_go_duration(s);
        assert_eq!(d("1s"), Some(Duration::from_secs(1)));
        assert_eq!(d("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(d("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(d("1m30.5s"), Some(Duration::from_millis(90_500)));
        assert_eq!(d("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(d("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(d("1500us"), Some(Duration::from_micros(1500)));
        assert_eq!(d(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(d("0s"), Some(Duration::ZERO));
        for bad in [
            "", "s", "-1s", "1x", "1.2.3s", ".s", "1s2", "NaNs", "inf", "1e9999s", "9999h",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_timestamps() {
        let t = |s: &str| parse_rfc3339(s);
        assert_eq!(t("2023-11-14T22:13:20Z"), Some(now()));
        assert_eq!(t("2023-11-14t22:13:20z"), Some(now()));
        assert_eq!(t("2023-11-15T00:13:20+02:00"), Some(now()));
        assert_eq!(t("2023-11-14T21:13:20-01:00"), Some(now()));
        assert_eq!(
            t("2023-11-14T22:13:20.25Z"),
            Some(now() + Duration::from_millis(250))
        );
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(
            t("2024-02-29T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T25:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20Zjunk",
            "1969-12-31T23:59:59Z",
            "２023-11-14T22:13:20Z",
            "Tue, 14 Nov 2023 22:13:20 GMT",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn openai_family() {
        assert_eq!(pause(&[]), None);
        // Something left: no pause, whatever the reset.
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-requests", "59"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-remaining-tokens", "1000"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            None
        );
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1m30.5s"),
                ("x-ratelimit-remaining-tokens", "1000"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            p(90_500, Quota::Requests)
        );
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "20ms"),
            ]),
            p(20, Quota::Tokens)
        );
    }

    #[test]
    fn anthropic_family() {
        assert_eq!(
            pause(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:50Z"),
                ("anthropic-ratelimit-tokens-remaining", "5000"),
                ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:14:20Z"),
            ]),
            p(30_000, Quota::Requests)
        );
        assert_eq!(
            pause(&[
                ("anthropic-ratelimit-output-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2023-11-14T22:13:21.5Z"
                ),
            ]),
            p(1_500, Quota::Tokens)
        );
        assert_eq!(
            pause(&[
                ("anthropic-ratelimit-input-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2023-11-14T23:13:22+01:00"
                ),
            ]),
            p(2_000, Quota::Tokens)
        );
        // A reset already past: nothing to wait for.
        assert_eq!(
            pause(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:00Z"),
            ]),
            None
        );
    }

    #[test]
    fn both_spent_waits_for_the_longest_reset() {
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2s"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "7.5s"),
            ]),
            p(7_500, Quota::Tokens)
        );
        assert_eq!(
            pause(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2023-11-14T22:14:20Z"),
                ("anthropic-ratelimit-tokens-remaining", "0"),
                ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:30Z"),
            ]),
            p(60_000, Quota::Requests)
        );
    }

    #[test]
    fn mixed_families() {
        // A gateway in front of both may send both; every spent quota
        // counts, whichever family reports it.
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "3s"),
                ("anthropic-ratelimit-tokens-remaining", "0"),
                ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:30Z"),
            ]),
            p(10_000, Quota::Tokens)
        );
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "3s"),
                ("anthropic-ratelimit-tokens-remaining", "10"),
                ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:30Z"),
            ]),
            p(3_000, Quota::Requests)
        );
    }

    #[test]
    fn malformed_values_are_ignored() {
        for pairs in [
            // Remaining unreadable.
            &[
                ("x-ratelimit-remaining-requests", "none"),
                ("x-ratelimit-reset-requests", "1s"),
            ][..],
            &[
                ("x-ratelimit-remaining-requests", "-0"),
                ("x-ratelimit-reset-requests", "1s"),
            ],
            // Reset missing or unreadable.
            &[("x-ratelimit-remaining-requests", "0")],
            &[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "soon"),
            ],
            &[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "in a minute"),
            ],
            // The other family's reset format.
            &[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "1s"),
            ],
        ] {
            assert_eq!(pause(pairs), None, "{pairs:?}");
        }
        // A malformed quota does not hide a well-formed one.
        assert_eq!(
            pause(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "garbage"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "1s"),
            ]),
            p(1_000, Quota::Tokens)
        );
        // Non-UTF-8 values never panic.
        let mut m = HeaderMap::new();
        m.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        m.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_bytes(b"1\xffs").unwrap(),
        );
        assert_eq!(rate_limit(&m, now()), None);
    }
}
