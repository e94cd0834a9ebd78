//! Baton's TLS: the certificates a node serves and dials with, reloaded without a restart.
//!
//! # Design
//! Every port can run TLS (rustls, ring): the client API, the etcd API and HTTP with the node's
//! client-facing certificate (`--tls-cert`, `--tls-key`; `--client-ca` makes them ask for client
//! certificates), and the peer port with mutual TLS only (`--peer-cert`, `--peer-key`,
//! `--peer-ca`). A node's peer certificate names its node id as the DNS name `node-<id>`
//! ([`node_name`]): a node dialling node 3 accepts only a server certificate for `node-3`, and a
//! node accepting a peer stream compares the client certificate's name with the id the stream's
//! handshake claims ([`check_node_certificate`]).
//!
//! Certificates reload without a restart: a [`Reloading`] config is rebuilt from its files when
//! they change (polled every [`POLL_EVERY`]) or on SIGHUP ([`watch`]). Each new connection takes
//! the config current when it is accepted or dialled; open connections keep the one they were
//! made with (a rotation never cuts a session's stream). A file that cannot be read or that does
//! not make a valid config (a half-written copy, a key that does not match its certificate) is
//! logged and the previous config stays in use.
//!
//! [`accept()`] turns a listener into TLS connections for tonic and axum (the handshake runs in a
//! task of its own, bounded in time, so a slow or silent client holds no other back); [`Dialer`]
//! makes tonic channels that dial with the current client config. [`dev`] makes throw-away
//! certificate authorities and certificates (`baton dev --tls`, tests).
//!
//! # Caveats
//! - No certificate revocation lists or OCSP: a stolen certificate is good until it expires or
//!   its CA is replaced (docs/SECURITY.md says how to rotate).
//! - Only PEM files; PKCS#8, PKCS#1 and SEC1 keys.

pub mod accept;
pub mod dev;
pub mod dial;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use accept::{accept, Accepted, TlsListener};
pub use dial::Dialer;
pub use rustls::pki_types;

/// How often certificate files are checked for changes.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Why a TLS config could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// rustls refused the config (e.g. a key that does not match its certificate).
    #[error("{0}")]
    Config(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The DNS name a node's peer certificate must carry: `node-<id>`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// Checks that `cert` (already verified against the peer CA by the TLS handshake) names node
/// `id` ([`node_name`]). The error says what the certificate is not valid for.
pub fn check_node_certificate(cert: &CertificateDer<'_>, id: u64) -> Result<(), String> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable peer certificate: {e}"))?;
    let name = node_name(id);
    let server_name = ServerName::try_from(name.as_str()).map_err(|e| e.to_string())?;
    parsed
        .verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("its certificate does not name {name} (peer certificates carry the DNS name node-<id>)"))
}

/// If `error` (or what caused it) is a TLS failure, what went wrong in words a user can act on.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let mut cause = Some(error);
    while let Some(e) = cause {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return Some(match tls {
                rustls::Error::AlertReceived(Alert::CertificateRequired) => {
                    "TLS: the node requires a client certificate (give --cert and --key)".to_string()
                }
                rustls::Error::AlertReceived(alert) => format!(
                    "TLS: the node refused this client's certificate ({alert:?}): is it signed by the node's \
                     client CA, and still valid?"
                ),
                rustls::Error::InvalidCertificate(why) => format!(
                    "TLS: the node's certificate is not trusted ({why:?}): is --cacert the CA that signed it, \
                     and does it name the address dialled?"
                ),
                other => format!("TLS: {other}"),
            });
        }
        cause = e.source();
    }
    None
}

/// The certificate chain in a PEM file (the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let file_error = |message: String| Error::File { path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| Error::File { path: path.to_path_buf(), message: e.to_string() })
}

/// The certificates of a CA file as trust roots.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| Error::File { path: path.to_path_buf(), message: e.to_string() })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> Error {
    Error::Config(e.to_string())
}

/// Whether a server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// It does not ask.
    Off,
    /// It asks and verifies a certificate when one is given, but takes connections without.
    Optional,
    /// A connection without a certificate the CA signed is refused.
    Required,
}

/// The files of a server's TLS config.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// Certificate chain (PEM, the leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA whose certificates clients may present (`None`: client certificates are not asked for).
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// Builds the rustls config: `alpn` the protocols offered (`h2` for gRPC, `http/1.1` for
    /// HTTP), `auth` how client certificates are treated when there is a client CA.
    pub fn build(&self, auth: ClientAuth, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
        let certs = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let builder = match (&self.client_ca, auth) {
            (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider());
                let verifier = if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
                builder.with_client_cert_verifier(verifier.build().map_err(config_error)?)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| Error::Config(format!("{} with {}: {e}", self.cert.display(), self.key.display())))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    fn paths(&self) -> Vec<PathBuf> {
        [Some(self.cert.clone()), Some(self.key.clone()), self.client_ca.clone()].into_iter().flatten().collect()
    }
}

/// The files of a client's TLS config.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    /// CA that signed the servers' certificates.
    pub ca: PathBuf,
    /// Client certificate chain and key to present (`None`: none).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientFiles {
    /// Builds the rustls config (offering `h2`: every client of ours speaks gRPC).
    pub fn build(&self) -> Result<rustls::ClientConfig> {
        let roots = load_roots(&self.ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| Error::Config(format!("{} with {}: {e}", cert.display(), key.display())))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.clone()];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        paths
    }
}

