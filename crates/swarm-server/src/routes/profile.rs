//! `GET /debug/pprof/profile?seconds=N&format=svg|pprof`: a CPU profile of
//! this process, admin only.
//!
//! pprof-rs samples every thread at 99 Hz from `SIGPROF`
//! (`setitimer(ITIMER_PROF)`), which is process-wide: there can be only one
//! profile at a time, so a second request gets `409 profile_in_progress`.
//! Starting the profiler and building the report (symbolisation) block for
//! tens of milliseconds, so both run on the blocking pool; the wait between
//! them is a `tokio::time::sleep`. The profile runs in a task of its own, so
//! a client that hangs up cannot leave the profiler running: it ends on time
//! (or at shutdown, with what it has) and releases the slot either way.
//!
//! `format=svg` (default) answers a flame graph (`image/svg+xml`);
//! `format=pprof` the pprof protobuf, uncompressed
//! (`application/octet-stream`; `go tool pprof` reads it as it is).
//! Built without the `pprof` feature, the route answers `501 not_built`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use swarm_core::FieldError;

use crate::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::routes::doc::{AdminErrors, ErrorBody, TenantHeader};

const DEFAULT_SECONDS: u64 = 10;
const MAX_SECONDS: u64 = 60;

/// `format=`: also spelled `flamegraph` (svg) and `proto` (pprof).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
enum Format {
    Svg,
    Pprof,
}

#[derive(Debug, PartialEq, Eq)]
struct Params {
    seconds: u64,
    format: Format,
}

fn parse(params: &HashMap<String, String>) -> Result<Params, FieldError> {
    let seconds = match params.get("seconds") {
        None => DEFAULT_SECONDS,
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=MAX_SECONDS).contains(s))
            .ok_or_else(|| {
                FieldError::invalid("seconds", format!("`seconds` must be 1-{MAX_SECONDS}"))
            })?,
    };
    let format = match params.get("format").map(String::as_str) {
        None | Some("svg" | "flamegraph") => Format::Svg,
        Some("pprof" | "proto") => Format::Pprof,
        Some(_) => {
            return Err(FieldError::invalid(
                "format",
                "`format` must be `svg` (a flame graph) or `pprof` (protobuf)",
            ));
        }
    };
    Ok(Params { seconds, format })
}

/// `GET /debug/pprof/profile`.
#[utoipa::path(
    get,
    path = "/debug/pprof/profile",
    operation_id = "cpu_profile",
    tag = "system",
    security(("bearer" = [])),
    params(
        ("seconds" = Option<u64>, Query, minimum = 1, maximum = 60, description = "How long to sample (default 10)."),
        ("format" = Option<Format>, Query, description = "`svg` (a flame graph, default) or `pprof` (protobuf)."),
        TenantHeader,
    ),
    responses(
        (status = 200, description = "The profile.", content(
            ("image/svg+xml"),
            ("application/octet-stream"),
        )),
        (status = 409, description = "Another profile is being taken (`profile_in_progress`).", body = ErrorBody),
        (status = 500, description = "The profiler failed (`profile_failed`).", body = ErrorBody),
        (status = 501, description = "Built without the `pprof` feature (`not_built`).", body = ErrorBody),
        AdminErrors,
    )
)]
pub(crate) async fn profile(
    State(app): State<AppState>,
    admin: Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let r = match parse(&params) {
        Ok(params) => imp::run(app, params).await,
        Err(e) => Err(e.into()),
    };
    admin.audit("profile", "the process", &r);
    r
}

#[cfg(not(feature = "pprof"))]
mod imp {
    use axum::http::StatusCode;
    use axum::response::Response;

    use super::Params;
    use crate::AppState;
    use crate::error::ApiError;

    pub(super) async fn run(_app: AppState, _params: Params) -> Result<Response, ApiError> {
        Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_built",
            "this swarmd was built without the `pprof` feature",
        ))
    }
}

