//! Users, roles and permissions: the replicated part of authentication and authorization.
//!
//! The meta group holds one [`AuthState`]: users (a password hash, the roles they have), roles
//! (permissions on ranges of names) and whether authentication is on. It changes only through
//! [`AuthCommand`]s applied in log order, so every node checks a request against the same rules
//! once it has applied them. Nothing here hashes, verifies a password or draws randomness: the
//! server hashes a password before proposing it (the command carries the hash, never the
//! password) and makes the token key, so the state machine stays deterministic.
//!
//! # Permissions
//! Four levels, each including the ones below: [`Permission::Read`] (describe, watch, history,
//! counter and register reads, etcd ranges and watches), [`Permission::Lock`] (sessions and every
//! waiting primitive: locks, read/write locks, semaphores, elections, barriers, latches),
//! [`Permission::Write`] (counters, registers, etcd puts, deletes and transactions) and
//! [`Permission::Admin`] (users, roles, the cluster's layout and membership). A grant gives one
//! level on a range of names `[start, end)`: a prefix is the range from the prefix to the next
//! string after every name that starts with it ([`prefix_end`]); one name is `[name, name\0)`;
//! the empty prefix is every name. A user may do what the union of its roles' grants allows.
//! The role `root` allows everything, and authentication cannot be turned on without a user
//! `root` that has it (as in etcd: locking everyone out is not a state one can reach).
//!
//! # Caveats
//! - A password change or a removed user takes effect on a node once it applied the change; a
//!   token made before it stops working then (the user's generation is part of every token).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The role that may do everything.
pub const ROOT_ROLE: &str = "root";
/// The user that must exist, with the root role, before authentication is turned on.
pub const ROOT_USER: &str = "root";
/// Longest user or role name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most users, most roles, and most grants per role.
pub const MAX_USERS: usize = 10_000;
pub const MAX_ROLES: usize = 10_000;
pub const MAX_GRANTS_PER_ROLE: usize = 1_000;
/// Longest stored password hash (a PHC string), in bytes.
pub const MAX_HASH_BYTES: usize = 512;

/// What a grant allows, each level including the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// See state: describe, watch, history, reads of counters, registers and etcd keys.
    Read,
    /// Hold and wait: sessions, locks, read/write locks, semaphores, elections, barriers, latches.
    Lock,
    /// Change values: counters, registers, etcd puts, deletes and transactions.
    Write,
    /// Manage users, roles, the layout and the membership of the cluster.
    Admin,
}

impl Permission {
    /// The lowercase name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Lock => "lock",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }

    /// Parses [`Permission::name`].
    pub fn parse(s: &str) -> Option<Permission> {
        [Permission::Read, Permission::Lock, Permission::Write, Permission::Admin].into_iter().find(|p| p.name() == s)
    }
}

/// The first string after every string that starts with `prefix` (empty: no end, which is
/// what the empty prefix and a prefix of only 0xff bytes need).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// A range of names `[start, end)`; an empty `end` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NameRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl NameRange {
    /// Every name that starts with `prefix`.
    pub fn prefix(prefix: &str) -> NameRange {
        NameRange { start: prefix.as_bytes().to_vec(), end: prefix_end(prefix.as_bytes()) }
    }

    /// Just `name`.
    pub fn name(name: &str) -> NameRange {
        let mut end = name.as_bytes().to_vec();
        end.push(0);
        NameRange { start: name.as_bytes().to_vec(), end }
    }

    fn contains(&self, name: &[u8]) -> bool {
        name >= self.start.as_slice() && (self.end.is_empty() || name < self.end.as_slice())
    }

    /// How the range reads in messages: `prefix "jobs/"`, `name "x"`, or the raw bounds.
    pub fn describe(&self) -> String {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if self.end == prefix_end(&self.start) {
            if self.start.is_empty() {
                "every name".to_string()
            } else {
                format!("prefix {:?}", text(&self.start))
            }
        } else if self.end.len() == self.start.len() + 1
            && self.end.starts_with(&self.start)
            && self.end.ends_with(&[0])
        {
            format!("name {:?}", text(&self.start))
        } else {
            format!("range [{:?}, {:?})", text(&self.start), text(&self.end))
        }
    }
}

