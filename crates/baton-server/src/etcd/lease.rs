//! etcd's Lease service. A lease is a Baton session in the keyspace's group (see
//! `baton_core::etcd::lease`): a keepalive renews that session on the group's leader without a
//! log entry, and the leader's expiry ends it, which revokes the lease and deletes its keys.

use std::pin::Pin;

use baton_core::etcd::{EtcdCommand, EtcdOutcome};
use baton_proto::etcd::etcdserverpb as pb;
use baton_proto::etcd::etcdserverpb::lease_server::Lease;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{written, Backend, EtcdAnswer, EtcdCall};
use crate::access::Need;
use baton_core::auth::Permission;

/// Keepalive answers buffered per stream before the server stops reading its requests.
const KEEPALIVE_BUFFER: usize = 64;
/// Renewals of one stream under way at once; the stream is read no further meanwhile.
const MAX_RENEWALS_IN_FLIGHT: usize = 10_000;

/// The `etcdserverpb.Lease` service.
#[derive(Clone)]
pub struct LeaseService {
    pub(crate) backend: Backend,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

impl LeaseService {
    /// Lease `id` as the keyspace's leader has it (with its keys if `keys`).
    async fn lease(&self, id: i64, keys: bool) -> Result<(i64, Option<baton_node::EtcdLeaseInfo>), Status> {
        match self.backend.call(EtcdCall::Lease { ids: vec![id], renew: false, keys }).await? {
            EtcdAnswer::Lease { revision, leases } if leases.len() == 1 => {
                Ok((revision, leases.into_iter().next().flatten()))
            }
            other => Err(Status::internal(format!("unexpected answer to a lease call: {other:?}"))),
        }
    }
}

/// Renews `id` and says what etcd says: the granted TTL, or 0 for a lease that does not exist.
async fn keep_alive_once(backend: Backend, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let (revision, ttl) = backend.renew(id).await?;
    Ok(pb::LeaseKeepAliveResponse { header: backend.header(revision), id, ttl })
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        // As in etcd: any user may hold leases; what it attaches them to is checked by its puts.
        self.backend.admit(&request, "LeaseGrant", &[])?;
        let req = request.into_inner();
        match written(
            self.backend.call(EtcdCall::Write(EtcdCommand::LeaseGrant { id: req.id, ttl_s: req.ttl })).await?,
        )? {
            EtcdOutcome::LeaseGranted { revision, id, ttl_s } => Ok(Response::new(pb::LeaseGrantResponse {
                header: self.backend.header(revision),
                id,
                ttl: ttl_s,
                error: String::new(),
            })),
            other => Err(Status::internal(format!("unexpected outcome of a lease grant: {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        // Revoking deletes the lease's keys: the write permission on each of them is needed (as
        // in etcd, judged by the keys attached now; one attached between this check and the
        // revoke is deleted too).
        let caller = self.backend.admit(&request, "LeaseRevoke", &[])?;
        let req = request.into_inner();
        if let (_, Some(lease)) = self.lease(req.id, true).await? {
            let needs: Vec<Need> = lease.keys.iter().flat_map(|k| super::auth::write_needs(k, &[], false)).collect();
            self.backend.check(&caller, "LeaseRevoke", &needs)?;
        }
        match written(self.backend.call(EtcdCall::Write(EtcdCommand::LeaseRevoke(req.id))).await?)? {
            EtcdOutcome::LeaseRevoked { revision } => {
                Ok(Response::new(pb::LeaseRevokeResponse { header: self.backend.header(revision) }))
            }
            other => Err(Status::internal(format!("unexpected outcome of a lease revoke: {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request renews one lease; renewals run concurrently (answered as they complete,
    /// which etcd's clients match by lease id) and are gathered with the node's others (see
    /// `renew`). A failure to renew (no leader within the wait) ends the stream with its status,
    /// as etcd does; clients open a new one.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.backend.admit(&request, "LeaseKeepAlive", &[])?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = requests.next(), if open && in_flight.len() < MAX_RENEWALS_IN_FLIGHT => match next {
                        Some(Ok(req)) => in_flight.push(keep_alive_once(backend.clone(), req.id)),
                        // The client closed its side (answer what is in flight) or broke the stream.
                        Some(Err(_)) => return,
                        None => open = false,
                    },
                    Some(answer) = in_flight.next() => {
                        let failed = answer.is_err();
                        if tx.send(answer).await.is_err() || failed {
                            return;
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let caller = self.backend.admit(&request, "LeaseTimeToLive", &[])?;
        let req = request.into_inner();
        let (revision, lease) = self.lease(req.id, req.keys).await?;
        // Its keys are shown only to a user that may read each of them.
        if let Some(l) = lease.as_ref().filter(|_| req.keys) {
            let needs: Vec<Need> =
                l.keys.iter().map(|k| Need::range(Permission::Read, super::auth::key_range(k, &[]))).collect();
            self.backend.check(&caller, "LeaseTimeToLive", &needs)?;
        }
        Ok(Response::new(match lease {
            Some(l) => pb::LeaseTimeToLiveResponse {
                header: self.backend.header(revision),
                id: req.id,
                ttl: l.remaining_s,
                granted_ttl: l.granted_s,
                keys: l.keys,
            },
            // etcd's answer for a lease that does not exist: TTL -1 and an empty header.
            None => pb::LeaseTimeToLiveResponse {
                header: Some(pb::ResponseHeader::default()),
                id: req.id,
                ttl: -1,
                ..Default::default()
            },
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.backend.admit(&request, "LeaseLeases", &[])?;
        match self.backend.call(EtcdCall::Leases).await? {
            EtcdAnswer::Leases { revision, ids } => Ok(Response::new(pb::LeaseLeasesResponse {
                header: self.backend.header(revision),
                leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
            })),
            other => Err(Status::internal(format!("unexpected answer to a lease list: {other:?}"))),
        }
    }
}
