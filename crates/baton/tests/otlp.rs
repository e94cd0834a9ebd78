//! Tracing: `baton dev --otlp-endpoint` exports the spans of a request to an OTLP/gRPC collector
//! (a real one's API: here a tonic server of OpenTelemetry's own generated `TraceService`).
//! An acquire must arrive as a `node.request` span (op, group, the client's request id) whose
//! parent is the call's span on the client's `Call` stream, carrying the proposal's index and term and its answer, next to
//! the rounds' `raft.rounds` spans (with what they applied) and `raft.persist` spans.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::Client;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

mod common;

use common::{free_ports, wait_for_line, Proc, BATON};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_is_traced_from_the_grpc_call_to_its_answer() {
    let ports = free_ports(2);
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", ports[1])).await.unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", ports[0]);
    let mut dev = Proc(
        Command::new(BATON)
            .args(["dev", "--data", dir.path().join("data").to_str().unwrap(), "--client-addr", &addr])
            .args(["--no-etcd", "--no-http", "--otlp-endpoint", &format!("http://127.0.0.1:{}", ports[1])])
            .args(["--otlp-sample-ratio", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut dev.0, "serving clients");
    let client = Client::connect([addr.clone()]).await.unwrap();
    let session = client.session(Duration::from_secs(10)).await.unwrap();
    let guard = session.lock("traced", None).await.unwrap().unwrap();
    guard.release().await.unwrap();

    // The batch exporter sends every few seconds: wait for the acquire's span and its parent
    // (which ends after it, so it may come in a later batch).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (request, spans) = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let found = spans.iter().find(|s| {
            s.name == "node.request" && attrs(&s.attributes).get("op").map(String::as_str) == Some("acquire")
        });
        if let Some(s) = found.filter(|s| spans.iter().any(|p| p.span_id == s.parent_span_id)) {
            break (s.clone(), spans);
        }
        assert!(
            Instant::now() < deadline,
            "no acquire span with its parent arrived; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a = attrs(&request.attributes);
    assert_eq!(a.get("node").map(String::as_str), Some("1"), "{a:?}");
    assert!(a.get("client_request").is_some_and(|r| r != "0"), "the client's request id: {a:?}");
    assert!(a.get("group").is_some_and(|g| g != "0"), "a data group: {a:?}");
    // Its parent: the call on the client's `Call` stream (the fast path the client uses).
    let parent = spans.iter().find(|s| s.span_id == request.parent_span_id).unwrap();
    assert_eq!(parent.name, "call");
    let p = attrs(&parent.attributes);
    assert_eq!(p.get("op").map(String::as_str), Some("acquire"), "{p:?}");
    assert!(p.contains_key("call_id"), "{p:?}");
    assert_eq!(parent.trace_id, request.trace_id);
    // Regression: calls ran inside their stream's span, so a sampled stream (a client's, for its
    // whole life) had every call traced. A call is a trace of its own.
    assert!(parent.parent_span_id.is_empty(), "the call span has a parent");
    // Its story: proposed at an index and term, then answered with the grant.
    let events: Vec<(String, BTreeMap<String, String>)> = request
        .events
        .iter()
        .map(|e| (attrs(&e.attributes).get("message").cloned().unwrap_or(e.name.clone()), attrs(&e.attributes)))
        .collect();
    let proposed =
        events.iter().find(|(m, _)| m == "proposed").unwrap_or_else(|| panic!("no proposed event: {events:?}"));
    assert!(proposed.1.get("index").is_some_and(|i| i.parse::<u64>().unwrap() > 0), "{events:?}");
    assert!(proposed.1.get("term").is_some_and(|t| t.parse::<u64>().unwrap() > 0), "{events:?}");
    assert!(events.iter().any(|(m, _)| m == "acquire answered"), "{events:?}");
    assert!(request.end_time_unix_nano > request.start_time_unix_nano);
    for round in ["raft.rounds", "raft.persist"] {
        assert!(spans.iter().any(|s| s.name == round), "no {round} span");
    }
    let applying = spans
        .iter()
        .filter(|s| s.name == "raft.rounds")
        .flat_map(|s| &s.events)
        .any(|e| attrs(&e.attributes).get("message").unwrap_or(&e.name) == "applying");
    assert!(applying, "a round's span tells which entries it applied");
    drop(dev);
    serving.abort();
}

/// `--log-format json`: every line on stderr is one JSON object with a level and a message.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut dev = Proc(
        Command::new(BATON)
            .args(["dev", "--data", dir.path().join("data").to_str().unwrap(), "--client-addr", &addr])
            .args(["--no-etcd", "--no-http", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = std::io::BufReader::new(dev.0.stderr.take().unwrap()).lines();
    let mut started = false;
    for line in lines.take(50) {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
        if v["fields"]["message"] == "baton node started" {
            assert_eq!(v["fields"]["client_addr"], addr.as_str(), "{line}");
            started = true;
            break;
        }
    }
    assert!(started, "no start line");
}
