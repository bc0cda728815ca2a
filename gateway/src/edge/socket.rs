//! A plain client socket shared between its connection task, which reads it (through the
//! WebSocket library) and writes what could not go at once, and its worker, which writes the
//! frames a batch of deliveries queued when the connection has nothing pending
//! ([`Outbox::write_direct`](crate::fanout::outbox::Outbox::write_direct)): a delivery then
//! costs its share of one `write`, without waking the connection task. Both run on the worker's
//! thread, hence `Rc`.
//!
//! TLS connections are not shared: their frames always go through the connection task.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct SharedTcp(pub(crate) Rc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Readiness may be stale: a would-block clears it, and the loop waits again.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl SharedTcp {
    /// Runs `write` once the socket is writable, again whenever its readiness was stale.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is buffered here
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes go both ways through two handles of one socket, and a shutdown ends the peer's read.
    #[tokio::test]
    async fn reads_writes_and_shuts_down_through_either_handle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut peer = client.expect("connect");
        let shared = Rc::new(accepted.expect("accept").0);
        let (mut reader, mut writer) = (SharedTcp(shared.clone()), SharedTcp(shared.clone()));

        peer.write_all(b"ping").await.expect("peer write");
        let mut got = [0u8; 4];
        reader.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");

        writer.write_all(b"po").await.expect("write");
        assert_eq!(shared.try_write(b"ng").expect("direct write"), 2);
        let slices = [IoSlice::new(b"!"), IoSlice::new(b"?")];
        assert_eq!(writer.write_vectored(&slices).await.expect("writev"), 2);
        writer.shutdown().await.expect("shutdown");
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.expect("peer read");
        assert_eq!(all, b"pong!?");
    }
}
