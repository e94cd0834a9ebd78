//! Who is calling, and whether they may: the one place every API checks permissions.
//!
//! With authentication off (the default, and until `baton auth enable`), every caller may do
//! everything, as before. With it on, every request must name a user: a token from
//! `Authenticate` (gRPC metadata `authorization: Bearer <token>`, or etcd's `token`), or else a
//! client certificate whose common name is a user's name (mutual TLS). A request without either
//! is refused with UNAUTHENTICATED; one whose user lacks the permission with PERMISSION_DENIED
//! naming the permission and the names, counted and logged (target `baton::audit`).
//!
//! Every RPC of every API states what it needs as a [`Need`] (a [`Permission`] on a
//! [`NameRange`]) and calls [`Access::check`]; the users and roles are this node's replica of
//! the meta group's ([`baton_core::auth`]), published after each round that changed them.
//!
//! # Caveats
//! - A change to users or roles applies on a node once it applied it (normally within a round
//!   trip of the change's commit); until then that node decides by the previous rules.

pub mod rules;
pub mod secrets;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_core::auth::{AuthCommand, AuthState, NameRange, Permission};
use baton_tls::pki_types::CertificateDer;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::runtime::ClusterView;

/// How long a token is good for (as etcd's simple tokens: 5 minutes; clients take a new one
/// before it runs out).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long after signing in a token may still be renewed (`Access::renew`): a stolen token
/// cannot be kept alive longer than this.
pub const RENEW_LIMIT: Duration = Duration::from_secs(12 * 3600);

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Identified while authentication was off: anyone may do anything while it stays off.
    Anyone,
    /// This user, authenticated by a token (`Some`: checked again at every request of a
    /// stream, so that an expired or outdated token stops working on it too) or by a client
    /// certificate (`None`).
    User { name: String, token: Option<secrets::TokenClaims> },
}

impl Caller {
    /// The user's name (`None`: anyone, with authentication off).
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::User { name, .. } => Some(name),
        }
    }
}

/// What a request needs: a permission on a range of names, or (`range: None`) on some names
/// at least (sessions, which are about no name in particular).
#[derive(Clone, Debug)]
pub struct Need {
    pub permission: Permission,
    pub range: Option<NameRange>,
}

impl Need {
    /// `permission` on the name `name`.
    pub fn name(permission: Permission, name: &str) -> Need {
        Need { permission, range: Some(NameRange::name(name)) }
    }

    /// `permission` on every name that starts with `prefix`.
    pub fn prefix(permission: Permission, prefix: &str) -> Need {
        Need { permission, range: Some(NameRange::prefix(prefix)) }
    }

    /// `permission` on some names at least.
    pub fn somewhere(permission: Permission) -> Need {
        Need { permission, range: None }
    }

    /// `permission` on the names in `range`.
    pub fn range(permission: Permission, range: NameRange) -> Need {
        Need { permission, range: Some(range) }
    }

    fn describe(&self) -> String {
        self.range.as_ref().map_or_else(|| "any name".to_string(), NameRange::describe)
    }

    fn allowed(&self, auth: &AuthState, user: &str) -> bool {
        match &self.range {
            Some(r) => auth.allows(user, self.permission, r),
            None => auth.allows_somewhere(user, self.permission),
        }
    }

    /// `permission` on every name (the cluster's layout and membership, users and roles).
    pub fn everything(permission: Permission) -> Need {
        Need::prefix(permission, "")
    }
}

/// The checker every API holds.
#[derive(Clone)]
pub struct Access {
    view: Arc<Mutex<ClusterView>>,
    metrics: Arc<crate::obs::Metrics>,
    rates: Arc<Rates>,
}

/// How long a [`ForwardProof`] is good for.
pub const FORWARD_PROOF_TTL: Duration = Duration::from_secs(60);

/// Who asked for a change to users and roles that one node hands to another to run (see
/// [`Access::forward_proof`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwardProof {
    pub user: String,
    pub generation: u64,
    pub expires_ms: u64,
    pub mac: Vec<u8>,
}

/// Most token buckets kept; past it, the full ones (idle a second or more) are dropped.
const MAX_BUCKETS: usize = 10_000;

