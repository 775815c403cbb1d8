//! Telemetry: structured logs through `tracing`. JSON lines in production, readable lines
//! in development; `RUST_LOG` filters (default `info`, chatty dependencies at `warn`).
//!
//! Optionally (`OTEL_EXPORTER_OTLP_ENDPOINT` set), the same spans are also exported as
//! OpenTelemetry traces over OTLP/HTTP (protobuf, `POST <endpoint>/v1/traces`) by a batch
//! exporter that runs as a task on the tokio runtime. Unset, nothing of it is built: no
//! exporter, no task, no thread. [`Telemetry::shutdown`] flushes the last spans.
//!
//! One order is one trace: the HTTP request's span continues the caller's W3C
//! `traceparent`, and every message carries the `traceparent` of the span that caused it,
//! which the receiving side's span continues ([`adopt_parent`], [`current_traceparent`]).

pub mod trace_context;

use crate::config::{Config, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::{Resource, runtime};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Upper bound for flushing the exporter at shutdown (a collector that does not answer
/// must not hold the process).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and under which `service.name` spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExport {
    /// Collector base URL, e.g. `http://127.0.0.1:4318` (validated by `Config::validate`).
    pub endpoint: String,
    pub service_name: String,
}

impl OtlpExport {
    /// The export settings of `config`; `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset
    /// or empty.
    pub fn from_config(config: &Config) -> Option<OtlpExport> {
        config
            .otel_exporter_otlp_endpoint
            .as_ref()
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| OtlpExport {
                // Normalized (percent-encoded) the way `Config::validate` parsed it.
                endpoint: url::Url::parse(endpoint)
                    .map(String::from)
                    .unwrap_or_else(|_| endpoint.clone()),
                service_name: config.otel_service_name.clone(),
            })
    }

    /// The traces URL: the signal path appended to the base URL, as the OTLP spec says
    /// for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://host:4318/prefix` → `…/prefix/v1/traces`).
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }
}

/// What [`init_with_export`] installed; keep it until the end of `main` and call
/// [`Telemetry::shutdown`] there.
#[derive(Debug, Default)]
#[must_use = "call `shutdown` so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the spans still buffered and stops the exporter (no-op without one). Waits
    /// at most [`FLUSH_TIMEOUT`]; a failure is logged, never fatal.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK's shutdown blocks the calling thread until the export task answers; that
        // task runs on this runtime, so block a blocking-pool thread, not a worker.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown panicked"),
            Err(_) => tracing::warn!(
                timeout_secs = FLUSH_TIMEOUT.as_secs(),
                "trace exporter did not flush in time; the last spans may be lost"
            ),
        }
    }
}

/// Installs the global subscriber (logs only). Safe to call more than once (tests): later
/// calls are no-ops.
pub fn init(format: LogFormat) {
    // Without an exporter nothing can fail.
    let _ = init_with_export(format, None, None);
}

/// Installs the global subscriber from the configuration: logs, plus OTLP trace export
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Must run inside the tokio runtime.
pub fn init_from_config(
    config: &Config,
) -> Result<Telemetry, opentelemetry_otlp::ExporterBuildError> {
    init_with_export(
        config.log_format,
        OtlpExport::from_config(config).as_ref(),
        Some(config.replica_id()),
    )
}

/// Installs the global subscriber: logs in `format`, and spans exported to `export` when
/// given (the batch exporter is spawned on the current tokio runtime). If a subscriber is
/// already installed this is a no-op and no exporter is started.
/// JSON log lines name the replica (`"replica"`) when `replica` is given.
pub fn init_with_export(
    format: LogFormat,
    export: Option<&OtlpExport>,
    replica: Option<String>,
) -> Result<Telemetry, opentelemetry_otlp::ExporterBuildError> {
    if tracing::dispatcher::has_been_set() {
        // Someone else's subscriber is in place (tests): an exporter would see no span.
        return Ok(Telemetry::default());
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,lapin=warn,ractor=warn"));
    let fmt = tracing_subscriber::fmt::layer();
    let logs = match format {
        LogFormat::Json => fmt
            .with_writer(ReplicaTagged::new(replica))
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };
    let provider = export.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("order-service"))
            .with_threads(false)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed {
        if let Some(export) = export {
            tracing::info!(
                endpoint = %export.traces_url(),
                service_name = %export.service_name,
                "exporting traces (OTLP/HTTP)"
            );
        }
        Ok(Telemetry { provider })
    } else {
        // Lost a race with another subscriber. Stopping the provider blocks until its export
        // task answers, so do it off the runtime's workers.
        if let Some(provider) = provider {
            tokio::task::spawn_blocking(move || provider.shutdown());
        }
        Ok(Telemetry::default())
    }
}

/// Standard output, each JSON line starting with the replica's name: every log line of
/// several replicas says which one wrote it, without a span around every task.
struct ReplicaTagged {
    /// `{"replica":"<id>",` (JSON-escaped), or `None` to write lines as they are.
    prefix: Option<Arc<str>>,
}

impl ReplicaTagged {
    fn new(replica: Option<String>) -> ReplicaTagged {
        ReplicaTagged {
            prefix: replica.map(|id| {
                let id = serde_json::Value::String(id);
                Arc::from(format!("{{\"replica\":{id},"))
            }),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ReplicaTagged {
    type Writer = TaggedLine;

    fn make_writer(&'a self) -> TaggedLine {
        TaggedLine {
            prefix: self.prefix.clone(),
        }
    }
}

struct TaggedLine {
    prefix: Option<Arc<str>>,
}

impl std::io::Write for TaggedLine {
    /// Takes the whole buffer (the formatter hands over one event at a time), so that a
    /// partial write never splits the prefix from its line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        match (&self.prefix, buf.split_first()) {
            (Some(prefix), Some((b'{', rest))) if rest.first() != Some(&b'}') => {
                let mut line = Vec::with_capacity(prefix.len() + rest.len());
                line.extend_from_slice(prefix.as_bytes());
                line.extend_from_slice(rest);
                out.write_all(&line)?;
            }
            _ => out.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn tracer_provider(
    export: &OtlpExport,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // HTTP/protobuf with the async reqwest client; headers, timeout and compression still
    // come from the standard OTEL_EXPORTER_OTLP_* variables when set.
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(export.traces_url())
        .build()?;
    let batch = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            Resource::builder()
                .with_service_name(export.service_name.clone())
                .build(),
        )
        .build())
}

#[cfg(test)]
mod tests {
    use super::OtlpExport;

    #[test]
    fn traces_url_appends_the_signal_path() {
        let export = |endpoint: &str| OtlpExport {
            endpoint: endpoint.to_owned(),
            service_name: "order-service".to_owned(),
        };
        assert_eq!(
            export("http://127.0.0.1:4318").traces_url(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            export("http://127.0.0.1:4318/").traces_url(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            export("https://collector.example/otlp/").traces_url(),
            "https://collector.example/otlp/v1/traces"
        );
    }
}

#[cfg(test)]
mod replica_tag_tests {
    use super::*;

    #[test]
    fn the_replica_prefix_is_a_json_member() {
        let tagged = ReplicaTagged::new(Some("r\"1".into()));
        let prefix = tagged.prefix.as_deref().unwrap_or_default();
        let line = format!("{prefix}\"level\":\"INFO\"}}");
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["replica"], "r\"1");
        assert!(ReplicaTagged::new(None).prefix.is_none());
    }
}
