//! The fast path to one node: a single long-lived `Call` stream that carries every session,
//! acquire, release, cancel, counter and one-off renewal call of this client at once, instead of one HTTP/2
//! stream (headers, trailers, a server task) per call. Answers are matched by call id.
//!
//! A call whose caller stops waiting (its attempt timed out) is forgotten alone: the stream and
//! every other call on it go on. The stream is given up only when it breaks, or when the node
//! does not accept it within [`OPEN_TIMEOUT`]; a call still queued then fails as not sent (it
//! may go elsewhere), one already handed to the transport as unanswered (it may have applied).
//!
//! [`Conn`] is what the retry loop hands each attempt: the node's unary gRPC client (for the
//! other calls, through `Deref`) plus its pipe, with `acquire`, `release`, ... of the same
//! signatures going through the pipe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::v1 as pb;
use futures::StreamExt;
use pb::call_request::Op;
use pb::call_response::Result as Answer;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::retry::AttemptError;

/// How long the server may take to accept a new stream (it does so at once when it runs): a
/// node that does not is stopped or hung, and the stream is given up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

struct Waiter {
    answer: oneshot::Sender<Result<Answer, AttemptError>>,
    /// Handed to the transport: the server may have received it.
    sent: bool,
}

struct Pending {
    /// Calls queued or sent and not yet answered.
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
    pub(crate) fn open(addr: &str, mut grpc: crate::routing::Grpc) -> Pipe {
        let (tx, rx) = mpsc::unbounded_channel::<pb::CallRequest>();
        let pending = Arc::new(Mutex::new(Pending { waiting: HashMap::new(), broken: None }));
        let shared = pending.clone();
        // Marks each call as sent when the transport takes it: a call still queued when the
        // stream fails certainly never reached the server, and may go elsewhere. A call the
        // failure already answered "not sent" (or whose caller went away) is never handed to
        // the transport afterwards, even if the stream is still being torn down: it may be
        // on its way to another node by then (found by review).
        let marks = pending.clone();
        let take = move |req: pb::CallRequest| {
            let mut p = marks.lock().expect("pipe lock");
            if p.broken.is_some() {
                return None;
            }
            let w = p.waiting.get_mut(&req.call_id)?;
            w.sent = true;
            Some(req)
        };
        let outgoing = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .filter_map(move |req| std::future::ready(take(req)));
        let addr = addr.to_string();
        tokio::spawn(async move {
            // The server's own refusal of the stream (not authenticated, say): each call gets it
            // as the answer a unary call would have had, judged the same way by the retries
            // (found by the CLI's denial test: taken as "not sent", calls were retried for their
            // whole timeout).
            let mut refusal = None;
            let (reason, nothing_sent) = match tokio::time::timeout(OPEN_TIMEOUT, grpc.call(outgoing)).await {
                Err(_) => (format!("the node did not accept the stream within {OPEN_TIMEOUT:?}"), false),
                // The server refused the stream, or no connection could be made: no call of it
                // was processed.
                Ok(Err(s)) => match AttemptError::from(s) {
                    AttemptError::NoAnswer(why) => (why, false),
                    AttemptError::NotSent(why) => (why, true),
                    AttemptError::Answered(s) => {
                        let reason = format!("{}: {}", s.code(), s.message());
                        refusal = Some(s);
                        (reason, true)
                    }
                },
                Ok(Ok(r)) => {
                    let mut answers = r.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(a)) => {
                                let waiter = shared.lock().expect("pipe lock").waiting.remove(&a.call_id);
                                if let (Some(w), Some(result)) = (waiter, a.result) {
                                    let _ = w.answer.send(into_result(result));
                                }
                            }
                            Ok(None) => break ("the stream ended".to_string(), false),
                            Err(s) => break (format!("{}: {}", s.code(), s.message()), false),
                        }
                    }
                }
            };
            let mut p = shared.lock().expect("pipe lock");
            for (_, w) in p.waiting.drain() {
                let e = if let Some(s) = &refusal {
                    AttemptError::Answered(s.clone())
                } else if nothing_sent || !w.sent {
                    AttemptError::NotSent(format!("call stream to {addr} failed before the call was sent ({reason})"))
                } else {
                    AttemptError::NoAnswer(format!("call stream to {addr} broke with the call in flight ({reason})"))
                };
                let _ = w.answer.send(Err(e));
            }
            p.broken = Some(reason);
        });
        Pipe { tx, pending, next_call: AtomicU64::new(1) }
    }

    /// False once the stream is gone: open a new pipe.
    pub(crate) fn is_open(&self) -> bool {
        self.pending.lock().expect("pipe lock").broken.is_none()
    }

    async fn call(&self, op: Op) -> Result<Answer, AttemptError> {
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = oneshot::channel();
        {
            let mut p = self.pending.lock().expect("pipe lock");
            if let Some(reason) = &p.broken {
                return Err(AttemptError::NotSent(format!("call stream closed ({reason})")));
            }
            p.waiting.insert(call_id, Waiter { answer: wtx, sent: false });
        }
        // A caller that stops waiting (its attempt timed out) takes only its own entry away.
        let _forget = Forget { pending: &self.pending, call_id };
        if self.tx.send(pb::CallRequest { call_id, op: Some(op) }).is_err() {
            return Err(AttemptError::NotSent("call stream closed".into()));
        }
        wrx.await.unwrap_or_else(|_| Err(AttemptError::NoAnswer("call stream closed with the call in flight".into())))
    }
}

/// Removes a call's entry when its caller goes away (answered entries are already gone).
struct Forget<'a> {
    pending: &'a Mutex<Pending>,
    call_id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pipe lock").waiting.remove(&self.call_id);
    }
}

/// A `CallError` back into the status a unary call would have returned, typed detail included.
fn into_result(result: Answer) -> Result<Answer, AttemptError> {
    let Answer::Error(e) = result else { return Ok(result) };
    let mut status = Status::new(Code::from(e.code), e.message);
    if let Some(info) = e.info {
        info.attach(&mut status);
    }
    Err(AttemptError::Answered(status))
}

/// One attempt's connection to a node: its unary client (through `Deref`) and its pipe.
pub(crate) struct Conn {
    pub(crate) grpc: crate::routing::Grpc,
    pub(crate) pipe: Arc<Pipe>,
}

impl std::ops::Deref for Conn {
    type Target = crate::routing::Grpc;
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
                ) -> Result<tonic::Response<pb::$resp>, AttemptError> {
                    match self.pipe.call(Op::$variant(req)).await? {
                        Answer::$variant(r) => Ok(tonic::Response::new(r)),
                        _ => Err(AttemptError::Answered(unexpected(stringify!($method)))),
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
    attach_session(AttachSessionRequest) -> OpenSessionResponse via AttachSession;
    crdt(CrdtRequest) -> CrdtResponse via Crdt;
}
