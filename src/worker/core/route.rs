//! Carrying out routing decisions ([`crate::route`]) in a worker: writing a rewritten message to
//! a pool connection or to the connection a token names (handing it to the owning worker when it
//! is another), answering, or counting a drop. Probe answers stop here, initial INVITEs are
//! remembered for failover, and INVITE / BYE 2xx move the dialog gauge that draining waits on.

use std::sync::atomic::Ordering;

use super::state::Wrote;
use super::{Core, Wire};
use crate::balance::pool::Pool;
use crate::balance::work::Outstanding;
use crate::metrics::method_index;
use crate::route::invites::{Retry, Stage};
use crate::route::{Avail, Decision, Follow, Origin, Pick};
use crate::sip::response::Extra;
use crate::sip::{Message, Method, Rewrite, Token};
use crate::worker::shared::Handoff;

impl<S: Wire> Core<S> {
    pub(super) fn route(&mut self, src: usize, m: &Message) {
        self.route_excluding(src, m, Retry::default());
    }

    /// Routes `m` from connection `src`; `retry` names the back ends not to use (an INVITE sent
    /// again after its back end was lost, answered 503 or did not answer; it is remembered with
    /// it). True if it went to a back end.
    pub(super) fn route_excluding(&mut self, src: usize, m: &Message, retry: Retry) -> bool {
        let generation = self.slots.generation(src);
        let Some(kind) = self.slots.get(src).map(|c| c.kind) else {
            return false;
        };
        let from_backend = kind.backend().filter(|_| kind.is_server());
        if !kind.is_server() && retry.count == 0 && !(self.partner_may_send(src, m) && self.admit_new(src, m))
        {
            return false;
        }
        let mut follow = None;
        if !kind.is_server()
            && matches!(m.method(), Some(Method::Cancel | Method::Ack))
            && let (Some(call_id), Some((_, cseq, _))) = (m.call_id(), m.cseq)
            && let Some(inv) = self.invites.get((src as u32, generation), call_id, cseq)
        {
            follow = Some(match inv.stage {
                Stage::AnsweredByUs => Follow::AnsweredByUs,
                _ => Follow::Backend(inv.backend),
            });
        }
        let Some(c) = self.slots.get_mut(src) else {
            return false;
        };
        let mut origin = Origin {
            worker: self.id,
            slot: src as u32,
            generation,
            token: &c.token,
            peer_ip: c.peer_ip.as_bytes(),
            peer_port: c.peer.port(),
            from_server: c.kind.is_server(),
            ws: c.stream.ws(),
            backend: c.kind.backend(),
            follow,
            rr_cache: &mut c.rr_tokens,
        };
        let mut pool = Usable {
            pool: &mut self.be.pool,
            disabled: &self.be.disabled,
            retry,
            // `--max-outstanding`: a back end with that much work unanswered takes no new
            // dialogs (it keeps its own), whatever it says: servers that fall behind without a
            // 503.
            cap: u64::from(self.shared.cfg.max_outstanding) * 4,
            outstanding: &self.be.outstanding,
        };
        // The decision carries the rewrite, prepared in the worker's buffer: lent to it (moved
        // out, nothing copied or allocated) for as long as the decision is carried out.
        let mut rw = std::mem::replace(&mut self.rw, Rewrite::unallocated());
        let decision = self
            .router
            .decide(m, &mut origin, &mut pool, &mut self.tokens, &mut rw);
        let forwarded = self.act_on((src, generation), from_backend, m, retry, decision);
        self.rw = rw;
        forwarded
    }

    /// Does what the router decided for `m` from connection `src` (its slot and generation), a
    /// server's when `from_backend`. True if it went to a back end.
    fn act_on(
        &mut self,
        (src, generation): (usize, u32),
        from_backend: Option<usize>,
        m: &Message,
        retry: Retry,
        decision: Decision,
    ) -> bool {
        match (&decision, from_backend) {
            (Decision::ProbeAnswer, Some(b)) => {
                self.probe_answer(b, src, m);
                return false;
            }
            (Decision::ProbeAnswer | Decision::Absorbed, _) => return false,
            _ => {}
        }
        match m.method() {
            Some(meth) => self.m.requests_by_method[method_index(meth)] += 1,
            None => {
                self.m.responses += 1;
                if let Some(b) = from_backend {
                    self.be.counters[b].responses += 1;
                    self.be.counters[b].last_answer = Some(self.turn);
                    self.be.outstanding.answered(b, m);
                }
            }
        }
        match decision {
            Decision::ToBackend {
                backend: be,
                conn,
                rewrite,
            } => {
                self.write_local(conn, m, rewrite);
                self.m.forwarded_requests += 1;
                self.be.counters[be].requests += 1;
                self.be.outstanding.sent(be, m, self.turn);
                self.remember_invite(m, (src as u32, generation), conn, be, retry);
                return true;
            }
            Decision::ToConnection { to, request, .. }
                if !request && from_backend.is_some_and(|b| self.server_answer(src, b, to, m)) => {}
            Decision::ToConnection { to, request, rewrite } => {
                match (self.deliver(to, m, request, rewrite), request) {
                    (true, true) => self.m.forwarded_requests += 1,
                    (true, false) => {
                        self.m.forwarded_responses += 1;
                        self.count_dialogs(m, from_backend);
                    }
                    (false, false) => self.m.drop_for("connection gone or of the other kind"),
                    (false, true) => self.answer(src, m.head(), 430, "Flow Failed", Extra::default()),
                }
            }
            Decision::Answer {
                code,
                reason,
                retry_after,
            } => self.answer(src, m.head(), code, &reason, Extra { retry_after }),
            Decision::Drop(why) => {
                tracing::debug!(worker = self.id, why, "message dropped");
                self.m.drop_for(why);
            }
            Decision::ProbeAnswer | Decision::Absorbed => {}
        }
        false
    }

