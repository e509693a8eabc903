//! Configuration of the simulated provider: [`SimConfig`] and its schedule
//! [`Step`]s, read from TOML and validated with messages that name the key.

use serde::{Deserialize, Serialize};

/// Upper bound for every duration-like setting in milliseconds (one day).
/// Larger values are almost certainly typos and would only make the
/// simulated provider hang.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// Upper bound for `reply_tokens`.
pub const MAX_REPLY_TOKENS: u64 = 4096;

/// How the simulated provider behaves. Every field has a default, so an
/// empty TOML document is a valid configuration (200 ms per request, no
/// knee, no hard limit, no injected failures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Base service time of one request in milliseconds.
    pub latency_ms: u64,
    /// Uniform random extra service time, `0..=jitter_ms` milliseconds.
    pub jitter_ms: u64,
    /// The knee: past this many requests in flight, service time scales by
    /// `inflight / capacity`. `0` means no knee.
    pub capacity: u64,
    /// When the requests in flight (including the arriving one) exceed this,
    /// the request is answered `429` at once. `0` means no limit.
    pub hard_limit: u64,
    /// Value of the `Retry-After` header (seconds) on the hard limit's
    /// `429` answers (a quota's say when its window ends).
    pub retry_after_s: u64,
    /// Requests per window (`window_ms`, a minute by default) before
    /// answering `429`, as a provider's per-minute quota; `0` means none.
    /// See the crate docs for the fixed-window model and the headers.
    pub rpm: u64,
    /// Tokens (prompt + completion, as `usage` counts them) per window;
    /// `0` means none.
    pub tpm: u64,
    /// Length of the quotas' window in milliseconds (60 000: per minute;
    /// tests use shorter ones).
    pub window_ms: u64,
    /// Probability (`0..=1`) that a request fails with `error_status`.
    pub error_rate: f64,
    /// Status of injected failures (`500..=599`).
    pub error_status: u16,
    /// Probability (`0..=1`) that a request stalls for `stall_ms` first.
    pub stall_rate: f64,
    /// How long a stalled request hangs before it is served normally.
    pub stall_ms: u64,
    /// Streaming: gap between two tokens in milliseconds.
    pub token_ms: u64,
    /// Tokens in a reply (`1..=4096`); a request's `max_tokens` may lower it.
    pub reply_tokens: u64,
    /// Seed for deterministic randomness (jitter, failures, stalls).
    pub seed: Option<u64>,
    /// Period of the stats timeline in milliseconds.
    pub sample_ms: u64,
    /// Changes applied over time (piecewise constant, sorted by `at_s`).
    pub schedule: Vec<Step>,
    /// When set, the schedule restarts every `repeat_s` seconds; each period
    /// starts from the base values above.
    pub repeat_s: Option<f64>,
    /// Scripted chat replies (`[[replies]]`): the first entry whose
    /// `contains` occurs in a message of the request answers with its
    /// `reply`, verbatim; requests no entry matches get the filler reply.
    /// For tests of clients that need a known answer (e.g. JSON).
    pub replies: Vec<ScriptedReply>,
}

/// One scripted chat reply; see [`SimConfig::replies`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    /// Text that, found in any message's `content`, selects this reply.
    pub contains: String,
    /// The reply, sent as it is: streamed in pieces of one word with the
    /// whitespace after it, so the pieces join to exactly this text. A
    /// request's `max_tokens` may cut it (`finish_reason` `length`).
    pub reply: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency_ms: 200,
            jitter_ms: 0,
            capacity: 0,
            hard_limit: 0,
            retry_after_s: 1,
            rpm: 0,
            tpm: 0,
            window_ms: 60_000,
            error_rate: 0.0,
            error_status: 500,
            stall_rate: 0.0,
            stall_ms: 60_000,
            token_ms: 20,
            reply_tokens: 16,
            seed: None,
            sample_ms: 100,
            schedule: Vec::new(),
            repeat_s: None,
            replies: Vec::new(),
        }
    }
}

/// One step of the schedule: from `at_s` seconds after start, the given
/// fields replace the current values; absent fields keep theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Seconds after start (or after the start of the period when the
    /// schedule repeats) at which this step takes effect.
    pub at_s: f64,
    /// New knee (`0` = none).
    #[serde(default)]
    pub capacity: Option<u64>,
    /// New hard limit (`0` = none).
    #[serde(default)]
    pub hard_limit: Option<u64>,
    /// New base latency in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// New failure probability (`0..=1`).
    #[serde(default)]
    pub error_rate: Option<f64>,
}

