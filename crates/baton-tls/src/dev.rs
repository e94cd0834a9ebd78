//! Throw-away certificates: a CA and the certificates it signs, for `baton dev --tls` and tests.
//!
//! Keys are ECDSA P-256. Node certificates serve and dial (server and client use), name the
//! node ([`crate::node_name`]) and the addresses it is reached at; client certificates name a
//! user as their common name (how a certificate maps to a user).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority that lives as long as this value.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A node: server and client authentication.
    Node,
    /// A client only.
    Client,
}

/// Validity of an issued certificate, in whole days around now.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Days before now it starts being valid.
    pub from_days_ago: i64,
    /// Days after now it stops being valid (negative: already expired).
    pub until_days_ahead: i64,
}

impl Default for Validity {
    /// From a day ago for a year.
    fn default() -> Self {
        Validity { from_days_ago: 1, until_days_ahead: 365 }
    }
}

fn err(e: rcgen::Error) -> crate::Error {
    crate::Error::Config(format!("cannot make a certificate: {e}"))
}

impl Authority {
    /// A new CA called `name`.
    pub fn new(name: &str) -> crate::Result<Authority> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(err)?).map_err(err)?;
        Ok(Authority { issuer })
    }

    /// The CA's certificate (what clients and nodes trust).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `common_name` valid for `names` (DNS names or IP addresses).
    pub fn issue(&self, common_name: &str, names: &[String], usage: Use, validity: Validity) -> crate::Result<Issued> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(err)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = match usage {
            Use::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Use::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let shift = |days: i64| {
            if days >= 0 {
                now + day * days as u32
            } else {
                now - day * days.unsigned_abs() as u32
            }
        };
        params.not_before = shift(-validity.from_days_ago).into();
        params.not_after = shift(validity.until_days_ahead).into();
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
    }

    /// A node certificate for node `id` reached at `hosts` (its [`crate::node_name`] is added).
    pub fn issue_node(&self, id: u64, hosts: &[&str]) -> crate::Result<Issued> {
        let mut names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        names.push(crate::node_name(id));
        self.issue(&crate::node_name(id), &names, Use::Node, Validity::default())
    }
}

impl Issued {
    /// Writes `<stem>.pem` and `<stem>-key.pem` into `dir` (the key readable by its owner only)
    /// and returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        // The key first: a watcher that sees the new certificate finds its key in place.
        write_private(&key, &self.key)?;
        write_public(&cert, &self.cert)?;
        Ok((cert, key))
    }
}

/// Writes a file only its owner can read: a new file (never one that exists, nor through a
/// link) renamed over `path`, so that a node watching `path` never reads half of it and an
/// older file's permissions never carry over.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&temp, path)
}

/// Writes a file anyone may read, by rename (see [`write_private`]).
fn write_public(path: &Path, contents: &str) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, contents)?;
    std::fs::rename(&temp, path)
}

/// The files of a development setup (see [`write_dev_set`]).
#[derive(Clone, Debug)]
pub struct DevSet {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The node's certificate (client-facing ports and peers) and key.
    pub node: (PathBuf, PathBuf),
    /// A client certificate for the user `root`, and its key.
    pub client: (PathBuf, PathBuf),
}

/// Makes (or, if they are all there, keeps) a CA, a certificate for node `id` on localhost
/// and 127.0.0.1, and a client certificate for `root`, in `dir`. The CA's key is not kept:
/// nothing more can be signed with it, which is what a throw-away setup wants.
pub fn write_dev_set(dir: &Path, id: u64) -> crate::Result<DevSet> {
    let set = DevSet {
        ca: dir.join("ca.pem"),
        node: (dir.join("node.pem"), dir.join("node-key.pem")),
        client: (dir.join("client.pem"), dir.join("client-key.pem")),
    };
    let all = [&set.ca, &set.node.0, &set.node.1, &set.client.0, &set.client.1];
    if all.iter().all(|p| p.exists()) {
        return Ok(set);
    }
    let io = |e: std::io::Error| crate::Error::File { path: dir.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(io)?;
    let ca = Authority::new("baton dev CA")?;
    std::fs::write(&set.ca, ca.cert_pem()).map_err(io)?;
    ca.issue_node(id, &["localhost", "127.0.0.1", "::1"])?.write(dir, "node").map_err(io)?;
    ca.issue("root", &[], Use::Client, Validity::default())?.write(dir, "client").map_err(io)?;
    Ok(set)
}
