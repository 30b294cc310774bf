//! Health probes and failover. Every `--health-interval` each worker sends a SIP OPTIONS to each
//! back end over one of its own pool connections; an answer below 500 is a pass, a 5xx/6xx or no
//! answer within the interval a failure. `DOWN_AFTER` failures in a row take the back end out of
//! new dialogs, `HEALTHY_AFTER` passes bring it back; a lost connection takes it out at once.
//!
//! Failover: an initial INVITE is remembered (its bytes and its client connection) until the back
//! end answers anything. If that back end's connection dies first, the INVITE never reached a
//! server that could answer it, so it is routed once more, the dead back end excluded — the
//! caller sees no failure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::event::Worker;
use crate::sip::{Message, Method, Read};

/// Failed probes in a row that take a back end down.
pub const DOWN_AFTER: u32 = 2;
/// Passed probes in a row that bring it back.
pub const HEALTHY_AFTER: u32 = 2;
/// Call-ID prefix of siplb's own probes; their answers never leave siplb.
pub const PROBE_PREFIX: &[u8] = b"siplb-probe-";
/// How long an INVITE is kept for failover without any answer (RFC 3261 Timer B).
const PENDING_FOR: Duration = Duration::from_secs(32);

/// An initial INVITE sent to a back end that has not answered yet.
pub struct Pending {
    pub cseq: u32,
    /// The pool connection it went out on, and its back end.
    pub dst: usize,
    pub backend: usize,
    /// The client connection (slot, generation) and the INVITE as the client sent it.
    pub client: (usize, u32),
    pub bytes: Vec<u8>,
    pub sent: Instant,
}

/// Initial INVITEs waiting for their back end's first answer, by Call-ID.
pub type PendingInvites = HashMap<Vec<u8>, Pending>;

impl Worker {
    /// Sends the probes that are due, counting unanswered ones as failures.
    pub(super) fn probe_backends(&mut self, now: Instant) {
        let interval = self.shared.cfg.health_interval;
        for b in 0..self.pool.len() {
            if now < self.pool[b].next_probe {
                continue;
            }
            if self.pool[b].outstanding.take().is_some() {
                self.probe_result(b, false, "OPTIONS probe unanswered");
            }
            // No connection up: try again at the next sweep rather than an interval later, so a
            // back end is probed as soon as it is reachable.
            let Some(slot) = self.pool[b].pick() else { continue };
            self.pool[b].next_probe = now + interval;
            let e = &mut self.pool[b];
            e.probe_seq = e.probe_seq.wrapping_add(1);
            e.outstanding = Some((e.probe_seq, now));
            let seq = e.probe_seq;
            let adv = &self.shared.cfg.advertise;
            let host = &self.shared.adv_host;
            let name = &self.rt.backends[b].name;
            let id = self.id;
            let probe = format!(
                "OPTIONS sip:{name} SIP/2.0\r\nVia: SIP/2.0/TLS {adv};branch=z9hG4bK-siplb-probe-{id}-{b}-{seq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:siplb@{host}>;tag=siplb-probe-{id}\r\nTo: <sip:{name}>\r\n\
                 Call-ID: siplb-probe-{id}-{b}-{seq}@{host}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            self.send_raw(slot, probe.as_bytes());
        }
    }

    /// Takes the answer to a probe (a response whose Call-ID is ours); false if it is not one.
    pub(super) fn probe_answer(&mut self, b: usize, m: &Message) -> bool {
        if !m.call_id().is_some_and(|c| c.starts_with(PROBE_PREFIX)) {
            return false;
        }
        let (Some(code), Some((_, seq, _))) = (m.status(), m.cseq) else {
            return true;
        };
        let expected = self
            .pool
            .get(b)
            .and_then(|e| e.outstanding)
            .filter(|&(s, _)| s == seq);
        let Some((_, sent)) = expected else { return true }; // late or not for this back end
        if code < 200 {
            return true;
        }
        self.pool[b].outstanding = None;
        self.pool[b].probe_rtt = Some(sent.elapsed());
        if code < 500 {
            self.probe_result(b, true, "");
        } else {
            self.probe_result(b, false, "OPTIONS probe answered 5xx/6xx");
        }
        true
    }

    fn probe_result(&mut self, b: usize, ok: bool, why: &str) {
        let e = &mut self.pool[b];
        if ok {
            e.probe_fails = 0;
            e.probe_oks += 1;
            if !e.healthy && e.probe_oks >= HEALTHY_AFTER {
                e.healthy = true;
                self.log_up(b);
            }
            return;
        }
        e.probes_failed += 1;
        e.probe_oks = 0;
        e.probe_fails += 1;
        if e.healthy && e.probe_fails >= DOWN_AFTER {
            e.healthy = false;
            self.log_down(b, why);
        }
    }

    /// Remembers an initial INVITE until its back end answers.
    pub(super) fn remember_invite(&mut self, m: &Message, client: (usize, u32), dst: usize, backend: usize) {
        let (Some(call_id), Some((_, cseq, Method::Invite))) = (m.call_id(), m.cseq) else {
            return;
        };
        if m.to_tag().is_some() {
            return; // re-INVITE: part of a dialog, not a new call
        }
        let p = Pending {
            cseq,
            dst,
            backend,
            client,
            bytes: m.buf.to_vec(),
            sent: Instant::now(),
        };
        self.pending.insert(call_id.to_vec(), p);
    }

    /// A back end answered an INVITE: it has it, no failover needed.
    pub(super) fn invite_answered(&mut self, m: &Message) {
        if self.pending.is_empty() {
            return;
        }
        if let (Some(call_id), Some((_, cseq, Method::Invite))) = (m.call_id(), m.cseq)
            && self.pending.get(call_id).is_some_and(|p| p.cseq == cseq)
        {
            self.pending.remove(call_id);
        }
    }

    /// Pool connection `slot` of back end `b` died: its unanswered INVITEs go once more elsewhere.
    pub(super) fn fail_over(&mut self, slot: usize, b: usize) {
        let lost: Vec<Vec<u8>> = self
            .pending
            .iter()
            .filter(|(_, p)| p.dst == slot)
            .map(|(k, _)| k.clone())
            .collect();
        for key in lost {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let Read::Message(_, m) = crate::sip::read(&p.bytes, usize::MAX) else {
                continue;
            };
            if self.slots.get_checked(p.client.0, p.client.1).is_none() {
                continue; // the caller has gone
            }
            self.m.failovers += 1;
            tracing::info!(worker = self.id, backend = %self.rt.backends[b].name, "INVITE unanswered by a lost back end: trying the next one");
            self.route_excluding(p.client.0, &m, Some(p.backend));
        }
    }

    /// Forgets INVITEs nobody answered for too long.
    pub(super) fn expire_pending(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.duration_since(p.sent) < PENDING_FOR);
    }
}