/// A user: its password hash (none: it can only authenticate by client certificate), its roles,
/// and its generation, bumped by every change that must end the tokens made before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
    pub generation: u64,
}

/// A role: the permission it gives on each range of names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub grants: BTreeMap<NameRange, Permission>,
}

/// The users, roles and switch of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// The key tokens are signed with (made by the server that turned authentication on).
    pub token_key: Vec<u8>,
    /// Bumped by every applied change (etcd's auth revision).
    pub revision: u64,
    /// Users' own quotas (see [`AuthState::quota_of`]).
    pub quotas: BTreeMap<String, Quota>,
    /// The quota of every user without one of its own.
    pub default_quota: Quota,
}

/// What one user may use; 0 is no limit. `sessions` and `names` hold in each Raft group (the
/// state machine counts them where it keeps them: exactly, with no coordination between
/// groups), `requests_per_s` on each node (a node's own count of the requests it takes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quota {
    /// Client requests per second, on each node (renewals and releases are not counted).
    pub requests_per_s: u32,
    /// Sessions open at once, in each group.
    pub sessions: u32,
    /// Names held or waited for at once over all the user's sessions, in each group.
    pub names: u32,
}

/// A change to [`AuthState`]. New variants go last: logs encode a variant by its position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// A new user, with a password hash (none: certificate only).
    UserAdd { name: String, password_hash: Option<String> },
    /// Remove a user; its tokens stop working.
    UserRemove { name: String },
    /// Change (or clear) a user's password hash; its tokens stop working.
    UserPasswd { name: String, password_hash: Option<String> },
    /// Give a user a role.
    UserGrant { user: String, role: String },
    /// Take a role from a user.
    UserRevoke { user: String, role: String },
    /// A new role without grants.
    RoleAdd { name: String },
    /// Remove a role (and take it from every user).
    RoleRemove { name: String },
    /// Give a role `permission` on `range` (replacing what it had on exactly that range).
    RoleGrant { role: String, range: NameRange, permission: Permission },
    /// Take a role's grant on exactly `range`.
    RoleRevoke { role: String, range: NameRange },
    /// Turn authentication on, signing tokens with `token_key`.
    Enable { token_key: Vec<u8> },
    /// Turn authentication off: every request is allowed again.
    Disable,
    /// Set `user`'s quota (`None`: the default of users without their own). A user's own quota
    /// set to the default's values is removed (it follows the default again).
    SetQuota { user: Option<String>, quota: Quota },
}

/// Why an [`AuthCommand`] was refused (a deterministic function of the command and the state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthError {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    NoUser(String),
    #[error("role {0:?} already exists")]
    RoleExists(String),
    #[error("role {0:?} does not exist")]
    NoRole(String),
    #[error("role {role:?} has no grant on {range}")]
    NoGrant { role: String, range: String },
    #[error("user {user:?} does not have role {role:?}")]
    NotGranted { user: String, role: String },
    #[error("{0}")]
    Invalid(String),
    #[error("authentication cannot be turned on without a user \"root\" with the role \"root\"")]
    NoRoot,
    #[error("{0}: that would lock everyone out while authentication is on")]
    WouldLockOut(String),
}

fn check_name(what: &str, name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(AuthError::Invalid(format!("a {what} name takes 1 to {MAX_NAME_BYTES} bytes, not {}", name.len())));
    }
    if name.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!("a {what} name cannot hold control characters")));
    }
    Ok(())
}

fn check_hash(hash: &Option<String>) -> Result<(), AuthError> {
    match hash {
        Some(h) if h.is_empty() || h.len() > MAX_HASH_BYTES => {
            Err(AuthError::Invalid(format!("a password hash takes 1 to {MAX_HASH_BYTES} bytes")))
        }
        _ => Ok(()),
    }
}

