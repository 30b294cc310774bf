//! A small single-threaded SIP-over-TLS end point for the load tools: one `mio::Poll`, any
//! number of TLS connections (accepted or opened), each read with the balancer's own
//! [`TlsStream`] and framed with [`crate::sip::read`]. A [`Handler`] sees every message and
//! answers by queueing bytes in [`Out`]; the end point writes and flushes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::sip::{Message, Read, Status};
use crate::tls::stream::TlsStream;

const LISTENER: Token = Token(usize::MAX);
/// Largest message the load tools read (siplb passes servers' answers up to its
/// `--max-backend-message-bytes`).
const MAX_MESSAGE: usize = 1024 * 1024;

/// What a handler wants written: `(connection, bytes)`.
#[derive(Default)]
pub struct Out {
    pub queue: Vec<(usize, Vec<u8>)>,
    /// Connections to drop (abruptly, no close_notify) once the queue is written.
    pub drop: Vec<usize>,
}

impl Out {
    pub fn send(&mut self, conn: usize, bytes: impl Into<Vec<u8>>) {
        self.queue.push((conn, bytes.into()));
    }
}

pub trait Handler {
    fn on_message(&mut self, out: &mut Out, conn: usize, m: &Message);
    fn on_open(&mut self, _conn: usize, _peer: SocketAddr) {}
    fn on_close(&mut self, _conn: usize, _why: Closed) {}
}

/// Why a connection ended, in words a report can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Nothing listens there (TCP refused).
    Refused,
    /// The TLS handshake failed (a certificate refused either way, an alert, a protocol error).
    Handshake,
    /// The far end reset the connection or a TLS error broke it after the handshake.
    Broken,
    /// The far end closed it.
    ByPeer,
    /// The far end sent bytes that are not SIP.
    Unframable,
    /// Closed on this side.
    Dropped,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Refused => "connection refused",
            Closed::Handshake => "TLS handshake failed",
            Closed::Broken => "connection broken (reset or TLS error)",
            Closed::ByPeer => "connection closed by the far end",
            Closed::Unframable => "unframable input from the far end",
            Closed::Dropped => "connection dropped",
        }
    }

    fn of(e: &crate::tls::stream::StreamError, handshaking: bool) -> Closed {
        use crate::tls::stream::StreamError;
        match e {
            StreamError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Closed::Refused,
            _ if handshaking => Closed::Handshake,
            _ => Closed::Broken,
        }
    }
}

struct EpConn {
    stream: TlsStream,
    interest: Interest,
}

pub struct Endpoint {
    poll: Poll,
    events: Events,
    listener: Option<(TcpListener, Arc<ServerConfig>)>,
    conns: HashMap<usize, EpConn>,
    next_id: usize,
}

impl Drop for Endpoint {
    /// Ends every connection with close_notify, so the last messages are not cut off.
    fn drop(&mut self) {
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
    }
}

impl Endpoint {
    pub fn new() -> std::io::Result<Endpoint> {
        Ok(Endpoint {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            listener: None,
            conns: HashMap::new(),
            next_id: 0,
        })
    }

    /// Accepts TLS connections on `addr` (port 0 picks one); returns the bound address.
    pub fn listen(&mut self, addr: SocketAddr, tls: Arc<ServerConfig>) -> std::io::Result<SocketAddr> {
        let mut l = TcpListener::bind(addr)?;
        self.poll
            .registry()
            .register(&mut l, LISTENER, Interest::READABLE)?;
        let local = l.local_addr()?;
        self.listener = Some((l, tls));
        Ok(local)
    }

