//! Dialling: tonic channels over plaintext TCP or TLS with a config that reloads.
//!
//! A channel made by a [`Dialer`] with TLS dials through a connector of ours rather than
//! tonic's own TLS: each (re)connect takes the client config current at that moment, so a
//! channel that outlives a certificate rotation reconnects with the new certificate. The server
//! is verified against the CA for the name in the address (an IP address or a DNS name), or for
//! the name the dialer was given ([`Dialer::server_name`]: peers dial `node-<id>`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::ClientTls;

/// How long a TCP connect and TLS handshake may take together, unless the endpoint says.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes channels, with TLS or without.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<ClientTls>>,
    server_name: Option<String>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("tls", &self.tls.is_some()).field("server_name", &self.server_name).finish()
    }
}

impl Dialer {
    /// Plaintext.
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    /// TLS with `tls` (`None`: plaintext).
    pub fn new(tls: Option<Arc<ClientTls>>) -> Dialer {
        Dialer { tls, server_name: None }
    }

    /// The same, verifying every server's certificate for `name` instead of the address's host.
    pub fn server_name(&self, name: String) -> Dialer {
        Dialer { tls: self.tls.clone(), server_name: Some(name) }
    }

    /// Whether this dialer uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The scheme of the URLs this dialer's servers answer on (`http` or `https`).
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// An endpoint for `addr` (`host:port`, or a URL: TLS is the dialer's choice, and an
    /// `https` URL given to a plaintext dialer is refused rather than dialled without TLS).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let (scheme, host_port) = addr.split_once("://").unwrap_or(("", addr));
        if scheme.eq_ignore_ascii_case("https") && !self.is_tls() {
            return Err(format!("{addr} is an https address, but no CA was given to check it with (--cacert)"));
        }
        Endpoint::from_shared(format!("http://{host_port}")).map_err(|e| format!("{addr}: {e}"))
    }

    /// A channel to `endpoint` that connects on first use (and again after a break).
    pub fn lazy(&self, endpoint: &Endpoint) -> Channel {
        match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(self.connector(tls.clone())),
        }
    }

    /// A channel to `endpoint`, connected now.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            None => endpoint.connect().await,
            Some(tls) => endpoint.connect_with_connector(self.connector(tls.clone())).await,
        }
    }

    #[allow(clippy::type_complexity)]
    fn connector(
        &self,
        tls: Arc<ClientTls>,
    ) -> impl tower::Service<
        http::Uri,
        Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let server_name = self.server_name.clone();
        tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            let server_name = server_name.clone();
            async move {
                let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
                let port = uri.port_u16().unwrap_or(443);
                let name = server_name.unwrap_or_else(|| host.clone());
                let name = ServerName::try_from(name.clone()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("not a server name: {name}: {e}"))
                })?;
                let dial = async {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    tokio_rustls::TlsConnector::from(tls.current()).connect(name, tcp).await
                };
                match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
                    Ok(stream) => stream.map(TokioIo::new),
                    Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out")),
                }
            }
        })
    }
}
