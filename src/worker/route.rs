//! Carrying out routing decisions ([`crate::route`]) in a worker: writing a rewritten message to
//! a pool connection or to the connection a token names (handing it to the owning worker when it
//! is another), answering, or counting a drop.

use super::Handoff;
use super::event::Worker;
use crate::metrics::method_index;
use crate::route::{Decision, Origin, RETRY_AFTER, Router};
use crate::sip::response::Extra;
use crate::sip::{Message, Token};

impl Worker {
    pub(super) fn route(&mut self, src: usize, m: &Message) {
        let generation = self.slots.generation(src);
        let Some(c) = self.slots.get_mut(src) else { return };
        let router = Router {
            key: &self.shared.key,
            advertise: &self.shared.cfg.advertise,
            adv_host: &self.shared.adv_host,
            backends: &self.rt.backends,
            balance: self.shared.cfg.balance,
        };
        let mut origin = Origin {
            worker: self.id,
            slot: src as u32,
            generation,
            token: &c.token,
            peer_ip: c.peer_ip.as_bytes(),
            peer_port: c.peer.port(),
            from_server: c.kind.is_server(),
            backend: c.kind.backend(),
            rr_cache: &mut c.rr_tokens,
        };
        let from_backend = origin.backend.filter(|_| origin.from_server);
        let pool = &self.pool;
        let decision = router.decide(
            m,
            &mut origin,
            |b| pool[b].is_up(),
            &mut self.tokens,
            &mut self.rw,
        );
        match m.method() {
            Some(meth) => self.m.requests_by_method[method_index(meth)] += 1,
            None => {
                self.m.responses += 1;
                if let Some(b) = from_backend {
                    self.pool[b].responses += 1;
                }
            }
        }
        match decision {
            Decision::ToBackend(be) => match self.pool[be].pick() {
                Some(dst) => {
                    self.write_local(dst, m);
                    self.m.forwarded_requests += 1;
                    self.pool[be].requests += 1;
                }
                None => self.answer(
                    src,
                    m.head(),
                    503,
                    "Service Unavailable",
                    Extra {
                        retry_after: Some(RETRY_AFTER),
                    },
                ),
            },
            Decision::ToConnection { to, request } => match (self.deliver(to, m), request) {
                (true, true) => self.m.forwarded_requests += 1,
                (true, false) => self.m.forwarded_responses += 1,
                (false, false) => self.m.dropped_responses += 1,
                (false, true) => self.answer(src, m.head(), 430, "Flow Failed", Extra::default()),
            },
            Decision::Answer {
                code,
                reason,
                retry_after,
            } => self.answer(src, m.head(), code, &reason, Extra { retry_after }),
            Decision::Drop(why) => {
                tracing::debug!(worker = self.id, why, "message dropped");
                self.m.dropped_responses += 1;
            }
        }
    }

    /// Writes the rewritten message to a connection of this worker.
    fn write_local(&mut self, dst: usize, m: &Message) -> bool {
        let Some(c) = self.slots.get_mut(dst) else {
            return false;
        };
        self.m.bytes_out += self.rw.len(m.buf) as u64;
        let slices = self.rw.slices(m.buf);
        if c.stream.write(slices.as_slice()).is_err() {
            self.doomed.push((dst, "peer not reading"));
        }
        self.mark_dirty(dst);
        true
    }

    /// Sends the rewritten message to the connection `t` names, here or on its worker.
    fn deliver(&mut self, t: Token, m: &Message) -> bool {
        if t.worker == self.id {
            let slot = t.slot as usize;
            if self.slots.get_checked(slot, t.generation).is_none() {
                return false;
            }
            return self.write_local(slot, m);
        }
        let mut bytes = Vec::with_capacity(self.rw.len(m.buf));
        self.rw.write_to(m.buf, &mut bytes);
        let sent = self.shared.hand_off(
            usize::from(t.worker),
            Handoff {
                slot: t.slot,
                generation: t.generation,
                bytes,
            },
        );
        self.m.handoffs += u64::from(sent);
        sent
    }
}
