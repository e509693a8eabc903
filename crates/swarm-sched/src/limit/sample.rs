//! What one finished piece of work tells the control law.

use std::time::Duration;

/// How a call ended, as far as load is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded: its round-trip time is a latency sample.
    Success,
    /// Back-pressure (a timeout, a 429/503, a refusal): every law backs off.
    Dropped,
    /// Says nothing about load (a cancellation, a client error): release only.
    Ignore,
}

/// One measurement fed to a limiter through [`Permit::record`](super::Permit::record).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Time from the start of the call to its end (excluding time spent
    /// waiting for the permit).
    pub rtt: Duration,
    /// How the call ended.
    pub outcome: Outcome,
}

impl Sample {
    /// A successful call that took `rtt`.
    pub fn success(rtt: Duration) -> Self {
        Self {
            rtt,
            outcome: Outcome::Success,
        }
    }

    /// A call that met back-pressure after `rtt`.
    pub fn dropped(rtt: Duration) -> Self {
        Self {
            rtt,
            outcome: Outcome::Dropped,
        }
    }

    /// A call that says nothing about load.
    pub fn ignore() -> Self {
        Self {
            rtt: Duration::ZERO,
            outcome: Outcome::Ignore,
        }
    }
}

/// Maps a call's result to an [`Outcome`].
///
/// Injected by the caller so the control laws know nothing about HTTP,
/// agents or error types.
pub trait Classify<R: ?Sized>: Send + Sync {
    /// The outcome of `result` for the limiter.
    fn classify(&self, result: &R) -> Outcome;
}
