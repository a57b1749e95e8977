//! Bidirectional copy with buffers that grow with the flow (as Istio's ztunnel does): an idle or
//! chatty connection holds 1 KiB per direction, a bulk transfer moves up to 256 KiB per syscall.
//! Half-close propagates: when one side ends its writes, the other side's write half is shut down
//! and the opposite direction keeps flowing.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

const SMALL: usize = 1024;
const MEDIUM: usize = 16 * 1024;
const LARGE: usize = 256 * 1024;
const TO_MEDIUM_AFTER: u64 = 128 * 1024;
const TO_LARGE_AFTER: u64 = 10 * 1024 * 1024;

/// One direction's state.
struct Half {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    total: u64,
    read_done: bool,
    need_flush: bool,
    finished: bool,
}

impl Half {
    fn new() -> Self {
        Half {
            buf: vec![0; SMALL],
            pos: 0,
            cap: 0,
            total: 0,
            read_done: false,
            need_flush: false,
            finished: false,
        }
    }

    fn grow(&mut self) {
        let want = if self.total >= TO_LARGE_AFTER {
            LARGE
        } else if self.total >= TO_MEDIUM_AFTER {
            MEDIUM
        } else {
            SMALL
        };
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                self.grow();
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            self.total += n as u64;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read right now: push out what was written.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped accepting data",
                    )));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done && self.pos == self.cap {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies both ways until both directions have ended, or until `cancel` fires (the connection is
/// no longer authorized, or ztunnel is going away). Returns (bytes a→b, bytes b→a) and the first
/// error, if any; the counts are what was moved before it.
pub async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    cancel: &CancellationToken,
) -> (u64, u64, Option<io::Error>)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Half::new();
    let mut ba = Half::new();
    let mut cancelled = std::pin::pin!(cancel.cancelled());
    let result = poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by ztunnel: connection no longer authorized",
            )));
        }
        if !ab.finished {
            if let Poll::Ready(Err(e)) = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                return Poll::Ready(Err(e));
            }
        }
        if !ba.finished {
            if let Poll::Ready(Err(e)) = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                return Poll::Ready(Err(e));
            }
        }
        if ab.finished && ba.finished {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    (ab.total, ba.total, result.err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_counts() {
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut server) = tokio::io::duplex(64 * 1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, &CancellationToken::new()).await });
        let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let server_task = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("read");
            // The client has half-closed; we can still answer.
            server.write_all(b"done").await.expect("write");
            server.shutdown().await.expect("shutdown");
            got
        });
        client.write_all(&data).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.expect("reply");
        assert_eq!(reply, b"done");
        assert_eq!(server_task.await.expect("join"), expect);
        let (ab, ba, err) = relay.await.expect("join");
        assert!(err.is_none());
        assert_eq!((ab, ba), (20 * 1024 * 1024, 4));
    }

    #[test]
    fn buffers_grow_with_the_flow() {
        let mut h = Half::new();
        h.grow();
        assert_eq!(h.buf.len(), SMALL);
        h.total = TO_MEDIUM_AFTER;
        h.grow();
        assert_eq!(h.buf.len(), MEDIUM);
        h.total = TO_LARGE_AFTER;
        h.grow();
        assert_eq!(h.buf.len(), LARGE);
    }

    #[tokio::test]
    async fn cancellation_ends_the_relay_with_counts() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let token = CancellationToken::new();
        let t = token.clone();
        let relay = tokio::spawn(async move { relay(&mut a, &mut b, &t).await });
        client.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("read");
        token.cancel();
        let (ab, ba, err) = relay.await.expect("join");
        assert_eq!((ab, ba), (5, 0));
        assert_eq!(
            err.map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
        // Both sides see the connection end.
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.expect("eof"), 0);
    }
}
