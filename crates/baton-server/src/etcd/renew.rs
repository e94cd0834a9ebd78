//! Lease keepalives, gathered: every keepalive stream of this node hands its renewals to one
//! queue, and one call at a time renews all that waited (a few milliseconds' worth) on the
//! keyspace's leader, in one read round there. A renewal costs its share of one forwarded call
//! and one confirmation of leadership, not one each: etcd's clients send one message per lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::Status;

use super::{Backend, EtcdAnswer, EtcdCall};

/// How long renewals gather before they are sent together.
const GATHER: Duration = Duration::from_millis(5);
/// Most renewals in one call.
const MAX_BATCH: usize = 10_000;

type Waiter = oneshot::Sender<Result<(i64, i64), Status>>;

/// The node's queue of renewals waiting to be sent.
#[derive(Default)]
pub struct Renewals {
    pending: Mutex<Vec<(i64, Waiter)>>,
    /// A task is sending the queue's renewals.
    sending: AtomicBool,
}

impl Backend {
    /// Renews lease `id`: the keyspace's revision and the lease's granted TTL (0: no such
    /// lease, as etcd answers).
    pub async fn renew(&self, id: i64) -> Result<(i64, i64), Status> {
        let (tx, rx) = oneshot::channel();
        self.renewals.pending.lock().expect("renewals lock").push((id, tx));
        if !self.renewals.sending.swap(true, Ordering::AcqRel) {
            tokio::spawn(send_renewals(self.clone()));
        }
        rx.await.map_err(|_| crate::status::stopped())?
    }
}

async fn send_renewals(backend: Backend) {
    let queue = &backend.renewals;
    loop {
        tokio::time::sleep(GATHER).await;
        let batch: Vec<(i64, Waiter)> = {
            let mut pending = queue.pending.lock().expect("renewals lock");
            let n = pending.len().min(MAX_BATCH);
            pending.drain(..n).collect()
        };
        if batch.is_empty() {
            queue.sending.store(false, Ordering::Release);
            // A renewal queued after the drain, whose caller saw this task still sending, would
            // wait for nobody: take it on unless another task already did.
            let stranded = !queue.pending.lock().expect("renewals lock").is_empty();
            if stranded && !queue.sending.swap(true, Ordering::AcqRel) {
                continue;
            }
            return;
        }
        let ids = batch.iter().map(|(id, _)| *id).collect();
        match backend.call(EtcdCall::Lease { ids, renew: true, keys: false }).await {
            Ok(EtcdAnswer::Lease { revision, leases }) if leases.len() == batch.len() => {
                for ((_, tx), lease) in batch.into_iter().zip(leases) {
                    let _ = tx.send(Ok((revision, lease.map_or(0, |l| l.granted_s))));
                }
            }
            Ok(other) => {
                let status = Status::internal(format!("unexpected answer to a renewal: {other:?}"));
                batch.into_iter().for_each(|(_, tx)| drop(tx.send(Err(status.clone()))));
            }
            Err(status) => batch.into_iter().for_each(|(_, tx)| drop(tx.send(Err(status.clone())))),
        }
    }
}
