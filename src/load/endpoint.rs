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

use crate::sip::{Message, Read};
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
    /// Connection `conn` ended: why, and the error that ended it when there was one (a TLS
    /// alert, a reset), for a report that says what to look at.
    fn on_close(&mut self, _conn: usize, _why: Closed, _error: Option<&str>) {}
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
    /// A WebSocket client connection (`connect_ws`).
    ws: Option<WsClient>,
}

/// The client side of a WebSocket: whether the server's 101 has come, its frames' decoder, and
/// the mask of the next frame (varied per frame; a load tool needs no unpredictable masks).
struct WsClient {
    upgraded: bool,
    decoder: crate::ws::frame::Decoder,
    mask: u32,
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

    /// Opens a SIP-over-WebSocket connection (RFC 7118) over TLS: the upgrade is sent at once,
    /// and messages sent before its answer are held by rustls behind it.
    pub fn connect_ws(
        &mut self,
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> std::io::Result<usize> {
        let host = name.to_str().into_owned();
        let id = self.connect(addr, tls, name)?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: c2lwbG9hZCB3cyBrZXkgMQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: sip\r\n\r\n"
        );
        if let Some(c) = self.conns.get_mut(&id) {
            c.ws = Some(WsClient {
                upgraded: false,
                decoder: crate::ws::frame::Decoder::of_server(MAX_MESSAGE),
                mask: 0x5eed_0001,
            });
            c.stream
                .write_raw(&[std::io::IoSlice::new(request.as_bytes())])
                .map_err(std::io::Error::other)?;
        }
        Ok(id)
    }

    fn add(&mut self, sock: TcpStream, tls: Connection) -> std::io::Result<usize> {
        let _ = sock.set_nodelay(true);
        let id = self.next_id;
        self.next_id += 1;
        let stream = TlsStream::new(sock, tls);
        let interest = stream.interest();
        let mut c = EpConn {
            stream,
            interest,
            ws: None,
        };
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
        let written = match &mut c.ws {
            Some(ws) => {
                ws.mask = ws.mask.rotate_left(7) ^ 0x9e37_79b9;
                // A WebSocket client's own Via says so (RFC 7118 §5.2).
                let wss;
                let bytes = match memchr::memmem::find(bytes, b"Via: SIP/2.0/TLS ") {
                    Some(at) if !bytes.starts_with(b"SIP/2.0 ") => {
                        wss = [&bytes[..at], b"Via: SIP/2.0/WSS ", &bytes[at + 17..]].concat();
                        &wss[..]
                    }
                    _ => bytes,
                };
                let frame = crate::ws::frame::client_frame(
                    crate::ws::frame::OP_TEXT,
                    true,
                    bytes,
                    ws.mask.to_be_bytes(),
                );
                c.stream.write_raw(&[std::io::IoSlice::new(&frame)])
            }
            None => c.stream.write_all(bytes),
        };
        let ok = written.is_ok() && c.stream.flush().is_ok();
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
            let mut error = None;
            let mut dead = match c.stream.read(usize::MAX) {
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(conn = id, error = %e, "sipload: read failed");
                    error = Some(e.to_string());
                    Some(Closed::of(&e, handshaking))
                }
            };
            if c.ws.is_some() {
                dead = dead.or_else(|| Self::ws_read(id, c, h, &mut out));
            }
            let rbuf = std::mem::take(&mut c.stream.rbuf);
            let buf = rbuf.filled();
            let mut pos = 0;
            while c.ws.is_none() {
                match crate::sip::read(&buf[pos..], MAX_MESSAGE) {
                    Read::Message(f, m) => {
                        h.on_message(&mut out, id, &m);
                        pos += f.consumed();
                    }
                    Read::Unparsable(f, _) => pos += f.consumed(),
                    Read::Ping(n) => {
                        out.send(id, b"\r\n".to_vec());
                        pos += n;
                    }
                    Read::Partial => break,
                    Read::Invalid(e) => {
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
                    if dead.is_none() && handshaking {
                        error = Some("closed by the far end during the handshake".into());
                    }
                    dead = dead.or(Some(why));
                }
                if dead.is_none()
                    && let Err(e) = c.stream.flush()
                {
                    tracing::debug!(conn = id, error = %e, "sipload: write failed");
                    error = Some(e.to_string());
                    dead = Some(Closed::of(&e, c.stream.is_handshaking()));
                }
                // A connection that never got connected was refused, whatever the read said.
                if dead.is_some() && handshaking && c.stream.sock.peer_addr().is_err() {
                    dead = Some(Closed::Refused);
                }
                if dead == Some(Closed::Refused) {
                    error = None; // "refused" says it all
                }
                Self::rearm(&self.poll, id, c);
            }
            for (conn, bytes) in out.queue.drain(..) {
                self.send(conn, &bytes);
            }
            for conn in out.drop.drain(..) {
                if let Some(mut c) = self.conns.remove(&conn) {
                    let _ = self.poll.registry().deregister(&mut c.stream.sock);
                    h.on_close(conn, Closed::Dropped, None);
                }
            }
            if let Some(why) = dead {
                self.close(id);
                h.on_close(id, why, error.as_deref());
            }
        }
        Ok(())
    }

    /// What a WebSocket connection's read buffer holds: the server's 101, then its frames, each
    /// message handed on; a ping is answered. `Some` when the connection is over.
    fn ws_read(id: usize, c: &mut EpConn, h: &mut impl Handler, out: &mut Out) -> Option<Closed> {
        use crate::ws::frame::Event;
        let ws = c.ws.as_mut()?;
        let mut rbuf = std::mem::take(&mut c.stream.rbuf);
        let mut dead = None;
        if !ws.upgraded {
            let head = rbuf.filled();
            if let Some(end) = memchr::memmem::find(head, b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 101 ") {
                    tracing::warn!(conn = id, answer = %String::from_utf8_lossy(&head[..end]), "sipload: WebSocket upgrade refused");
                    c.stream.rbuf = rbuf;
                    return Some(Closed::Handshake);
                }
                rbuf.consume(end + 4);
                ws.upgraded = true;
            }
        }
        while ws.upgraded {
            match ws.decoder.next(rbuf.filled_mut()) {
                Event::Message { range, .. } => {
                    if let Ok(m) = Message::parse(&rbuf.filled()[range]) {
                        h.on_message(out, id, &m);
                    }
                }
                Event::Ping(range) => {
                    let pong = crate::ws::frame::client_frame(
                        crate::ws::frame::OP_PONG,
                        true,
                        &rbuf.filled()[range],
                        [0; 4],
                    );
                    let _ = c.stream.write_raw(&[std::io::IoSlice::new(&pong)]);
                }
                Event::Pong => {}
                Event::Close(_) => {
                    dead = Some(Closed::ByPeer);
                    break;
                }
                Event::Fail(code, why) => {
                    tracing::warn!(
                        conn = id,
                        code,
                        why,
                        "sipload: bad WebSocket frame from the server"
                    );
                    dead = Some(Closed::Unframable);
                    break;
                }
                Event::Partial => break,
            }
        }
        let n = ws.decoder.consumable();
        rbuf.consume(n);
        ws.decoder.consumed(n);
        c.stream.rbuf = rbuf;
        dead
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
