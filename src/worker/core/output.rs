//! What a worker writes and how much it holds: answers siplb makes itself and raw writes, the
//! flush of every connection written to at the end of a batch, the output budget
//! (`--max-output-bytes`: the client holding the most loses its connection, never another),
//! backpressure on clients while servers are slow to take what was read, and saturation (a worker
//! past its bounds sheds new dialogs first).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::close::CloseReason;
use super::state::{Budget, Wrote};
use super::{Core, Wire};
use crate::sip::response::{Extra, write_response};
use crate::tls::wire::StreamError;

impl<S: Wire> Core<S> {
    /// A turn that took `busy` is over: counted, and whether this worker is saturated after it (see [`super::state::Load`]).
    pub fn after_turn(&mut self, busy: Duration) {
        self.m.loop_busy += busy;
        self.m.loop_turns += 1;
        let queued = self
            .shared
            .handoff_bytes
            .get(usize::from(self.id))
            .map_or(0, |q| q.load(Ordering::Relaxed));
        let now = self.load.after_turn(busy, queued);
        if now != self.saturated {
            self.saturated = now;
            if now {
                self.m.saturations += 1;
            }
            tracing::debug!(worker = self.id, saturated = now, ?busy, queued, "worker load");
        }
    }

    /// Flushes what the batch wrote, closes what it doomed, and notes the connections whose
    /// interest changed (for [`Core::poll_interest`]).
    pub fn finish_batch(&mut self) {
        while let Some(slot) = self.dirty.pop() {
            let Some(c) = self.slots.get_mut(slot) else {
                continue;
            };
            c.dirty = false;
            let before = c.stream.queued();
            let flushed = c.stream.flush();
            let after = c.stream.queued();
            if let Err(e) = flushed {
                tracing::debug!(worker = self.id, slot, error = %e, "write failed");
                self.doom(slot, CloseReason::WriteFailed);
            }
            self.account(slot, before, after);
            let Some(c) = self.slots.get_mut(slot) else {
                continue;
            };
            let want = c.stream.wants_write();
            if want != c.interest {
                c.interest = want;
                self.reinterest.push(slot);
            }
        }
        while let Some((stamp, why)) = self.doomed.pop() {
            // A connection closed since (a failed read closes at once) left its slot to
            // whichever came next: that one has done nothing to be closed for.
            if self.slots.holds(stamp) {
                self.close(stamp.slot, why);
            }
        }
        // Backpressure: clients are not read while servers are slow to take what was read from
        // them, and the clients left unread are read again once they catch up.
        if self.queued.end_batch() == Some(true) {
            self.m.backpressure_pauses += 1;
            tracing::info!(
                worker = self.id,
                queued = self.queued.to_servers(),
                "servers are slow: not reading clients"
            );
        }
        // Clients held back (by the pause, or in this batch before it) are read again once the
        // servers caught up.
        if !self.queued.paused() {
            for slot in std::mem::take(&mut self.paused_clients) {
                if let Some(c) = self.slots.get_mut(slot) {
                    c.paused = false;
                    self.backlog.push(slot);
                }
            }
        }
    }

    /// Keeps the count of output queued in this worker after a write or flush moved one
    /// connection's queue from `before` to `after` bytes. Past `--max-output-bytes` the connection
    /// holding the most is closed: a slow reader loses its own connection, never another's.
    pub(super) fn account(&mut self, slot: usize, before: usize, after: usize) {
        let server = self.slots.get(slot).is_some_and(|c| c.kind.is_server());
        let budget = self.shared.cfg.max_output_bytes;
        if self.queued.moved(before, after, server, budget) == Budget::Within {
            return;
        }
        // Servers are met with backpressure, not closed: the hog is the client with the most.
        let hog = self
            .slots
            .occupied()
            .into_iter()
            .filter(|&s| self.slots.get(s).is_some_and(|c| !c.kind.is_server()))
            .max_by_key(|&s| self.slots.get(s).map_or(0, |c| c.stream.queued()));
        if let Some(slot) = hog {
            self.m.output_budget_closes += 1;
            self.doom(slot, CloseReason::OutputBudget);
        }
    }

    /// Closes the connection now in `slot` after the current batch, unless it is gone by then
    /// (see [`super::slots::Stamp`]).
    pub(super) fn doom(&mut self, slot: usize, why: CloseReason) {
        self.doomed.push((self.slots.stamp(slot), why));
    }

    /// Queues a connection for the flush at the end of this turn (once, however many messages).
    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.slots.get_mut(slot)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Writes an answer siplb generates itself to the connection the request came from.
    pub(super) fn answer(&mut self, slot: usize, request: &[u8], code: u16, reason: &str, extra: Extra) {
        if request.starts_with(b"ACK ") {
            return; // ACK is never answered.
        }
        self.out.clear();
        write_response(request, code, reason, extra, &mut self.out);
        self.m.answer(code);
        let out = std::mem::take(&mut self.out);
        self.send_raw(slot, &out);
        self.out = out;
    }

    pub(super) fn send_raw(&mut self, slot: usize, bytes: &[u8]) {
        self.send_with(slot, bytes.len(), |s| s.write_all(bytes));
    }

    /// Writes `n` bytes with `write` to the connection in `slot` (see [`Core::wrote`]).
    pub(super) fn send_with(
        &mut self,
        slot: usize,
        n: usize,
        write: impl FnOnce(&mut S) -> Result<(), StreamError>,
    ) {
        if let Some(c) = self.slots.get_mut(slot) {
            let w = Wrote::by(&mut c.stream, write);
            self.wrote(slot, n, w);
        }
    }

    /// After `n` bytes were written to the connection in `slot`: counted, accounted against the
    /// output budget, flushed at the end of the turn, and the connection doomed if it does not
    /// read. Every write to a connection ends here.
    pub(super) fn wrote(&mut self, slot: usize, n: usize, w: Wrote) {
        self.m.bytes_out += n as u64;
        if !w.ok {
            self.doom(slot, CloseReason::PeerNotReading);
        }
        self.account(slot, w.before, w.after);
        self.mark_dirty(slot);
    }
}
