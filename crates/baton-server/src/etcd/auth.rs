//! Authentication and authorization on the etcd port: etcd's Auth service over Baton's users
//! and roles (the same ones `baton user|role|auth` change), and what each etcd call needs.
//!
//! # Design
//! There is one set of users and roles (the meta group's, see [`baton_core::auth`]) and one
//! place that checks them ([`crate::access::Access`]); this module only translates. etcd's
//! `READ` is Baton's read permission, `WRITE` and `READWRITE` its write permission (which
//! includes reading: Baton's levels nest), on the same byte ranges etcd grants use. A grant on
//! `jobs/` therefore covers the Baton names and the etcd keys under `jobs/` alike.
//!
//! Changes are proposed to the meta group; a node that does not lead it forwards them to the
//! node that does, as it forwards keyspace calls ([`super::Backend::call`]). Reads of users
//! and roles are this node's replica's.
//!
//! Refusals carry etcd's codes and messages (its clients match on them: an expired or outdated
//! token is `etcdserver: invalid auth token`, on which they authenticate again); what was
//! refused and why goes to the audit log as for every API.

use baton_core::auth::{AuthCommand, AuthError, AuthState, NameRange, Permission, ROOT_ROLE, ROOT_USER};
use baton_core::etcd::{Op, TxnRequest};
use baton_proto::etcd::etcdserverpb as pb;
use baton_proto::etcd::etcdserverpb::auth_server::Auth;
use tonic::{Code, Request, Response, Status};

use super::{Backend, EtcdAnswer, EtcdCall};
use crate::access::{secrets, Caller, Need};

/// The names etcd's `[key, range_end)` covers: just `key` when `range_end` is empty, every
/// key from `key` on when it is `"\0"`.
pub fn key_range(key: &[u8], range_end: &[u8]) -> NameRange {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            NameRange { start: key.to_vec(), end }
        }
        [0] => NameRange { start: key.to_vec(), end: Vec::new() },
        end => NameRange { start: key.to_vec(), end: end.to_vec() },
    }
}

/// etcd's `range_end` for a range ([`key_range`] read backwards).
fn range_end_of(range: &NameRange) -> Vec<u8> {
    if range.end.is_empty() {
        vec![0]
    } else if range.end.len() == range.start.len() + 1
        && range.end.starts_with(&range.start)
        && range.end.ends_with(&[0])
    {
        Vec::new()
    } else {
        range.end.clone()
    }
}

/// What a transaction needs: read on what it compares and reads, write on what it changes
/// (and read too where it returns the previous values), nested transactions included.
pub fn txn_needs(txn: &TxnRequest) -> Vec<Need> {
    let mut needs: Vec<Need> =
        txn.compare.iter().map(|c| Need::range(Permission::Read, key_range(&c.key, &c.range_end))).collect();
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Range(r) => needs.push(Need::range(Permission::Read, key_range(&r.key, &r.range_end))),
            Op::Put(p) => needs.extend(write_needs(&p.key, &[], p.prev_kv)),
            Op::Delete(d) => needs.extend(write_needs(&d.key, &d.range_end, d.prev_kv)),
            Op::Txn(t) => needs.extend(txn_needs(t)),
            Op::Empty => {}
        }
    }
    needs
}

/// What a put or a delete of `[key, range_end)` needs (`prev_kv`: it shows the old values).
pub fn write_needs(key: &[u8], range_end: &[u8], prev_kv: bool) -> Vec<Need> {
    let range = key_range(key, range_end);
    let mut needs = vec![Need::range(Permission::Write, range.clone())];
    if prev_kv {
        needs.push(Need::range(Permission::Read, range));
    }
    needs
}

/// A refusal as etcd words it (its clients compare messages: an invalid token makes them
/// authenticate again, which only this exact message does).
pub fn etcd_refusal(status: Status) -> Status {
    match status.code() {
        Code::Unauthenticated if status.message().starts_with("authentication is on") => {
            Status::invalid_argument("etcdserver: user name is empty")
        }
        Code::Unauthenticated => Status::unauthenticated("etcdserver: invalid auth token"),
        Code::PermissionDenied => Status::permission_denied("etcdserver: permission denied"),
        _ => status,
    }
}

/// A refusal as a watch's cancel reason: what etcd's Go server puts there (its gRPC error's
/// text), e.g. `rpc error: code = PermissionDenied desc = etcdserver: permission denied`.
pub fn cancel_reason(status: &Status) -> String {
    format!("rpc error: code = {:?} desc = {}", status.code(), status.message())
}

