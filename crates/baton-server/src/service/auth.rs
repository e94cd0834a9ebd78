//! The users-and-roles RPCs' conversions: a change request into the meta group's command (its
//! password hashed here: the log never sees a password), and the state into its answer.

use baton_core::auth::{AuthCommand, AuthState, NameRange, Permission, Quota};
use baton_proto::v1 as pb;
use tonic::Status;

use crate::access::secrets;

/// The command an `AuthChange` asks for. Hashes passwords: call it off the async threads.
pub fn change_command(req: pb::AuthChangeRequest) -> Result<AuthCommand, Status> {
    use pb::auth_change_request::Change;
    let hash = |password: &str| -> Result<Option<String>, Status> {
        if password.is_empty() {
            return Ok(None);
        }
        secrets::hash_password(password).map(Some).map_err(Status::invalid_argument)
    };
    let range = |names: Option<pb::NameRange>| -> Result<NameRange, Status> {
        let names = names.ok_or_else(|| Status::invalid_argument("a grant needs its names (a range)"))?;
        Ok(NameRange { start: names.start, end: names.end })
    };
    Ok(match req.change.ok_or_else(|| Status::invalid_argument("an auth change without a change"))? {
        Change::UserAdd(u) => AuthCommand::UserAdd { password_hash: hash(&u.password)?, name: u.user },
        Change::UserRemove(name) => AuthCommand::UserRemove { name },
        Change::UserPasswd(u) => AuthCommand::UserPasswd { password_hash: hash(&u.password)?, name: u.user },
        Change::UserGrantRole(r) => AuthCommand::UserGrant { user: r.user, role: r.role },
        Change::UserRevokeRole(r) => AuthCommand::UserRevoke { user: r.user, role: r.role },
        Change::RoleAdd(name) => AuthCommand::RoleAdd { name },
        Change::RoleRemove(name) => AuthCommand::RoleRemove { name },
        Change::RoleGrant(g) => {
            let permission = Permission::parse(&g.permission).ok_or_else(|| {
                Status::invalid_argument(format!("unknown permission {:?} (read, lock, write or admin)", g.permission))
            })?;
            AuthCommand::RoleGrant { role: g.role, range: range(g.names)?, permission }
        }
        Change::RoleRevoke(g) => AuthCommand::RoleRevoke { role: g.role, range: range(g.names)? },
        Change::Enable(true) => AuthCommand::Enable { token_key: secrets::token_key() },
        Change::Enable(false) => AuthCommand::Disable,
        Change::SetQuota(q) => {
            let quota = q.quota.ok_or_else(|| Status::invalid_argument("a quota change needs its quota"))?;
            let quota =
                Quota { requests_per_s: quota.requests_per_second, sessions: quota.sessions, names: quota.names };
            AuthCommand::SetQuota { user: (!q.user.is_empty()).then_some(q.user), quota }
        }
    })
}

/// A quota as the API shows it.
pub fn quota_out(q: Quota) -> pb::Quota {
    pb::Quota { requests_per_second: q.requests_per_s, sessions: q.sessions, names: q.names }
}

/// The users and roles as `AuthStatus` answers them (no password hashes).
pub fn status(auth: &AuthState) -> pb::AuthStatusResponse {
    let users = auth
        .users
        .iter()
        .map(|(name, u)| pb::AuthUser {
            name: name.clone(),
            roles: u.roles.iter().cloned().collect(),
            has_password: u.password_hash.is_some(),
            quota: Some(quota_out(auth.quota_of(name))),
        })
        .collect();
    let roles = auth
        .roles
        .iter()
        .map(|(name, r)| pb::AuthRole {
            name: name.clone(),
            grants: r
                .grants
                .iter()
                .map(|(range, p)| pb::AuthGrant {
                    permission: p.name().to_string(),
                    names: Some(pb::NameRange { start: range.start.clone(), end: range.end.clone() }),
                    description: range.describe(),
                })
                .collect(),
        })
        .collect();
    pb::AuthStatusResponse {
        enabled: auth.enabled,
        revision: auth.revision,
        users,
        roles,
        default_quota: Some(quota_out(auth.default_quota)),
    }
}
