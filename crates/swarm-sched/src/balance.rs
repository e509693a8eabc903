//! Agent distribution: which instance of a department gets a call, and
//! which instances are healthy.
//!
//! A department is a pool of agent instances (HTTP endpoints, worker
//! processes, replicas). The [`Balancer`] knows them by id only: the caller
//! asks for a [`Pick`], makes the call itself, and reports `(rtt,`
//! [`Outcome`]`)`; dropping the pick counts as cancelled. No IO happens
//! here, and time is `tokio::time`, so everything runs under paused time.
//!
//! ```
//! use std::time::Duration;
//! use swarm_sched::balance::{BalanceConfig, Balancer, Outcome};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let b = Balancer::new(BalanceConfig { seed: Some(7), ..BalanceConfig::default() });
//! for id in ["a", "b", "c"] {
//!     b.add(id, 1);
//! }
//! let pick = b.pick(None).expect("an instance");
//! // ... call the instance `pick.id()` ...
//! pick.complete(Duration::from_millis(20), Outcome::Success);
//! // Sticky keys with the `hash` policy; other policies ignore the key.
//! let snap = b.snapshot();
//! assert_eq!(snap.picks, 1);
//! # });
//! ```
//!
//! # Policies ([`Policy`])
//!
//! - **`p2c`** (default): power of two choices (Mitzenmacher, "The power of
//!   two choices in randomized load balancing", 2001) over peak-EWMA load,
//!   as Finagle's `P2CPeakEwma`, linkerd and `tower::balance::p2c` with
//!   `tower::load::PeakEwma`: two distinct candidates at random (seeded),
//!   the cheaper wins, cost = RTT estimate × (outstanding + 1). The RTT
//!   estimate jumps to any slower reply and decays back over `decay_ms`,
//!   so a slow instance is avoided at once; two random choices rather than
//!   the global minimum, so many balancers with stale views do not herd
//!   onto one instance. A failure counts as at least the current
//!   estimate and an overload (429/503) as twice it, so an instance that
//!   refuses fast does not look fast.
//! - **`least_outstanding`**: fewest calls in flight, ties at random.
//! - **`round_robin`**: each candidate in turn.
//! - **`weighted`**: smooth weighted round robin (nginx): weights 5:1:1
//!   give `a a b a c a a`, not `a a a a a b c`.
//! - **`hash`**: sticky by key (say a `conversation_id`) by rendezvous
//!   hashing, weighted; when the key's instance is out, the key goes to the
//!   next in its own order, and comes back when the instance does. Removing
//!   one of N instances moves only its ~1/N of the keys. Without a key, as
//!   `p2c`.
//!
//! Why not `tower::balance` itself: our instances are not tower `Service`s
//! (a run is an agent call with its own deadline and cancel token, not a
//! request through a service stack), and draining, passive ejection with a
//! half-open return, sticky hashing and one status snapshot have to live
//! with the load numbers, which tower's `Balance` keeps inside its
//! `ReadyCache` and does not expose. The algorithm is the same.
//!
//! # Health
//!
//! Passive outlier ejection, returning through a circuit breaker's
//! half-open state (see [`OutlierConfig`]): failures and timeouts count,
//! overload (429/503) does not, because it is load rather than breakage
//! and ejecting for it would cut capacity when it is shortest. At most
//! `max_ejected_percent` of the instances are ejected at once and never
//! all. A half-open instance with a probe slot free is picked first
//! (except by sticky hash keys), so its return does not wait on chance.
//! If all are out anyway (active checks, see
//! [`Balancer::mark_unhealthy`]), picks fall back to all of them (Envoy's
//! panic mode).
//!
//! # Retries
//!
//! [`RetryPolicy`] decides whether and when to retry a failed call:
//! [`CallError::retryable`], [`Backoff`] (full jitter, honouring
//! `Retry-After`) and a [`RetryBudget`]. A retry should pick again, so it
//! usually lands on another instance.

mod balancer;
mod config;
mod ewma;
mod hash;
mod health;
mod retry;

pub use balancer::{Balancer, BalancerSnapshot, InstanceSnapshot, Outcome, Pick};
pub use config::{BalanceConfig, OutlierConfig, Policy};
pub use health::InstanceState;
pub use retry::{Backoff, CallError, RetryBudget, RetryConfig, RetryPolicy};