/// An auth change's refusal as etcd words it.
pub fn auth_error_status(e: &AuthError) -> Status {
    let (code, message) = match e {
        AuthError::UserExists(_) => (Code::FailedPrecondition, "etcdserver: user name already exists"),
        AuthError::NoUser(_) => (Code::FailedPrecondition, "etcdserver: user name not found"),
        AuthError::RoleExists(_) => (Code::FailedPrecondition, "etcdserver: role name already exists"),
        AuthError::NoRole(_) => (Code::FailedPrecondition, "etcdserver: role name not found"),
        AuthError::NoGrant { .. } => (Code::FailedPrecondition, "etcdserver: permission is not granted to the role"),
        AuthError::NotGranted { .. } => (Code::FailedPrecondition, "etcdserver: role is not granted to the user"),
        // Which of the two is told by the caller, who knows the users (see `AuthService::change`).
        AuthError::NoRoot => (Code::FailedPrecondition, NO_ROOT_USER),
        // etcd's word for removing root or its role while authentication is on.
        AuthError::WouldLockOut(_) => (Code::InvalidArgument, "etcdserver: invalid auth management"),
        AuthError::Invalid(_) => return Status::failed_precondition(format!("etcdserver: {e}")),
    };
    Status::new(code, message)
}

const NO_ROOT_USER: &str = "etcdserver: root user does not exist";

/// The `etcdserverpb.Auth` service.
#[derive(Clone)]
pub struct AuthService {
    pub(crate) backend: Backend,
}

/// A password as a change takes it: hashed (off the async threads), none if empty.
async fn hash(password: String, hashed: &str) -> Result<Option<String>, Status> {
    if !hashed.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: Baton does not take password hashes made by the client (bcrypt): send the password",
        ));
    }
    if password.is_empty() {
        return Ok(None);
    }
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(|e| Status::internal(format!("hashing failed to run: {e}")))?
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))
}

impl AuthService {
    /// Refuses unless the caller is an administrator (etcd's root role).
    fn admin<T>(&self, request: &Request<T>, rpc: &str) -> Result<Caller, Status> {
        self.backend.admit(request, rpc, &[Need::everything(Permission::Admin)])
    }

    /// Applies `command` for `caller` to the users and roles (through the meta group's leader,
    /// with a token of the caller's for it to check) and returns the header to answer with.
    async fn change(&self, caller: &Caller, command: AuthCommand) -> Result<Option<pb::ResponseHeader>, Status> {
        let proof = self.backend.access.forward_proof(caller, &command);
        match self.backend.call(EtcdCall::Auth { command, proof }).await {
            Ok(EtcdAnswer::AuthChanged { .. }) => Ok(self.backend.header(0)),
            // etcdctl's `auth enable` adds the root role and grants it on this one, then tries
            // again (Baton's root role always exists: the grant is all it takes).
            Err(s) if s.message() == NO_ROOT_USER && self.state().users.contains_key(ROOT_USER) => {
                Err(Status::failed_precondition("etcdserver: root user does not have root role"))
            }
            Err(s) => Err(s),
            Ok(other) => Err(Status::internal(format!("unexpected answer to an auth change: {other:?}"))),
        }
    }

