//! Logging and trace export: the `tracing` layers the binary installs, and the OpenTelemetry
//! pipeline that sends spans to an OTLP/HTTP receiver when `[telemetry] otlp_endpoint` is set.
//!
//! # Design
//! The gateway's spans (see [`gateway_core::trace`]) are ordinary `tracing` spans on two targets:
//! `portcullis::session` (one per connection) and `portcullis::trace` (per statement). Two
//! layers, each with its own filter (tracing-subscriber's per-layer filtering), sit on one
//! registry:
//! - the log layer (stderr) with the user's filter ([`log_filter`]), which never enables
//!   `portcullis::trace` unless the filter names it: with the default configuration the
//!   per-statement callsites are disabled for good and cost a cached interest check;
//! - the export layer ([`Telemetry::layer`], present only when export is configured), a
//!   `tracing-opentelemetry` layer that takes only the two gateway targets, so nothing else
//!   (including the exporter's own HTTP client) is ever exported.
//!
//! A [`Telemetry`] owns the OpenTelemetry tracer provider: an OTLP/HTTP protobuf exporter behind a
//! batch span processor that runs on the tokio runtime, a parent-based ratio sampler, and the
//! resource (`service.name`, `service.instance.id` = the gateway node). It is process-level by
//! nature (spans reach whichever subscriber is current where they are created), so it is not
//! built inside [`crate::Server::start`]: whoever installs the subscriber builds it
//! ([`Telemetry::start`], inside the runtime), installs [`Telemetry::layer`], and hands a clone to
//! [`crate::Server::start_with_telemetry`], whose graceful [`crate::RunningServer::shutdown`]
//! flushes and shuts it down once every session (and so every span) has ended. The binary does
//! exactly that in `main.rs`; a test installs the layer as its process's global subscriber (its
//! own test binary, `tests/telemetry.rs`) and does the same.
//!
//! Export never affects statements: spans are queued without waiting, a full queue drops spans,
//! and failed exports are logged (the first at once, then at most once a minute with counts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gateway_core::trace::{SESSION_TARGET, TARGET};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::{ParseError, Targets};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetrySettings;

/// Name of the tracer (the OpenTelemetry instrumentation scope) the gateway's spans come from.
const SCOPE: &str = "portcullis";

/// After a reported export failure, further failures are summed up at most this often.
const FAILURE_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The log filter for `directives` (the configured `log_level`, or `RUST_LOG`): the directives
/// as written, plus `portcullis::trace=off` unless they name that target themselves. The
/// per-statement spans exist for trace export; a log filter enables them only when asked to
/// explicitly (e.g. `info,portcullis::trace=info`).
pub fn log_filter(directives: &str) -> Result<EnvFilter, ParseError> {
    let mut all: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let off = format!("{TARGET}=off");
    if !directives.contains(TARGET) {
        all.push(&off);
    }
    EnvFilter::try_new(all.join(","))
}

/// A running trace export pipeline. Cheap to clone (clones share the pipeline).
#[derive(Clone, Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    endpoint: Arc<str>,
}

