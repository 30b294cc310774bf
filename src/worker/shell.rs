//! A worker's event loop, the part that touches sockets: the mio `Poll`, this worker's listeners,
//! accepting (TLS sessions started, connections admitted), opening pool connections, registering
//! sockets and keeping their interest, and the hand-off channel. Everything it reads or sees goes
//! to the [`Core`], which decides; the loop only pumps: events in, `poll_*` out, once per turn.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::{ClientConnection, Connection, ServerConnection};

use super::core::{CloseReason, Connector, Core, Kind, Readiness};
use super::runtime::Runtime;
use super::shared::{HandoffRx, Shared};
use crate::tls::stream::TlsStream;

pub const WAKER: Token = Token(usize::MAX);
const PEER: Token = Token(usize::MAX - 1);
/// Front listeners use tokens counting down from here.
const LISTEN_BASE: usize = usize::MAX - 2;

/// A connection's token: its slot in the low 32 bits, its slot's generation in the 31 above (the
/// top bit stays clear, so no connection's token is a listener's or the waker's). An event that
/// names a generation the slot no longer has was meant for a connection closed since, and goes
/// nowhere.
const GENERATION_MASK: u32 = 0x7fff_ffff;
const _: () = assert!(usize::BITS == 64, "connection tokens need a 64-bit usize");

fn conn_token(slot: usize, generation: u32) -> Token {
    Token(((generation & GENERATION_MASK) as usize) << 32 | (slot & 0xffff_ffff))
}

/// The slot and (masked) generation a connection token names.
fn slot_of(token: Token) -> (usize, u32) {
    (token.0 & 0xffff_ffff, (token.0 >> 32) as u32 & GENERATION_MASK)
}

pub struct Worker {
    id: u16,
    core: Core<TlsStream>,
    poll: Poll,
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    peer_listener: Option<TcpListener>,
    rx: HandoffRx,
}

