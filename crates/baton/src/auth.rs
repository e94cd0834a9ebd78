//! `baton user ...`, `baton role ...`, `baton auth ...`: users, roles and permissions
//! (docs/SECURITY.md), and the `--user` flag every client command takes.

use baton_proto::v1 as pb;
use pb::auth_change_request::Change;

use super::*;

/// Who every client command authenticates as.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct CredentialArgs {
    /// Authenticate as this user: NAME:PASSWORD, or NAME with --password (env BATON_USER).
    #[arg(long, global = true, env = "BATON_USER", hide_env_values = true)]
    user: Option<String>,
    /// The user's password, if not given with --user (env BATON_PASSWORD).
    #[arg(long, global = true, env = "BATON_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl CredentialArgs {
    /// The user and password (`None`: no user given).
    pub(crate) fn credentials(&self) -> Result<Option<(String, String)>, String> {
        let Some(user) = &self.user else {
            return match self.password {
                Some(_) => Err("--password needs --user".into()),
                None => Ok(None),
            };
        };
        match (user.split_once(':'), &self.password) {
            (Some((name, password)), None) => Ok(Some((name.to_string(), password.to_string()))),
            (None, Some(password)) => Ok(Some((user.clone(), password.clone()))),
            (Some(_), Some(_)) => {
                Err("give the password with --user NAME:PASSWORD or with --password, not both".into())
            }
            (None, None) => Err(format!("--user {user} needs a password: --user {user}:PASSWORD or --password")),
        }
    }
}

static CREDENTIALS: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();

/// Sets who this process authenticates as (once, from the command line).
pub(crate) fn set_credentials(credentials: Option<(String, String)>) {
    let _ = CREDENTIALS.set(credentials);
}

/// Who this process authenticates as.
pub(crate) fn credentials() -> Option<baton_client::Credentials> {
    CREDENTIALS.get().cloned().flatten().map(|(user, password)| baton_client::Credentials { user, password })
}

