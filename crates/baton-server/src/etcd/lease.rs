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

/// Keepalive answers buffered per stream before the server stops reading its requests.
const KEEPALIVE_BUFFER: usize = 64;

/// The `etcdserverpb.Lease` service.
#[derive(Clone)]
pub struct LeaseService {
    pub(crate) backend: Backend,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

impl LeaseService {
    async fn lease(
        &self,
        id: i64,
        renew: bool,
        keys: bool,
    ) -> Result<(i64, Option<baton_node::EtcdLeaseInfo>), Status> {
        match self.backend.call(EtcdCall::Lease { id, renew, keys }).await? {
            EtcdAnswer::Lease { revision, lease } => Ok((revision, lease)),
            other => Err(Status::internal(format!("unexpected answer to a lease call: {other:?}"))),
        }
    }
}

/// Renews `id` and says what etcd says: the granted TTL, or 0 for a lease that does not exist.
async fn keep_alive_once(backend: &Backend, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let service = LeaseService { backend: backend.clone() };
    let (revision, lease) = service.lease(id, true, false).await?;
    Ok(pb::LeaseKeepAliveResponse { header: backend.header(revision), id, ttl: lease.map_or(0, |l| l.granted_s) })
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
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
        let req = request.into_inner();
        match written(self.backend.call(EtcdCall::Write(EtcdCommand::LeaseRevoke(req.id))).await?)? {
            EtcdOutcome::LeaseRevoked { revision } => {
                Ok(Response::new(pb::LeaseRevokeResponse { header: self.backend.header(revision) }))
            }
            other => Err(Status::internal(format!("unexpected outcome of a lease revoke: {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request renews one lease and is answered in order. A failure to renew (no leader
    /// for a moment) ends the stream with its status, as etcd does; clients open a new one.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let backend = self.backend.clone();
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let answer = match next {
                    Ok(req) => keep_alive_once(&backend, req.id).await,
                    Err(_) => return, // the client went away
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let (revision, lease) = self.lease(req.id, false, req.keys).await?;
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
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        match self.backend.call(EtcdCall::Leases).await? {
            EtcdAnswer::Leases { revision, ids } => Ok(Response::new(pb::LeaseLeasesResponse {
                header: self.backend.header(revision),
                leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
            })),
            other => Err(Status::internal(format!("unexpected answer to a lease list: {other:?}"))),
        }
    }
}
