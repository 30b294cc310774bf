//! Initial requests in a worker, carried out: each INVITE or other out-of-dialog request forwarded
//! is remembered ([`Invites`](crate::route::invites::Invites)) until its final answer, so an
//! INVITE's CANCEL and non-2xx ACK follow it, and so a back end that is lost, answers 503 or says
//! nothing in time costs the caller nothing (the request goes to the next back end while only
//! `100 Trying` was seen) or at worst a prompt `503` instead of minutes of silence. A back end
//! that answered 503, or nothing at all, is taken out of new dialogs for a while, in every
//! worker.

use std::time::{Duration, Instant};

use super::{Core, Wire};
use crate::route::RETRY_AFTER;
use crate::route::invites::{Invite, Retry, Stage};
use crate::sip::response::{Extra, retry_after, write_ack, write_cancel};
use crate::sip::{Message, Method, Read, Token};

/// How long a back end that answered 503 without a Retry-After takes no new dialogs.
const OVERLOAD_DEFAULT_SECS: u32 = 10;
/// The longest a Retry-After keeps a back end out of new dialogs (a server cannot ask for more).
const OVERLOAD_MAX_SECS: u32 = 300;

impl<S: Wire> Core<S> {
    /// Remembers an initial INVITE (or another out-of-dialog request but ACK and CANCEL) sent
    /// from client connection `client` to back end `backend` over pool connection `conn`, so it
    /// can go to another back end if this one is lost, answers 503 or does not answer.
    pub(super) fn remember_invite(
        &mut self,
        m: &Message,
        client: (u32, u32),
        conn: usize,
        backend: usize,
        retry: Retry,
    ) {
        let (Some(call_id), Some((_, cseq, method))) = (m.call_id(), m.cseq) else {
            return;
        };
        if m.to_tag().is_some() || matches!(method, Method::Ack | Method::Cancel) {
            return; // part of a dialog (pinned), or of an INVITE's transaction
        }
        self.invites.insert(Invite {
            backend,
            conn,
            client,
            call_id: call_id.to_vec(),
            cseq,
            invite: method == Method::Invite,
            stage: Stage::Sent,
            retry,
            bytes: m.buf.to_vec(),
            since: self.turn,
            sent: self.turn,
        });
    }

    /// A response on its way to client connection (`slot`, `generation`) of this worker.
    pub(super) fn invite_progress(&mut self, slot: u32, generation: u32, m: &Message) {
        if self.invites.is_empty() {
            return;
        }
        if let (Some(code), Some(call_id), Some((_, cseq, method))) = (m.status(), m.call_id(), m.cseq)
            && !matches!(method, Method::Ack | Method::Cancel)
        {
            let t = self
                .invites
                .answered((slot, generation), call_id, cseq, code, self.turn);
            if let Some((b, took)) = t.first_answer
                && let Some(c) = self.be.counters.get_mut(b)
            {
                c.answer_seconds.observe(took);
            }
            if let Some(took) = t.setup {
                self.m.setup_seconds.observe(took);
            }
        }
    }

    /// Back end `b` said it is overloaded (a 503, or no answer at all in time): no new dialogs
    /// for `secs` (every worker), logged once per episode.
    fn overloaded(&mut self, b: usize, secs: u32, why: &str, now: Instant) {
        let secs = secs.min(OVERLOAD_MAX_SECS);
        if !self.be.pool.is_overloaded(b) {
            tracing::info!(worker = self.id, backend = %self.rt.backends[b].name, retry_after = secs, why, "back end overloaded: no new dialogs for a while");
        }
        let until = now + Duration::from_secs(u64::from(secs));
        self.be.pool.overloaded(b, until);
        if let Some(w) = self.be.outstanding.totals().get(b) {
            w.overload(self.shared.millis(until));
        }
    }

