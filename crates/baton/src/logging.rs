//! Logs and traces: `--log-format text|json` on stderr (filtered by `BATON_LOG`, default `info`
//! for servers and `warn` otherwise), and with `--otlp-endpoint` the spans of requests (gRPC
//! call → node request, with its proposal's index and term → persist → apply → answer)
//! exported to an OpenTelemetry collector over OTLP/gRPC (filtered by `BATON_OTLP_LOG`, default
//! `debug` for Baton's crates), a `--otlp-sample-ratio` share of the traces (default 1%: every
//! trace costs the node several spans to build and export; see docs/BENCHMARKS.md).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How logs are written on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event, with the span it happened in.
    Json,
}

/// What the OTLP filter enables unless `BATON_OTLP_LOG` says otherwise.
const OTLP_DEFAULT: &str = "info,baton=debug,baton_server=debug,baton_node=debug";

/// Sets up logging (and tracing to `otlp`, if given). Must run within the tokio runtime: the
/// exporter's gRPC channel lives there. The returned provider flushes the spans still queued
/// when shut down.
pub(crate) fn init(
    format: LogFormat,
    otlp: Option<&str>,
    sample_ratio: f64,
    serving: bool,
) -> Result<Option<SdkTracerProvider>, String> {
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(format!("--otlp-sample-ratio {sample_ratio} is not within 0..=1"));
    }
    // raft-engine logs the end of a log that was not closed (every restart after a crash) as a
    // corruption; the server says what it means instead (see EngineStore::recovery), and a real
    // corruption stops it with raft-engine's message.
    let default_filter = if serving { "info,raft_engine::file_pipe_log=off" } else { "warn" };
    let filter = || EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| default_filter.into());
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let (otel, provider) = match otlp {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
            // Head sampling is the server's (obs::trace): a trace's root span is made or not,
            // and whatever is made is exported.
            baton_server::obs::trace::set_ratio(sample_ratio);
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("baton").build())
                .build();
            let filter = EnvFilter::try_from_env("BATON_OTLP_LOG").unwrap_or_else(|_| OTLP_DEFAULT.into());
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("baton")).with_filter(filter);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(provider)
}
