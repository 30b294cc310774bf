//! The routing contract of DESIGN.md (stateless, RFC 3261 §16) as a pure decision: given a
//! message, where it came from and which back ends can take new dialogs, say where it goes and
//! prepare its rewrite — no sockets, no threads, so it is unit-tested and fuzzed on its own. The
//! worker carries out the [`Decision`].
//!
//! Everything routing needs travels in the message: our Via's branch names the connection its
//! response must go back to; our Record-Route / Path URI names the client connection and the back
//! end the dialog is pinned to; both are MAC-protected [`Token`]s.

use std::borrow::Cow;

use crate::balance::{self, Backend, BalanceKey};
use crate::sip::addr::{NameAddr, Uri};
use crate::sip::header::Name;
use crate::sip::rewrite::{Forward, MAGIC};
use crate::sip::token::TOKEN_LEN;
use crate::sip::via::Via;
use crate::sip::{Field, Message, Method, Rewrite, Token, TokenCache, TokenKey};

/// Length of our branch after the magic cookie and before `-<token>`: 16 hex characters of
/// transaction hash (RFC 3261 §16.11) and 8 of loop hash (§16.3).
pub const BRANCH_HASH: usize = 24;

/// Seconds a 503 asks the client to wait.
pub const RETRY_AFTER: u32 = 5;

/// What stays the same for every message a worker routes.
pub struct Router<'a> {
    pub key: &'a TokenKey,
    /// `host:port` written into Via, Record-Route and Path.
    pub advertise: &'a str,
    /// Its host part, to recognise our own Route and Via.
    pub adv_host: &'a str,
    pub backends: &'a [Backend],
    pub balance: BalanceKey,
    /// Shutting down: new dialogs and transactions get 503, dialogs in flight go on.
    pub draining: bool,
}

/// The connection a message came in on.
pub struct Origin<'a> {
    pub worker: u16,
    pub slot: u32,
    pub generation: u32,
    /// Our Via token naming this connection.
    pub token: &'a [u8; TOKEN_LEN],
    pub peer_ip: &'a [u8],
    pub peer_port: u16,
    /// A back-end server (pool or peer connection) rather than a client.
    pub from_server: bool,
    /// Which back end, when the connection is a server's and it is known.
    pub backend: Option<usize>,
    /// Record-Route / Path tokens of this (client) connection per back end, made on first use.
    pub rr_cache: &'a mut Vec<Option<[u8; TOKEN_LEN]>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write the prepared rewrite to one of this worker's connections to back end `0`.
    ToBackend(usize),
    /// Write the prepared rewrite to the connection `to` names (here or on another worker);
    /// `request` says whether a missing connection is answered (430) or only counted.
    ToConnection { to: Token, request: bool },
    /// Answer the request ourselves.
    Answer {
        code: u16,
        reason: Cow<'static, str>,
        retry_after: Option<u32>,
    },
    /// Drop it (a response that is not ours) and count it.
    Drop(&'static str),
}

fn answer(code: u16, reason: impl Into<Cow<'static, str>>) -> Decision {
    Decision::Answer {
        code,
        reason: reason.into(),
        retry_after: None,
    }
}