impl Worker {
    pub fn new(
        id: u16,
        poll: Poll,
        shared: Arc<Shared>,
        mut listeners: Vec<TcpListener>,
        mut peer_listener: Option<TcpListener>,
        rx: HandoffRx,
    ) -> std::io::Result<Worker> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTEN_BASE - i), Interest::READABLE)?;
        }
        if let Some(l) = peer_listener.as_mut() {
            poll.registry().register(l, PEER, Interest::READABLE)?;
        }
        let mut secret = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| std::io::Error::other("the system random generator failed"))?;
        let core = Core::new(
            id,
            Arc::clone(&shared),
            u64::from_le_bytes(secret),
            connector(),
            Instant::now(),
        );
        Ok(Worker {
            id,
            core,
            poll,
            shared,
            listeners,
            peer_listener,
            rx,
        })
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        self.core.begin_turn(start);
        self.core.handle_timeout(start);
        self.sync();
        while !self.shared.stop.load(Ordering::Acquire) {
            let wait = self.core.poll_timeout().saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "event loop failed");
                break;
            }
            let busy = Instant::now();
            self.core.begin_turn(busy);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {
                        while let Ok(h) = self.rx.try_recv() {
                            self.core.handle_handoff(h);
                        }
                    }
                    PEER => self.accept_peer(),
                    Token(t) if t > LISTEN_BASE - self.listeners.len() && t <= LISTEN_BASE => {
                        self.accept_clients(LISTEN_BASE - t)
                    }
                    token => {
                        let (slot, generation) = slot_of(token);
                        if self.core.generation(slot) & GENERATION_MASK != generation {
                            continue;
                        }
                        let ready = Readiness {
                            readable: ev.is_readable(),
                            read_closed: ev.is_read_closed(),
                            error: ev.is_error(),
                        };
                        self.core.handle_event(slot, ready, busy);
                    }
                }
            }
            let now = Instant::now();
            self.core.handle_timeout(now);
            self.sync();
            self.core.after_turn(now.duration_since(busy));
            if self.shared.draining.load(Ordering::Acquire) {
                self.stop_accepting();
                if self.core.drained(now) {
                    break;
                }
            }
        }
        self.core.close_all();
        self.sync();
        self.core.publish(Instant::now());
    }

    /// Carries out what the core asks of the poll: registers its new connections (one that
    /// cannot be is closed at once), changes the interest of those that want to write, and takes
    /// the closed ones off the poll before they are dropped.
    fn sync(&mut self) {
        loop {
            while let Some(mut s) = self.core.poll_released() {
                let _ = self.poll.registry().deregister(&mut s.sock);
            }
            while let Some(slot) = self.core.poll_register() {
                let token = conn_token(slot, self.core.generation(slot));
                let Some(s) = self.core.wire_mut(slot) else {
                    continue;
                };
                let interest = interest(s.tls.wants_write());
                if let Err(e) = self.poll.registry().register(&mut s.sock, token, interest) {
                    tracing::warn!(worker = self.id, error = %e, "cannot register connection");
                    self.core.close(slot, CloseReason::Io);
                }
            }
            while let Some((slot, write)) = self.core.poll_interest() {
                let token = conn_token(slot, self.core.generation(slot));
                if let Some(s) = self.core.wire_mut(slot) {
                    let _ = self
                        .poll
                        .registry()
                        .reregister(&mut s.sock, token, interest(write));
                }
            }
            // Closing a connection that could not be registered may ask for a reconnect.
            if !self.core.wants_sync() {
                return;
            }
        }
    }

    /// Draining: listeners closed on the first turn.
    fn stop_accepting(&mut self) {
        if self.listeners.is_empty() && self.peer_listener.is_none() {
            return;
        }
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.peer_listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        tracing::info!(worker = self.id, "draining: listeners closed");
    }

    fn accept_clients(&mut self, i: usize) {
        let front = Arc::clone(&self.core.runtime().tls.front);
        loop {
            let (sock, peer) = match self.listeners[i].accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "accept failed");
                    return;
                }
            };
            if !self.core.admit(peer) {
                continue;
            }
            let tls = match ServerConnection::new(Arc::clone(&front)) {
                Ok(t) => Connection::Server(t),
                Err(e) => {
                    self.core.unadmit(peer);
                    tracing::warn!(%peer, error = %e, "cannot start TLS");
                    continue;
                }
            };
            // The WebSocket listeners follow the TLS ones.
            let ws = i >= self.shared.cfg.listen.len();
            self.core
                .handle_accepted(stream(sock, tls), peer, Kind::Client, ws);
        }
    }

    fn accept_peer(&mut self) {
        let Some(peer_tls) = self.core.runtime().tls.peer.clone() else {
            return;
        };
        loop {
            let Some(l) = self.peer_listener.as_mut() else {
                return;
            };
            let (sock, peer) = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "peer accept failed");
                    return;
                }
            };
            // Servers' connections count against the same caps as clients'.
            if !self.core.admit(peer) {
                continue;
            }
            match ServerConnection::new(Arc::clone(&peer_tls)) {
                Ok(t) => {
                    self.core.handle_accepted(
                        stream(sock, Connection::Server(t)),
                        peer,
                        Kind::Peer(None),
                        false,
                    );
                }
                Err(e) => {
                    self.core.unadmit(peer);
                    tracing::warn!(%peer, error = %e, "cannot start TLS");
                }
            }
        }
    }
}

fn stream(sock: TcpStream, tls: Connection) -> TlsStream {
    let _ = sock.set_nodelay(true);
    TlsStream::new(sock, tls)
}

fn interest(write: bool) -> Interest {
    if write {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    }
}

/// Pool connections: a non-blocking connect and an MTLS client session verified against
/// `--backend-ca` and the back end's NAME (SNI and SAN).
fn connector() -> Connector<TlsStream> {
    Box::new(|rt: &Runtime, b: usize| {
        let addr = rt.backends[b].addr;
        let sock = TcpStream::connect(addr)?;
        let name = rt.backend_names[b].clone();
        let tls = ClientConnection::new(Arc::clone(&rt.tls.backend), name)?;
        Ok((stream(sock, Connection::Client(tls)), addr))
    })
}