    /// Opens a TLS connection; messages can be sent on it at once (rustls holds them until
    /// the handshake is done).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> std::io::Result<usize> {
        let sock = TcpStream::connect(addr)?;
        let conn = ClientConnection::new(tls, name).map_err(std::io::Error::other)?;
        self.add(sock, Connection::Client(conn))
    }

    fn add(&mut self, sock: TcpStream, tls: Connection) -> std::io::Result<usize> {
        let _ = sock.set_nodelay(true);
        let id = self.next_id;
        self.next_id += 1;
        let stream = TlsStream::new(sock, tls);
        let interest = stream.interest();
        let mut c = EpConn { stream, interest };
        self.poll
            .registry()
            .register(&mut c.stream.sock, Token(id), interest)?;
        self.conns.insert(id, c);
        Ok(id)
    }

    pub fn send(&mut self, conn: usize, bytes: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let ok = c.stream.write_all(bytes).is_ok() && c.stream.flush().is_ok();
        Self::rearm(&self.poll, conn, c);
        ok
    }

    pub fn close(&mut self, conn: usize) {
        if let Some(mut c) = self.conns.remove(&conn) {
            c.stream.close();
            let _ = self.poll.registry().deregister(&mut c.stream.sock);
        }
    }

    /// The local address of a connection (what the far end sees as its source).
    pub fn local_addr(&self, conn: usize) -> Option<SocketAddr> {
        self.conns.get(&conn)?.stream.sock.local_addr().ok()
    }

    pub fn is_open(&self, conn: usize) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Open and still in its TLS handshake.
    pub fn is_handshaking(&self, conn: usize) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.stream.is_handshaking())
    }

    pub fn open_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections whose TLS handshake has not finished.
    pub fn handshaking(&self) -> usize {
        self.conns.values().filter(|c| c.stream.is_handshaking()).count()
    }

    fn rearm(poll: &Poll, id: usize, c: &mut EpConn) {
        let want = c.stream.interest();
        if want != c.interest {
            c.interest = want;
            let _ = poll.registry().reregister(&mut c.stream.sock, Token(id), want);
        }
    }

    /// Waits up to `timeout` for events and hands every complete message to `h`.
    pub fn turn(&mut self, h: &mut impl Handler, timeout: Duration) -> std::io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(Token, bool)> = self
            .events
            .iter()
            .map(|e| (e.token(), e.is_read_closed() || e.is_error()))
            .collect();
        let mut out = Out::default();
        for (t, to_eof) in ready {
            if t == LISTENER {
                self.accept(h);
                continue;
            }
            let id = t.0;
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.stream.read_to_eof = to_eof;
            let handshaking = c.stream.is_handshaking();
            // Our own peers: no cap needed on what one read takes.
            let mut dead = match c.stream.read(usize::MAX) {
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(conn = id, error = %e, "sipload: read failed");
                    Some(Closed::of(&e, handshaking))
                }
            };
            let rbuf = std::mem::take(&mut c.stream.rbuf);
            let buf = rbuf.filled();
            let mut pos = 0;
            loop {
                match crate::sip::read(&buf[pos..], MAX_MESSAGE) {
                    Read::Message(f, m) => {
                        h.on_message(&mut out, id, &m);
                        pos += f.consumed();
                    }
                    Read::Unparsable(f, _) => pos += f.consumed(),
                    Read::Other(Status::Ping(n)) => {
                        out.send(id, b"\r\n".to_vec());
                        pos += n;
                    }
                    Read::Other(Status::Partial | Status::Complete(_)) => break,
                    Read::Other(Status::Invalid(e)) => {
                        tracing::warn!(conn = id, error = %e, data = %String::from_utf8_lossy(&buf[pos..(pos + 200).min(buf.len())]), "sipload: unframable input");
                        dead = Some(Closed::Unframable);
                        break;
                    }
                }
            }
            if let Some(c) = self.conns.get_mut(&id) {
                c.stream.rbuf = rbuf;
                c.stream.consume(pos);
                if c.stream.closed {
                    tracing::debug!(conn = id, "sipload: peer closed");
                    // Closed before the handshake finished: the far end refused us.
                    let why = if handshaking {
                        Closed::Handshake
                    } else {
                        Closed::ByPeer
                    };
                    dead = dead.or(Some(why));
                }
                if dead.is_none()
                    && let Err(e) = c.stream.flush()
                {
                    tracing::debug!(conn = id, error = %e, "sipload: write failed");
                    dead = Some(Closed::of(&e, c.stream.is_handshaking()));
                }
                // A connection that never got connected was refused, whatever the read said.
                if dead.is_some() && handshaking && c.stream.sock.peer_addr().is_err() {
                    dead = Some(Closed::Refused);
                }
                Self::rearm(&self.poll, id, c);
            }
            for (conn, bytes) in out.queue.drain(..) {
                self.send(conn, &bytes);
            }
            for conn in out.drop.drain(..) {
                if let Some(mut c) = self.conns.remove(&conn) {
                    let _ = self.poll.registry().deregister(&mut c.stream.sock);
                    h.on_close(conn, Closed::Dropped);
                }
            }
            if let Some(why) = dead {
                self.close(id);
                h.on_close(id, why);
            }
        }
        Ok(())
    }

    fn accept(&mut self, h: &mut impl Handler) {
        loop {
            let Some((l, tls)) = self.listener.as_ref() else {
                return;
            };
            let (sock, peer) = match l.accept() {
                Ok(s) => s,
                Err(_) => return,
            };
            let tls = Arc::clone(tls);
            let Ok(conn) = ServerConnection::new(tls) else {
                continue;
            };
            if let Ok(id) = self.add(sock, Connection::Server(conn)) {
                h.on_open(id, peer);
            }
        }
    }
}
