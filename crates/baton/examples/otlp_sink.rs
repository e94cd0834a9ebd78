//! An OTLP/gRPC trace collector that counts the spans it receives and drops them: the far end
//! of `--otlp-endpoint` for bench/observability.sh (tracing on costs what exporting costs).
//!   cargo run --release --example otlp_sink -- 127.0.0.1:4317
//! Prints the spans received so far every 10 s and on SIGTERM/SIGINT.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
    names: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut names = self.names.lock().unwrap();
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            *names.entry(span.name.clone()).or_default() += 1;
            self.spans.fetch_add(1, Ordering::Relaxed);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".to_string());
    let addr: std::net::SocketAddr = addr.parse().expect("an address like 127.0.0.1:4317");
    let sink = Sink::default();
    let spans = sink.spans.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            every.tick().await;
            println!("otlp_sink: {} spans", spans.load(Ordering::Relaxed));
        }
    });
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_shutdown(addr, stop)
        .await;
    println!("otlp_sink: {} spans: {:?}", sink.spans.load(Ordering::Relaxed), sink.names.lock().unwrap());
    if let Err(e) = served {
        eprintln!("otlp_sink: {e}");
        std::process::exit(1);
    }
}
