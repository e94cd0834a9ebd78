//! Certificates for TLS tests: one CA, a certificate per node (client-facing and peer in one,
//! naming `node-<id>` and 127.0.0.1) and client certificates, as files in a temporary folder.

use std::path::PathBuf;
use std::sync::Arc;

use baton_server::tls::{PeerFiles, TlsConfig};
use baton_tls::dev::{Authority, Use, Validity};
use baton_tls::pki_types::pem::PemObject;
use baton_tls::pki_types::{CertificateDer, ServerName};
use baton_tls::{ClientFiles, ServerFiles};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Authority,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap(), ca: Authority::new("test CA").unwrap() };
        std::fs::write(pki.ca_file(), pki.ca.cert_pem()).unwrap();
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Node `id`'s certificate files (made on first use).
    pub fn node_files(&self, id: u64) -> (PathBuf, PathBuf) {
        let stem = format!("node{id}");
        let cert = self.dir.path().join(format!("{stem}.pem"));
        if !cert.exists() {
            self.issue_node(&stem, id);
        }
        (cert, self.dir.path().join(format!("{stem}-key.pem")))
    }

    /// Writes a certificate naming node `node` (and 127.0.0.1) as `<stem>.pem` and
    /// `<stem>-key.pem`, over what was there (a rotation).
    pub fn issue_node(&self, stem: &str, node: u64) {
        self.ca.issue_node(node, &["127.0.0.1"]).unwrap().write(self.dir.path(), stem).unwrap();
    }

    /// Node `id`'s TLS: TLS with client certificates required on the client ports, mutual TLS
    /// between nodes, all with the node's one certificate.
    pub fn node_config(&self, id: u64) -> TlsConfig {
        let (cert, key) = self.node_files(id);
        TlsConfig {
            serve: Some(ServerFiles { cert: cert.clone(), key: key.clone(), client_ca: Some(self.ca_file()) }),
            peer: Some(PeerFiles { cert, key, ca: self.ca_file() }),
            join: None,
        }
    }

    /// A client certificate for `user` (written over any earlier one of that name).
    pub fn client_cert(&self, user: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(user, &[], Use::Client, validity).unwrap();
        issued.write(self.dir.path(), &format!("client-{user}")).unwrap()
    }

    /// Client TLS files with a (new) certificate for `user`.
    pub fn client_files(&self, user: &str) -> ClientFiles {
        ClientFiles { ca: self.ca_file(), identity: Some(self.client_cert(user, Validity::default())) }
    }

    /// The leaf certificate (DER) in a PEM file.
    pub fn leaf(path: &std::path::Path) -> Vec<u8> {
        CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().to_vec()
    }

    /// The leaf certificate a TLS port at `addr` serves now (dialled with `client`).
    pub async fn served_leaf(addr: &str, client: &ClientFiles) -> Vec<u8> {
        let config = Arc::new(client.build().unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }
}
