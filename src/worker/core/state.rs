//! A worker's own small state machines and counters, kept apart from the `Worker` that uses
//! them so they are plain values (tested alone) and no file of the worker imports another in a
//! circle: what it counts per back end, the saturation rule over its turns, the budget of log
//! lines for partner refusals, and what one write did to a connection's queue.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::tls::wire::{StreamError, Wire};

/// What a worker counts per back end.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub requests: u64,
    pub responses: u64,
    pub dialogs: u64,
    pub failures: BTreeMap<String, u64>,
    /// Initial INVITE forwarded to its first answer from this back end.
    pub answer_seconds: crate::metrics::Histogram,
    /// When the back end last answered anything (a request that gets no answer in time makes it
    /// overloaded only if it has answered nothing since: one request a server chooses to drop, a
    /// client's doing, must not take it out of new dialogs).
    pub last_answer: Option<std::time::Instant>,
    /// The detailed reason of the last connection failure (a TLS alert, say), for the close
    /// that follows.
    pub failure: Option<String>,
}

/// [`LONG_TURNS`] turns in a row busier than this (every message read in one waited that long for
/// the next), or a hand-off queue past [`SATURATED_HANDOFF`], and the worker is saturated: it
/// answers new dialogs 503 until it is not. One long turn is not a sign (a machine that stalls
/// the process for a moment), nor is data left unread after a turn (one flooding connection
/// leaves some, and must cost only its own requests), nor are the tens of milliseconds a debug
/// build under attack takes per turn while it still keeps up.
const SATURATED_TURN: Duration = Duration::from_millis(250);
const LONG_TURNS: u8 = 3;
const SATURATED_HANDOFF: usize = crate::worker::shared::HANDOFF_BYTES / 4;

/// The saturation rule over a worker's successive turns.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Turns in a row over [`SATURATED_TURN`].
    long_turns: u8,
}

impl Load {
    /// After a turn that took `busy`, with `queued` bytes waiting in the worker's hand-off
    /// queue: whether the worker is saturated.
    pub(super) fn after_turn(&mut self, busy: Duration, queued: usize) -> bool {
        self.long_turns = if busy > SATURATED_TURN {
            self.long_turns.saturating_add(1)
        } else {
            0
        };
        self.long_turns >= LONG_TURNS || queued > SATURATED_HANDOFF
    }
}

/// Lines a worker logs about partner refusals per [`LOG_WINDOW`]; past it they are counted (and
/// summarised once a minute with the handshake failures), so a source forging a partner CA's
/// name cannot flood the log.
const LOG_LINES: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// How many refusal lines this worker logged in its current window.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogBudget {
    since: Instant,
    lines: u32,
}

impl LogBudget {
    pub(super) fn new(now: Instant) -> LogBudget {
        LogBudget { since: now, lines: 0 }
    }

    /// Whether one more line may be logged now.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        if now.duration_since(self.since) >= LOG_WINDOW {
            *self = LogBudget::new(now);
        }
        self.lines += 1;
        self.lines <= LOG_LINES
    }
}

/// What one write did to a connection: its queue before and after, and whether the stream took
/// it (a peer that does not read makes it refuse).
pub(super) struct Wrote {
    pub(super) before: usize,
    pub(super) after: usize,
    pub(super) ok: bool,
}

impl Wrote {
    pub(super) fn by<S: Wire>(
        stream: &mut S,
        write: impl FnOnce(&mut S) -> Result<(), StreamError>,
    ) -> Wrote {
        let before = stream.queued();
        let ok = write(stream).is_ok();
        Wrote {
            before,
            after: stream.queued(),
            ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_takes_long_turns_in_a_row_or_a_backed_up_hand_off_queue() {
        let mut l = Load::default();
        let long = SATURATED_TURN + Duration::from_millis(1);
        assert!(
            !l.after_turn(Duration::from_millis(40), 0),
            "a busy debug-build turn is not"
        );
        assert!(!l.after_turn(SATURATED_TURN, SATURATED_HANDOFF));
        assert!(
            !l.after_turn(long, 0) && !l.after_turn(long, 0),
            "two long turns are not"
        );
        assert!(l.after_turn(long, 0), "the third in a row is");
        assert!(!l.after_turn(Duration::ZERO, 0), "a short turn ends it");
        assert!(!l.after_turn(long, 0), "and the streak starts again");
        assert!(l.after_turn(Duration::ZERO, SATURATED_HANDOFF + 1));
    }
}