impl SimConfig {
    /// Parses a TOML document and validates it. Errors name the offending key.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: SimConfig =
            toml::from_str(text).map_err(|e| format!("invalid sim-backend config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value's range; the message names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        check_ms("latency_ms", self.latency_ms)?;
        check_ms("jitter_ms", self.jitter_ms)?;
        check_ms("stall_ms", self.stall_ms)?;
        check_ms("token_ms", self.token_ms)?;
        check_rate("error_rate", self.error_rate)?;
        check_rate("stall_rate", self.stall_rate)?;
        if !(500..=599).contains(&self.error_status) {
            return Err(format!(
                "error_status must be a 5xx status (500..=599), got {}",
                self.error_status
            ));
        }
        if !(1..=MAX_REPLY_TOKENS).contains(&self.reply_tokens) {
            return Err(format!(
                "reply_tokens must be between 1 and {MAX_REPLY_TOKENS}, got {}",
                self.reply_tokens
            ));
        }
        if self.sample_ms == 0 || self.sample_ms > MAX_DURATION_MS {
            return Err(format!(
                "sample_ms must be between 1 and {MAX_DURATION_MS}, got {}",
                self.sample_ms
            ));
        }
        if self.retry_after_s > MAX_DURATION_MS / 1000 {
            return Err(format!(
                "retry_after_s must be at most {}, got {}",
                MAX_DURATION_MS / 1000,
                self.retry_after_s
            ));
        }
        if self.window_ms == 0 || self.window_ms > MAX_DURATION_MS {
            return Err(format!(
                "window_ms must be between 1 and {MAX_DURATION_MS}, got {}",
                self.window_ms
            ));
        }
        if let Some(r) = self.repeat_s
            && !(r.is_finite() && r > 0.0)
        {
            return Err(format!(
                "repeat_s must be a positive number of seconds, got {r}"
            ));
        }
        for (i, step) in self.schedule.iter().enumerate() {
            self.check_step(i, step)?;
        }
        for (i, r) in self.replies.iter().enumerate() {
            if r.contains.is_empty() {
                return Err(format!("replies[{i}].contains must not be empty"));
            }
            let pieces = crate::chat::pieces(&r.reply).len() as u64;
            if !(1..=MAX_REPLY_TOKENS).contains(&pieces) {
                return Err(format!(
                    "replies[{i}].reply must have between 1 and {MAX_REPLY_TOKENS} words, got {pieces}"
                ));
            }
        }
        Ok(())
    }

    fn check_step(&self, i: usize, step: &Step) -> Result<(), String> {
        let at = step.at_s;
        if !(at.is_finite() && at >= 0.0) {
            return Err(format!(
                "schedule[{i}].at_s must be a non-negative number of seconds, got {at}"
            ));
        }
        if let Some(r) = self.repeat_s
            && at >= r
        {
            return Err(format!(
                "schedule[{i}].at_s ({at}) must be less than repeat_s ({r}), or the step never applies"
            ));
        }
        if let Some(ms) = step.latency_ms {
            check_ms(&format!("schedule[{i}].latency_ms"), ms)?;
        }
        if let Some(rate) = step.error_rate {
            check_rate(&format!("schedule[{i}].error_rate"), rate)?;
        }
        Ok(())
    }
}

fn check_ms(key: &str, value: u64) -> Result<(), String> {
    if value > MAX_DURATION_MS {
        return Err(format!(
            "{key} must be at most {MAX_DURATION_MS} ms (one day), got {value}"
        ));
    }
    Ok(())
}

fn check_rate(key: &str, value: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&value) {
        return Err(format!(
            "{key} must be a probability between 0 and 1, got {value}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_defaults() {
        assert_eq!(SimConfig::from_toml("").unwrap(), SimConfig::default());
    }

    #[test]
    fn full_document_parses() {
        let cfg = SimConfig::from_toml(
            "latency_ms = 50\ncapacity = 4\nseed = 7\nrepeat_s = 10.0\n\
             [[schedule]]\nat_s = 2.5\ncapacity = 8\n\
             [[schedule]]\nat_s = 5\nerror_rate = 0.5\n",
        )
        .unwrap();
        assert_eq!(cfg.latency_ms, 50);
        assert_eq!(cfg.seed, Some(7));
        assert_eq!(cfg.schedule.len(), 2);
        assert_eq!(cfg.schedule[0].capacity, Some(8));
        assert_eq!(cfg.schedule[1].error_rate, Some(0.5));
        let cfg = SimConfig::from_toml("rpm = 60\ntpm = 1000\nwindow_ms = 1000").unwrap();
        assert_eq!((cfg.rpm, cfg.tpm, cfg.window_ms), (60, 1000, 1000));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("latency = 5", "latency"),
            ("error_rate = 2.0", "error_rate"),
            ("stall_rate = -0.1", "stall_rate"),
            ("error_status = 404", "error_status"),
            ("reply_tokens = 0", "reply_tokens"),
            ("sample_ms = 0", "sample_ms"),
            ("latency_ms = 99999999999", "latency_ms"),
            ("repeat_s = 0.0", "repeat_s"),
            ("window_ms = 0", "window_ms"),
            ("rpm = -1", "rpm"),
            ("[[schedule]]\nat_s = -1", "schedule[0].at_s"),
            ("[[schedule]]\nat_s = 1\nfoo = 1", "foo"),
            (
                "[[schedule]]\nat_s = 1\nerror_rate = 3",
                "schedule[0].error_rate",
            ),
            ("repeat_s = 5.0\n[[schedule]]\nat_s = 6", "schedule[0].at_s"),
            (
                "[[replies]]\ncontains = \"\"\nreply = \"x\"",
                "replies[0].contains",
            ),
            (
                "[[replies]]\ncontains = \"a\"\nreply = \"  \"",
                "replies[0].reply",
            ),
            ("[[replies]]\ncontains = \"a\"\nanswer = \"x\"", "answer"),
        ];
        for (doc, key) in cases {
            let err = SimConfig::from_toml(doc).unwrap_err();
            assert!(err.contains(key), "{doc:?}: {err}");
        }
    }
}
