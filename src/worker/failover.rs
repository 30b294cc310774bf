//! Initial INVITEs in a worker, carried out: each one forwarded is remembered
//! ([`Invites`](crate::route::invites::Invites)) until its final answer, so its CANCEL and
//! non-2xx ACK follow it, and so losing its back end's connection costs the caller nothing (sent
//! once more to the next back end while only `100 Trying` was seen) or at worst a prompt `503`
//! instead of minutes of silence.

use std::time::Instant;

use super::event::Worker;
use crate::route::RETRY_AFTER;
use crate::route::invites::{Invite, Stage};
use crate::sip::response::Extra;
use crate::sip::{Message, Method, Read};

impl Worker {
    /// Remembers an initial INVITE sent from client connection `client` to back end `backend`
    /// over pool connection `conn`.
    pub(super) fn remember_invite(
        &mut self,
        m: &Message,
        client: (u32, u32),
        conn: usize,
        backend: usize,
        retried: bool,
    ) {
        let (Some(call_id), Some((_, cseq, Method::Invite))) = (m.call_id(), m.cseq) else {
            return;
        };
        if m.to_tag().is_some() {
            return; // re-INVITE: part of a dialog, pinned
        }
        self.invites.insert(Invite {
            backend,
            conn,
            client,
            call_id: call_id.to_vec(),
            cseq,
            stage: Stage::Sent,
            retried,
            bytes: m.buf.to_vec(),
            since: Instant::now(),
            sent: Instant::now(),
        });
    }

    /// A response on its way to client connection (`slot`, `generation`) of this worker.
    pub(super) fn invite_progress(&mut self, slot: u32, generation: u32, m: &Message) {
        if self.invites.is_empty() {
            return;
        }
        if let (Some(code), Some(call_id), Some((_, cseq, Method::Invite))) =
            (m.status(), m.call_id(), m.cseq)
        {
            let t = self
                .invites
                .answered((slot, generation), call_id, cseq, code, Instant::now());
            if let Some((b, took)) = t.first_answer
                && let Some(c) = self.counters.get_mut(b)
            {
                c.answer_seconds.observe(took);
            }
            if let Some(took) = t.setup {
                self.m.setup_seconds.observe(took);
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
            if matches!(inv.stage, Stage::Sent | Stage::Trying) && !inv.retried {
                self.m.failovers += 1;
                tracing::info!(worker = self.id, backend = %self.rt.backends[b].name, "INVITE unanswered by a lost back end: trying the next one");
                if self.route_excluding(slot as usize, &m, Some(b)) {
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
            inv.since = Instant::now();
            self.invites.insert(inv);
        }
    }
}