impl Router<'_> {
    /// Decides what happens to `m`; when it is forwarded, `rw` holds its rewrite. `usable` says
    /// whether a back end can take messages now (in this worker).
    pub fn decide(
        &self,
        m: &Message,
        from: &mut Origin,
        usable: impl Fn(usize) -> bool,
        tokens: &mut TokenCache,
        rw: &mut Rewrite,
    ) -> Decision {
        match (m.is_request(), from.from_server) {
            (true, false) => self.client_request(m, from, usable, tokens, rw),
            (true, true) => self.server_request(m, from, tokens, rw),
            (false, _) => self.response(m, tokens, rw),
        }
    }

    /// Rule 1: a request from a client goes to the pinned or the hashed back end.
    fn client_request(
        &self,
        m: &Message,
        from: &mut Origin,
        usable: impl Fn(usize) -> bool,
        tokens: &mut TokenCache,
        rw: &mut Rewrite,
    ) -> Decision {
        let (via, mf) = match self.check_request(m) {
            Ok(v) => v,
            Err(d) => return d,
        };
        let method = m.method().unwrap_or(Method::Options);
        if self.draining && m.to_tag().is_none() && !matches!(method, Method::Ack | Method::Cancel) {
            return Decision::Answer {
                code: 503,
                reason: "Service Unavailable (shutting down)".into(),
                retry_after: Some(RETRY_AFTER),
            };
        }
        let ours = self.our_route(m, tokens);
        let pin = ours.and_then(|(_, t)| t).map(|t| t.pin).filter(|&p| p != 0);
        let chosen = match pin {
            // A pinned dialog stays on its back end, or fails there: never re-hashed onto a server
            // that does not have it (nor onto none, when the pin names a back end since removed).
            Some(p) => balance::by_pin(p, self.backends).filter(|&b| usable(b)),
            None => balance::choose(self.balance.key(m), self.backends, &usable),
        };
        let Some(be) = chosen else {
            return Decision::Answer {
                code: 503,
                reason: "Service Unavailable".into(),
                retry_after: Some(RETRY_AFTER),
            };
        };
        let record = forms_dialog(m, method) || method == Method::Register;
        let rr = record.then(|| self.rr_token(from, be));
        let branch = self.branch(m, &via);
        let fwd = Forward {
            received: Some((from.peer_ip, from.peer_port)),
            sent_by: self.advertise.as_bytes(),
            branch: &branch,
            token: from.token,
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
        match rw.forward_request(m, &via, &fwd) {
            Ok(()) => Decision::ToBackend(be),
            Err(e) => answer(400, format!("Cannot Forward: {e}")),
        }
    }

    /// Rule 3: a request from a server goes to the client connection its Route token names.
    fn server_request(
        &self,
        m: &Message,
        from: &Origin,
        tokens: &mut TokenCache,
        rw: &mut Rewrite,
    ) -> Decision {
        let (via, mf) = match self.check_request(m) {
            Ok(v) => v,
            Err(d) => return d,
        };
        let method = m.method().unwrap_or(Method::Options);
        let Some((route, Some(t))) = self.our_route(m, tokens) else {
            return answer(404, "No siplb Route To A Client");
        };
        // A new dialog from the server (an INVITE to a registered client, say) is record-routed
        // too, pinned to this server, so the client's in-dialog requests come back to it.
        let rr = match from.backend {
            Some(b) if forms_dialog(m, method) => Some(self.key.encode(Token {
                pin: self.backends[b].pin,
                ..t
            })),
            _ => None,
        };
        let branch = self.branch(m, &via);
        let fwd = Forward {
            received: None,
            sent_by: self.advertise.as_bytes(),
            branch: &branch,
            token: from.token,
            pop_route: Some(route),
            max_forwards: mf,
            record: rr.as_ref().map(|t| ("Record-Route", t)),
        };
        match rw.forward_request(m, &via, &fwd) {
            Ok(()) => Decision::ToConnection {
                to: Token { pin: 0, ..t },
                request: true,
            },
            Err(e) => answer(400, format!("Cannot Forward: {e}")),
        }
    }

    /// Rule 2: a response goes where our top Via's token says; anything else is dropped.
    fn response(&self, m: &Message, tokens: &mut TokenCache, rw: &mut Rewrite) -> Decision {
        let Some(top) = m.via else {
            return Decision::Drop("response without Via");
        };
        let Some(to) = m.top_via().ok().and_then(|v| self.our_via_token(&v, tokens)) else {
            return Decision::Drop("response whose top Via is not ours");
        };
        rw.clear();
        match rw.pop_top(top) {
            Ok(()) => Decision::ToConnection { to, request: false },
            Err(_) => Decision::Drop("response whose Via cannot be removed"),
        }
    }

    /// Checks of every request: well-formed (400), not looping (482), Max-Forwards (483).
    /// Returns the top Via and the Max-Forwards to send on.
    fn check_request<'a>(&self, m: &Message<'a>) -> Result<(Via<'a>, u32), Decision> {
        let via = m.validate_request().map_err(|why| answer(400, why.to_string()))?;
        if self.looped(m) {
            return Err(answer(482, "Loop Detected"));
        }
        match m.max_forwards {
            Some((_, 0)) => Err(answer(483, "Too Many Hops")),
            Some((_, n)) => Ok((via, n - 1)),
            None => Ok((via, 70)),
        }
    }

    /// The top Route, if it names siplb, with its token if it carries a valid one.
    fn our_route(&self, m: &Message, tokens: &mut TokenCache) -> Option<(Field, Option<Token>)> {
        let f = m.route?;
        let addr = NameAddr::parse(m.at(f.top)).ok()?;
        let uri = Uri::parse(addr.uri).ok()?;
        let param = uri.params.get(b"siplb").flatten();
        if param.is_none() && !uri.host.eq_ignore_ascii_case(self.adv_host.as_bytes()) {
            return None;
        }
        Some((f, param.and_then(|p| tokens.decode(self.key, p).ok())))
    }

    /// The token in a Via we wrote: `branch=z9hG4bK<16 hex tx><8 hex loop>-<token>`, our host.
    fn our_via_token(&self, via: &Via, tokens: &mut TokenCache) -> Option<Token> {
        if !via.host.eq_ignore_ascii_case(self.adv_host.as_bytes()) {
            return None;
        }
        let rest = via.branch()?.strip_prefix(MAGIC)?;
        if rest.len() != BRANCH_HASH + 1 + TOKEN_LEN || rest[BRANCH_HASH] != b'-' {
            return None;
        }
        tokens.decode(self.key, &rest[BRANCH_HASH + 1..]).ok()
    }

    /// RFC 3261 §16.3 step 4: a Via of ours further down whose loop part equals what this request
    /// gives now means it came back unchanged — a loop, not a spiral (a spiral changes the
    /// Request-URI). Only requests that carry more than one Via are looked at.
    fn looped(&self, m: &Message) -> bool {
        // Our Via can only be there if our host is: one memmem over the head spares the re-lexing
        // for the common multi-Via request (a client behind an SBC).
        if m.via_count < 2 || memchr::memmem::find(m.head(), self.adv_host.as_bytes()).is_none() {
            return false;
        }
        let lh = self.loop_hash(m);
        let adv = self.adv_host.as_bytes();
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
        let h = self.key.branch(&parts);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        out
    }

    /// RFC 3261 §16.11: the same for a retransmission, and for the CANCEL and non-2xx ACK that
    /// share their INVITE's branch, so the server matches them to its transaction.
    fn branch(&self, m: &Message, via: &Via) -> [u8; BRANCH_HASH] {
        let tx = match via.branch() {
            Some(b) if b.starts_with(MAGIC) => self.key.branch(&[b, via.host]),
            // RFC 2543 peers: derive it from what CANCEL and ACK share with their INVITE.
            _ => {
                let top = m.via.map_or(&b""[..], |f| m.at(f.top));
                let cseq_num = m.cseq.map(|(_, n, _)| n.to_be_bytes()).unwrap_or_default();
                self.key.branch(&[m.call_id().unwrap_or(b""), &cseq_num, top])
            }
        };
        let mut out = [0u8; BRANCH_HASH];
        out[..16].copy_from_slice(&tx);
        out[16..].copy_from_slice(&self.loop_hash(m));
        out
    }

    /// The Record-Route / Path token of a client connection for back end `be`, made once.
    fn rr_token(&self, from: &mut Origin, be: usize) -> [u8; TOKEN_LEN] {
        if from.rr_cache.len() != self.backends.len() {
            *from.rr_cache = vec![None; self.backends.len()];
        }
        let t = Token {
            worker: from.worker,
            slot: from.slot,
            generation: from.generation,
            pin: self.backends[be].pin,
        };
        *from.rr_cache[be].get_or_insert_with(|| self.key.encode(t))
    }
}

/// Dialog-forming requests (RFC 3261 §12) that siplb record-routes: INVITE, SUBSCRIBE, REFER and
/// NOTIFY outside a dialog (no To tag).
fn forms_dialog(m: &Message, method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
    ) && m.to_tag().is_none()
}

pub mod exercise;

#[cfg(test)]
mod tests;
