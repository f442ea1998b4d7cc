//! Bounds on the connections one endpoint serves, so that a client that opens connections and
//! never uses them cannot grow the driver's memory or starve kubelet.
//!
//! - At most [`MAX_CONNECTIONS`] at once. kubelet and each sidecar keep one or two; a new
//!   connection beyond the bound is closed at once rather than left in the listen backlog,
//!   so a well-behaved client's retry gets in as soon as one ends.
//! - A connection that sends nothing within [`FIRST_BYTES`] of being accepted is closed:
//!   HTTP/2 keepalive pings (see `server.rs`) only start once a client has spoken, and a
//!   silent connection would otherwise hold its place for ever.
//!
//! Streams per connection are bounded by HTTP/2 itself (`max_concurrent_streams`, set in
//! `server.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};

/// Connections served at once on one socket.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a new connection may stay silent.
pub const FIRST_BYTES: Duration = Duration::from_secs(10);

/// `connections` within the bounds above: one past [`MAX_CONNECTIONS`] is closed at once.
pub fn bounded<S>(
    connections: impl Stream<Item = io::Result<S>>,
) -> impl Stream<Item = io::Result<Limited<S>>> {
    let places = Places::new(MAX_CONNECTIONS);
    let refused = AtomicU64::new(0);
    connections.filter_map(move |conn| match conn {
        Ok(stream) => match places.admit(stream, FIRST_BYTES) {
            Some(admitted) => Some(Ok(admitted)),
            None => {
                // Once per thousand: a flood of connections must not become a flood of logs.
                let n = refused.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        limit = MAX_CONNECTIONS,
                        refused = n + 1,
                        "closing new connections: the socket serves as many as it may"
                    );
                }
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}

/// Hands out a place to each accepted connection while there is one.
#[derive(Clone)]
pub struct Places(Arc<Semaphore>);

impl Places {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// `stream` with a place of its own, or `None` (the stream is dropped: closed) when all
    /// are taken.
    pub fn admit<S>(&self, stream: S, silence: Duration) -> Option<Limited<S>> {
        let place = Arc::clone(&self.0).try_acquire_owned().ok()?;
        Some(Limited {
            inner: stream,
            _place: place,
            silent_until: Some(Box::pin(tokio::time::sleep(silence))),
        })
    }
}

/// A connection holding one place until it is dropped.
pub struct Limited<S> {
    inner: S,
    _place: OwnedSemaphorePermit,
    /// Until the first bytes arrive: when the connection is given up.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(deadline) = self.silent_until.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent_until = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing after connecting",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn places_run_out_and_come_back() {
        let places = Places::new(2);
        let (a, _a) = tokio::io::duplex(64);
        let (b, _b) = tokio::io::duplex(64);
        let (c, _c) = tokio::io::duplex(64);
        let first = places.admit(a, FIRST_BYTES).expect("a place");
        let _second = places.admit(b, FIRST_BYTES).expect("a place");
        assert!(places.admit(c, FIRST_BYTES).is_none(), "full");
        drop(first);
        let (d, _d) = tokio::io::duplex(64);
        assert!(places.admit(d, FIRST_BYTES).is_some(), "a place came back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_given_up_and_a_talking_one_is_not() {
        let places = Places::new(2);
        let (server, _client) = tokio::io::duplex(64);
        let mut silent = places.admit(server, FIRST_BYTES).unwrap();
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (server, mut client) = tokio::io::duplex(64);
        let mut talking = places.admit(server, FIRST_BYTES).unwrap();
        client.write_all(b"PRI").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 3);
        // Quiet after speaking is HTTP/2's business (keepalive), not a timeout here.
        let waited = tokio::time::timeout(FIRST_BYTES * 3, talking.read(&mut buf)).await;
        assert!(waited.is_err(), "still open");
    }
}
