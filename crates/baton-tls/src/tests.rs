use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dev::{Authority, Use, Validity};
use super::*;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn ca(&self, ca: &Authority, name: &str) -> PathBuf {
        std::fs::write(self.path(name), ca.cert_pem()).unwrap();
        self.path(name)
    }
    fn issued(&self, issued: dev::Issued, stem: &str) -> (PathBuf, PathBuf) {
        issued.write(self.dir.path(), stem).unwrap()
    }
}

/// Serves one TLS port that echoes a line, and dials it with `client`: the error of the first
/// side that refused, or what came back.
async fn round_trip(server: Arc<ServerTls>, client: ClientFiles, name: &str) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut accepted = accept(listener, server, "test");
    tokio::spawn(async move {
        while let Some((mut s, _)) = accepted.recv().await {
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = s.write_all(&buf).await;
                let _ = s.flush().await;
            }
        }
    });
    let config = client.build().map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut s =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    s.write_all(b"hello").await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 5];
    // TLS 1.3 reports a refused client certificate on the first read, not in the handshake.
    s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&back).into_owned())
}

fn server(f: &Files, ca: &Authority, client_ca: Option<PathBuf>, auth: ClientAuth) -> Arc<ServerTls> {
    let (cert, key) = f.issued(ca.issue_node(1, &["127.0.0.1"]).unwrap(), "server");
    Arc::new(ServerTls::server("test", ServerFiles { cert, key, client_ca }, auth, &[b"h2"]).unwrap())
}

#[tokio::test]
async fn mutual_tls_takes_the_cas_certificates_and_refuses_others() {
    let f = Files::new();
    let ca = Authority::new("test CA").unwrap();
    let other = Authority::new("another CA").unwrap();
    let ca_file = f.ca(&ca, "ca.pem");
    let other_file = f.ca(&other, "other.pem");
    let srv = server(&f, &ca, Some(ca_file.clone()), ClientAuth::Required);
    let good = f.issued(ca.issue("alice", &[], Use::Client, Validity::default()).unwrap(), "alice");
    let foreign = f.issued(other.issue("mallory", &[], Use::Client, Validity::default()).unwrap(), "mallory");
    let expired = Validity { from_days_ago: 30, until_days_ahead: -1 };
    let stale = f.issued(ca.issue("old", &[], Use::Client, expired).unwrap(), "old");
    let with = |identity| ClientFiles { ca: ca_file.clone(), identity };

    assert_eq!(round_trip(srv.clone(), with(Some(good.clone())), "127.0.0.1").await, Ok("hello".into()));
    for (what, identity) in [("none", None), ("foreign", Some(foreign)), ("expired", Some(stale))] {
        let refused = round_trip(srv.clone(), with(identity), "127.0.0.1").await;
        assert!(refused.is_err(), "a client with {what} certificate was served");
    }
    // The client refuses a server its CA did not sign, and one not named as dialled.
    let trusting_other = ClientFiles { ca: other_file, identity: Some(good.clone()) };
    let refused = round_trip(srv.clone(), trusting_other, "127.0.0.1").await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
    let refused = round_trip(srv.clone(), with(Some(good)), "node-2").await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
}

#[tokio::test]
async fn optional_client_auth_takes_connections_without_a_certificate() {
    let f = Files::new();
    let ca = Authority::new("test CA").unwrap();
    let ca_file = f.ca(&ca, "ca.pem");
    let srv = server(&f, &ca, Some(ca_file.clone()), ClientAuth::Optional);
    assert_eq!(round_trip(srv, ClientFiles { ca: ca_file, identity: None }, "127.0.0.1").await, Ok("hello".into()));
}

#[test]
fn a_node_certificate_names_its_node_only() {
    let ca = Authority::new("test CA").unwrap();
    let issued = ca.issue_node(3, &["127.0.0.1"]).unwrap();
    let der = CertificateDer::from_pem_slice(issued.cert.as_bytes()).unwrap();
    assert_eq!(check_node_certificate(&der, 3), Ok(()));
    let refused = check_node_certificate(&der, 2).unwrap_err();
    assert!(refused.contains("does not name node-2"), "{refused}");
    let client = ca.issue("node-2", &[], Use::Client, Validity::default()).unwrap();
    let der = CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap();
    assert!(check_node_certificate(&der, 2).is_err(), "a common name is not a node name");
}

#[test]
fn a_changed_file_reloads_and_a_broken_one_keeps_the_old_config() {
    let f = Files::new();
    let ca = Authority::new("test CA").unwrap();
    let srv = server(&f, &ca, None, ClientAuth::Off);
    let first = srv.current();
    assert!(!srv.reload(false), "nothing changed");
    assert!(Arc::ptr_eq(&first, &srv.current()));
    // A half-written certificate: refused, the old config stays.
    std::fs::write(f.path("server.pem"), "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    assert!(!srv.reload(false));
    assert!(Arc::ptr_eq(&first, &srv.current()));
    // A new pair: taken.
    f.issued(ca.issue_node(1, &["127.0.0.1"]).unwrap(), "server");
    assert!(srv.reload(false));
    assert!(!Arc::ptr_eq(&first, &srv.current()));
    // A key that does not match its certificate is refused too.
    let stray = ca.issue_node(1, &["127.0.0.1"]).unwrap();
    std::fs::write(f.path("server-key.pem"), stray.key).unwrap();
    let before = srv.current();
    assert!(!srv.reload(false));
    assert!(Arc::ptr_eq(&before, &srv.current()));
}

#[test]
fn the_dev_set_is_made_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let set = dev::write_dev_set(dir.path(), 1).unwrap();
    let ca = std::fs::read(&set.ca).unwrap();
    dev::write_dev_set(dir.path(), 1).unwrap();
    assert_eq!(std::fs::read(&set.ca).unwrap(), ca, "an existing set is kept");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&set.node.1).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    let files = ServerFiles { cert: set.node.0, key: set.node.1, client_ca: Some(set.ca.clone()) };
    files.build(ClientAuth::Required, &[b"h2"]).unwrap();
    ClientFiles { ca: set.ca, identity: Some(set.client) }.build().unwrap();
}

#[tokio::test]
async fn silent_connections_from_one_address_keep_no_one_else_out() {
    use tokio::net::TcpSocket;
    let f = Files::new();
    let ca = Authority::new("test CA").unwrap();
    let ca_file = f.ca(&ca, "ca.pem");
    let srv = server(&f, &ca, None, ClientAuth::Off);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut accepted = accept(listener, srv, "test");
    let from = |ip: &str| {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        s.connect(addr)
    };
    // A full share of silent connections from 127.0.0.2: the next one from there is closed at once.
    let mut silent = Vec::new();
    for _ in 0..accept::MAX_HANDSHAKES_PER_IP {
        silent.push(from("127.0.0.2").await.unwrap());
    }
    let mut extra = from("127.0.0.2").await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the connection past the bound was not closed: {closed:?}");
    // Someone else is served meanwhile.
    let config = Arc::new(ClientFiles { ca: ca_file, identity: None }.build().unwrap());
    let tcp = from("127.0.0.1").await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("served");
    assert!(accepted.recv().await.is_some());
    drop(silent);
}
