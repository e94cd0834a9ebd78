//! etcd's Cluster and Maintenance services: the members as Baton's topology has them, and each
//! node's own status of the keyspace's group. Membership changes go through `baton cluster`
//! (they move Raft groups, not one log), so MemberAdd and MemberRemove say so.

use baton_core::topology::ETCD_GROUP;
use baton_node::GroupStatus;
use baton_proto::etcd::etcdserverpb as pb;
use baton_proto::etcd::etcdserverpb::cluster_server::Cluster;
use baton_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use baton_core::etcd::{Alarm, EtcdCommand, EtcdOutcome};

use super::{cluster_id, written, Backend, EtcdAnswer, EtcdCall, ETCD_API_VERSION};
use crate::runtime::Input;

/// The `etcdserverpb.Cluster` service.
#[derive(Clone)]
pub struct ClusterService {
    pub(crate) backend: Backend,
}

/// The `etcdserverpb.Maintenance` service.
#[derive(Clone)]
pub struct MaintenanceService {
    pub(crate) backend: Backend,
}

/// `addr` as a URL: `https` when the port runs TLS (every node is assumed to run it as this
/// one does).
fn url(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{}://{addr}", if tls { "https" } else { "http" })
    }
}

impl Backend {
    /// The members as etcd lists them: every node of the topology, its peer URL, and its etcd
    /// API URL if it serves one.
    fn members(&self) -> Vec<pb::Member> {
        let view = self.node.view.lock().expect("view lock");
        let ids: Vec<u64> = if view.topology.nodes.is_empty() {
            view.peer_addrs.keys().copied().collect()
        } else {
            view.topology.nodes.keys().copied().collect()
        };
        ids.into_iter()
            .map(|id| pb::Member {
                id,
                name: format!("baton-{id}"),
                peer_ur_ls: view.peer_addrs.get(&id).map(|a| url(a, view.tls.1)).into_iter().collect(),
                client_ur_ls: view.etcd_addrs.get(&id).map(|a| url(a, view.tls.0)).into_iter().collect(),
                is_learner: false,
            })
            .collect()
    }

    /// This node's status of the keyspace's group (`None`: it holds no replica of it).
    async fn etcd_group_status(&self) -> Result<Option<GroupStatus>, Status> {
        let (tx, rx) = oneshot::channel();
        if !self.node.send(Input::Status { tx }) {
            return Err(crate::status::stopped());
        }
        let groups = rx.await.map_err(|_| crate::status::stopped())?;
        Ok(groups.into_iter().find(|g| g.id == ETCD_GROUP))
    }
}

fn alarm_type(a: Alarm) -> pb::AlarmType {
    match a {
        Alarm::NoSpace => pb::AlarmType::Nospace,
        Alarm::Corrupt => pb::AlarmType::Corrupt,
    }
}

fn membership_elsewhere(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not served on Baton's etcd API: members are added and removed with `baton cluster \
         add-node` / `remove-node` (they carry many Raft groups, not one)"
    ))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(membership_elsewhere("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(membership_elsewhere("MemberRemove"))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.backend.admit(&request, "MemberList", &[])?;
        // etcd's member list header carries no revision.
        let header = self.backend.header(0);
        Ok(Response::new(pb::MemberListResponse { header, members: self.backend.members() }))
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// GET lists the raised alarms; ACTIVATE raises one for a member; DEACTIVATE (etcdctl's
    /// `alarm disarm`) clears one, for every member if the member id is 0. Raising and clearing
    /// go through the log: every replica agrees on which writes NOSPACE refuses.
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let changes = request.get_ref().action != AlarmAction::Get as i32;
        let admin = crate::access::Need::everything(baton_core::auth::Permission::Admin);
        self.backend.admit(&request, "Alarm", if changes { std::slice::from_ref(&admin) } else { &[] })?;
        let req = request.into_inner();
        let action = AlarmAction::try_from(req.action)
            .map_err(|_| Status::invalid_argument(format!("unknown alarm action {}", req.action)))?;
        let alarm = match pb::AlarmType::try_from(req.alarm) {
            Ok(pb::AlarmType::Nospace) => Some(Alarm::NoSpace),
            Ok(pb::AlarmType::Corrupt) => Some(Alarm::Corrupt),
            Ok(pb::AlarmType::None) => None,
            Err(_) => return Err(Status::invalid_argument(format!("unknown alarm type {}", req.alarm))),
        };
        let (revision, alarms) = match (action, alarm) {
            (AlarmAction::Get, _) | (_, None) => match self.backend.call(EtcdCall::Alarms).await? {
                EtcdAnswer::Alarms { revision, alarms } => (revision, alarms),
                other => return Err(Status::internal(format!("unexpected answer to an alarm list: {other:?}"))),
            },
            (action, Some(alarm)) => {
                let activate = action == AlarmAction::Activate;
                let command = EtcdCommand::Alarm { activate, member: req.member_id, alarm };
                match written(self.backend.call(EtcdCall::Write(command)).await?)? {
                    EtcdOutcome::Alarms { revision, alarms } => (revision, alarms),
                    other => return Err(Status::internal(format!("unexpected outcome of an alarm: {other:?}"))),
                }
            }
        };
        let alarms = alarms
            .into_iter()
            .map(|(member_id, a)| pb::AlarmMember { member_id, alarm: alarm_type(a) as i32 })
            .collect();
        Ok(Response::new(pb::AlarmResponse { header: self.backend.header(revision), alarms }))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        // Shows no keys: any user (anyone while this node catches up, to watch it start).
        self.backend.access.admit_nameless(&request, "Status").map_err(super::auth::etcd_refusal)?;
        let status = self.backend.etcd_group_status().await?;
        let mut errors = Vec::new();
        let s = status.unwrap_or_else(|| {
            errors.push("this node holds no replica of the etcd keyspace's group".to_string());
            GroupStatus { id: ETCD_GROUP, ..GroupStatus::default() }
        });
        if s.leader.is_none() && errors.is_empty() {
            errors.push("etcdserver: no leader".to_string());
        }
        // Raised alarms show as errors, as etcd's status lists them.
        if let Ok(EtcdAnswer::Alarms { alarms, .. }) = self.backend.call(EtcdCall::Alarms).await {
            for (member, a) in alarms {
                errors.push(format!("memberID:{member} alarm:{} ", alarm_type(a).as_str_name()));
            }
        }
        let view = self.backend.node.view.lock().expect("view lock");
        Ok(Response::new(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: cluster_id(&view.topology.founders),
                member_id: self.backend.node.id,
                revision: s.etcd_revision,
                raft_term: s.term,
            }),
            version: ETCD_API_VERSION.to_string(),
            db_size: s.etcd_bytes as i64,
            leader: s.leader.unwrap_or(0),
            raft_index: s.commit,
            raft_term: s.term,
            raft_applied_index: s.applied,
            errors,
            db_size_in_use: s.etcd_bytes as i64,
            is_learner: false,
        }))
    }

    async fn defragment(&self, _: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(Status::unimplemented(
            "Defragment is not served on Baton's etcd API: the keyspace lives in memory and in the Raft log, \
             which compaction and snapshots already shrink (there is no bolt database to defragment)",
        ))
    }
}