impl AuthState {
    /// Applies `command`; a refusal changes nothing.
    pub fn apply(&mut self, command: &AuthCommand) -> Result<(), AuthError> {
        self.check(command)?;
        match command {
            AuthCommand::UserAdd { name, password_hash } => {
                // A generation no earlier user of this name had: a removed user's tokens stay
                // dead when the name is added again (the review found them coming back).
                let user =
                    User { password_hash: password_hash.clone(), generation: self.revision + 1, ..User::default() };
                self.users.insert(name.clone(), user);
            }
            AuthCommand::UserRemove { name } => {
                self.users.remove(name);
                self.quotas.remove(name);
            }
            AuthCommand::UserPasswd { name, password_hash } => {
                let user = self.users.get_mut(name).expect("checked");
                user.password_hash = password_hash.clone();
                user.generation += 1;
            }
            AuthCommand::UserGrant { user, role } => {
                self.users.get_mut(user).expect("checked").roles.insert(role.clone());
            }
            AuthCommand::UserRevoke { user, role } => {
                let user = self.users.get_mut(user).expect("checked");
                user.roles.remove(role);
                user.generation += 1;
            }
            AuthCommand::RoleAdd { name } => {
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleRemove { name } => {
                self.roles.remove(name);
                for user in self.users.values_mut() {
                    if user.roles.remove(name) {
                        user.generation += 1;
                    }
                }
            }
            AuthCommand::RoleGrant { role, range, permission } => {
                self.roles.get_mut(role).expect("checked").grants.insert(range.clone(), *permission);
            }
            AuthCommand::RoleRevoke { role, range } => {
                self.roles.get_mut(role).expect("checked").grants.remove(range);
            }
            AuthCommand::Enable { token_key } => {
                self.enabled = true;
                self.token_key = token_key.clone();
            }
            AuthCommand::Disable => self.enabled = false,
            AuthCommand::SetQuota { user: None, quota } => self.default_quota = *quota,
            AuthCommand::SetQuota { user: Some(user), quota } => {
                if *quota == self.default_quota {
                    self.quotas.remove(user);
                } else {
                    self.quotas.insert(user.clone(), *quota);
                }
            }
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether `command` would be refused, and why (nothing changes).
    fn check(&self, command: &AuthCommand) -> Result<(), AuthError> {
        let user = |name: &str| self.users.get(name).ok_or_else(|| AuthError::NoUser(name.to_string()));
        let role = |name: &str| self.roles.get(name).ok_or_else(|| AuthError::NoRole(name.to_string()));
        match command {
            AuthCommand::UserAdd { name, password_hash } => {
                check_name("user", name)?;
                check_hash(password_hash)?;
                if self.users.contains_key(name) {
                    return Err(AuthError::UserExists(name.clone()));
                }
                if self.users.len() >= MAX_USERS {
                    return Err(AuthError::Invalid(format!("at most {MAX_USERS} users")));
                }
            }
            AuthCommand::UserRemove { name } => {
                user(name)?;
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::WouldLockOut("the user root cannot be removed".into()));
                }
            }
            AuthCommand::UserPasswd { name, password_hash } => {
                check_hash(password_hash)?;
                user(name)?;
                if self.enabled && name == ROOT_USER && password_hash.is_none() {
                    return Err(AuthError::WouldLockOut("the user root keeps a password".into()));
                }
            }
            AuthCommand::UserGrant { user: u, role: r } => {
                user(u)?;
                if r != ROOT_ROLE {
                    role(r)?;
                }
            }
            AuthCommand::UserRevoke { user: u, role: r } => {
                if !user(u)?.roles.contains(r) {
                    return Err(AuthError::NotGranted { user: u.clone(), role: r.clone() });
                }
                if self.enabled && u == ROOT_USER && r == ROOT_ROLE {
                    return Err(AuthError::WouldLockOut("the user root keeps the role root".into()));
                }
            }
            AuthCommand::RoleAdd { name } => {
                check_name("role", name)?;
                if name == ROOT_ROLE || self.roles.contains_key(name) {
                    return Err(AuthError::RoleExists(name.clone()));
                }
                if self.roles.len() >= MAX_ROLES {
                    return Err(AuthError::Invalid(format!("at most {MAX_ROLES} roles")));
                }
            }
            AuthCommand::RoleRemove { name } => {
                if name == ROOT_ROLE {
                    return Err(AuthError::Invalid("the role root cannot be removed".into()));
                }
                role(name)?;
            }
            AuthCommand::RoleGrant { role: r, range, .. } => {
                if r == ROOT_ROLE {
                    return Err(AuthError::Invalid("the role root allows everything already".into()));
                }
                let grants = &role(r)?.grants;
                if !range.end.is_empty() && range.end <= range.start {
                    return Err(AuthError::Invalid(format!("an empty range: {}", range.describe())));
                }
                if range.start.len() > crate::limits::MAX_NAME_BYTES + 1
                    || range.end.len() > crate::limits::MAX_NAME_BYTES + 1
                {
                    return Err(AuthError::Invalid("a range bound is longer than a name can be".into()));
                }
                if !grants.contains_key(range) && grants.len() >= MAX_GRANTS_PER_ROLE {
                    return Err(AuthError::Invalid(format!("at most {MAX_GRANTS_PER_ROLE} grants per role")));
                }
            }
            AuthCommand::RoleRevoke { role: r, range } => {
                if !role(r)?.grants.contains_key(range) {
                    return Err(AuthError::NoGrant { role: r.clone(), range: range.describe() });
                }
            }
            AuthCommand::Enable { token_key } => {
                if token_key.len() < 16 {
                    return Err(AuthError::Invalid("a token key takes at least 16 bytes".into()));
                }
                if !self.users.get(ROOT_USER).is_some_and(|u| u.roles.contains(ROOT_ROLE)) {
                    return Err(AuthError::NoRoot);
                }
            }
            AuthCommand::Disable => {}
            AuthCommand::SetQuota { user: Some(name), .. } => {
                user(name)?;
            }
            AuthCommand::SetQuota { user: None, .. } => {}
        }
        Ok(())
    }

    /// `user`'s quota: its own, else the default.
    pub fn quota_of(&self, user: &str) -> Quota {
        self.quotas.get(user).copied().unwrap_or(self.default_quota)
    }

    /// Whether `user` may do `permission` on some names at least (sessions, which are not about
    /// a name, need [`Permission::Lock`] somewhere).
    pub fn allows_somewhere(&self, user: &str, permission: Permission) -> bool {
        let Some(u) = self.users.get(user) else { return false };
        u.roles.contains(ROOT_ROLE)
            || u.roles.iter().filter_map(|r| self.roles.get(r)).any(|r| r.grants.values().any(|p| *p >= permission))
    }

    /// Whether `user` may do `permission` on every name in `range` (one name: [`NameRange::name`]).
    pub fn allows(&self, user: &str, permission: Permission, range: &NameRange) -> bool {
        let Some(u) = self.users.get(user) else { return false };
        if u.roles.contains(ROOT_ROLE) {
            return true;
        }
        // The ranges granted at least `permission`, merged: `range` must lie within their union.
        let mut granted: Vec<&NameRange> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.grants.iter().filter(|(_, p)| **p >= permission).map(|(g, _)| g))
            .collect();
        granted.sort();
        let mut covered = range.start.clone();
        for g in granted {
            if g.start.as_slice() > covered.as_slice() {
                break;
            }
            if g.contains(&covered) {
                if g.end.is_empty() {
                    return true;
                }
                covered = g.end.clone();
                if !range.end.is_empty() && covered >= range.end {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
