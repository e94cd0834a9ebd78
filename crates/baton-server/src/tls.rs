//! A node's TLS settings, built into the configs its ports serve and its peers dial with.
//!
//! The client API and the etcd API share one config (`--tls-cert`, `--tls-key`; with
//! `--client-ca` a client must present a certificate that CA signed); the HTTP port serves the
//! same certificate but only verifies a client certificate when one is given, so that browsers
//! and Prometheus can reach it with TLS alone. The peer port is mutual TLS or nothing: every
//! node presents its `--peer-cert` (naming `node-<id>`) and trusts `--peer-ca` only, both when
//! it accepts a stream and when it dials one (see [`crate::transport`], "Handshake", for the
//! identity check). All of them reload without a restart (see `baton_tls`).

use std::path::PathBuf;
use std::sync::Arc;

use baton_node::NodeId;
use baton_tls::{ClientAuth, ClientFiles, ClientTls, Dialer, Reload, ServerFiles, ServerTls};

/// The TLS files of a node (all `None`: plaintext everywhere).
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// The client-facing ports' certificate, key and optional client CA.
    pub serve: Option<ServerFiles>,
    /// The peer port's mutual TLS.
    pub peer: Option<PeerFiles>,
    /// How a joining node reaches the cluster's client API (`--join`).
    pub join: Option<ClientFiles>,
}

/// A node's peer certificate (naming `node-<id>`), its key, and the CA all peers' certificates
/// come from.
#[derive(Clone, Debug)]
pub struct PeerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The configs built from a [`TlsConfig`].
#[derive(Default)]
pub struct Tls {
    /// The client and etcd API ports' config.
    pub client: Option<Arc<ServerTls>>,
    /// The HTTP port's config.
    pub http: Option<Arc<ServerTls>>,
    /// The peer port's config.
    pub peer_server: Option<Arc<ServerTls>>,
    /// What peers are dialled with.
    peer_client: Option<Arc<ClientTls>>,
    /// What `--join` dials with.
    pub join: Dialer,
}

fn io_error(what: &str, e: baton_tls::Error) -> std::io::Error {
    std::io::Error::other(format!("TLS for {what}: {e}"))
}

impl Tls {
    /// Reads and checks every file now: a node does not start with a certificate it cannot use.
    pub fn build(config: &TlsConfig, id: NodeId) -> std::io::Result<Tls> {
        let mut tls = Tls::default();
        if let Some(files) = &config.serve {
            let auth = ClientAuth::Required;
            let client = ServerTls::server("client and etcd API", files.clone(), auth, &[b"h2"]);
            tls.client = Some(Arc::new(client.map_err(|e| io_error("the client API", e))?));
            let http = ServerTls::server("HTTP", files.clone(), ClientAuth::Optional, &[b"http/1.1"]);
            tls.http = Some(Arc::new(http.map_err(|e| io_error("HTTP", e))?));
        }
        if let Some(p) = &config.peer {
            let files = ServerFiles { cert: p.cert.clone(), key: p.key.clone(), client_ca: Some(p.ca.clone()) };
            let server = ServerTls::for_node(id, files);
            tls.peer_server = Some(Arc::new(server.map_err(|e| io_error("the peer port", e))?));
            let files = ClientFiles { ca: p.ca.clone(), identity: Some((p.cert.clone(), p.key.clone())) };
            let client = ClientTls::for_node(id, files).map_err(|e| io_error("peer connections", e))?;
            tls.peer_client = Some(Arc::new(client));
        }
        if let Some(files) = &config.join {
            let client = ClientTls::client("joining", files.clone()).map_err(|e| io_error("joining", e))?;
            tls.join = Dialer::new(Some(Arc::new(client)));
        }
        Ok(tls)
    }

    /// Whether the peer port runs mutual TLS.
    pub fn peers_mtls(&self) -> bool {
        self.peer_server.is_some()
    }

    /// What node `to` is dialled with: its certificate must name it.
    pub fn peer_dialer(&self) -> PeerDialer {
        PeerDialer(Dialer::new(self.peer_client.clone()))
    }

    /// Keeps every config current (see `baton_tls::watch`) until the task is aborted.
    pub fn watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut all: Vec<Arc<dyn Reload>> = Vec::new();
        for s in [&self.client, &self.http, &self.peer_server].into_iter().flatten() {
            all.push(s.clone());
        }
        if let Some(c) = &self.peer_client {
            all.push(c.clone());
        }
        (!all.is_empty()).then(|| baton_tls::watch(all))
    }
}

/// Dials peers: with mutual TLS, node `to`'s certificate must name `node-<to>`.
#[derive(Clone, Debug, Default)]
pub struct PeerDialer(Dialer);

impl PeerDialer {
    /// The dialer for node `to`.
    pub fn to(&self, to: NodeId) -> Dialer {
        if self.0.is_tls() {
            self.0.server_name(baton_tls::node_name(to))
        } else {
            self.0.clone()
        }
    }

    /// `http` or `https`, for the URLs etcd's member list shows.
    pub fn scheme(&self) -> &'static str {
        self.0.scheme()
    }
}
