//! A worker's connections over their life: accepting clients (with the connection limits) and
//! servers on the peer listener, registering a connection and giving it its token, what happens
//! when a handshake completes (pool up, peer name; clients in [`super::partner`]), read failures
//! and closing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::Token;
use mio::net::TcpStream;
use rustls::{Connection, ServerConnection};

use super::close::CloseReason;
use super::event::Worker;
use super::slots::{Conn, IpText, Kind};
use crate::sip::{Role, Token as SipToken};
use crate::tls::stream::{StreamError, TlsStream};

impl Worker {
    pub(super) fn accept_clients(&mut self, i: usize) {
        loop {
            let (sock, peer) = match self.listeners[i].accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "accept failed");
                    return;
                }
            };
            if !self.admit(peer) {
                continue;
            }
            self.m.accepted += 1;
            let tls = match ServerConnection::new(Arc::clone(&self.rt.tls.front)) {
                Ok(t) => Connection::Server(t),
                Err(e) => {
                    self.unadmit(peer);
                    tracing::warn!(%peer, error = %e, "cannot start TLS");
                    continue;
                }
            };
            let slot = self.add_conn(sock, peer, tls, Kind::Client);
            // The WebSocket listeners follow the TLS ones.
            if i >= self.shared.cfg.listen.len()
                && let Some(c) = slot.and_then(|s| self.slots.get_mut(s))
            {
                c.ws = Some(Box::new(super::slots::WsState::Upgrading));
                self.m.ws_accepted += 1;
            }
        }
    }

    pub(super) fn accept_peer(&mut self) {
        let Some(peer_tls) = self.rt.tls.peer.clone() else {
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
            if !self.admit(peer) {
                continue;
            }
            match ServerConnection::new(Arc::clone(&peer_tls)) {
                Ok(t) => {
                    self.add_conn(sock, peer, Connection::Server(t), Kind::Peer(None));
                }
                Err(e) => {
                    self.unadmit(peer);
                    tracing::warn!(%peer, error = %e, "cannot start TLS");
                }
            }
        }
    }

    /// Registers a new connection and gives it its token.
    pub(super) fn add_conn(
        &mut self,
        sock: TcpStream,
        peer: std::net::SocketAddr,
        tls: Connection,
        kind: Kind,
    ) -> Option<usize> {
        let _ = sock.set_nodelay(true);
        let (slot, generation) = self.slots.vacant();
        // The Via token of requests this connection sends through siplb: their responses come
        // back from the other side.
        let token = self.rt.key.encode(SipToken {
            worker: self.id,
            slot: slot as u32,
            generation,
            pin: 0,
            role: if kind.is_server() {
                Role::ServerVia
            } else {
                Role::ClientVia
            },
            instance: 0,
            ws: false,
        });
        let mut stream = TlsStream::new(sock, tls);
        if matches!(kind, Kind::Backend(_)) {
            // A slow back end is met with backpressure (clients are read no more), not with
            // closing its connection: its queue is bounded by the worker's output budget.
            stream.max_pending = self.shared.cfg.max_output_bytes;
        }
        let interest = stream.interest();
        let now = Instant::now();
        let mut conn = Conn {
            kind,
            stream,
            peer,
            peer_ip: IpText::new(peer),
            token,
            rr_tokens: Vec::new(),
            interest,
            opened: now,
            last_active: now,
            dirty: false,
            skip: 0,
            partial_since: None,
            paused: false,
            ws: None,
            pinged: false,
            partner: None,
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut conn.stream.sock, Token(slot), interest)
        {
            tracing::warn!(%peer, error = %e, "cannot register connection");
            if !matches!(kind, Kind::Backend(_)) {
                self.unadmit(peer);
            }
            return None;
        }
        tracing::debug!(worker = self.id, slot, %peer, ?kind, "connection open");
        Some(self.slots.insert(conn))
    }

    /// A read failed: count and log it as what it was, then close.
    pub(super) fn read_failed(&mut self, slot: usize, was_handshaking: bool, e: &StreamError) {
        let Some(c) = self.slots.get(slot) else { return };
        let (kind, peer) = (c.kind, c.peer);
        match kind {
            Kind::Client if was_handshaking => {
                if let StreamError::Tls(t) = e
                    && let Some(r) = crate::tls::partner::PartnerRefused::from_tls(t)
                {
                    let r = r.clone();
                    self.partner_refused(peer, &r);
                    self.close(slot, CloseReason::PartnerRefused);
                    return;
                }
                *self.m.handshake_failures.entry(failure_label(e)).or_default() += 1;
                // Per connection at debug: a scan or a flood must not flood the log (the
                // counters feed a summary line once a minute).
                tracing::debug!(%peer, error = %e, "client TLS handshake failed");
            }
            Kind::Client => tracing::debug!(%peer, error = %e, "client connection failed"),
            Kind::Backend(b) => self.pool_failure(b, e.to_string()),
            Kind::Peer(_) => {
                if was_handshaking {
                    *self.m.handshake_failures.entry(failure_label(e)).or_default() += 1;
                }
                tracing::debug!(%peer, error = %e, "peer connection failed");
            }
        }
        self.close(slot, CloseReason::from(e));
    }

    /// Called once when a connection's handshake completes; false if it was closed.
    pub(super) fn on_handshake(&mut self, slot: usize, kind: Kind) -> bool {
        match kind {
            Kind::Backend(b) => {
                self.pool_handshake_done(b, slot);
                self.slots.get(slot).is_some()
            }
            Kind::Peer(_) => {
                let names = &self.rt.backend_name_strings;
                let Some(c) = self.slots.get_mut(slot) else {
                    return false;
                };
                let allowed = c
                    .stream
                    .tls
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| crate::tls::peer_name_allowed(cert, names))
                    .map(|name| names.iter().position(|n| n == name));
                match allowed {
                    Some(idx) => {
                        c.kind = Kind::Peer(idx);
                        self.m.peer_connections += 1;
                        tracing::info!(peer = %c.peer, backend = idx.map_or("unknown", |i| names[i].as_str()), "peer server connected");
                        true
                    }
                    None => {
                        let peer = c.peer;
                        *self
                            .m
                            .handshake_failures
                            .entry(CloseReason::PeerNotConfigured.as_str().into())
                            .or_default() += 1;
                        tracing::debug!(%peer, "peer refused: certificate names no configured back end");
                        self.close(slot, CloseReason::PeerNotConfigured);
                        false
                    }
                }
            }
            Kind::Client => self.client_handshake_done(slot),
        }
    }

    pub(super) fn close(&mut self, slot: usize, why: CloseReason) {
        let Some(mut c) = self.slots.remove(slot) else {
            return;
        };
        self.out_queued = self.out_queued.saturating_sub(c.stream.queued());
        if c.kind.is_server() {
            self.server_queued = self.server_queued.saturating_sub(c.stream.queued());
        }
        // A WebSocket closed by siplb says so in a close frame first (its close handshake),
        // unless one was already sent (a violation) or the client closed.
        if c.stream.ws
            && let Some(code) = why.ws_close_code()
        {
            let _ = c
                .stream
                .write_control(crate::ws::frame::OP_CLOSE, &code.to_be_bytes());
        }
        c.stream.close();
        let _ = self.poll.registry().deregister(&mut c.stream.sock);
        match c.kind {
            Kind::Client => {
                self.unadmit(c.peer);
                tracing::debug!(worker = self.id, peer = %c.peer, why = why.as_str(), "client connection closed");
            }
            // Closing our own pool on the way out is not a back end going down.
            Kind::Backend(b) => self.pool_closed(b, slot, why),
            // A server's connection is news; one that never showed a configured name (a scan,
            // a failed handshake) is counted and summarised, not logged one by one.
            Kind::Peer(Some(b)) => {
                self.unadmit(c.peer);
                let name = self.rt.backends.get(b).map_or("unknown", |be| be.name.as_str());
                tracing::info!(peer = %c.peer, backend = name, why = why.as_str(), "peer connection closed")
            }
            Kind::Peer(None) => {
                self.unadmit(c.peer);
                tracing::debug!(peer = %c.peer, why = why.as_str(), "peer connection closed before it was admitted");
            }
        }
    }

    /// Counts an accepted connection (client or peer) against `--max-connections-per-ip` and
    /// `--max-connections`; false (and counted as a refusal) if it is over either.
    fn admit(&mut self, peer: std::net::SocketAddr) -> bool {
        if !self.admit_ip(peer.ip()) {
            *self.m.refused.entry("max-connections-per-ip".into()).or_default() += 1;
            tracing::debug!(%peer, limit = self.shared.cfg.max_connections_per_ip, "connection refused: --max-connections-per-ip reached");
            return false;
        }
        let open = self.shared.admitted.fetch_add(1, Ordering::AcqRel);
        if open >= self.shared.cfg.max_connections {
            self.unadmit(peer);
            *self.m.refused.entry("max-connections".into()).or_default() += 1;
            tracing::debug!(%peer, limit = self.shared.cfg.max_connections, "connection refused: --max-connections reached");
            return false;
        }
        true
    }

    /// Gives back what [`Worker::admit`] counted; every path that ends an admitted connection
    /// (refusal, setup failure, close) calls it once.
    fn unadmit(&self, peer: std::net::SocketAddr) {
        self.shared.admitted.fetch_sub(1, Ordering::AcqRel);
        self.release_ip(peer.ip());
    }

    /// Counts a new client against `--max-connections-per-ip`; false if it is over the cap.
    pub(super) fn admit_ip(&self, ip: std::net::IpAddr) -> bool {
        let cap = self.shared.cfg.max_connections_per_ip;
        if cap == 0 {
            return true;
        }
        let Ok(mut map) = self.shared.per_ip.lock() else {
            return true;
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    pub(super) fn release_ip(&self, ip: std::net::IpAddr) {
        if self.shared.cfg.max_connections_per_ip == 0 {
            return;
        }
        if let Ok(mut map) = self.shared.per_ip.lock()
            && let Some(n) = map.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// A short reason for the metrics label of a failed handshake or connection.
pub(super) fn failure_label(e: &StreamError) -> String {
    match e {
        StreamError::Tls(t) => {
            let mut s = t.to_string();
            s.truncate(80);
            s
        }
        StreamError::Io(io) => format!("i/o: {:?}", io.kind()),
        StreamError::Backlog => "peer not reading".into(),
    }
}
