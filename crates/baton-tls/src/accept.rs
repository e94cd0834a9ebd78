//! Accepting TLS connections for tonic and axum.
//!
//! One task accepts TCP connections and starts a task per connection for its handshake (with the
//! config current at that moment), bounded by [`HANDSHAKE_TIMEOUT`]; finished handshakes are
//! queued for the server. A failed handshake (no certificate, one the CA did not sign, an expired
//! one, plaintext on a TLS port) is logged at debug level with the address and dropped: the
//! server never sees it.
//!
//! Handshakes in progress are bounded, [`MAX_HANDSHAKES`] in all and [`MAX_HANDSHAKES_PER_IP`]
//! from one address; a connection past either bound is closed at once. Accepting never stops,
//! so silent connections from one address cannot keep others out (the review found that
//! waiting for a free slot let 1024 silent connections block every new one, peers' included).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::ServerTls;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once on one port; further connections are closed at once.
pub const MAX_HANDSHAKES: usize = 1024;
/// Most handshakes in progress at once from one IP address.
pub const MAX_HANDSHAKES_PER_IP: usize = 64;

/// A connection that finished its handshake, and where it came from.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// TLS connections accepted on `listener` with `tls`'s current config, until the receiver is
/// dropped. `what` names the port in the logs.
pub fn accept(listener: TcpListener, tls: Arc<ServerTls>, what: &'static str) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        loop {
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
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(what, %addr, "{MAX_HANDSHAKES} TLS handshakes in progress: connection closed");
                continue;
            };
            let Some(from_ip) = IpSlot::take(&per_ip, addr.ip()) else {
                tracing::debug!(what, %addr, "{MAX_HANDSHAKES_PER_IP} TLS handshakes in progress from it: connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _from_ip = from_ip;
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

/// One handshake in progress from an address, counted until dropped.
struct IpSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    /// A slot for `ip`, unless it has [`MAX_HANDSHAKES_PER_IP`] already.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<IpSlot> {
        let mut c = counts.lock().expect("handshake counts lock");
        let n = c.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        *n += 1;
        Some(IpSlot { counts: counts.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("handshake counts lock");
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
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