/// Each user's (or, for sign-ins over HTTP, each address's) requests on this node lately: a
/// token bucket per key, filled at its rate and holding one second's worth; and the forwarded
/// changes' proofs seen, until they expire.
#[derive(Debug, Default)]
pub struct Rates {
    buckets: Mutex<std::collections::HashMap<String, Bucket>>,
    sign_ins: Mutex<std::collections::HashMap<String, Bucket>>,
    proofs: Mutex<std::collections::HashMap<Vec<u8>, u64>>,
}

/// The refusal of a forwarded change whose proof was spent already.
pub fn forward_proof_reused() -> Status {
    Status::unauthenticated("forwarded auth change refused: its proof was used already")
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Rates {
    /// Takes one request of `user` allowed `per_s` a second; false if it has none left.
    fn take(&self, user: &str, per_s: u32, now: std::time::Instant) -> bool {
        take_from(&mut self.buckets.lock().expect("rates lock"), user.to_string(), per_s, now)
    }

    /// Whether `proof` was spent here already (those expired are forgotten).
    fn proof_used(&self, proof: &[u8], now_ms: u64) -> bool {
        let mut seen = self.proofs.lock().expect("proofs lock");
        seen.retain(|_, until| *until > now_ms);
        seen.contains_key(proof)
    }

    /// Spends `proof` (good until `expires_ms`): false if it was spent already.
    fn spend(&self, proof: &[u8], expires_ms: u64) -> bool {
        self.proofs.lock().expect("proofs lock").insert(proof.to_vec(), expires_ms).is_none()
    }

    /// Takes one sign-in attempt from `address` (a few a second each; IPv6 addresses by their
    /// /64, which one host usually has whole). Kept apart from the users' buckets, and bounded
    /// (as they are).
    pub fn sign_in_from(&self, address: std::net::IpAddr) -> bool {
        let key = match address {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        };
        take_from(&mut self.sign_ins.lock().expect("sign-ins lock"), key, SIGN_INS_PER_S, std::time::Instant::now())
    }
}

/// Takes one from `key`'s bucket (`per_s` a second, one second's worth at most) in `buckets`;
/// past [`MAX_BUCKETS`] keys at once the idle ones are dropped, and if none is, new keys share
/// one bucket (the map stays bounded).
fn take_from(
    buckets: &mut std::collections::HashMap<String, Bucket>,
    key: String,
    per_s: u32,
    now: std::time::Instant,
) -> bool {
    if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
        buckets.retain(|_, b| now.saturating_duration_since(b.at) < std::time::Duration::from_secs(1));
    }
    let key = if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) { "overflow".to_string() } else { key };
    let per_s = f64::from(per_s);
    let b = buckets.entry(key).or_insert(Bucket { tokens: per_s, at: now });
    b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_s).min(per_s);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// Sign-ins over HTTP per second from one address.
pub const SIGN_INS_PER_S: u32 = 2;

/// A hash no password matches (made once), verified against for unknown users.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| secrets::hash_password("no user has this password").expect("hashing works"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The common name of a certificate's subject.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

impl Access {
    /// Checks against the users and roles `view` publishes, counting refusals in `metrics`.
    pub fn new(view: Arc<Mutex<ClusterView>>, metrics: Arc<crate::obs::Metrics>) -> Access {
        let rates = view.lock().expect("view lock").rates.clone();
        Access { view, metrics, rates }
    }

    /// Who a node request is for (its user and quota; `None`: anyone, authentication off).
    pub fn principal(&self, caller: &Caller) -> Option<baton_core::command::Principal> {
        let name = caller.user()?;
        let quota = self.state().quota_of(name);
        Some(baton_core::command::Principal { name: name.into(), quota })
    }

    /// Spends a forwarded change's proof once the change ran here (see
    /// [`Access::check_forwarded_admin`]): false if another call spent it first.
    pub fn spend_forward_proof(&self, proof: &ForwardProof) -> bool {
        self.rates.spend(&proof.mac, proof.expires_ms)
    }

    /// The sign-in attempts of this node lately (HTTP sign-ins take one per address).
    pub fn rates(&self) -> &Rates {
        &self.rates
    }

