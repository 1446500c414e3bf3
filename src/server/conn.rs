//! The connections a server accepts: plain TCP or TLS over it, each with Nagle's algorithm off,
//! closed when idle, and knowing who is at the other end ([`PeerInfo`], in every request's
//! extensions).
//!
//! TLS handshakes run concurrently with accepting (a client that opens a connection and never
//! finishes its handshake holds up no one), each bounded by [`HANDSHAKE_TIMEOUT`], and at most
//! [`MAX_HANDSHAKES`] at once: beyond that the server stops accepting until some finish, so a
//! flood of half-open handshakes costs bounded memory.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::Connected;

use super::idle::IdleClose;
use crate::tls::ServerTls;

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 1024;

/// First and longest pause after an accept error that is not about one connection.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Who is at the other end of a connection. Requests carry it in their extensions.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client's certificate chain, verified against the server's client CA, if it presented
    /// one over TLS.
    pub certificates: Option<Arc<[CertificateDer<'static>]>>,
}

impl PeerInfo {
    /// The peer of a request served from [`incoming`].
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }
}

/// An accepted connection.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
}

enum Io {
    Plain(IdleClose<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<IdleClose<TcpStream>>>),
}

/// The connections accepted on `listener`, over TLS when `tls` is given.
///
/// Accept errors never end the stream. An error about one connection (reset before it was
/// accepted) is skipped; any other (out of file descriptors, out of memory) is logged and
/// followed by a pause that doubles up to [`MAX_ACCEPT_BACKOFF`], so a server at its descriptor
/// limit waits for connections to close instead of spinning a core on `accept`. A failed
/// handshake is logged at debug level and dropped.
///
/// Nagle's algorithm is turned off on each socket: tonic's `tcp_nodelay` applies only to
/// listeners it binds itself, and with Nagle on a small reply waits for the peer's delayed ACK (a
/// tree through a worker at low load took about 40 ms where the work is under one).
pub fn incoming(
    listener: TcpListener,
    idle: Duration,
    tls: Option<Arc<ServerTls>>,
) -> impl tokio_stream::Stream<Item = io::Result<Conn>> {
    type Handshake = Pin<Box<dyn std::future::Future<Output = Option<Conn>> + Send>>;
    struct Accepting {
        listener: TcpListener,
        handshakes: FuturesUnordered<Handshake>,
        backoff: Duration,
    }
    let state = Accepting {
        listener,
        handshakes: FuturesUnordered::new(),
        backoff: MIN_ACCEPT_BACKOFF,
    };
    futures::stream::unfold(state, move |mut s| {
        let tls = tls.clone();
        async move {
            loop {
                tokio::select! {
                    Some(done) = s.handshakes.next(), if !s.handshakes.is_empty() => {
                        if let Some(conn) = done {
                            return Some((Ok(conn), s));
                        }
                    }
                    accepted = s.listener.accept(), if s.handshakes.len() < MAX_HANDSHAKES => {
                        match accepted {
                            Ok((stream, remote)) => {
                                s.backoff = MIN_ACCEPT_BACKOFF;
                                if let Err(error) = stream.set_nodelay(true) {
                                    tracing::debug!(%error, "could not turn Nagle's algorithm off");
                                }
                                let stream = IdleClose::new(stream, idle);
                                let peer = PeerInfo { remote: Some(remote), certificates: None };
                                match &tls {
                                    None => {
                                        let conn = Conn { io: Io::Plain(stream), peer };
                                        return Some((Ok(conn), s));
                                    }
                                    Some(tls) => s.handshakes.push(Box::pin(handshake(
                                        tls.acceptor(),
                                        stream,
                                        peer,
                                    ))),
                                }
                            }
                            Err(error) if is_connection_error(&error) => {}
                            Err(error) => {
                                tracing::warn!(%error, pause = ?s.backoff, "cannot accept connections");
                                tokio::time::sleep(s.backoff).await;
                                s.backoff = (s.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                            }
                        }
                    }
                }
            }
        }
    })
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: IdleClose<TcpStream>,
    mut peer: PeerInfo,
) -> Option<Conn> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            peer.certificates = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
            Some(Conn {
                io: Io::Tls(Box::new(tls)),
                peer,
            })
        }
        Ok(Err(error)) => {
            tracing::debug!(remote = ?peer.remote, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(remote = ?peer.remote, "TLS handshake timed out");
            None
        }
    }
}

/// Errors of `accept` that concern one connection only.
fn is_connection_error(error: &io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
