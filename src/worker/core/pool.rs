//! A worker's MTLS connections to its back ends, carried out: the decisions are the pure
//! [`Pool`](crate::balance::pool::Pool)'s (when to connect, when a connection counts, health,
//! back-off); this file does what they ask — opens connections (through the
//! [`super::Connector`]: in the shell, verified against `--backend-ca` and the back end's NAME),
//! sends OPTIONS probes, logs each state change once and counts failures by reason — and adopts a
//! reloaded back-end set.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::close::CloseReason;
use super::slots::Kind;
use super::{Core, Wire};
use crate::balance::pool::{Action, ConnId, Pool};
use crate::metrics::BackendMetrics;

impl<S: Wire> Core<S> {
    /// Runs the pool's timers and carries out what they ask.
    pub(super) fn pool_tick(&mut self, now: Instant) {
        // A 503 seen by another worker keeps this one's new dialogs off that back end too.
        let ms = self.shared.millis(now);
        for (b, w) in self.be.outstanding.totals().iter().enumerate() {
            let until = w.overloaded_until();
            if until > ms {
                self.be
                    .pool
                    .overloaded(b, now + std::time::Duration::from_millis(until - ms));
            }
        }
        let mut acts = std::mem::take(&mut self.be.actions);
        self.be.pool.tick(now, &mut acts);
        self.carry_out(&mut acts);
        self.be.actions = acts;
    }

    /// Feeds one event to the pool and carries out what follows.
    pub(super) fn pool_event(&mut self, event: impl FnOnce(&mut Pool, &mut Vec<Action>)) {
        let mut acts = std::mem::take(&mut self.be.actions);
        event(&mut self.be.pool, &mut acts);
        self.carry_out(&mut acts);
        self.be.actions = acts;
    }

    fn carry_out(&mut self, acts: &mut Vec<Action>) {
        let mut i = 0;
        while i < acts.len() {
            let a = acts[i].clone();
            i += 1;
            match a {
                Action::Connect { backend, index } => match self.open_backend(backend) {
                    Ok(slot) => self.be.pool.connecting(backend, index, slot),
                    Err(why) => {
                        self.be
                            .pool
                            .connect_failed(backend, index, &why.to_string(), self.turn, acts)
                    }
                },
                Action::Probe { backend, conn, seq } => self.send_probe(backend, conn, seq),
                Action::Up { backend } => {
                    tracing::info!(worker = self.id, backend = %self.rt.backends[backend].name, "back end up");
                }
                Action::Down { backend, why } => {
                    let why = self.be.counters[backend].failure.take().unwrap_or(why);
                    *self.be.counters[backend].failures.entry(why.clone()).or_default() += 1;
                    tracing::warn!(worker = self.id, backend = %self.rt.backends[backend].name, why, "back end down");
                }
                Action::FailOver { backend, conn } => self.fail_over(conn, backend),
            }
        }
        acts.clear();
    }

    fn open_backend(&mut self, b: usize) -> Result<ConnId, super::ConnectError> {
        let (stream, addr) = (self.connect)(&self.rt, b)?;
        Ok(self.add_conn(stream, addr, Kind::Backend(b)))
    }

    /// An OPTIONS a stock registrar answers: Request-URI the back end's own NAME (no user part),
    /// From siplb. Its Call-ID and branch carry a secret of this worker (random at start) after
    /// the worker, back end and sequence number, so only the answer to this very probe, on the
    /// connection it left on, counts.
    fn send_probe(&mut self, b: usize, conn: ConnId, seq: u32) {
        let adv = self.shared.server_advertise();
        let host = &self.shared.adv_host;
        let name = &self.rt.backends[b].name;
        let id = self.id;
        let secret = self.be.probe_secret;
        let probe = format!(
            "OPTIONS sip:{name} SIP/2.0\r\nVia: SIP/2.0/TLS {adv};branch=z9hG4bK-siplb-probe-{secret:016x}-{seq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:siplb@{host}>;tag=siplb-probe-{id}\r\nTo: <sip:{name}>\r\n\
             Call-ID: siplb-probe-{id}-{b}-{seq}-{secret:016x}@{host}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        self.send_raw(conn, probe.as_bytes());
    }

    /// A pool connection finished our side of its handshake.
    pub(super) fn pool_handshake_done(&mut self, b: usize, slot: usize) {
        let tls13 = self.slots.get(slot).is_some_and(|c| c.stream.tls13());
        let now = self.turn;
        self.pool_event(|p, acts| p.handshake_done(b, slot, tls13, now, acts));
    }

    /// A pool connection closed (or never came up).
    pub(super) fn pool_closed(&mut self, b: usize, slot: usize, why: CloseReason) {
        let now = self.turn;
        self.pool_event(|p, acts| p.closed(b, slot, why.for_pool(), why.as_str(), now, acts));
    }

    /// Why a pool connection failed (a TLS verification error, say), for the close that follows.
    pub(super) fn pool_failure(&mut self, b: usize, why: String) {
        self.be.counters[b].failure = Some(why);
    }

    /// Takes the answer to a probe (a response from a server whose Call-ID is a probe's, as the
    /// router decided): it counts only if it answers this worker's probe `seq` on the connection
    /// it went out on. No probe answer goes further, whether it is the one awaited or not.
    pub(super) fn probe_answer(&mut self, b: usize, slot: usize, m: &crate::sip::Message) {
        if let (Some(code), Some((_, seq, _)), Some(call_id)) = (m.status(), m.cseq, m.call_id())
            && self.be.is_our_probe(self.id, call_id, b, seq)
        {
            let now = self.turn;
            self.pool_event(|p, acts| {
                p.probe_answer(b, slot, seq, code, now, acts);
            });
        }
    }

    pub(super) fn backend_metrics(&self, b: usize) -> BackendMetrics {
        self.be.metrics(b, &self.rt.backends[b].name)
    }

    /// Takes a reloaded configuration: pool state follows its back end by name (connections to
    /// back ends that stay are kept, whatever their position now), connections to back ends that
    /// left are closed, new back ends get fresh state and are connected by the next tick.
    pub(super) fn adopt_runtime(&mut self) {
        // The generation first: a reload landing in between is then seen again next turn.
        self.rt_gen = self.shared.runtime_gen.load(Ordering::Acquire);
        let new = self.shared.runtime.load_full();
        let map: Vec<Option<usize>> = self
            .rt
            .backends
            .iter()
            .map(|b| {
                new.backends
                    .iter()
                    .position(|n| n.name == b.name && n.addr == b.addr)
            })
            .collect();
        for slot in self.slots.occupied() {
            if let Some(Kind::Backend(b)) = self.slots.get(slot).map(|c| c.kind)
                && map[b].is_none()
            {
                self.close(slot, CloseReason::Removed);
            }
        }
        self.be.remap(&map, &self.shared, &new, self.turn);
        for slot in self.slots.occupied() {
            let Some(c) = self.slots.get_mut(slot) else {
                continue;
            };
            c.kind = match c.kind {
                Kind::Backend(b) => Kind::Backend(map[b].unwrap_or(b)),
                Kind::Peer(b) => Kind::Peer(b.and_then(|b| map[b])),
                Kind::Client => Kind::Client,
            };
            // Record-Route tokens are cached per back-end position, which may have changed.
            c.rr_tokens.clear();
        }
        self.invites.remap(&map);
        self.rt = new;
        self.close_removed_partners();
        self.pool_tick(self.turn);
        tracing::info!(
            worker = self.id,
            backends = self.rt.backends.len(),
            "worker took the new configuration"
        );
    }
}