    fn state(&self) -> std::sync::Arc<AuthState> {
        self.backend.access.state()
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let caller = self.admin(&request, "AuthEnable")?;
        let header = self.change(&caller, AuthCommand::Enable { token_key: secrets::token_key() }).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let caller = self.admin(&request, "AuthDisable")?;
        let header = self.change(&caller, AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.backend.admit(&request, "AuthStatus", &[])?;
        let auth = self.state();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.backend.header(0),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let token = crate::service::authenticate(&self.backend.access, req.name, req.password).await.map_err(|s| {
            match s.code() {
                Code::Unauthenticated => {
                    Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")
                }
                Code::FailedPrecondition => Status::failed_precondition("etcdserver: authentication is not enabled"),
                _ => s,
            }
        })?;
        Ok(Response::new(pb::AuthenticateResponse { header: self.backend.header(0), token }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = self.admin(&request, "UserAdd")?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: user name is empty"));
        }
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password { None } else { hash(req.password, &req.hashed_password).await? };
        let header = self.change(&caller, AuthCommand::UserAdd { name: req.name, password_hash }).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        self.admin(&request, "UserGet")?;
        let auth = self.state();
        let user = auth
            .users
            .get(&request.get_ref().name)
            .ok_or_else(|| Status::failed_precondition("etcdserver: user name not found"))?;
        let roles = user.roles.iter().cloned().collect();
        Ok(Response::new(pb::AuthUserGetResponse { header: self.backend.header(0), roles }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.admin(&request, "UserList")?;
        let users = self.state().users.keys().cloned().collect();
        Ok(Response::new(pb::AuthUserListResponse { header: self.backend.header(0), users }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let caller = self.admin(&request, "UserDelete")?;
        let header = self.change(&caller, AuthCommand::UserRemove { name: request.into_inner().name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.admin(&request, "UserChangePassword")?;
        let req = request.into_inner();
        let password_hash = hash(req.password, &req.hashed_password).await?;
        let header = self.change(&caller, AuthCommand::UserPasswd { name: req.name, password_hash }).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let caller = self.admin(&request, "UserGrantRole")?;
        let req = request.into_inner();
        let header = self.change(&caller, AuthCommand::UserGrant { user: req.user, role: req.role }).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let caller = self.admin(&request, "UserRevokeRole")?;
        let req = request.into_inner();
        let header = self.change(&caller, AuthCommand::UserRevoke { user: req.name, role: req.role }).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let caller = self.admin(&request, "RoleAdd")?;
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: role name is empty"));
        }
        // Baton's root role always exists; etcd's is made by its first `role add root`
        // (`etcdctl auth enable` makes it so), which therefore succeeds here.
        if name == ROOT_ROLE {
            return Ok(Response::new(pb::AuthRoleAddResponse { header: self.backend.header(0) }));
        }
        let header = self.change(&caller, AuthCommand::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.admin(&request, "RoleGet")?;
        let auth = self.state();
        let name = &request.get_ref().role;
        let perm = if name == ROOT_ROLE {
            let everything = NameRange::prefix("");
            vec![permission_out(&everything, Permission::Admin)]
        } else {
            let role =
                auth.roles.get(name).ok_or_else(|| Status::failed_precondition("etcdserver: role name not found"))?;
            role.grants.iter().map(|(range, p)| permission_out(range, *p)).collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse { header: self.backend.header(0), perm }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.admin(&request, "RoleList")?;
        let auth = self.state();
        let mut roles: Vec<String> = auth.roles.keys().cloned().collect();
        if !roles.iter().any(|r| r == ROOT_ROLE) {
            roles.push(ROOT_ROLE.to_string());
            roles.sort();
        }
        Ok(Response::new(pb::AuthRoleListResponse { header: self.backend.header(0), roles }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let caller = self.admin(&request, "RoleDelete")?;
        let header = self.change(&caller, AuthCommand::RoleRemove { name: request.into_inner().role }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.admin(&request, "RoleGrantPermission")?;
        let req = request.into_inner();
        let perm = req.perm.ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
        let permission = match pb::auth_permission::Type::try_from(perm.perm_type) {
            Ok(pb::auth_permission::Type::Read) => Permission::Read,
            Ok(pb::auth_permission::Type::Write | pb::auth_permission::Type::Readwrite) => Permission::Write,
            Err(_) => {
                return Err(Status::invalid_argument(format!("etcdserver: unknown permission type {}", perm.perm_type)))
            }
        };
        let range = key_range(&perm.key, &perm.range_end);
        let header = self.change(&caller, AuthCommand::RoleGrant { role: req.name, range, permission }).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.admin(&request, "RoleRevokePermission")?;
        let req = request.into_inner();
        let range = key_range(&req.key, &req.range_end);
        let header = self.change(&caller, AuthCommand::RoleRevoke { role: req.role, range }).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header }))
    }
}

/// A grant as etcd shows it: read stays read, anything above it is read-write (etcd has no
/// lock level; Baton's write includes reading).
fn permission_out(range: &NameRange, permission: Permission) -> pb::AuthPermission {
    let perm_type = match permission {
        Permission::Read | Permission::Lock => pb::auth_permission::Type::Read,
        Permission::Write | Permission::Admin => pb::auth_permission::Type::Readwrite,
    };
    pb::AuthPermission { perm_type: perm_type as i32, key: range.start.clone(), range_end: range_end_of(range) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_ranges_read_as_name_ranges_and_back() {
        for (key, end) in [(&b"k"[..], &b""[..]), (b"k", b"\0"), (b"a", b"b"), (b"", b"\0"), (b"jobs/", b"jobs0")] {
            let range = key_range(key, end);
            assert_eq!(range_end_of(&range), end, "{key:?} {end:?}");
            assert_eq!(range.start, key);
        }
        assert_eq!(key_range(b"jobs/", b"jobs0"), NameRange::prefix("jobs/"));
        assert_eq!(key_range(b"x", b""), NameRange::name("x"));
        assert_eq!(key_range(b"", b"\0"), NameRange::prefix(""));
    }
}
