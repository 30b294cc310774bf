//! What siplb recognises as its own in a message, for the [`Router`]: its host on either side,
//! the Route values and Via branches it wrote (with their MAC-checked tokens), a request that came
//! back unchanged (a loop, RFC 3261 §16.3), the branch it gives a request (§16.11), and the
//! Record-Route / Path tokens of a client connection.

use super::{BRANCH_HASH, OurRoute, RouteTokens, Router};
use crate::sip::addr::{NameAddr, Uri};
use crate::sip::header::Name;
use crate::sip::rewrite::MAGIC;
use crate::sip::scan;
use crate::sip::token::TOKEN_LEN;
use crate::sip::via::Via;
use crate::sip::{Message, Role, Token, TokenCache};

use super::Origin;

impl Router {
    /// Whether `host` names siplb (either side).
    pub(super) fn is_us(&self, host: &[u8]) -> bool {
        host.eq_ignore_ascii_case(self.adv_host.as_bytes())
            || [&self.server_side, &self.wss]
                .into_iter()
                .flatten()
                .any(|(_, h)| host.eq_ignore_ascii_case(h.as_bytes()))
    }

    /// The `host:port` servers see.
    pub(super) fn server_addr(&self) -> &str {
        self.server_side
            .as_ref()
            .map_or(self.advertise.as_str(), |(a, _)| a.as_str())
    }

    /// A Route value naming siplb, and the token it carries if valid. A Route whose host is not
    /// ours is somebody else's, whatever parameters it carries.
    pub(super) fn route_token(&self, v: &[u8], tokens: &mut TokenCache) -> Option<Option<Token>> {
        let addr = NameAddr::parse(v).ok()?;
        let uri = Uri::parse(addr.uri).ok()?;
        if !self.is_us(uri.host) {
            return None;
        }
        let param = uri.params.get(b"siplb").flatten();
        Some(param.and_then(|p| tokens.decode(&self.key, p).ok()))
    }

    /// The top Route, if it names siplb, with its token, and whether the next value is ours too.
    pub(super) fn our_route(&self, m: &Message, tokens: &mut TokenCache) -> Option<OurRoute> {
        let field = m.route?;
        let token = self.route_token(m.at(field.top), tokens)?;
        let second_value = match field.next {
            Some(n) => scan::Values::new(&m.buf[n as usize..field.value.end as usize]).next(),
            None => m.route_line2.map(|f| m.at(f.top)),
        };
        let second = token.is_some()
            && second_value
                .and_then(|v| self.route_token(v, tokens))
                .flatten()
                .is_some_and(|s| matches!(s.role, Role::ClientRoute | Role::ServerRoute));
        Some(OurRoute { field, token, second })
    }

    /// The token in a Via we wrote: `branch=z9hG4bK<16 hex tx><8 hex loop>-<token>`, our host.
    pub(super) fn our_via_token(&self, via: &Via, tokens: &mut TokenCache) -> Option<Token> {
        if !self.is_us(via.host) {
            return None;
        }
        let rest = via.branch()?.strip_prefix(MAGIC)?;
        if rest.len() != BRANCH_HASH + 1 + TOKEN_LEN || rest[BRANCH_HASH] != b'-' {
            return None;
        }
        tokens.decode(&self.key, &rest[BRANCH_HASH + 1..]).ok()
    }

    /// RFC 3261 §16.3 step 4: a Via of ours further down whose loop part equals what this request
    /// gives now means it came back unchanged — a loop. A spiral (the same request back with a
    /// new Request-URI, another Route set, or from the other side) passes. Only requests that
    /// carry more than one Via are looked at.
    pub(super) fn looped(&self, m: &Message, lh: &[u8; 8]) -> bool {
        // Our Via can only be there if our host is: one memmem over the head spares the re-lexing
        // for the common multi-Via request (a client behind an SBC).
        if m.via_count < 2
            || memchr::memmem::find(m.head(), self.adv_host.as_bytes()).is_none()
                && self
                    .server_side
                    .as_ref()
                    .is_none_or(|(_, h)| memchr::memmem::find(m.head(), h.as_bytes()).is_none())
        {
            return false;
        }
        m.values_of(Name::Via)
            .skip(1)
            .filter_map(|v| Via::parse(v).ok())
            .any(|v| {
                self.is_us(v.host)
                    && v.branch()
                        .and_then(|b| b.strip_prefix(MAGIC))
                        .is_some_and(|r| r.get(16..BRANCH_HASH) == Some(&lh[..]))
            })
    }

    /// What a loop leaves unchanged and what decides where the request goes (RFC 3261 §16.6
    /// step 8): Request-URI, Call-ID, From, CSeq number, the Route set and the side it came
    /// from. CANCEL and ACK share it with their INVITE.
    pub(super) fn loop_hash(&self, m: &Message, from_server: bool) -> [u8; 8] {
        let cseq_num = m.cseq.map(|(_, n, _)| n.to_be_bytes()).unwrap_or_default();
        let side: &[u8] = if from_server { b"s" } else { b"c" };
        let fixed: [&[u8]; 5] = [
            m.request_uri().unwrap_or(b""),
            m.call_id().unwrap_or(b""),
            m.value(m.from).unwrap_or(b""),
            &cseq_num,
            side,
        ];
        let routes = m.route.map(|_| m.values_of(Name::Route)).into_iter().flatten();
        let h = self.key.branch_of(fixed.into_iter().chain(routes));
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        out
    }

    /// RFC 3261 §16.11: the same for a retransmission, and for the CANCEL and non-2xx ACK that
    /// share their INVITE's branch, so the server matches them to its transaction.
    pub(super) fn branch(&self, m: &Message, via: &Via, lh: [u8; 8]) -> [u8; BRANCH_HASH] {
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
        out[16..].copy_from_slice(&lh);
        out
    }

    /// The Record-Route / Path tokens of a client connection for back end `be`, made once.
    pub(super) fn rr_tokens(&self, from: &mut Origin, be: usize) -> RouteTokens {
        if from.rr_cache.len() != self.backends.len() {
            *from.rr_cache = vec![None; self.backends.len()];
        }
        let t = Token {
            worker: from.worker,
            slot: from.slot,
            generation: from.generation,
            pin: self.backends[be].pin,
            role: Role::ClientRoute,
            instance: 0,
            ws: from.ws,
        };
        *from.rr_cache[be].get_or_insert_with(|| {
            [
                self.key.encode(t),
                self.key.encode(Token {
                    role: Role::ServerRoute,
                    ..t
                }),
            ]
        })
    }
}