    /// Counts a request of `caller` against its `requests_per_s` quota on this node
    /// (RESOURCE_EXHAUSTED past it, saying so). Renewals and releases are not charged: shedding
    /// them would turn overload into lost sessions.
    pub fn charge(&self, caller: &Caller) -> Result<(), Status> {
        let Some(user) = caller.user() else { return Ok(()) };
        let per_s = self.state().quota_of(user).requests_per_s;
        if per_s == 0 || self.rates.take(user, per_s, std::time::Instant::now()) {
            return Ok(());
        }
        self.metrics.access_denied("quota");
        let status = Status::resource_exhausted(format!(
            "quota: user {user:?} is over its {per_s} requests per second on this node (baton user quota); \
             slow down and retry"
        ));
        // Busy: nothing was done, and Baton's clients back off and try again.
        Err(crate::status::with_info(status, baton_proto::v1::error_info::Reason::Busy, 0, String::new()))
    }

    /// The users and roles now.
    pub fn state(&self) -> Arc<AuthState> {
        self.view.lock().expect("view lock").auth.clone()
    }

    /// Who sent a request with this metadata over a connection with these client certificates.
    pub fn caller(&self, metadata: &MetadataMap, certs: Option<&[CertificateDer<'static>]>) -> Result<Caller, Status> {
        let (auth, ready) = {
            let view = self.view.lock().expect("view lock");
            (view.auth.clone(), view.auth_ready)
        };
        if !ready {
            // Fail closed: the rules here may be older than the cluster's (a restart, a join).
            // Answered as "no leader here yet": nothing was done, and the client tries again.
            let status = Status::unavailable(
                "this node has not caught up with the cluster's users and roles since it started: try again shortly",
            );
            return Err(crate::status::with_info(
                status,
                baton_proto::v1::error_info::Reason::NotLeader,
                0,
                String::new(),
            ));
        }
        if !auth.enabled {
            return Ok(Caller::Anyone);
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| metadata.get("token").and_then(|v| v.to_str().ok()));
        if let Some(token) = token {
            let claims = secrets::open_token(&auth.token_key, token)
                .map_err(|why| Status::unauthenticated(format!("invalid token: {why}")))?;
            let caller = Caller::User { name: claims.user.clone(), token: Some(claims) };
            Self::still_valid(&auth, &caller)?;
            return Ok(caller);
        }
        if let Some(user) = certs.and_then(|c| c.first()).and_then(common_name) {
            if auth.users.contains_key(&user) {
                return Ok(Caller::User { name: user, token: None });
            }
        }
        Err(Status::unauthenticated(
            "authentication is on: give a token (Authenticate, then `authorization: Bearer <token>`) or a client \
             certificate whose common name is a user",
        ))
    }

    /// Whether `caller`'s credentials still hold: authentication on means a user, whose token
    /// (if that is how it came) has not expired nor been outdated by a change to the user.
    fn still_valid(auth: &AuthState, caller: &Caller) -> Result<(), Status> {
        let (name, token) = match caller {
            Caller::Anyone => {
                return Err(Status::unauthenticated(
                    "authentication was turned on since this stream opened: open it again with credentials",
                ))
            }
            Caller::User { name, token } => (name, token),
        };
        let Some(user) = auth.users.get(name) else {
            return Err(Status::unauthenticated(format!("user {name:?} no longer exists")));
        };
        if let Some(claims) = token {
            let now = now_ms();
            if claims.expires_ms <= now {
                return Err(Status::unauthenticated("the token has expired: authenticate again"));
            }
            // No token of ours lives longer than TOKEN_TTL (a minute allowed for clock skew
            // between nodes): a longer one was not made by a node.
            if claims.expires_ms > now + TOKEN_TTL.as_millis() as u64 + 60_000 {
                return Err(Status::unauthenticated("the token's expiry is further away than any token's"));
            }
            if claims.generation != user.generation {
                return Err(Status::unauthenticated(
                    "the token was made before the user's password or roles changed: authenticate again",
                ));
            }
        }
        Ok(())
    }

    /// Refuses (PERMISSION_DENIED, counted and logged) unless `caller` may do all of `needs`.
    /// `rpc` names the call in the message and the log.
    pub fn check(&self, caller: &Caller, rpc: &str, needs: &[Need]) -> Result<(), Status> {
        let auth = self.state();
        if !auth.enabled {
            return Ok(());
        }
        Self::still_valid(&auth, caller)?;
        let Caller::User { name: user, .. } = caller else { unreachable!("still_valid refuses Anyone") };
        for need in needs {
            if !need.allowed(&auth, user) {
                self.metrics.access_denied(need.permission.name());
                tracing::warn!(
                    target: "baton::audit",
                    user = %user,
                    rpc,
                    permission = need.permission.name(),
                    names = %need.describe(),
                    "permission denied"
                );
                return Err(Status::permission_denied(format!(
                    "user {user:?} lacks the {} permission on {} ({rpc})",
                    need.permission.name(),
                    need.describe()
                )));
            }
        }
        Ok(())
    }

    /// Who sent `request`: the [`Caller`] its extensions carry (a call of a `Call` stream
    /// carries its stream's: extensions never come from the wire), else [`Access::caller`].
    pub fn caller_of<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return Ok(caller.clone());
        }
        let certs = request.peer_certs();
        self.caller(request.metadata(), certs.as_deref().map(|c| c.as_slice()))
    }

    /// Who the caller is and whether it may: [`Access::caller_of`] then [`Access::check`].
    pub fn admit<T>(&self, request: &tonic::Request<T>, rpc: &str, needs: &[Need]) -> Result<Caller, Status> {
        let caller = self.caller_of(request)?;
        self.check(&caller, rpc, needs)?;
        Ok(caller)
    }

    /// For RPCs that show no names (status, the slot map): before this node has caught up with
    /// the users and roles anyone is let through (operators and clients need them to see a
    /// node start); after, as [`Access::admit`] with no need.
    pub fn admit_nameless<T>(&self, request: &tonic::Request<T>, rpc: &str) -> Result<Caller, Status> {
        if !self.view.lock().expect("view lock").auth_ready {
            return Ok(Caller::Anyone);
        }
        self.admit(request, rpc, &[])
    }

    /// Whether this node serves requests yet (see [`crate::runtime::ClusterView::auth_ready`]).
    pub fn ready(&self) -> bool {
        self.view.lock().expect("view lock").auth_ready
    }

    /// Whether `caller` may do `need` (to leave out of an answer what it may not see: nothing
    /// is counted or logged).
    pub fn allows(&self, caller: &Caller, need: &Need) -> bool {
        let auth = self.state();
        match caller {
            _ if !auth.enabled => true,
            Caller::Anyone => false,
            Caller::User { name, .. } => need.allowed(&auth, name),
        }
    }

    /// Whether `caller` may read `name` (to leave out of an answer what it may not see).
    pub fn may_read(&self, caller: &Caller, name: &str) -> bool {
        let auth = self.state();
        match caller {
            _ if !auth.enabled => true,
            Caller::Anyone => false,
            Caller::User { name: user, .. } => auth.allows(user, Permission::Read, &NameRange::name(name)),
        }
    }

    /// What proves to any node that `session` is `caller`'s (empty for anyone: authentication
    /// off). See [`secrets::session_proof`].
    pub fn session_proof(&self, caller: &Caller, session: u64) -> Vec<u8> {
        match caller.user() {
            Some(user) => secrets::session_proof(&self.state().token_key, session, user),
            None => Vec::new(),
        }
    }

    /// Refuses (PERMISSION_DENIED) to attach `session` for `caller` unless `proof` shows its
    /// home opened it for that user.
    pub fn check_session_proof(&self, caller: &Caller, session: u64, proof: &[u8]) -> Result<(), Status> {
        let Some(user) = caller.user() else { return Ok(()) };
        if secrets::check_session_proof(&self.state().token_key, session, user, proof) {
            return Ok(());
        }
        self.metrics.access_denied("session");
        tracing::warn!(target: "baton::audit", user, session, "attach of a session without its proof");
        Err(Status::permission_denied(format!(
            "session {session} cannot be attached for user {user:?}: its session_proof is missing or is not the one \
             its OpenSession gave this user"
        )))
    }

    /// A new token for the user of `caller`'s token, while that token still holds and its
    /// sign-in is less than [`RENEW_LIMIT`] old (the dashboard's way to stay signed in without
    /// keeping the password): the same user, generation and sign-in time, a fresh expiry. A
    /// change to the user still ends it.
    pub fn renew(&self, caller: &Caller) -> Result<String, Status> {
        let auth = self.state();
        if !auth.enabled {
            return Err(Status::failed_precondition("authentication is not enabled"));
        }
        Self::still_valid(&auth, caller)?;
        let Caller::User { name, token: Some(claims) } = caller else {
            return Err(Status::failed_precondition("only a token is renewed (client certificates need none)"));
        };
        let now = now_ms();
        if now.saturating_sub(claims.since_ms) >= RENEW_LIMIT.as_millis() as u64 {
            return Err(Status::unauthenticated("signed in too long ago to renew: sign in again"));
        }
        let expires = now + TOKEN_TTL.as_millis() as u64;
        Ok(secrets::sign_token(&auth.token_key, name, claims.generation, expires, claims.since_ms))
    }

    /// What proves to the node that runs it that `caller` asked for `change` (`None` for
    /// anyone: authentication off): good for a minute, for this change only, once.
    pub fn forward_proof(&self, caller: &Caller, change: &AuthCommand) -> Option<ForwardProof> {
        let name = caller.user()?;
        let auth = self.state();
        let generation = auth.users.get(name)?.generation;
        let expires_ms = now_ms() + FORWARD_PROOF_TTL.as_millis() as u64;
        let bytes = bincode::serialize(change).expect("auth changes serialise");
        let mac = secrets::forward_mac(&auth.token_key, name, generation, expires_ms, &bytes);
        Some(ForwardProof { user: name.to_string(), generation, expires_ms, mac })
    }

    /// Refuses a change to users and roles that another node forwards unless `proof` shows an
    /// administrator here asked for exactly it, lately, and it was not run before (with
    /// authentication on; with it off anyone may, as on every API).
    pub fn check_forwarded_admin(&self, proof: Option<&ForwardProof>, change: &AuthCommand) -> Result<(), Status> {
        let auth = self.state();
        if !auth.enabled {
            return Ok(());
        }
        let refused = |why: &str| Status::unauthenticated(format!("forwarded auth change refused: {why}"));
        let Some(p) = proof else { return Err(refused("no proof of who asked for it")) };
        let now = now_ms();
        if p.expires_ms <= now || p.expires_ms > now + FORWARD_PROOF_TTL.as_millis() as u64 + 60_000 {
            return Err(refused("its proof has expired or was not made by a node"));
        }
        let bytes = bincode::serialize(change).expect("auth changes serialise");
        if !secrets::check_forward_mac(&auth.token_key, &p.user, p.generation, p.expires_ms, &bytes, &p.mac) {
            return Err(refused("its proof does not match it"));
        }
        if auth.users.get(&p.user).map(|u| u.generation) != Some(p.generation) {
            return Err(refused("its user changed since"));
        }
        if self.rates.proof_used(&p.mac, now) {
            return Err(forward_proof_reused());
        }
        let caller = Caller::User { name: p.user.clone(), token: None };
        self.check(&caller, "forwarded auth change", &[Need::everything(Permission::Admin)])
    }

    /// A token for `user` if `password` is its password (UNAUTHENTICATED otherwise, saying no
    /// more than that: which of the two was wrong is not told).
    pub fn authenticate(&self, user: &str, password: &str) -> Result<String, Status> {
        if !self.ready() {
            return Err(Status::unavailable("this node has not caught up with the cluster's users and roles yet"));
        }
        let auth = self.state();
        if !auth.enabled {
            return Err(Status::failed_precondition("authentication is not enabled"));
        }
        let refused = || Status::unauthenticated("authentication failed: wrong user name or password");
        let known = auth.users.get(user).and_then(|u| Some((u, u.password_hash.as_deref()?)));
        // An unknown user costs a verification too: the time taken does not tell who exists.
        let hash = known.map_or(dummy_hash(), |(_, h)| h);
        let verified = secrets::verify_password(password, hash);
        let Some((u, _)) = known.filter(|_| verified) else {
            tracing::warn!(target: "baton::audit", user, "authentication failed");
            return Err(refused());
        };
        let now = now_ms();
        Ok(secrets::sign_token(&auth.token_key, user, u.generation, now + TOKEN_TTL.as_millis() as u64, now))
    }
}
