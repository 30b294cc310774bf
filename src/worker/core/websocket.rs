//! WebSocket clients in a worker (`--listen-wss`, RFC 7118): after TLS, the HTTP upgrade is read
//! and answered ([`crate::ws::upgrade`]); then frames are decoded in place in the read buffer
//! ([`crate::ws::frame`]) and each message goes to routing as one SIP message, as if it had come
//! over TLS; pings are answered, a close is answered and ends the connection, and a violation
//! ends it with its close code. What siplb writes to the client is framed by the stream.

use super::close::CloseReason;
use super::slots::WsState;
use super::{Core, Wire, is_request};
use crate::sip::response::Extra;
use crate::sip::{FrameError, Read};
use crate::ws::frame::{self, Event};
use crate::ws::upgrade::{self, Upgrade};

/// The longest upgrade request siplb reads (browsers send well under 2 KiB).
const UPGRADE_MAX: usize = 8 * 1024;

impl<S: Wire> Core<S> {
    /// Handles what a WebSocket client's read buffer holds: its upgrade, then its frames.
    pub(super) fn process_ws(&mut self, slot: usize) {
        let Some(c) = self.slots.get_mut(slot) else { return };
        let (Some(mut state), mut rbuf) = (c.ws.take(), std::mem::take(c.stream.rbuf())) else {
            return;
        };
        let max = self.shared.cfg.max_message_bytes;
        if matches!(*state, WsState::Upgrading) {
            match upgrade::read(rbuf.filled(), UPGRADE_MAX, &self.shared.cfg.wss_origins) {
                Upgrade::Partial => {}
                Upgrade::Refuse { status, response } => {
                    *self.m.ws_refused.entry(status.to_string()).or_default() += 1;
                    tracing::debug!(worker = self.id, slot, status, "WebSocket upgrade refused");
                    self.send_raw(slot, &response);
                    self.doom(slot, CloseReason::UpgradeRefused);
                    let n = rbuf.filled().len();
                    rbuf.consume(n);
                }
                Upgrade::Accept { response, consumed } => {
                    self.m.ws_upgrades += 1;
                    self.send_raw(slot, &response);
                    if let Some(c) = self.slots.get_mut(slot) {
                        c.stream.set_ws(true);
                    }
                    rbuf.consume(consumed);
                    *state = WsState::Open(frame::Decoder::new(max));
                }
            }
        }
        if let WsState::Open(d) = &mut *state {
            self.frames(slot, d, &mut rbuf, max);
        }
        if let Some(c) = self.slots.get_mut(slot) {
            let waiting = !rbuf.filled().is_empty();
            *c.stream.rbuf() = rbuf;
            c.ws = Some(state);
            // An upgrade begun and not finished starts the clock of --message-timeout, as a
            // message does.
            c.message_begun(waiting, self.turn);
        }
    }

    /// Every whole frame in `rbuf`: messages routed, control frames answered.
    fn frames(
        &mut self,
        slot: usize,
        d: &mut frame::Decoder,
        rbuf: &mut crate::tls::wire::ReadBuf,
        max: usize,
    ) {
        loop {
            match d.next(rbuf.filled_mut()) {
                Event::Message { range, .. } => self.ws_message(slot, &rbuf.filled()[range], max),
                Event::Ping(range) => {
                    let payload = &rbuf.filled()[range];
                    self.send_with(slot, payload.len() + 2, |s| {
                        s.write_control(frame::OP_PONG, payload)
                    });
                }
                Event::Pong => {}
                Event::Close(code) => {
                    let echo = code.unwrap_or(frame::code::NORMAL).to_be_bytes();
                    self.send_with(slot, 4, |s| s.write_control(frame::OP_CLOSE, &echo));
                    self.doom(slot, CloseReason::ClosedByPeer);
                    break;
                }
                Event::Fail(code, why) => {
                    *self.m.ws_failures.entry(code.to_string()).or_default() += 1;
                    tracing::debug!(
                        worker = self.id,
                        slot,
                        code,
                        why,
                        "WebSocket closed for a frame violation"
                    );
                    let mut payload = code.to_be_bytes().to_vec();
                    payload.extend_from_slice(why.as_bytes());
                    payload.truncate(125);
                    self.send_with(slot, payload.len() + 2, |s| {
                        s.write_control(frame::OP_CLOSE, &payload)
                    });
                    self.doom(slot, CloseReason::UnframableInput);
                    break;
                }
                Event::Partial => break,
            }
        }
        let n = d.consumable();
        rbuf.consume(n);
        d.consumed(n);
    }

    /// One WebSocket message: one SIP message (RFC 7118 §5), routed as if it came over TLS. What
    /// is not exactly one SIP message is answered 400 (a request) or dropped; the connection
    /// stays, since the frames around it were sound.
    fn ws_message(&mut self, slot: usize, payload: &[u8], max: usize) {
        let refuse = |w: &mut Core<S>, code: u16, reason: &str| {
            if is_request(payload) {
                w.answer(
                    slot,
                    &payload[..payload.len().min(max)],
                    code,
                    reason,
                    Extra::default(),
                );
            } else {
                w.m.drop_for("unparsable response");
            }
        };
        match crate::sip::read(payload, max) {
            Read::Message(f, m) if f.consumed() == payload.len() => {
                self.m.messages += 1;
                self.route(slot, &m);
            }
            Read::Message(..) => refuse(self, 400, "One SIP Message Per WebSocket Message"),
            Read::Unparsable(f, e) => {
                let msg = &payload[f.range()];
                refuse(self, 400, &e.reason(msg));
            }
            // A CRLF keep-alive sent as a message: nothing to answer over WebSocket.
            Read::Ping(_) => {}
            Read::Partial => refuse(self, 400, "Incomplete SIP Message In WebSocket Message"),
            Read::Invalid(FrameError::TooLarge { .. } | FrameError::Oversized { .. }) => {
                refuse(self, 513, "Message Too Large")
            }
            Read::Invalid(e) => refuse(self, 400, &e.to_string()),
        }
    }
}
