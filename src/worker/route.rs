//! The routing contract of DESIGN.md (stateless, RFC 3261 §16): what happens to a request from a
//! client, a response from either side, and a request from a server. Everything routing needs
//! travels in the message: our Via's branch names the connection its response must go back to,
//! our Record-Route / Path URI names the client connection and the back end the dialog is pinned
//! to, both as MAC-protected tokens.

use std::sync::atomic::Ordering;

use super::Handoff;
use super::event::Worker;
use crate::balance;
use crate::sip::addr::{NameAddr, Uri};
use crate::sip::header::Name;
use crate::sip::response::Extra;
use crate::sip::rewrite::{Forward, MAGIC, RewriteError};
use crate::sip::token::TOKEN_LEN;
use crate::sip::via::Via;
use crate::sip::{Field, Message, Method, Token};

/// Length of our branch after the magic cookie and before `-<token>`: 16 hex characters of
/// transaction hash (RFC 3261 §16.11) and 8 of loop hash (§16.3).
const BRANCH_HASH: usize = 24;

/// Seconds a 503 asks the client to wait.
const RETRY_AFTER: u32 = 5;

impl Worker {
    pub(super) fn route(&mut self, src: usize, m: &Message) {
        let Some(c) = self.slots.get(src) else { return };
        let from_server = c.kind.is_server();
        match (m.is_request(), from_server) {
            (true, false) => self.client_request(src, m),
            (true, true) => self.server_request(src, m),
            (false, _) => self.response(m),
        }
    }

