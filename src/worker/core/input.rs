//! Input to a worker's core: a connection's readiness (read rounds, bounded so a flooding peer
//! neither grows buffers past the cap nor starves the others), framing what was read and routing
//! each message, oversized messages from servers, and messages other workers hand over.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::close::CloseReason;
use super::slots::{Kind, Readiness};
use super::{Core, Wire, is_request};
use crate::sip::response::{Extra, write_response};
use crate::sip::{FrameError, Read};
use crate::worker::shared::Handoff;

/// Read-buffer room beyond `--max-message-bytes`, so a full message plus the start of the next
/// fit in one round.
const READ_SLACK: usize = 16 * 1024;
/// Bounded reads one connection gets per event-loop turn before the others' turn.
const READ_ROUNDS: usize = 4;

impl<S: Wire> Core<S> {
    /// What the event loop saw of the connection in `slot` at `now`: what it sent is read and
    /// handled; a peer that closed (or failed) is closed after the batch.
    pub fn handle_event(&mut self, slot: usize, ev: Readiness, now: Instant) {
        self.turn = now;
        if let Some(c) = self.slots.get_mut(slot) {
            c.stream.read_to_eof(ev.read_closed || ev.error);
        }
        if ev.readable && !self.read_rounds(slot) {
            return;
        }
        let Some(c) = self.slots.get(slot) else { return };
        let ended = c.stream.ended();
        let why = match (ev.error, ended.unclean) {
            (true, _) => CloseReason::SocketError,
            (false, true) => CloseReason::ClosedWithoutCloseNotify,
            (false, false) => CloseReason::ClosedByPeer,
        };
        if ended.closed || ev.read_closed && !ev.readable || ev.error {
            self.doom(slot, why);
        }
        self.mark_dirty(slot);
    }

    /// Reads and handles at most `READ_ROUNDS` bounded buffers of one connection. A connection with
    /// more waiting goes on the backlog for the next turn, so a flooding peer neither grows our
    /// buffers past the cap nor starves the others; the backlog also keeps edge-triggered readiness
    /// correct (no new event comes for data already waiting). False if the connection is gone.
    pub(super) fn read_rounds(&mut self, slot: usize) -> bool {
        let server = self.slots.get(slot).is_some_and(|c| c.kind.is_server());
        if self.queued.holding_clients() && !server {
            if let Some(c) = self.slots.get_mut(slot)
                && !c.paused
            {
                c.paused = true;
                self.paused_clients.push(slot);
            }
            return self.slots.get(slot).is_some();
        }
        let cap = self.shared.cfg.message_limit(server) + READ_SLACK;
        for _ in 0..READ_ROUNDS {
            let Some(c) = self.slots.get_mut(slot) else {
                return false;
            };
            let was_handshaking = c.stream.is_handshaking();
            let got = match c.stream.read(cap) {
                Ok(n) => {
                    self.m.bytes_in += n as u64;
                    n
                }
                Err(e) => {
                    self.read_failed(slot, was_handshaking, &e);
                    return false;
                }
            };
            let Some(c) = self.slots.get_mut(slot) else {
                return false;
            };
            c.last_active = self.turn;
            c.pinged = false;
            let (kind, more) = (c.kind, c.stream.more());
            if was_handshaking && !c.stream.is_handshaking() && !self.on_handshake(slot, kind) {
                return false;
            }
            // The server sent something after the handshake: it accepted our certificate.
            if let (Kind::Backend(b), false, true) = (kind, was_handshaking, got > 0) {
                self.pool_event(|p, acts| p.data_read(b, slot, acts));
            }
            self.process(slot);
            if !more || self.doomed.iter().any(|&(s, _)| s == self.slots.stamp(slot)) {
                return self.slots.get(slot).is_some();
            }
        }
        self.backlog.push(slot);
        true
    }

