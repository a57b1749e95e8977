//! One HBONE CONNECT stream as an async byte pipe.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::StreamGuard;
use crate::error::h2_to_io;

/// One CONNECT stream as a byte pipe: `AsyncRead + AsyncWrite + Unpin + Send`.
///
/// * Reads return the peer's DATA frames in order; EOF once the peer ends its side
///   (END_STREAM). Flow-control capacity is released as bytes are consumed by the reader, so a
///   slow reader back-pressures the peer through HTTP/2 windows.
/// * Writes send at most the flow-control capacity h2 grants (one DATA copy per write call;
///   large writes are split by h2 into frames of at most the peer's max frame size).
/// * `poll_shutdown` sends an empty DATA frame with END_STREAM (half-close); reading keeps
///   working afterwards until the peer ends its side.
/// * A reset from the peer surfaces as an `io::Error` (kind `ConnectionReset`).
/// * Dropping the stream before both sides ended resets it (RST_STREAM CANCEL), which is how
///   an aborted proxied TCP connection is signalled to the peer.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Rest of a DATA frame not yet handed to the reader.
    pending: Bytes,
    recv_eof: bool,
    send_closed: bool,
    /// Client side only: keeps the pooled connection's stream count until the stream is gone.
    _guard: Option<StreamGuard>,
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            recv_eof: false,
            send_closed: false,
            _guard: guard,
        }
    }

    /// The HTTP/2 stream id (for logs).
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Error for a write on a stream whose send side is no longer open.
    fn poll_send_closed_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.send_closed {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "HBONE stream: write after shutdown",
            ));
        }
        let e = match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("HBONE stream reset by peer: {reason}"),
            ),
            Err(e) => h2_to_io(e),
        };
        Poll::Ready(e)
    }
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.stream_id())
            .field("buffered", &self.pending.len())
            .field("recv_eof", &self.recv_eof)
            .field("send_closed", &self.send_closed)
            .finish()
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                // Give the window back only now that the bytes left our buffer, so memory per
                // stream stays bounded by the window.
                if let Err(e) = this.recv.flow_control().release_capacity(n) {
                    tracing::trace!(error = %e, "release_capacity failed (stream already reset)");
                }
                return Poll::Ready(Ok(()));
            }
            if this.recv_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.recv_eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.send_closed {
            return Poll::Ready(Err(ready!(this.poll_send_closed_error(cx))));
        }
        loop {
            // Use capacity already assigned first: h2's poll_capacity only wakes on *new*
            // capacity, so relying on it alone can hang when capacity was left over.
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                return match this
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(e) => Poll::Ready(Err(h2_to_io(e))),
                };
            }
            this.send.reserve_capacity(buf.len());
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                // Send side closed underneath us: the peer reset the stream.
                None => return Poll::Ready(Err(ready!(this.poll_send_closed_error(cx)))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes queued frames; there is nothing to flush per stream.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.send_closed {
            return Poll::Ready(Ok(()));
        }
        this.send_closed = true;
        // Give back any unused reservation to the connection before closing.
        this.send.reserve_capacity(0);
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(h2_to_io(e))),
        }
    }
}
