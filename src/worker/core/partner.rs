//! Federation partners in a worker: what a client is once its handshake is done (a partner's
//! edge, a verified or an unverified client), partner certificates refused (logged naming the
//! partner and the reason, counted), the rule that a partner speaks only for its own domain
//! (403 naming the header), and closing the connections of a partner a reload removed.

use std::sync::Arc;

use ::core::net::SocketAddr;

use super::close::CloseReason;
use super::slots::Kind;
use super::{Core, Wire};
use crate::sip::Message;
use crate::sip::response::Extra;
use crate::tls::partner::PartnerRefused;
use crate::tls::trust::ClientClass;

impl<S: Wire> Core<S> {
    /// A client's handshake is done: tells partner edges, verified and unverified clients apart
    /// by the certificate it showed; false (and closed) if it is a partner's and fails that
    /// partner's checks now (the handshake refuses most; a certificate can expire in between).
    pub(super) fn client_handshake_done(&mut self, slot: usize) -> bool {
        let Some(c) = self.slots.get(slot) else {
            return false;
        };
        let class = self.rt.tls.classify_client(c.stream.peer_certificates());
        let peer = c.peer;
        let sni = c.stream.sni().map(str::to_string);
        match class {
            ClientClass::Refused(r) => {
                self.partner_refused(peer, &r);
                self.close(slot, CloseReason::PartnerRefused);
                return false;
            }
            ClientClass::Partner(domain) => {
                self.m.clients_verified += 1;
                self.m.partner(&domain, |p| p.connections += 1);
                tracing::info!(worker = self.id, %peer, partner = &*domain, "partner edge connected");
                if let Some(c) = self.slots.get_mut(slot) {
                    c.partner = Some(domain);
                }
                return true;
            }
            ClientClass::Verified => self.m.clients_verified += 1,
            ClientClass::Unverified => self.m.clients_unverified += 1,
        }
        let ws = self.slots.get(slot).is_some_and(|c| c.ws.is_some());
        tracing::debug!(worker = self.id, %peer, ws, verified = matches!(class, ClientClass::Verified), sni = sni.as_deref().unwrap_or("none"), "client connected");
        true
    }

    /// A partner's certificate was refused (at the handshake or right after it).
    pub(super) fn partner_refused(&mut self, peer: SocketAddr, r: &PartnerRefused) {
        let reason = r.reason.as_str();
        self.m
            .partner(&r.partner, |p| *p.refusals.entry(reason.into()).or_default() += 1);
        *self
            .m
            .handshake_failures
            .entry(format!("partner {}: {reason}", r.partner))
            .or_default() += 1;
        if self.partner_log.take(self.turn) {
            tracing::warn!(%peer, partner = &*r.partner, reason, "partner certificate refused");
        } else {
            tracing::debug!(%peer, partner = &*r.partner, reason, "partner certificate refused");
        }
    }

    /// The domain rule for a request from client connection `src`: true unless it came from a
    /// partner's edge and names someone outside the partner's domain, which gets 403 naming the
    /// header (an ACK is dropped) and is counted.
    pub(super) fn partner_may_send(&mut self, src: usize, m: &Message) -> bool {
        let Some(c) = self.slots.get(src) else {
            return false;
        };
        let (Some(domain), Some(_)) = (c.partner.clone(), m.method()) else {
            return true;
        };
        self.m.partner(&domain, |p| p.requests += 1);
        let Some(header) = crate::sip::identity::outside_domain(m, &domain) else {
            return true;
        };
        let reason = if header == "From" {
            "from-outside-domain"
        } else {
            "identity-outside-domain"
        };
        self.m
            .partner(&domain, |p| *p.refusals.entry(reason.into()).or_default() += 1);
        let peer = c.peer;
        if self.partner_log.take(self.turn) {
            tracing::warn!(%peer, partner = &*domain, header, "partner request refused: it speaks for another domain");
        }
        self.answer(
            src,
            m.head(),
            403,
            &format!("Forbidden ({header} outside {domain})"),
            Extra::default(),
        );
        false
    }

    /// After a reload: the connections of partners no longer configured are closed (a partner
    /// that stays, even with a new CA or names, keeps its connections; the new rules apply to
    /// its next ones).
    pub(super) fn close_removed_partners(&mut self) {
        let keep: Vec<Arc<str>> = self.rt.tls.partners.domains().cloned().collect();
        for slot in self.slots.occupied() {
            let Some(c) = self.slots.get(slot) else {
                continue;
            };
            if let Some(p) = &c.partner
                && !keep.contains(p)
            {
                tracing::info!(peer = %c.peer, partner = &**p, "partner removed: closing its connection");
                self.close(slot, CloseReason::PartnerRemoved);
            }
        }
    }

    /// Open partner connections for the published counters; every configured partner is listed,
    /// with none open too.
    pub(super) fn partner_gauges(&self, m: &mut crate::metrics::Metrics) {
        for p in m.partners.values_mut() {
            p.open = 0;
            p.peers.clear();
        }
        for d in self.rt.tls.partners.domains() {
            m.partner(d, |_| {});
        }
        for slot in self.slots.occupied() {
            if let Some(c) = self.slots.get(slot)
                && c.kind == Kind::Client
                && let Some(p) = &c.partner
            {
                m.partner(p, |p| {
                    p.open += 1;
                    p.peers.push(c.peer);
                });
            }
        }
    }
}