    /// An answer from back end `b` (on connection `server`) on its way to client connection `to`,
    /// looked at before it is delivered; true if it was kept from the caller.
    ///
    /// - A `503` says the server is overloaded: it takes no new dialogs for its Retry-After (10 s
    ///   without one, 300 s at most). To an initial INVITE for which nothing but `100 Trying`
    ///   reached the caller, and with retries left, the caller never hears it: siplb ACKs the 503
    ///   and sends the INVITE to the next back end (RFC 3261 §16.7, RFC 3263 §4.3); with none
    ///   left the router answers 503 itself.
    /// - A late answer from a back end the INVITE was given up on (no answer in time) is dropped:
    ///   the caller has another server's transaction now. A late provisional one lets siplb
    ///   CANCEL that server's transaction (RFC 3261 §9.1 allows it only now).
    pub(super) fn server_answer(&mut self, server: usize, b: usize, to: Token, m: &Message) -> bool {
        let (Some(code), Some(call_id), Some((_, cseq, method))) = (m.status(), m.call_id(), m.cseq) else {
            return false;
        };
        if matches!(method, Method::Ack | Method::Cancel) {
            return false;
        }
        // Entries are this worker's: a client connection of another worker is not in its table.
        if to.worker != self.id {
            return false;
        }
        let client = (to.slot, to.generation);
        let Some(inv) = self.invites.get(client, call_id, cseq) else {
            return false; // not an initial request
        };
        if inv.backend != b && inv.retry.tried(b) {
            self.m.drop_for("late answer from a back end given up on");
            if inv.invite
                && (101..200).contains(&code)
                && let Read::Message(_, invite) = crate::sip::read(&inv.bytes, usize::MAX)
            {
                let mut cancel = Vec::with_capacity(m.head().len());
                if write_cancel(invite.request_uri().unwrap_or_default(), m, &mut cancel) {
                    self.send_raw(server, &cancel);
                }
            }
            return true;
        }
        if code != 503 {
            return false;
        }
        let retry = matches!(inv.stage, Stage::Sent | Stage::Trying)
            && !inv.bytes.is_empty()
            && inv.retry.count < self.shared.cfg.max_retries
            && self.slots.get_checked(to.slot as usize, to.generation).is_some();
        let secs = retry_after(m).unwrap_or(OVERLOAD_DEFAULT_SECS);
        self.overloaded(b, secs, "503", self.turn);
        if !retry {
            return false;
        }
        let Some(inv) = self.invites.take(client, call_id, cseq) else {
            return false;
        };
        let Read::Message(_, invite) = crate::sip::read(&inv.bytes, usize::MAX) else {
            return false;
        };
        // Only an INVITE's final answer is ACKed (RFC 3261 §17.1.1.3).
        let mut ack = Vec::with_capacity(m.head().len());
        if inv.invite && write_ack(invite.request_uri().unwrap_or_default(), m, &mut ack) {
            self.send_raw(server, &ack);
        }
        self.m.retries_503 += 1;
        self.route_excluding(to.slot as usize, &invite, inv.retry.after(b));
        true
    }

    /// Initial INVITEs with no answer at all (not even 100 Trying) within
    /// `--backend-answer-timeout`: their back end is taken for overloaded (10 s) and, with
    /// retries left, the INVITE goes to the next back end; without, the caller gets 503.
    pub(super) fn answer_timeouts(&mut self, now: Instant) {
        let limit = self.shared.cfg.backend_answer_timeout;
        if self.invites.is_empty() {
            return;
        }
        let slots = &self.slots;
        let waiting = |conn: usize| slots.get(conn).is_some_and(|c| c.stream.queued() > 0);
        for inv in self.invites.unanswered(now, limit, waiting) {
            let (slot, generation) = inv.client;
            if self.slots.get_checked(slot as usize, generation).is_none() {
                continue; // the caller has gone
            }
            let b = inv.backend;
            // Silent since the request left: overloaded (or hung). A server that answers other
            // requests only dropped this one, which a client can provoke at will.
            if self
                .be
                .counters
                .get(b)
                .is_none_or(|c| c.last_answer.is_none_or(|t| t < inv.sent))
            {
                self.overloaded(b, OVERLOAD_DEFAULT_SECS, "no answer", now);
            }
            let Read::Message(_, m) = crate::sip::read(&inv.bytes, usize::MAX) else {
                continue;
            };
            if inv.retry.count < self.shared.cfg.max_retries {
                self.m.retries_no_answer += 1;
                self.route_excluding(slot as usize, &m, inv.retry.after(b));
            } else {
                self.answer(
                    slot as usize,
                    m.head(),
                    503,
                    "Service Unavailable (no answer from the servers)",
                    Extra {
                        retry_after: Some(RETRY_AFTER),
                    },
                );
            }
        }
    }

    /// Pool connection `conn` of back end `b` died: its unfinished INVITEs go once more elsewhere
    /// (nothing or only 100 seen) or get a 503 from siplb (the server had taken the call).
    pub(super) fn fail_over(&mut self, conn: usize, b: usize) {
        for mut inv in self.invites.lost_on(conn) {
            let (slot, generation) = inv.client;
            if self.slots.get_checked(slot as usize, generation).is_none() {
                continue; // the caller has gone
            }
            let Read::Message(_, m) = crate::sip::read(&inv.bytes, usize::MAX) else {
                continue;
            };
            if matches!(inv.stage, Stage::Sent | Stage::Trying)
                && inv.retry.count < self.shared.cfg.max_retries
            {
                self.m.failovers += 1;
                tracing::info!(worker = self.id, backend = %self.rt.backends[b].name, "INVITE unanswered by a lost back end: trying the next one");
                if self.route_excluding(slot as usize, &m, inv.retry.after(b)) {
                    continue;
                }
            } else {
                tracing::info!(worker = self.id, backend = %self.rt.backends[b].name, "back end lost during an INVITE: answering 503");
                self.answer(
                    slot as usize,
                    m.head(),
                    503,
                    "Service Unavailable (server lost)",
                    Extra {
                        retry_after: Some(RETRY_AFTER),
                    },
                );
            }
            // Answered by siplb (just now, or by the router for want of a back end): its ACK
            // stops here.
            inv.stage = Stage::AnsweredByUs;
            inv.bytes = Vec::new();
            inv.since = self.turn;
            self.invites.insert(inv);
        }
    }
}
