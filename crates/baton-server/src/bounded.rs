//! Bounds on what a port takes: connections at once, and how long one may sit without a byte
//! either way. [`Bounded`] is the HTTP port's listener (see `crate::http`); [`incoming`] bounds
//! the connections of a gRPC port (whose idle connections HTTP/2 keepalives find instead).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// `inner`, serving at most `max` connections at once (the next accept waits for one to end:
/// connections beyond wait in the kernel's backlog), each closed once idle for `idle`.
pub struct Bounded<L> {
    inner: L,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl<L> Bounded<L> {
    pub fn new(inner: L, max: usize, idle: Duration) -> Bounded<L> {
        Bounded { inner, permits: Arc::new(Semaphore::new(max)), idle }
    }
}

impl<L> Listener for Bounded<L>
where
    L: Listener,
    L::Io: Unpin,
{
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (io, addr) = self.inner.accept().await;
        (Counted::new(io, permit, Some(self.idle)), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The connections of `inner`, at most `max` at once: the next is not taken until one of
/// these is dropped (connections beyond wait in the kernel's backlog).
pub fn incoming<S, T>(inner: S, max: usize) -> impl futures::Stream<Item = io::Result<Counted<T>>>
where
    S: futures::Stream<Item = io::Result<T>> + Unpin,
{
    use futures::StreamExt;
    let permits = Arc::new(Semaphore::new(max));
    futures::stream::unfold((inner, permits), |(mut inner, permits)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        let next = inner.next().await?;
        Some((next.map(|io| Counted::new(io, permit, None)), (inner, permits)))
    })
}

/// The address a connection of a [`Bounded`] listener comes from, for handlers that ask
/// (`axum::extract::ConnectInfo<PeerAddr>`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Bounded<L>>> for PeerAddr
where
    L: Listener<Addr = std::net::SocketAddr>,
    L::Io: Unpin,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Bounded<L>>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection holding one of its listener's places until it is dropped, failing with
/// `TimedOut` once nothing moved on it for its idle time (if it has one).
pub struct Counted<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<T> Counted<T> {
    fn new(io: T, permit: OwnedSemaphorePermit, idle: Option<Duration>) -> Counted<T> {
        let idle = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Counted { io, _permit: permit, idle }
    }

    fn moved(&mut self) {
        if let Some((d, deadline)) = &mut self.idle {
            let at = Instant::now() + *d;
            deadline.as_mut().reset(at);
        }
    }

    /// What a write's outcome becomes: bytes written reset the idle clock, and a pending write
    /// times out like a pending read.
    fn wrote(&mut self, written: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }

    /// What a pending read or write becomes: still pending, or timed out if idle too long
    /// (the timer wakes the task when it runs out).
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some((_, deadline)) = &mut self.idle else { return Poll::Pending };
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        self.wrote(written, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(written, cx)
    }

    /// As the connection's own (hyper writes headers and body in one call where it can).
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// At most `max` connections are served at once; the next waits until one closes.
    #[tokio::test]
    async fn connections_beyond_the_bound_wait_for_a_place() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = Bounded::new(tcp, 1, Duration::from_secs(60));
        let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (held, _) = listener.accept().await;
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(waiting.is_err(), "a second connection was taken while the first held the only place");
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.expect("taken once the first closed");
    }

    /// A gRPC port's connections: the next is taken only once one of `max` is dropped.
    #[tokio::test]
    async fn incoming_connections_beyond_the_bound_wait_for_a_place() {
        use futures::StreamExt;
        let inner = futures::stream::iter((0..3).map(io::Result::Ok));
        let mut taken = Box::pin(incoming(inner, 2));
        let first = taken.next().await.unwrap().unwrap();
        let _second = taken.next().await.unwrap().unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), taken.next()).await;
        assert!(waiting.is_err(), "a third connection was taken while two held both places");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), taken.next()).await.expect("taken once one closed");
        assert_eq!(third.unwrap().unwrap().io, 2);
    }

    /// A connection with nothing moving fails its read once idle; traffic keeps it open.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_a_busy_one_does_not() {
        let (mut client, io) = tokio::io::duplex(64);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let idle = Duration::from_secs(120);
        let mut served = Counted::new(io, permit, Some(idle));
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            // 100 s apart: each byte resets the clock.
            tokio::time::advance(Duration::from_secs(100)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(served.read(&mut buf).await.unwrap(), 1);
        }
        let start = Instant::now();
        let e = served.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, idle, "timed out one idle time after the last byte");
    }
}
