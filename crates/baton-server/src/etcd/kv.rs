//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact on the keyspace's group.

use baton_core::etcd::{EtcdCommand, EtcdOutcome};
use baton_proto::etcd::etcdserverpb as pb;
use baton_proto::etcd::etcdserverpb::kv_server::Kv;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::auth::{key_range, txn_needs, write_needs};
use super::convert;
use super::{check_size, written, Backend, EtcdAnswer, EtcdCall};
use crate::access::Need;
use baton_core::auth::Permission;

/// The `etcdserverpb.KV` service.
#[derive(Clone)]
pub struct KvService {
    pub(crate) backend: Backend,
}

impl KvService {
    async fn write(&self, command: EtcdCommand) -> Result<EtcdOutcome, Status> {
        written(self.backend.call(EtcdCall::Write(command)).await?)
    }
}

fn unexpected(o: EtcdOutcome) -> Status {
    Status::internal(format!("unexpected outcome of an etcd write: {o:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.get_ref();
        self.backend.admit(&request, "Range", &[Need::range(Permission::Read, key_range(&r.key, &r.range_end))])?;
        let req = request.into_inner();
        check_size(req.encoded_len())?;
        // A serializable range is served linearizably too: Baton has no cheaper stale path
        // through another node's replica worth the anomaly.
        match self.backend.call(EtcdCall::Range(convert::range_in(req))).await? {
            EtcdAnswer::Range { revision, response } => {
                let mut out = convert::range_out(response, revision);
                out.header = self.backend.header(revision);
                Ok(Response::new(out))
            }
            other => Err(Status::internal(format!("unexpected answer to a range: {other:?}"))),
        }
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.get_ref();
        self.backend.admit(&request, "Put", &write_needs(&r.key, &[], r.prev_kv))?;
        let req = request.into_inner();
        check_size(req.encoded_len())?;
        match self.write(EtcdCommand::Put(convert::put_in(req))).await? {
            EtcdOutcome::Put { revision, response } => {
                let mut out = convert::put_out(response, revision);
                out.header = self.backend.header(revision);
                Ok(Response::new(out))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = request.get_ref();
        self.backend.admit(&request, "DeleteRange", &write_needs(&r.key, &r.range_end, r.prev_kv))?;
        let req = request.into_inner();
        check_size(req.encoded_len())?;
        match self.write(EtcdCommand::Delete(convert::delete_in(req))).await? {
            EtcdOutcome::Delete { revision, response } => {
                let mut out = convert::delete_out(response, revision);
                out.header = self.backend.header(revision);
                Ok(Response::new(out))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.backend.admit(&request, "Txn", &[])?;
        let req = request.into_inner();
        check_size(req.encoded_len())?;
        let txn = convert::txn_in(req);
        self.backend.check(&caller, "Txn", &txn_needs(&txn))?;
        match self.write(EtcdCommand::Txn(txn)).await? {
            EtcdOutcome::Txn { revision, response } => {
                let mut out = convert::txn_out(response, revision);
                out.header = self.backend.header(revision);
                Ok(Response::new(out))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        self.backend.admit(&request, "Compact", &[Need::everything(Permission::Admin)])?;
        let req = request.into_inner();
        // `physical` asks to wait until the compaction is on disk: it is, once applied.
        match self.write(EtcdCommand::Compact(req.revision)).await? {
            EtcdOutcome::Compacted { revision } => {
                Ok(Response::new(pb::CompactionResponse { header: self.backend.header(revision) }))
            }
            other => Err(unexpected(other)),
        }
    }
}