/// `baton user ...`.
#[derive(Subcommand)]
pub(crate) enum UserCmd {
    /// Add a user (with a password, or authenticating by client certificate only).
    Add {
        name: String,
        /// Its password (none: it authenticates by a client certificate naming it).
        #[arg(long = "new-password")]
        new_password: Option<String>,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Remove a user: its tokens stop working.
    Remove {
        name: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Change a user's password: its tokens stop working.
    Passwd {
        name: String,
        #[arg(long = "new-password")]
        new_password: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Give a user a role.
    GrantRole {
        /// The user (its field is not called `user`: that is the global --user flag's id).
        #[arg(value_name = "USER")]
        name: String,
        role: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Take a role from a user: its tokens stop working.
    RevokeRole {
        #[arg(value_name = "USER")]
        name: String,
        role: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Set a user's quota (without USER: the default of every user without its own). Each
    /// limit left out is none (0). Past one, requests are refused with RESOURCE_EXHAUSTED
    /// naming it; renewals and releases never are.
    Quota {
        /// The user (none: the default quota).
        #[arg(value_name = "USER")]
        name: Option<String>,
        /// Client requests per second, on each node.
        #[arg(long, default_value_t = 0)]
        requests_per_second: u32,
        /// Sessions open at once, in each group.
        #[arg(long, default_value_t = 0)]
        sessions: u32,
        /// Names held or waited for at once, in each group.
        #[arg(long, default_value_t = 0)]
        names: u32,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
}

/// `baton role ...`.
#[derive(Subcommand)]
pub(crate) enum RoleCmd {
    /// Add a role (without permissions).
    Add {
        name: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Remove a role (from every user too).
    Remove {
        name: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Give a role a permission (read, lock, write or admin, each including those before it)
    /// on every name starting with PREFIX ("" for every name).
    Grant {
        role: String,
        permission: String,
        prefix: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Take a role's permission on PREFIX.
    Revoke {
        role: String,
        prefix: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
}

/// `baton auth ...`.
#[derive(Subcommand)]
pub(crate) enum AuthCmd {
    /// Turn authentication on: from then on every request needs a user (a user `root` with the
    /// role `root` must exist).
    Enable {
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Turn authentication off.
    Disable {
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Whether authentication is on, the users and roles and their permissions.
    Status {
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn prefix(role: String, permission: String, prefix: &str) -> pb::RoleGrant {
    let range = baton_core::auth::NameRange::prefix(prefix);
    pb::RoleGrant { role, permission, names: Some(pb::NameRange { start: range.start, end: range.end }) }
}

async fn change(endpoints: &str, change: Change) -> ExitCode {
    let client = match connect(endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.auth_change(change).await {
        Ok(r) => {
            out!("ok (revision {})", r.revision);
            ExitCode::SUCCESS
        }
        Err(e) => client_error(e),
    }
}

pub(crate) async fn user(cmd: UserCmd) -> ExitCode {
    let up = |user: String, password: Option<String>| pb::UserPassword { user, password: password.unwrap_or_default() };
    match cmd {
        UserCmd::Add { name, new_password, endpoints } => {
            change(&endpoints, Change::UserAdd(up(name, new_password))).await
        }
        UserCmd::Remove { name, endpoints } => change(&endpoints, Change::UserRemove(name)).await,
        UserCmd::Passwd { name, new_password, endpoints } => {
            change(&endpoints, Change::UserPasswd(up(name, Some(new_password)))).await
        }
        UserCmd::GrantRole { name, role, endpoints } => {
            change(&endpoints, Change::UserGrantRole(pb::UserRole { user: name, role })).await
        }
        UserCmd::RevokeRole { name, role, endpoints } => {
            change(&endpoints, Change::UserRevokeRole(pb::UserRole { user: name, role })).await
        }
        UserCmd::Quota { name, requests_per_second, sessions, names, endpoints } => {
            let quota = pb::Quota { requests_per_second, sessions, names };
            change(&endpoints, Change::SetQuota(pb::UserQuota { user: name.unwrap_or_default(), quota: Some(quota) }))
                .await
        }
    }
}

pub(crate) async fn role(cmd: RoleCmd) -> ExitCode {
    match cmd {
        RoleCmd::Add { name, endpoints } => change(&endpoints, Change::RoleAdd(name)).await,
        RoleCmd::Remove { name, endpoints } => change(&endpoints, Change::RoleRemove(name)).await,
        RoleCmd::Grant { role, permission, prefix: p, endpoints } => {
            change(&endpoints, Change::RoleGrant(prefix(role, permission, &p))).await
        }
        RoleCmd::Revoke { role, prefix: p, endpoints } => {
            change(&endpoints, Change::RoleRevoke(prefix(role, String::new(), &p))).await
        }
    }
}

pub(crate) async fn auth(cmd: AuthCmd) -> ExitCode {
    let (endpoints, json) = match cmd {
        AuthCmd::Enable { endpoints } => return change(&endpoints, Change::Enable(true)).await,
        AuthCmd::Disable { endpoints } => return change(&endpoints, Change::Enable(false)).await,
        AuthCmd::Status { endpoints, json } => (endpoints, json),
    };
    let client = match connect(&endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let s = match client.auth_status().await {
        Ok(s) => s,
        Err(e) => return client_error(e),
    };
    if json {
        let users: Vec<_> = s
            .users
            .iter()
            .map(|u| {
                serde_json::json!({"name": u.name, "roles": u.roles, "has_password": u.has_password,
                                   "quota": quota_json(u.quota.as_ref())})
            })
            .collect();
        let roles: Vec<_> = s
            .roles
            .iter()
            .map(|r| {
                let grants: Vec<_> = r
                    .grants
                    .iter()
                    .map(|g| serde_json::json!({"permission": g.permission, "names": g.description}))
                    .collect();
                serde_json::json!({"name": r.name, "grants": grants})
            })
            .collect();
        out!(
            "{}",
            serde_json::json!({"enabled": s.enabled, "revision": s.revision, "users": users, "roles": roles,
                               "default_quota": quota_json(s.default_quota.as_ref())})
        );
        return ExitCode::SUCCESS;
    }
    out!("authentication {} (revision {})", if s.enabled { "on" } else { "off" }, s.revision);
    out!("default quota: {}", quota_text(s.default_quota.as_ref()));
    for u in &s.users {
        let how = if u.has_password { "password" } else { "certificate only" };
        out!("user {} ({how}): roles {}; quota: {}", u.name, u.roles.join(", "), quota_text(u.quota.as_ref()));
    }
    for r in &s.roles {
        out!("role {}", r.name);
        for g in &r.grants {
            out!("  {} on {}", g.permission, g.description);
        }
    }
    ExitCode::SUCCESS
}

fn quota_json(q: Option<&pb::Quota>) -> serde_json::Value {
    let q = q.cloned().unwrap_or_default();
    serde_json::json!({"requests_per_second": q.requests_per_second, "sessions": q.sessions, "names": q.names})
}

fn quota_text(q: Option<&pb::Quota>) -> String {
    let q = q.cloned().unwrap_or_default();
    let n = |v: u32| if v == 0 { "no limit".to_string() } else { v.to_string() };
    format!(
        "{} requests/s per node, {} sessions and {} names per group",
        n(q.requests_per_second),
        n(q.sessions),
        n(q.names)
    )
}