    /// Rule 1: a request from a client goes to the pinned or the hashed back end.
    fn client_request(&mut self, src: usize, m: &Message) {
        let Some((via, mf)) = self.check_request(src, m) else {
            return;
        };
        let method = m.method().unwrap_or(Method::Options);
        let ours = self.our_route(m);
        let backends = &self.rt.backends;
        let pinned = ours
            .and_then(|(_, t)| t)
            .and_then(|t| balance::by_pin(t.pin, backends));
        let chosen = match (pinned, ours.and_then(|(_, t)| t).map(|t| t.pin)) {
            (Some(b), _) => self.pool[b].is_up().then_some(b),
            // A pin naming a back end no longer configured: the dialog cannot continue there.
            (None, Some(pin)) if pin != 0 => None,
            _ => {
                let key = self.shared.cfg.balance.key(m);
                let pool = &self.pool;
                balance::choose(key, backends, |i| pool[i].is_up())
            }
        };
        let Some(dst) = chosen.and_then(|b| self.pool[b].pick().map(|s| (b, s))) else {
            self.answer(
                src,
                m.head(),
                503,
                "Service Unavailable",
                Extra {
                    retry_after: Some(RETRY_AFTER),
                },
            );
            return;
        };
        let (be, dst) = dst;
        let Some(c) = self.slots.get(src) else { return };
        let (token, ip, port) = (c.token, c.peer_ip, c.peer.port());
        let record = forms_dialog(m, method) || method == Method::Register;
        let rr = record.then(|| self.rr_token(src, be));
        let branch = self.branch(m, &via);
        let adv = self.shared.cfg.advertise.as_bytes();
        let fwd = Forward {
            received: Some((ip.as_bytes(), port)),
            sent_by: adv,
            branch: &branch,
            token: &token,
            pop_route: ours.map(|(f, _)| f),
            max_forwards: mf,
            record: rr.as_ref().map(|t| {
                (
                    if method == Method::Register {
                        "Path"
                    } else {
                        "Record-Route"
                    },
                    t,
                )
            }),
        };
        let edits = self.rw.forward_request(m, &via, &fwd);
        if !self.edits_ok(src, m, edits) {
            return;
        }
        self.write_local(dst, m);
        self.shared
            .stats
            .forwarded_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Rule 3: a request from a server goes to the client connection its Route token names.
    fn server_request(&mut self, src: usize, m: &Message) {
        let Some((via, mf)) = self.check_request(src, m) else {
            return;
        };
        let method = m.method().unwrap_or(Method::Options);
        let Some((route, Some(t))) = self.our_route(m) else {
            self.answer(src, m.head(), 404, "No siplb Route To A Client", Extra::default());
            return;
        };
        let Some(c) = self.slots.get(src) else { return };
        let (token, backend) = (c.token, c.kind.backend());
        // A new dialog from the server (an INVITE to a registered client, say) is record-routed
        // too, pinned to this server, so the client's in-dialog requests come back to it.
        let rr = match backend {
            Some(b) if forms_dialog(m, method) => {
                let pin = self.rt.backends[b].pin;
                Some(self.shared.key.encode(Token { pin, ..t }))
            }
            _ => None,
        };
        let branch = self.branch(m, &via);
        let adv = self.shared.cfg.advertise.as_bytes();
        let fwd = Forward {
            received: None,
            sent_by: adv,
            branch: &branch,
            token: &token,
            pop_route: Some(route),
            max_forwards: mf,
            record: rr.as_ref().map(|t| ("Record-Route", t)),
        };
        let edits = self.rw.forward_request(m, &via, &fwd);
        if !self.edits_ok(src, m, edits) {
            return;
        }
        if !self.deliver(t, m) {
            self.answer(src, m.head(), 430, "Flow Failed", Extra::default());
            return;
        }
        self.shared
            .stats
            .forwarded_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Rule 2: a response goes where our top Via's token says; anything else is dropped.
    fn response(&mut self, m: &Message) {
        let target = m.top_via().ok().and_then(|v| self.our_via_token(&v));
        let (Some(t), Some(top)) = (target, m.via) else {
            self.shared
                .stats
                .dropped_responses
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.rw.clear();
        if self.rw.pop_top(top).is_err() || !self.deliver(t, m) {
            self.shared
                .stats
                .dropped_responses
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared
            .stats
            .forwarded_responses
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A request whose edits cannot be made (too many, overlapping) is answered 400.
    fn edits_ok(&mut self, src: usize, m: &Message, edits: Result<(), RewriteError>) -> bool {
        if let Err(e) = edits {
            self.answer(
                src,
                m.head(),
                400,
                &format!("Cannot Forward: {e}"),
                Extra::default(),
            );
            return false;
        }
        true
    }

    /// Checks shared by both request directions: well-formed (else 400) and Max-Forwards (483).
    /// Returns the top Via and the Max-Forwards to send on.
    fn check_request<'a>(&mut self, src: usize, m: &Message<'a>) -> Option<(Via<'a>, u32)> {
        let via = match m.validate_request() {
            Ok(v) => v,
            Err(why) => {
                self.answer(src, m.head(), 400, &why.to_string(), Extra::default());
                return None;
            }
        };
        if self.looped(m) {
            self.answer(src, m.head(), 482, "Loop Detected", Extra::default());
            return None;
        }
        match m.max_forwards {
            Some((_, 0)) => {
                self.answer(src, m.head(), 483, "Too Many Hops", Extra::default());
                None
            }
            Some((_, n)) => Some((via, n - 1)),
            None => Some((via, 70)),
        }
    }

    /// The top Route, if it names siplb, with its token if it carries a valid one.
    fn our_route(&mut self, m: &Message) -> Option<(Field, Option<Token>)> {
        let f = m.route?;
        let addr = NameAddr::parse(m.at(f.top)).ok()?;
        let uri = Uri::parse(addr.uri).ok()?;
        let param = uri.params.get(b"siplb").flatten();
        if param.is_none() && !uri.host.eq_ignore_ascii_case(self.shared.adv_host.as_bytes()) {
            return None;
        }
        let token = param.and_then(|p| self.tokens.decode(&self.shared.key, p).ok());
        Some((f, token))
    }

    /// The token in a Via we wrote: `branch=z9hG4bK<16 hex tx><8 hex loop>-<token>`, our host.
    fn our_via_token(&mut self, via: &Via) -> Option<Token> {
        if !via.host.eq_ignore_ascii_case(self.shared.adv_host.as_bytes()) {
            return None;
        }
        let rest = via.branch()?.strip_prefix(MAGIC)?;
        if rest.len() != BRANCH_HASH + 1 + TOKEN_LEN || rest[BRANCH_HASH] != b'-' {
            return None;
        }
        self.tokens
            .decode(&self.shared.key, &rest[BRANCH_HASH + 1..])
            .ok()
    }

    /// RFC 3261 §16.3 step 4: a Via of ours further down whose loop part equals what this request
    /// gives now means it came back unchanged — a loop, not a spiral (a spiral changes the
    /// Request-URI). Only requests that carry more than one Via are looked at.
    fn looped(&self, m: &Message) -> bool {
        if m.via_count < 2 {
            return false;
        }
        let lh = self.loop_hash(m);
        let adv = self.shared.adv_host.as_bytes();
        m.values_of(Name::Via)
            .skip(1)
            .filter_map(|v| Via::parse(v).ok())
            .any(|v| {
                v.host.eq_ignore_ascii_case(adv)
                    && v.branch()
                        .and_then(|b| b.strip_prefix(MAGIC))
                        .is_some_and(|r| r.get(16..BRANCH_HASH) == Some(&lh[..]))
            })
    }

    /// What a loop leaves unchanged and CANCEL / ACK share with their INVITE.
    fn loop_hash(&self, m: &Message) -> [u8; 8] {
        let cseq_num = m.cseq.map(|(_, n, _)| n.to_be_bytes()).unwrap_or_default();
        let parts: [&[u8]; 4] = [
            m.request_uri().unwrap_or(b""),
            m.call_id().unwrap_or(b""),
            m.value(m.from).unwrap_or(b""),
            &cseq_num,
        ];
        let h = self.shared.key.branch(&parts);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        out
    }

    /// RFC 3261 §16.11: the same for a retransmission, and for the CANCEL and non-2xx ACK that
    /// share their INVITE's branch, so the server matches them to its transaction.
    fn branch(&self, m: &Message, via: &Via) -> [u8; BRANCH_HASH] {
        let tx = match via.branch() {
            Some(b) if b.starts_with(MAGIC) => self.shared.key.branch(&[b, via.host]),
            // RFC 2543 peers: derive it from what CANCEL and ACK share with their INVITE.
            _ => {
                let top = m.via.map_or(&b""[..], |f| m.at(f.top));
                let cseq_num = m.cseq.map(|(_, n, _)| n.to_be_bytes()).unwrap_or_default();
                self.shared
                    .key
                    .branch(&[m.call_id().unwrap_or(b""), &cseq_num, top])
            }
        };
        let mut out = [0u8; BRANCH_HASH];
        out[..16].copy_from_slice(&tx);
        out[16..].copy_from_slice(&self.loop_hash(m));
        out
    }

    /// The Record-Route / Path token of a client connection for back end `be`, made once.
    fn rr_token(&mut self, src: usize, be: usize) -> [u8; TOKEN_LEN] {
        let generation = self.slots.generation(src);
        let n = self.rt.backends.len();
        let pin = self.rt.backends[be].pin;
        let key = &self.shared.key;
        let worker = self.id;
        let Some(c) = self.slots.get_mut(src) else {
            return key.encode(Token {
                worker,
                slot: src as u32,
                generation,
                pin,
            });
        };
        if c.rr_tokens.len() != n {
            c.rr_tokens = vec![None; n];
        }
        *c.rr_tokens[be].get_or_insert_with(|| {
            key.encode(Token {
                worker,
                slot: src as u32,
                generation,
                pin,
            })
        })
    }

    /// Writes the rewritten message to a connection of this worker.
    fn write_local(&mut self, dst: usize, m: &Message) -> bool {
        let Some(c) = self.slots.get_mut(dst) else {
            return false;
        };
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
        self.shared.hand_off(
            usize::from(t.worker),
            Handoff {
                slot: t.slot,
                generation: t.generation,
                bytes,
            },
        )
    }
}

/// Dialog-forming requests (RFC 3261 §12) that siplb record-routes: INVITE, SUBSCRIBE, REFER and
/// NOTIFY outside a dialog (no To tag).
fn forms_dialog(m: &Message, method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
    ) && m
        .value(m.to)
        .and_then(|v| NameAddr::parse(v).ok())
        .is_none_or(|a| a.tag().is_none())
}
