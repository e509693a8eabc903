//! What a test needs from outside Rust, checked where the test starts.
//!
//! Self-contained (std only) so any test crate can include it with
//! `#[path = ".../tests/support/needs.rs"] mod needs;`.
//!
//! A test whose need this machine lacks is normally not run: the crate's
//! build script sets `cfg(test_missing = "…")` (see
//! `crates/swarm-agents/test_env.rs`) and the test carries
//! `#[cfg_attr(test_missing = "…", ignore = "needs …")]`, so the summary
//! counts it as ignored. One that runs all the same (`-- --ignored`, or CI
//! with `SWARMD_TEST_REQUIRE_ALL=1`) fails here, saying what is missing,
//! rather than passing without having tested anything.

// Each test binary that includes this file uses a different subset of it.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Fails the test: `what` is missing, `how` says how to get it.
pub fn missing(what: &str, how: &str) -> ! {
    panic!(
        "{what} is missing ({how}). Without it this test is reported as ignored; \
         it ran because it was asked for (`-- --ignored`) or SWARMD_TEST_REQUIRE_ALL=1 is set"
    )
}

/// Whether `program args…` runs and exits successfully.
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `python3` runs here, or the test fails.
pub fn require_python3() {
    if !runs("python3", &["--version"]) {
        missing("python3", "install Python 3");
    }
}

/// Python's `aiosmtpd` can be imported, or the test fails.
pub fn require_aiosmtpd() {
    if !runs("python3", &["-c", "import aiosmtpd"]) {
        missing("aiosmtpd", "pip install aiosmtpd");
    }
}