#[cfg(feature = "pprof")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use pprof::protos::Message;
    use tracing::info;

    use super::{Format, Params};
    use crate::AppState;
    use crate::error::ApiError;

    /// Sampling rate. 99 rather than 100 Hz so samples do not fall in
    /// lockstep with work driven by 10 ms timers.
    const FREQUENCY_HZ: i32 = 99;

    /// The profiler is process-wide (one `SIGPROF` timer), so the slot is too,
    /// even with several servers in one process (tests).
    static BUSY: AtomicBool = AtomicBool::new(false);

    /// Frees the slot when the profile task ends, however it ends.
    struct Slot;

    impl Drop for Slot {
        fn drop(&mut self) {
            BUSY.store(false, Ordering::Release);
        }
    }

    fn failed(what: &str, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "profile_failed",
            format!("{what}: {e}"),
        )
    }

    pub(super) async fn run(app: AppState, params: Params) -> Result<Response, ApiError> {
        if BUSY
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "profile_in_progress",
                "a CPU profile is already being taken; retry when it ends",
            ));
        }
        let slot = Slot;
        let closing = app.closing.clone();
        let Params { seconds, format } = params;
        info!(seconds, ?format, "CPU profile started");
        let job = tokio::spawn(async move {
            let _slot = slot;
            let guard = tokio::task::spawn_blocking(|| {
                pprof::ProfilerGuardBuilder::default()
                    .frequency(FREQUENCY_HZ)
                    // Unwinding from a signal inside these can deadlock
                    // (pprof-rs's own advice).
                    .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                    .build()
            })
            .await
            .map_err(|e| failed("starting the profiler", e))?
            .map_err(|e| failed("starting the profiler", e))?;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                // Shutdown: answer with what was sampled so far.
                () = closing.cancelled() => {}
            }
            tokio::task::spawn_blocking(move || {
                let report = guard.report().build();
                drop(guard);
                encode(
                    &report.map_err(|e| failed("building the report", e))?,
                    format,
                    seconds,
                )
            })
            .await
            .map_err(|e| failed("building the report", e))?
        });
        let body = job.await.map_err(|e| failed("the profile task", e))??;
        info!(bytes = body.len(), "CPU profile done");
        let (content_type, disposition) = match format {
            Format::Svg => ("image/svg+xml", "inline; filename=\"swarmd-cpu.svg\""),
            Format::Pprof => (
                "application/octet-stream",
                "attachment; filename=\"swarmd-cpu.pb\"",
            ),
        };
        Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static(disposition),
                ),
            ],
            body,
        )
            .into_response())
    }

    fn encode(report: &pprof::Report, format: Format, seconds: u64) -> Result<Vec<u8>, ApiError> {
        match format {
            Format::Pprof => Ok(report
                .pprof()
                .map_err(|e| failed("encoding the profile", e))?
                .encode_to_vec()),
            Format::Svg => {
                let mut svg = Vec::new();
                let mut opts = pprof::flamegraph::Options::default();
                opts.title = format!("swarmd CPU, {seconds} s at {FREQUENCY_HZ} Hz");
                report
                    .flamegraph_with_options(&mut svg, &mut opts)
                    .map_err(|e| failed("drawing the flame graph", e))?;
                if svg.is_empty() {
                    // pprof-rs writes nothing when no sample was taken (an
                    // idle process); an image that says so beats an empty body.
                    svg = no_samples_svg(seconds).into_bytes();
                }
                Ok(svg)
            }
        }
    }

    fn no_samples_svg(seconds: u64) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
             <text x=\"10\" y=\"25\">swarmd CPU: no samples in {seconds} s (the process was idle)</text></svg>"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Result<Params, FieldError> {
        parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn params_default_and_bounds() {
        assert_eq!(
            p(&[]).unwrap(),
            Params {
                seconds: 10,
                format: Format::Svg
            }
        );
        assert_eq!(
            p(&[("seconds", "60"), ("format", "pprof")]).unwrap(),
            Params {
                seconds: 60,
                format: Format::Pprof
            }
        );
        assert_eq!(p(&[("seconds", "1")]).unwrap().seconds, 1);
        for bad in ["0", "61", "-1", "1.5", "ten", ""] {
            let e = p(&[("seconds", bad)]).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("seconds"), "{bad}");
        }
        let e = p(&[("format", "png")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("format"));
    }
}
