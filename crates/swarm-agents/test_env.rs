//! What the integration tests need from outside Rust, and whether this
//! machine has it; shared by the build scripts of the crates that own such
//! tests (`swarm-agents`, `swarmd`).
//!
//! For every need that is missing the build script sets
//! `cfg(test_missing = "<need>")`, and a test that needs it carries
//! `#[cfg_attr(test_missing = "<need>", ignore = "needs …")]`. The test
//! harness then reports it as `ignored, needs …` and counts it in the
//! summary's `ignored`, instead of a pass that tested nothing. A test run
//! anyway (`-- --ignored`) fails with a message saying what is missing.
//!
//! With `SWARMD_TEST_REQUIRE_ALL=1` (CI) nothing is reported missing: every
//! test runs, and one whose need is missing fails.
//!
//! The answer is kept until something it depends on changes: the
//! variables `SWARMD_TEST_PG_URL`, `SWARMD_TEST_CHROMIUM` and
//! `SWARMD_TEST_REQUIRE_ALL`, the programs and module found, and, while
//! something is missing, the directories on `PATH` and Python's script
//! directories (installing a program, or `pip install aiosmtpd`, which adds
//! an `aiosmtpd` command, changes one of them). `PATH` itself is not
//! watched, so activating a virtualenv does not rebuild the crates.
//!
//! Release builds do not look at all: the server people run has no use
//! for the answer, and watching would rebuild it whenever the answer might
//! change. `cargo test --release` therefore runs every test, as with
//! `SWARMD_TEST_REQUIRE_ALL=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Something a test needs that is not part of the Rust build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A PostgreSQL server at `SWARMD_TEST_PG_URL`.
    Postgres,
    /// `python3` on `PATH`.
    Python3,
    /// Python's `aiosmtpd` module (a real SMTP server).
    Aiosmtpd,
    /// Headless Chromium: `SWARMD_TEST_CHROMIUM`, or on `PATH`.
    Chromium,
    /// `promtool` (Prometheus) on `PATH`.
    Promtool,
    /// PostgreSQL's server programs (`initdb`, `pg_ctl`), for tests that
    /// start a server of their own to stop and starve it.
    PgServer,
    /// Root, for tests that mount a filesystem of their own (a full disk).
    Root,
}

impl Need {
    const ALL: [Need; 7] = [
        Need::Postgres,
        Need::Python3,
        Need::Aiosmtpd,
        Need::Chromium,
        Need::Promtool,
        Need::PgServer,
        Need::Root,
    ];

    /// The value of `cfg(test_missing = …)`.
    fn cfg(self) -> &'static str {
        match self {
            Need::Postgres => "postgres",
            Need::Python3 => "python3",
            Need::Aiosmtpd => "aiosmtpd",
            Need::Chromium => "chromium",
            Need::Promtool => "promtool",
            Need::PgServer => "pg_server",
            Need::Root => "root",
        }
    }
}

/// The names the dashboard tests look for on `PATH` (as `chromium()` in
/// `crates/swarmd/tests/dashboard.rs`).
const CHROMIUM_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// Prints the `cargo::` lines for `needs`; call from `build.rs`'s `main`.
pub fn report(needs: &[Need]) {
    let values: Vec<String> = Need::ALL
        .iter()
        .map(|n| format!("\"{}\"", n.cfg()))
        .collect();
    println!(
        "cargo::rustc-check-cfg=cfg(test_missing, values({}))",
        values.join(", ")
    );
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        // Something to watch, or Cargo reruns this on any change in the crate.
        println!("cargo::rerun-if-changed=build.rs");
        return;
    }
    println!("cargo::rerun-if-env-changed=SWARMD_TEST_REQUIRE_ALL");
    if std::env::var("SWARMD_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
        return;
    }
    let mut watch = BTreeSet::new();
    let mut missing_any = false;
    for &need in needs {
        let found = match need {
            Need::Postgres => {
                println!("cargo::rerun-if-env-changed=SWARMD_TEST_PG_URL");
                std::env::var("SWARMD_TEST_PG_URL").is_ok_and(|u| !u.is_empty())
            }
            Need::Python3 => seen(&mut watch, python3()),
            Need::Aiosmtpd => match python3() {
                Some(py) => {
                    let found = seen(&mut watch, module_file(&py, "aiosmtpd"));
                    if !found {
                        // Where `pip install aiosmtpd` puts its command.
                        watch.extend(python_script_dirs(&py));
                    }
                    found
                }
                None => false,
            },
            Need::Chromium => {
                println!("cargo::rerun-if-env-changed=SWARMD_TEST_CHROMIUM");
                let set = std::env::var_os("SWARMD_TEST_CHROMIUM").filter(|p| !p.is_empty());
                let found = set
                    .map(PathBuf::from)
                    .or_else(|| CHROMIUM_NAMES.iter().find_map(|n| on_path(n)));
                seen(&mut watch, found)
            }
            Need::Promtool => seen(&mut watch, on_path("promtool")),
            Need::PgServer => {
                let found = pg_server_bin();
                if found.is_none() {
                    watch.insert(PathBuf::from("/usr/lib/postgresql"));
                }
                seen(&mut watch, found)
            }
            Need::Root => Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
        };
        if !found {
            missing_any = true;
            println!("cargo::rustc-cfg=test_missing=\"{}\"", need.cfg());
        }
    }
    if missing_any {
        watch.extend(path_dirs());
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo::rerun-if-changed={}", p.display());
    }
}

/// Whether `found` is there; if so it is watched (removing it changes the
/// answer).
fn seen(watch: &mut BTreeSet<PathBuf>, found: Option<PathBuf>) -> bool {
    found.map(|p| watch.insert(p)).is_some()
}

/// The absolute, existing directories on `PATH`.
fn path_dirs() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute() && d.is_dir())
        .collect()
}

/// The first `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where `initdb` and `pg_ctl` live: `PATH`, or Debian's versioned
/// directories (`/usr/lib/postgresql/<version>/bin`), the same search as
/// `crates/swarmd/tests/support/pgcluster.rs`.
fn pg_server_bin() -> Option<PathBuf> {
    if let (Some(_), Some(ctl)) = (on_path("initdb"), on_path("pg_ctl")) {
        return Some(ctl);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("pg_ctl").exists() && d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().map(|d| d.join("pg_ctl"))
}

/// `python3` on `PATH`, if it runs (a pyenv shim may exist for a Python
/// that is not installed).
fn python3() -> Option<PathBuf> {
    let p = on_path("python3")?;
    let ok = Command::new(&p)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

/// The file a Python module is imported from, if it can be imported.
fn module_file(python: &Path, module: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", &format!("import {module}; print({module}.__file__)")])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let file = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(file.trim()))
}

/// Where `pip` puts commands: the interpreter's and the user's script
/// directories.
fn python_script_dirs(python: &Path) -> Vec<PathBuf> {
    let code = "import os, sysconfig\n\
                print(sysconfig.get_path('scripts'))\n\
                print(sysconfig.get_path('scripts', os.name + '_user'))";
    Command::new(python)
        .args(["-c", code])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| {
            s.lines()
                .map(PathBuf::from)
                .filter(|d| d.is_dir())
                .collect()
        })
        .unwrap_or_default()
}
