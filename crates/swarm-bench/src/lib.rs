//! # swarm-bench
//!
//! The measuring instrument behind `swarmd bench`: offers load to an HTTP
//! server in a closed loop (a number of clients) or an open loop (a rate,
//! with latency counted from the intended send time), records latency in HDR
//! histograms, samples the server's own status, accounts CPU for the
//! generator and the server, and writes JSON, Markdown and SVG.
//!
//! # Layout
//! - [`scenario`]: what to measure (TOML or flags).
//! - [`load`]: the closed and open loops, over an [`load::Exchange`].
//! - [`http`]: the HTTP exchange (task submissions followed to their end, or
//!   raw requests to any server).
//! - [`recorder`]: histograms and counts; [`recorder::LatencySummary`].
//! - [`phases`]: per-phase figures and recovery times of phased steps.
//! - [`launch`]: starting a fresh target per step.
//! - [`sampler`], [`sysstat`]: the server's status and CPU over a step.
//! - [`run`]: one scenario from start to results; [`result`]: their shape.
//! - [`report`], [`svg`]: Markdown tables and charts.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod http;
pub mod launch;
pub mod load;
pub mod phases;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod result;
pub mod run;
pub mod sampler;
pub mod scenario;
pub mod svg;
pub mod sysstat;

use std::path::{Path, PathBuf};

pub use result::ScenarioResult;
pub use run::{RunOptions, run};
pub use scenario::Scenario;

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The scenario file is unreadable or wrong.
    #[error("scenario {path}: {message}")]
    Scenario {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Bad flags or settings.
    #[error("{0}")]
    Input(String),
    /// The target does not answer.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// What was tried.
        url: String,
        /// Why it failed.
        message: String,
    },
    /// Starting the target failed.
    #[error("{0}")]
    Launch(String),
    /// Writing or reading results failed.
    #[error("{0}")]
    Io(String),
}

/// Writes `<name>.json`, `<name>.md` and `<name>.svg` into `dir`.
pub fn write_outputs(r: &ScenarioResult, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let io =
        |p: &Path, e: std::io::Error| BenchError::Io(format!("cannot write {}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let json = dir.join(format!("{}.json", r.name));
    let md = dir.join(format!("{}.md", r.name));
    let svg = dir.join(format!("{}.svg", r.name));
    let text = serde_json::to_string_pretty(r).map_err(|e| BenchError::Io(e.to_string()))?;
    std::fs::write(&json, text).map_err(|e| io(&json, e))?;
    std::fs::write(&md, report::markdown(r, None)).map_err(|e| io(&md, e))?;
    std::fs::write(&svg, svg::plot(r)).map_err(|e| io(&svg, e))?;
    Ok(vec![json, md, svg])
}

/// Reads a results file written by [`write_outputs`].
pub fn read_result(path: &Path) -> Result<ScenarioResult, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Io(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| BenchError::Io(format!("{} is not a bench result: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_results_still_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let r = read_result(&p).unwrap();
                // Tables for labels and phases appear exactly when the
                // results have them (older results have neither).
                let labels = r.steps.iter().any(|s| !s.by_label.is_empty());
                let phases = r.steps.iter().any(|s| !s.phases.is_empty());
                let md = report::markdown(&r, None);
                assert_eq!(md.contains("#### Per label"), labels, "{}", p.display());
                assert_eq!(md.contains("#### Phases"), phases, "{}", p.display());
                n += 1;
            }
        }
        assert!(n > 0, "no results in {}", dir.display());
    }
}