impl Telemetry {
    /// Builds the pipeline for `settings` (an OTLP/HTTP protobuf exporter, batched) with
    /// `service.instance.id = node`. Must be called inside a tokio runtime: the batch processor
    /// runs as a task on it. Nothing is sent until spans end; an unreachable receiver is not an
    /// error here (failed exports are logged as they happen).
    pub fn start(settings: &TelemetrySettings, node: &str) -> anyhow::Result<Telemetry> {
        // The exporter URL-decodes header values; escape `%` so values arrive as written.
        let headers: HashMap<String, String> = settings
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.replace('%', "%25")))
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.otlp_endpoint.clone())
            .with_headers(headers)
            .build()
            .with_context(|| {
                format!(
                    "cannot set up trace export to {} ([telemetry])",
                    settings.otlp_endpoint
                )
            })?;
        let endpoint: Arc<str> = Arc::from(settings.otlp_endpoint.as_str());
        let exporter = ReportingExporter {
            inner: exporter,
            endpoint: Arc::clone(&endpoint),
            health: Mutex::new(ExportHealth::default()),
        };
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        // `Resource::builder` also reads OTEL_RESOURCE_ATTRIBUTES; the configured values win.
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.instance.id", node.to_owned()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Telemetry { provider, endpoint })
    }

    /// The `tracing` layer that feeds this pipeline, filtered to the gateway's session and
    /// statement spans. Install it in the subscriber the gateway runs under (see the module
    /// docs).
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer(SCOPE);
        let targets = Targets::new()
            .with_target(TARGET, tracing::Level::INFO)
            .with_target(SESSION_TARGET, tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Attributes are the spans' own fields; source locations, thread names, targets,
            // busy/idle timing and context activation would cost on every span for little use.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(targets)
    }

    /// The OTLP/HTTP URL spans are sent to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports every span that has ended and stops the pipeline; spans ending later are dropped.
    /// Waits for the last export (bounded by the exporter's timeout). Calling it again does
    /// nothing.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        // The SDK blocks the calling thread until its batch task (on this runtime) has exported;
        // off the async workers, so that task can run even on a single-threaded runtime.
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match result {
            Ok(Ok(())) => tracing::debug!(endpoint = %self.endpoint, "trace export stopped"),
            Ok(Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown)) => {}
            Ok(Err(e)) => tracing::warn!(
                endpoint = %self.endpoint,
                error = %e,
                "trace export did not stop cleanly; the last spans may be lost"
            ),
            Err(e) => tracing::warn!(
                endpoint = %self.endpoint,
                error = %e,
                "trace export shutdown failed"
            ),
        }
    }
}

/// Wraps the OTLP exporter to log failed exports without flooding the log: the first failure at
/// once, then a summary at most every [`FAILURE_REPORT_INTERVAL`], and a line when export works
/// again.
#[derive(Debug)]
struct ReportingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: Arc<str>,
    health: Mutex<ExportHealth>,
}

#[derive(Debug, Default)]
struct ExportHealth {
    /// When a failure was last logged; `None` while exports succeed.
    last_report: Option<Instant>,
    /// Failed exports since then, and the spans they carried.
    failures: u64,
    spans_lost: u64,
}

impl ReportingExporter {
    fn report(&self, result: &OTelSdkResult, spans: usize) {
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        match result {
            Ok(()) => {
                if health.last_report.is_some() {
                    let (failures, spans_lost) = (health.failures, health.spans_lost);
                    *health = ExportHealth::default();
                    tracing::info!(
                        target: "portcullis::telemetry",
                        endpoint = %self.endpoint,
                        failed_exports = failures,
                        spans_lost,
                        "trace export works again"
                    );
                }
            }
            Err(e) => {
                health.failures += 1;
                health.spans_lost += spans as u64;
                let due = health
                    .last_report
                    .is_none_or(|at| at.elapsed() >= FAILURE_REPORT_INTERVAL);
                if due {
                    tracing::warn!(
                        target: "portcullis::telemetry",
                        endpoint = %self.endpoint,
                        error = %e,
                        failed_exports = health.failures,
                        spans_lost = health.spans_lost,
                        "trace export failed; statements are not affected (further failures are summed up once a minute)"
                    );
                    health.last_report = Some(Instant::now());
                    health.failures = 0;
                    health.spans_lost = 0;
                }
            }
        }
    }
}

impl SpanExporter for ReportingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.report(&result, spans);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_keeps_statement_spans_off_unless_named() {
        let f = log_filter("info").unwrap().to_string();
        assert!(f.contains("portcullis::trace=off"), "{f}");
        let f = log_filter("").unwrap().to_string();
        assert!(f.contains("portcullis::trace=off"), "{f}");
        let f = log_filter("info,portcullis::trace=info")
            .unwrap()
            .to_string();
        assert!(!f.contains("portcullis::trace=off"), "{f}");
        assert!(log_filter("info,[[").is_err());
    }
}
