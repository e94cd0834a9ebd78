//! The fast path to one node: a single long-lived `Call` stream that carries every session,
//! acquire, release, cancel, counter and one-off renewal call of this client at once, instead of one HTTP/2
//! stream (headers, trailers, a server task) per call. Answers are matched by call id.
//!
//! [`Conn`] is what the retry loop hands each attempt: the node's unary gRPC client (for the
//! other calls, through `Deref`) plus its pipe, with `acquire`, `release`, ... of the same
//! signatures going through the pipe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use baton_proto::v1 as pb;
use baton_proto::v1::baton_client::BatonClient;
use pb::call_request::Op;
use pb::call_response::Result as Answer;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::LEADER_METADATA;

type Waiter = oneshot::Sender<Result<Answer, Status>>;

struct Pending {
    /// Calls sent and not yet answered.
    waiting: HashMap<u64, Waiter>,
    /// Set (with the reason) once the stream is gone; no call is accepted after that.
    broken: Option<String>,
}

/// One `Call` stream to one node.
pub(crate) struct Pipe {
    tx: mpsc::UnboundedSender<pb::CallRequest>,
    pending: Arc<Mutex<Pending>>,
    next_call: AtomicU64,
}

impl Pipe {
    /// Opens the stream in the background (calls may be queued at once).
    pub(crate) fn open(addr: &str, mut grpc: BatonClient<Channel>) -> Pipe {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(Pending { waiting: HashMap::new(), broken: None }));
        let shared = pending.clone();
        let addr = addr.to_string();
        tokio::spawn(async move {
            let mut not_sent = false;
            let reason = match grpc.call(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await {
                Ok(r) => {
                    let mut answers = r.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(a)) => {
                                let waiter = shared.lock().expect("pipe lock").waiting.remove(&a.call_id);
                                if let (Some(w), Some(result)) = (waiter, a.result) {
                                    let _ = w.send(into_result(result));
                                }
                            }
                            Ok(None) => break "ended".to_string(),
                            Err(s) => break s.message().to_string(),
                        }
                    }
                }
                Err(s) => {
                    not_sent = crate::connect_failed(&s);
                    s.message().to_string()
                }
            };
            let mut p = shared.lock().expect("pipe lock");
            // A connection that could not even be made carried nothing: say so, so that callers
            // may retry elsewhere (see `s_is_redirect`).
            let reason = if not_sent {
                format!("{} {addr} ({reason})", crate::NOT_CONNECTED)
            } else {
                format!("call stream to {addr} broke ({reason})")
            };
            for (_, w) in p.waiting.drain() {
                let _ = w.send(Err(Status::unavailable(reason.clone())));
            }
            p.broken = Some(reason);
        });
        Pipe { tx, pending, next_call: AtomicU64::new(1) }
    }

    /// Gives up on this stream: calls in flight fail as UNAVAILABLE (retryable), and the next
    /// call through the client opens a new stream.
    pub(crate) fn close(&self) {
        let mut p = self.pending.lock().expect("pipe lock");
        let reason = "call stream abandoned: no answer in time".to_string();
        for (_, w) in p.waiting.drain() {
            let _ = w.send(Err(Status::unavailable(reason.clone())));
        }
        p.broken = Some(reason);
    }

    /// False once the stream is gone: open a new pipe.
    pub(crate) fn is_open(&self) -> bool {
        self.pending.lock().expect("pipe lock").broken.is_none()
    }

    async fn call(&self, op: Op) -> Result<Answer, Status> {
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = oneshot::channel();
        {
            let mut p = self.pending.lock().expect("pipe lock");
            if let Some(reason) = &p.broken {
                return Err(Status::unavailable(reason.clone()));
            }
            p.waiting.insert(call_id, wtx);
        }
        if self.tx.send(pb::CallRequest { call_id, op: Some(op) }).is_err() {
            self.pending.lock().expect("pipe lock").waiting.remove(&call_id);
            return Err(Status::unavailable("call stream closed"));
        }
        wrx.await.unwrap_or_else(|_| Err(Status::unavailable("call stream closed")))
    }
}

/// A `CallError` back into the status a unary call would have returned.
fn into_result(result: Answer) -> Result<Answer, Status> {
    let Answer::Error(e) = result else { return Ok(result) };
    let mut status = Status::new(Code::from(e.code), e.message);
    if !e.leader.is_empty() {
        if let Ok(v) = e.leader.parse() {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    Err(status)
}

/// One attempt's connection to a node: its unary client (through `Deref`) and its pipe.
pub(crate) struct Conn {
    pub(crate) grpc: BatonClient<Channel>,
    pub(crate) pipe: Arc<Pipe>,
}

impl std::ops::Deref for Conn {
    type Target = BatonClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.grpc
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.grpc
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("the server answered a {what} call with another kind of answer"))
}

/// The piped calls, with the unary calls' signatures so that callers do not change.
macro_rules! piped {
    ($($method:ident($req:ident) -> $resp:ident via $variant:ident;)*) => {
        impl Conn {
            $(
                pub(crate) async fn $method(
                    &mut self,
                    req: pb::$req,
                ) -> Result<tonic::Response<pb::$resp>, Status> {
                    match self.pipe.call(Op::$variant(req)).await? {
                        Answer::$variant(r) => Ok(tonic::Response::new(r)),
                        _ => Err(unexpected(stringify!($method))),
                    }
                }
            )*
        }
    };
}

piped! {
    open_session(OpenSessionRequest) -> OpenSessionResponse via OpenSession;
    close_session(CloseSessionRequest) -> CloseSessionResponse via CloseSession;
    acquire(AcquireRequest) -> AcquireResponse via Acquire;
    release(ReleaseRequest) -> ReleaseResponse via Release;
    cancel(CancelRequest) -> CancelResponse via Cancel;
    counter(CounterRequest) -> CounterResponse via Counter;
    renew(KeepAliveRequest) -> KeepAliveResponse via KeepAlive;
}