    /// The router as this worker's settings make it: rebuilt after a reload or an admin change,
    /// never per message.
    pub(super) fn rebuild_router(&mut self) {
        self.router = self.be.router(&self.shared, &self.rt);
    }

    /// Shedding starts with new dialogs: an out-of-dialog request (not ACK or CANCEL) from a
    /// client is answered 503 with `Retry-After: 1` here when its source address has used its
    /// `--rate-limit-per-ip`, or when this worker is saturated (its last turn or its hand-off
    /// queue past their bounds), so in-dialog requests, CANCEL, ACK and responses go first.
    /// False if it was answered.
    fn admit_new(&mut self, src: usize, m: &Message) -> bool {
        if (self.shared.limit.is_none() && !self.saturated)
            || m.to_tag().is_some()
            || matches!(m.method(), None | Some(Method::Ack | Method::Cancel))
        {
            return true;
        }
        let reason = if self.saturated {
            self.m.shed += 1;
            "Service Unavailable (overloaded)"
        } else {
            let Some(ip) = self.slots.get(src).map(|c| c.peer.ip()) else {
                return true;
            };
            let now = self.shared.millis(self.turn);
            if self.shared.limit.as_ref().is_none_or(|l| l.admit(ip, now)) {
                return true;
            }
            self.m.rate_limited += 1;
            "Service Unavailable (rate limited)"
        };
        self.answer(src, m.head(), 503, reason, Extra { retry_after: Some(1) });
        false
    }

    /// A response siplb delivered (so its Via token was valid and minted for its direction):
    /// INVITE and BYE 2xx move the dialog gauge draining waits on. Responses that are dropped never
    /// do, so a client cannot talk a drain into ending early.
    fn count_dialogs(&mut self, m: &Message, from_backend: Option<usize>) {
        let (Some(code), Some((_, _, method))) = (m.status(), m.cseq) else {
            return;
        };
        if !(200..300).contains(&code) {
            return;
        }
        match method {
            Method::Invite => {
                if let Some(b) = from_backend {
                    self.be.counters[b].dialogs += 1;
                }
                self.shared.active_dialogs.fetch_add(1, Ordering::AcqRel);
            }
            Method::Bye => {
                self.shared.active_dialogs.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    /// Writes the rewritten message to a connection of this worker.
    fn write_local(&mut self, dst: usize, m: &Message, rw: &Rewrite) -> bool {
        let Some(c) = self.slots.get_mut(dst) else {
            return false;
        };
        let w = Wrote::by(&mut c.stream, |s| s.write(rw.slices(m.buf).as_slice()));
        self.wrote(dst, rw.len(m.buf), w);
        true
    }

    /// Sends the rewritten message to the connection `t` names, here or on its worker — only if
    /// that connection is of the kind the token's role names (a client's or a server's).
    fn deliver(&mut self, t: Token, m: &Message, request: bool, rw: &Rewrite) -> bool {
        let to_client = t.role.names_client();
        if t.worker == self.id {
            // The server answered, whether or not its caller is still there to hear it.
            if !request && to_client {
                self.invite_progress(t.slot, t.generation, m);
            }
            let slot = t.slot as usize;
            match self.slots.get_checked(slot, t.generation) {
                Some(c) if c.kind.is_server() != to_client => {}
                _ => return false,
            }
            return self.write_local(slot, m, rw);
        }
        let mut bytes = Vec::with_capacity(rw.len(m.buf));
        rw.write_to(m.buf, &mut bytes);
        let sent = self.shared.hand_off(
            usize::from(t.worker),
            Handoff {
                slot: t.slot,
                generation: t.generation,
                to_client,
                bytes,
            },
        );
        self.m.handoffs += u64::from(sent);
        sent
    }
}

/// The back ends as one message may use them: the pool's view, minus the ones the operator
/// disabled, those already tried for this request, and (as far as new dialogs go) those with
/// `--max-outstanding` work unanswered.
struct Usable<'a> {
    pool: &'a mut Pool,
    disabled: &'a [bool],
    retry: Retry,
    cap: u64,
    outstanding: &'a Outstanding,
}

impl Pick for Usable<'_> {
    fn avail(&self, b: usize) -> Avail {
        if self.retry.tried(b) || self.disabled.get(b).copied().unwrap_or(false) {
            Avail::Down
        } else if self.cap > 0 && self.outstanding.total(b) >= self.cap {
            self.pool.avail(b).min(Avail::Connected)
        } else {
            self.pool.avail(b)
        }
    }

    fn pick(&mut self, b: usize) -> Option<usize> {
        self.pool.pick(b)
    }
}
