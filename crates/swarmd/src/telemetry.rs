//! Logging and trace export for `swarmd serve`.
//!
//! Logs go to standard error, pretty or JSON (`--log-format`), filtered by
//! `--log`. With the `otlp` feature and `[telemetry] otlp_endpoint` set,
//! tracing spans (each HTTP request, each task run, with their events and
//! request ids) are also exported over OTLP/HTTP protobuf. The export has
//! its own filter: the log level should not decide what is traced, and
//! tower-http's per-request events (status, latency) are at DEBUG.

use swarm_core::config::TelemetryConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::cli::{LogFormat, ServeArgs};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// What must outlive the server: the span exporter, flushed on
/// [`Telemetry::shutdown`].
pub(crate) struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered. Blocks (the SDK's batch processor
    /// runs on its own thread), so off the async workers.
    pub(crate) async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider {
            let done = tokio::task::spawn_blocking(move || p.shutdown()).await;
            if let Ok(Err(e)) = done {
                eprintln!("warning: flushing OTLP spans: {e}");
            }
        }
    }
}

/// Installs the global subscriber: logs, and spans to OTLP when configured.
pub(crate) fn init(args: &ServeArgs, t: &TelemetryConfig) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| format!("bad --log filter `{}`: {e}", args.log))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let logs: BoxedLayer = match args.log_format {
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    #[cfg(feature = "otlp")]
    let (provider, spans) = match &t.otlp_endpoint {
        Some(endpoint) => {
            let (provider, layer) = otlp::layer(endpoint, &t.service_name)?;
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    #[cfg(not(feature = "otlp"))]
    let spans: Option<BoxedLayer> = None;
    let layers: Vec<BoxedLayer> = std::iter::once(logs).chain(spans).collect();
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    #[cfg(feature = "otlp")]
    if let Some(endpoint) = &t.otlp_endpoint {
        tracing::info!(
            endpoint = %otlp::traces_url(endpoint),
            service = %t.service_name,
            "exporting spans over OTLP/HTTP"
        );
    }
    #[cfg(not(feature = "otlp"))]
    if let Some(endpoint) = &t.otlp_endpoint {
        tracing::warn!(
            %endpoint,
            "[telemetry] otlp_endpoint is set, but this swarmd was built without the \
             `otlp` feature: no spans are exported (build with `--features otlp`)"
        );
    }
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        provider,
    })
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::time::Duration;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::{EnvFilter, Layer};

    use super::BoxedLayer;

    /// What is exported: everything at INFO and above (the `request` and
    /// `task` spans), plus tower-http's DEBUG events on the request spans.
    const EXPORT_FILTER: &str = "info,tower_http=debug";

    /// `<endpoint>/v1/traces`, the OTLP/HTTP path for spans (given as is if
    /// the endpoint already names it).
    pub(super) fn traces_url(endpoint: &str) -> String {
        let base = endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }

    pub(super) fn layer(
        endpoint: &str,
        service_name: &str,
    ) -> Result<(SdkTracerProvider, BoxedLayer), String> {
        if endpoint.starts_with("https://") {
            // reqwest is built without TLS (see the workspace manifest).
            return Err(format!(
                "[telemetry] otlp_endpoint `{endpoint}`: https is not built in; \
                 export to an http:// collector or agent (e.g. one on this host)"
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(endpoint))
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("[telemetry] otlp_endpoint `{endpoint}`: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("swarmd"))
            .with_filter(EnvFilter::new(EXPORT_FILTER))
            .boxed();
        Ok((provider, layer))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn traces_path_is_appended_once() {
            assert_eq!(
                super::traces_url("http://c:4318"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/v1/traces"),
                "http://c:4318/v1/traces"
            );
        }
    }
}