    /// Frames and routes every complete message in the connection's read buffer.
    fn process(&mut self, slot: usize) {
        let Some(c) = self.slots.get_mut(slot) else { return };
        if c.ws.is_some() {
            return self.process_ws(slot);
        }
        // Routing needs `&mut self` for other connections while the message borrows this
        // buffer: move the buffer out (a pointer move, not a copy) and put it back after.
        let rbuf = std::mem::take(c.stream.rbuf());
        let buf = rbuf.filled();
        let server = c.kind.is_server();
        let max = self.shared.cfg.message_limit(server);
        // The rest of an oversized message from a server, skipped by its Content-Length.
        let mut pos = c.skip.min(buf.len());
        c.skip -= pos;
        loop {
            match crate::sip::read(&buf[pos..], max) {
                Read::Message(f, m) => {
                    self.m.messages += 1;
                    self.route(slot, &m);
                    pos += f.consumed();
                }
                Read::Unparsable(f, e) => {
                    let msg = &buf[pos..][f.range()];
                    if is_request(msg) {
                        self.answer(slot, msg, 400, &e.reason(msg), Extra::default());
                    } else {
                        self.m.drop_for("unparsable response");
                    }
                    pos += f.consumed();
                }
                Read::Ping(n) => {
                    self.send_raw(slot, b"\r\n");
                    pos += n;
                }
                Read::Partial => break,
                Read::Invalid(FrameError::Oversized { skip, head, len, .. }) if server => {
                    let msg = &buf[pos + skip..];
                    self.oversized_from_server(slot, &msg[..head]);
                    let whole = skip + len;
                    let here = buf.len() - pos;
                    if whole <= here {
                        pos += whole;
                        continue;
                    }
                    if let Some(c) = self.slots.get_mut(slot) {
                        c.skip = whole - here;
                    }
                    pos = buf.len();
                    break;
                }
                Read::Invalid(e) => {
                    let rest = &buf[pos..];
                    let too_large = matches!(e, FrameError::TooLarge { .. } | FrameError::Oversized { .. });
                    if too_large && is_request(rest) {
                        self.answer(
                            slot,
                            &rest[..rest.len().min(max)],
                            513,
                            "Message Too Large",
                            Extra::default(),
                        );
                    } else if is_request(rest) && !matches!(e, FrameError::NotSip) {
                        self.answer(
                            slot,
                            &rest[..rest.len().min(max)],
                            400,
                            &e.to_string(),
                            Extra::default(),
                        );
                    }
                    self.doom(slot, CloseReason::UnframableInput);
                    pos = buf.len();
                    break;
                }
            }
        }
        if let Some(c) = self.slots.get_mut(slot) {
            let rest = c.stream.rbuf();
            *rest = rbuf;
            rest.consume(pos);
            let waiting = !rest.filled().is_empty();
            c.message_begun(waiting, self.turn);
        }
    }

    /// A server sent a message over `--max-backend-message-bytes` (`head` is its header block):
    /// it is skipped, not the connection. A request gets 513 back; a response becomes a 513 for
    /// the client whose request it answers, routed like the server's own answer would have been.
    fn oversized_from_server(&mut self, slot: usize, head: &[u8]) {
        self.m.oversized_from_servers += 1;
        if is_request(head) {
            self.answer(slot, head, 513, "Message Too Large", Extra::default());
            return;
        }
        let mut synthetic = Vec::with_capacity(head.len() + 64);
        write_response(head, 513, "Message Too Large", Extra::default(), &mut synthetic);
        if let Read::Message(_, m) = crate::sip::read(&synthetic, usize::MAX) {
            self.route(slot, &m);
        }
    }

    /// A message another worker rewrote for a connection of this one.
    pub fn handle_handoff(&mut self, h: Handoff) {
        let Handoff {
            slot,
            generation,
            to_client,
            bytes,
        } = h;
        if let Some(q) = self.shared.handoff_bytes.get(usize::from(self.id)) {
            q.fetch_sub(bytes.len(), Ordering::AcqRel);
        }
        if to_client
            && bytes.starts_with(b"SIP/")
            && !self.invites.is_empty()
            && let Ok(m) = crate::sip::Message::parse(&bytes)
        {
            self.invite_progress(slot, generation, &m);
        }
        let slot = slot as usize;
        match self.slots.get_checked(slot, generation) {
            Some(c) if c.kind.is_server() != to_client => {
                let w = super::state::Wrote::by(&mut c.stream, |s| s.write_all(&bytes));
                self.wrote(slot, bytes.len(), w);
            }
            _ => self.m.drop_for("connection gone or of the other kind"),
        }
    }
}
