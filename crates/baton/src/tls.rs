//! TLS on the command line: the client flags every verb takes (`--cacert`, `--cert`, `--key`,
//! like etcdctl's, or `BATON_CACERT`, `BATON_CERT`, `BATON_KEY`), the server's certificate
//! flags, and `baton dev --tls`'s throw-away certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use baton_server::tls::{PeerFiles, TlsConfig};
use baton_tls::dev::DevSet;
use baton_tls::{ClientFiles, ServerFiles};

/// How every verb dials the nodes.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ClientTlsArgs {
    /// Dial the nodes with TLS, trusting the CA in this PEM file (env BATON_CACERT).
    #[arg(long, global = true, env = "BATON_CACERT")]
    cacert: Option<PathBuf>,
    /// Present this client certificate (PEM) to nodes that ask for one (env BATON_CERT).
    #[arg(long, global = true, env = "BATON_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM) (env BATON_KEY).
    #[arg(long, global = true, env = "BATON_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The client TLS files (`None`: plaintext); a certificate without a CA is an error.
    pub(crate) fn files(&self) -> Result<Option<ClientFiles>, String> {
        let identity = self.cert.clone().zip(self.key.clone());
        match &self.cacert {
            Some(ca) => Ok(Some(ClientFiles { ca: ca.clone(), identity })),
            None if identity.is_some() => {
                Err("--cert needs --cacert: the CA that signed the nodes' certificates".into())
            }
            None => Ok(None),
        }
    }
}

static CLIENT_TLS: OnceLock<Option<ClientFiles>> = OnceLock::new();

/// Sets how this process dials (once, from the command line).
pub(crate) fn set_client(files: Option<ClientFiles>) {
    let _ = CLIENT_TLS.set(files);
}

/// How this process dials the nodes.
pub(crate) fn client() -> Option<ClientFiles> {
    CLIENT_TLS.get().cloned().flatten()
}

/// A server's certificates.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ServerTlsArgs {
    /// Serve the client, etcd and HTTP ports with TLS: this certificate chain (PEM) ...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA on the client and etcd ports (mutual TLS;
    /// the HTTP port checks one when given).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Mutual TLS between nodes: this node's certificate (PEM), which must name `node-<id>` as
    /// a DNS name ...
    #[arg(long, requires_all = ["peer_key", "peer_ca"])]
    peer_cert: Option<PathBuf>,
    /// ... its private key (PEM) ...
    #[arg(long, requires_all = ["peer_cert", "peer_ca"])]
    peer_key: Option<PathBuf>,
    /// ... and the CA that signed every node's certificate.
    #[arg(long, requires_all = ["peer_cert", "peer_key"])]
    peer_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server's TLS config (`join`: how `--join` dials, from the client flags).
    pub(crate) fn config(&self, join: Option<ClientFiles>) -> TlsConfig {
        let serve = self.tls_cert.clone().zip(self.tls_key.clone()).map(|(cert, key)| ServerFiles {
            cert,
            key,
            client_ca: self.client_ca.clone(),
        });
        let peer = match (&self.peer_cert, &self.peer_key, &self.peer_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(PeerFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => None,
        };
        TlsConfig { serve, peer, join }
    }
}

/// `baton dev --tls`: a throw-away CA and certificates in `<data>/tls` (made once, kept), every
/// port served with them, client certificates required on the client and etcd ports.
pub(crate) fn dev(data: &Path) -> Result<(TlsConfig, DevSet), String> {
    let set = baton_tls::dev::write_dev_set(&data.join("tls"), 1).map_err(|e| e.to_string())?;
    let (cert, key) = set.node.clone();
    let config = TlsConfig {
        serve: Some(ServerFiles { cert: cert.clone(), key: key.clone(), client_ca: Some(set.ca.clone()) }),
        peer: Some(PeerFiles { cert, key, ca: set.ca.clone() }),
        join: None,
    };
    Ok((config, set))
}

/// How to reach a `baton dev --tls` server with `set`'s certificates.
pub(crate) fn dev_notes(
    set: &DevSet,
    client: SocketAddr,
    etcd: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> Vec<String> {
    let (ca, cert, key) = (set.ca.display(), set.client.0.display(), set.client.1.display());
    let folder = set.ca.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let mut lines = vec![
        format!("TLS on every port, with throw-away certificates in {folder} (delete it for new ones):"),
        format!("  export BATON_CACERT={ca} BATON_CERT={cert} BATON_KEY={key}"),
        format!("  baton status --endpoints {client}   (the client certificate is the user root's)"),
    ];
    if let Some(a) = etcd {
        lines.push(format!("  etcdctl --endpoints https://{a} --cacert {ca} --cert {cert} --key {key} get x"));
    }
    if let Some(a) = http {
        lines.push(format!("  curl --cacert {ca} https://{a}/metrics"));
    }
    lines
}

/// `baton certs`: a CA, a certificate per node and one per user in `dir`; the files written.
pub(crate) fn make_certs(dir: &Path, nodes: &str, hosts: &str, users: &str) -> Result<Vec<PathBuf>, String> {
    use baton_tls::dev::{Authority, Use, Validity};
    let list = |s: &str| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect::<Vec<_>>();
    let ids = list(nodes)
        .iter()
        .map(|n| n.parse::<u64>().map_err(|_| format!("--nodes: {n:?} is not a node id")))
        .collect::<Result<Vec<_>, _>>()?;
    let hosts = list(hosts);
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let ca = Authority::new("baton CA").map_err(|e| e.to_string())?;
    let mut written = vec![dir.join("ca.pem")];
    std::fs::write(&written[0], ca.cert_pem()).map_err(io)?;
    for id in ids {
        let issued = ca.issue_node(id, &hosts).map_err(|e| e.to_string())?;
        let (cert, key) = issued.write(dir, &baton_tls::node_name(id)).map_err(io)?;
        written.extend([cert, key]);
    }
    for user in list(users) {
        let issued = ca.issue(&user, &[], Use::Client, Validity::default()).map_err(|e| e.to_string())?;
        let (cert, key) = issued.write(dir, &format!("client-{user}")).map_err(io)?;
        written.extend([cert, key]);
    }
    Ok(written)
}