/// What the files of a config held when it was built (a hash of each one's contents, `None`
/// if unreadable): a change in any means a reload. Contents, not modification times: a file
/// rewritten within the same clock tick with a key of the same length is still a change.
type Stamp = Vec<Option<u64>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    use std::hash::{Hash, Hasher};
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).ok()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            Some(h.finish())
        })
        .collect()
}

/// A config built from files, rebuilt when they change.
pub struct Reloading<T> {
    /// What the config is for, in the logs ("client API", "peers").
    what: String,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T> + Send + Sync>,
    state: Mutex<ReloadState<T>>,
}

struct ReloadState<T> {
    current: Arc<T>,
    /// The files as of the current config.
    built_from: Stamp,
    /// The files as of the last failed rebuild (so a broken file is logged once, not per poll).
    failed_at: Option<Stamp>,
}

/// A server config that reloads.
pub type ServerTls = Reloading<rustls::ServerConfig>;
/// A client config that reloads.
pub type ClientTls = Reloading<rustls::ClientConfig>;

impl<T> Reloading<T> {
    /// Builds the config now (an error here is the caller's to report: a node does not start
    /// with a config it cannot build).
    pub fn new(
        what: impl Into<String>,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T> + Send + Sync + 'static,
    ) -> Result<Self> {
        let built_from = stamp(&paths);
        let current = Arc::new(build()?);
        let state = Mutex::new(ReloadState { current, built_from, failed_at: None });
        Ok(Reloading { what: what.into(), paths, build: Box::new(build), state })
    }

    /// The config new connections use.
    pub fn current(&self) -> Arc<T> {
        self.state.lock().expect("tls state lock").current.clone()
    }

    /// Rebuilds the config if its files changed since it was built (`force`: even if not).
    /// Returns whether a new config is in use; a failed rebuild keeps the old one and is logged.
    pub fn reload(&self, force: bool) -> bool {
        let now = stamp(&self.paths);
        {
            let state = self.state.lock().expect("tls state lock");
            if !force && (now == state.built_from || state.failed_at.as_ref() == Some(&now)) {
                return false;
            }
        }
        let built = (self.build)();
        let mut state = self.state.lock().expect("tls state lock");
        match built {
            Ok(config) => {
                state.current = Arc::new(config);
                state.built_from = now;
                state.failed_at = None;
                tracing::info!(what = %self.what, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                if state.failed_at.as_ref() != Some(&now) {
                    tracing::error!(what = %self.what, "TLS certificates not reloaded, the previous ones stay in use: {e}");
                }
                state.failed_at = Some(now);
                false
            }
        }
    }
}

impl ServerTls {
    /// A server config from `files` that reloads.
    pub fn server(what: &str, files: ServerFiles, auth: ClientAuth, alpn: &'static [&'static [u8]]) -> Result<Self> {
        let paths = files.paths();
        Reloading::new(what, paths, move || files.build(auth, alpn))
    }
}

impl ClientTls {
    /// A client config from `files` that reloads.
    pub fn client(what: &str, files: ClientFiles) -> Result<Self> {
        let paths = files.paths();
        Reloading::new(what, paths, move || files.build())
    }
}

/// Refuses a certificate file whose leaf does not name node `id`: a node must not start, nor
/// reload, with a certificate every peer would refuse.
fn names_node(cert: &Path, id: u64) -> Result<()> {
    let certs = load_certs(cert)?;
    check_node_certificate(&certs[0], id)
        .map_err(|e| Error::File { path: cert.to_path_buf(), message: format!("not node {id}'s certificate: {e}") })
}

impl ServerTls {
    /// Node `id`'s peer port: mutual TLS, `files.client_ca` the peer CA, its certificate naming
    /// the node (checked at every reload too).
    pub fn for_node(id: u64, files: ServerFiles) -> Result<Self> {
        let paths = files.paths();
        Reloading::new("peer port", paths, move || {
            names_node(&files.cert, id)?;
            files.build(ClientAuth::Required, &[b"h2"])
        })
    }
}

impl ClientTls {
    /// How node `id` dials its peers: its certificate, naming the node (checked at every
    /// reload too), and the peer CA.
    pub fn for_node(id: u64, files: ClientFiles) -> Result<Self> {
        let paths = files.paths();
        Reloading::new("peer connections", paths, move || {
            if let Some((cert, _)) = &files.identity {
                names_node(cert, id)?;
            }
            files.build()
        })
    }
}

/// Something [`watch`] keeps current.
pub trait Reload: Send + Sync {
    /// See [`Reloading::reload`].
    fn reload(&self, force: bool) -> bool;
}

impl<T: Send + Sync> Reload for Reloading<T> {
    fn reload(&self, force: bool) -> bool {
        Reloading::reload(self, force)
    }
}

/// Keeps `configs` current until the returned task is aborted: checks their files every
/// [`POLL_EVERY`], and rebuilds all of them on SIGHUP.
pub fn watch(configs: Vec<Arc<dyn Reload>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = poll.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            for c in &configs {
                c.reload(force);
            }
        }
    })
}

#[cfg(test)]
mod tests;
