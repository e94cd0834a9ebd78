//! Accepting TLS connections for tonic and axum.
//!
//! One task accepts TCP connections and starts a task per connection for its handshake (with the
//! config current at that moment), bounded by [`HANDSHAKE_TIMEOUT`] and by [`MAX_HANDSHAKES`] at
//! once; finished handshakes are queued for the server. A failed handshake (no certificate, one
//! the CA did not sign, an expired one, plaintext on a TLS port) is logged at debug level with
//! the address and dropped: the server never sees it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::ServerTls;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once on one port; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 1024;

/// A connection that finished its handshake, and where it came from.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// TLS connections accepted on `listener` with `tls`'s current config, until the receiver is
/// dropped. `what` names the port in the logs.
pub fn accept(listener: TcpListener, tls: Arc<ServerTls>, what: &'static str) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(what, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(what, %addr, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(what, %addr, "TLS handshake not finished within 10 s"),
                }
            });
        }
    });
    rx
}

/// The accepted connections as tonic's `serve_with_incoming` takes them.
pub fn incoming(
    accepted: mpsc::Receiver<Accepted>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    ReceiverStream::new(accepted).map(|(stream, _)| Ok(stream))
}

/// The accepted connections as axum's `serve` takes them.
pub struct TlsListener {
    accepted: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` with `tls` (see [`accept`]).
    pub fn new(listener: TcpListener, tls: Arc<ServerTls>, what: &'static str) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(TlsListener { accepted: accept(listener, tls, what), local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(a) => a,
            // The accepting task ends only when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
