//! A worker's connections over their life: admitting one (the connection limits), giving it its
//! slot and token, what happens when a handshake completes (pool up, peer name; clients in
//! `partner.rs`), read failures and closing — settled in one place, [`Core::close`].

use std::sync::atomic::Ordering;

use ::core::net::{IpAddr, SocketAddr};

use super::close::CloseReason;
use super::slots::{Conn, IpText, Kind};
use super::{Core, Wire};
use crate::sip::{Role, Token as SipToken};
use crate::tls::wire::StreamError;

impl<S: Wire> Core<S> {
    /// A connection the shell accepted (a client, or a server on the peer listener) and
    /// [admitted](Core::admit): its slot, once the shell has registered it. A WebSocket
    /// listener's client starts with its upgrade.
    pub fn handle_accepted(&mut self, stream: S, peer: SocketAddr, kind: Kind, ws: bool) -> usize {
        if kind == Kind::Client {
            self.m.accepted += 1;
        }
        let slot = self.add_conn(stream, peer, kind);
        if ws && let Some(c) = self.slots.get_mut(slot) {
            c.ws = Some(Box::new(super::slots::WsState::Upgrading));
            self.m.ws_accepted += 1;
        }
        slot
    }

    /// Registers a new connection and gives it its token.
    pub(super) fn add_conn(&mut self, mut stream: S, peer: SocketAddr, kind: Kind) -> usize {
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
        if matches!(kind, Kind::Backend(_)) {
            // A slow back end is met with backpressure (clients are read no more), not with
            // closing its connection: its queue is bounded by the worker's output budget.
            stream.set_max_pending(self.shared.cfg.max_output_bytes);
        }
        let interest = stream.wants_write();
        let now = self.turn;
        let conn = Conn {
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
        tracing::debug!(worker = self.id, slot, %peer, ?kind, "connection open");
        let slot = self.slots.insert(conn);
        self.registering.push(self.slots.stamp(slot));
        slot
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
                    .peer_certificates()
                    .first()
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

    /// Closes the connection in `slot` (a clean TLS close, a WebSocket close frame when it can
    /// take one), gives back what it was admitted with and tells the pool of a pool connection.
    pub fn close(&mut self, slot: usize, why: CloseReason) {
        let Some(mut c) = self.slots.remove(slot) else {
            return;
        };
        let budget = self.shared.cfg.max_output_bytes;
        self.queued
            .moved(c.stream.queued(), 0, c.kind.is_server(), budget);
        // A WebSocket closed by siplb says so in a close frame first (its close handshake),
        // unless one was already sent (a violation) or the client closed.
        if c.stream.ws()
            && let Some(code) = why.ws_close_code()
        {
            let _ = c
                .stream
                .write_control(crate::ws::frame::OP_CLOSE, &code.to_be_bytes());
        }
        c.stream.close();
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
        self.released.push(c.stream);
    }

    /// Counts an accepted connection (client or peer) against `--max-connections-per-ip` and
    /// `--max-connections`; false (and counted as a refusal) if it is over either.
    pub fn admit(&mut self, peer: SocketAddr) -> bool {
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

    /// Gives back what [`Core::admit`] counted; every path that ends an admitted connection
    /// (refusal, setup failure, close) calls it once.
    pub fn unadmit(&self, peer: SocketAddr) {
        self.shared.admitted.fetch_sub(1, Ordering::AcqRel);
        self.release_ip(peer.ip());
    }

    /// Counts a new client against `--max-connections-per-ip`; false if it is over the cap.
    fn admit_ip(&self, ip: IpAddr) -> bool {
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

    fn release_ip(&self, ip: IpAddr) {
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
