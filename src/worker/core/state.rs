//! A worker's own small state machines and counters, kept apart from the `Core` that uses
//! them so they are plain values (tested alone) and no file of the worker imports another in a
//! circle: what it counts per back end, the saturation rule over its turns, the budget of log
//! lines for partner refusals, the output it holds (the output budget and backpressure), and what
//! one write did to a connection's queue.

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

/// Output waiting for servers above which clients are not read (backpressure), and below which
/// reading resumes.
const PAUSE_ABOVE: usize = 1 << 20;
const RESUME_BELOW: usize = 256 << 10;

/// The output a worker holds in its connections' queues: all of it, the part waiting for servers
/// (met with backpressure), whether clients are paused for it, and whether a client was already
/// picked to close for the budget in this batch.
#[derive(Debug, Default)]
pub(super) struct Queued {
    total: usize,
    to_servers: usize,
    paused: bool,
    shedding: bool,
}

/// What the output budget calls for after a queue moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    Within,
    /// Past `--max-output-bytes` for clients: close the client holding the most.
    CloseHog,
}

impl Queued {
    /// One connection's queue went from `before` to `after` bytes (`server`: a server's). Output
    /// waiting for servers does not count against `budget`: a budget filled by slow servers would
    /// otherwise shoot whichever client had a few bytes queued. Past it, one client is closed
    /// per batch.
    pub(super) fn moved(&mut self, before: usize, after: usize, server: bool, budget: usize) -> Budget {
        self.total = (self.total + after).saturating_sub(before);
        if server {
            self.to_servers = (self.to_servers + after).saturating_sub(before);
        }
        if self.total.saturating_sub(self.to_servers) <= budget || self.shedding {
            return Budget::Within;
        }
        self.shedding = true;
        Budget::CloseHog
    }

    /// The end of a batch: whether clients must now stop being read (`Some(true)`: servers are
    /// `PAUSE_ABOVE` behind) or may be read again (`Some(false)`: back under `RESUME_BELOW`).
    pub(super) fn end_batch(&mut self) -> Option<bool> {
        self.shedding = false;
        if !self.paused && self.to_servers > PAUSE_ABOVE {
            self.paused = true;
            Some(true)
        } else if self.paused && self.to_servers < RESUME_BELOW {
            self.paused = false;
            Some(false)
        } else {
            None
        }
    }

    pub(super) fn paused(&self) -> bool {
        self.paused
    }

    /// Whether a client may not be read now: paused, or servers already `PAUSE_ABOVE` behind in
    /// this batch. A worker that fell behind (a starved core) can have a thousand events in one
    /// turn; waiting for the batch's end to pause would let them push megabytes at servers that
    /// take nothing, past what a server's connection may hold.
    pub(super) fn holding_clients(&self) -> bool {
        self.paused || self.to_servers > PAUSE_ABOVE
    }

    pub(super) fn to_servers(&self) -> usize {
        self.to_servers
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
    fn slow_servers_pause_clients_and_only_clients_spend_the_budget() {
        let mut q = Queued::default();
        // 3 MiB waiting for servers: over no budget, but clients are paused.
        assert_eq!(q.moved(0, 3 << 20, true, 1 << 20), Budget::Within);
        assert_eq!(q.end_batch(), Some(true));
        assert_eq!(q.end_batch(), None, "paused once");
        assert!(q.paused());
        // Clients' output past the budget: one close per batch, whoever asks.
        assert_eq!(q.moved(0, 600 << 10, false, 1 << 20), Budget::Within);
        assert_eq!(q.moved(0, 600 << 10, false, 1 << 20), Budget::CloseHog);
        assert_eq!(q.moved(0, 10, false, 1 << 20), Budget::Within, "one per batch");
        assert_eq!(q.end_batch(), None);
        assert_eq!(
            q.moved(0, 10, false, 1 << 20),
            Budget::CloseHog,
            "the next batch again"
        );
        // The servers catch up: clients are read again below the lower mark, not before.
        assert_eq!(q.moved(3 << 20, 300 << 10, true, 1 << 20), Budget::Within);
        assert_eq!(q.end_batch(), None, "still over RESUME_BELOW");
        q.moved(300 << 10, 0, true, 1 << 20);
        assert_eq!(q.end_batch(), Some(false));
        assert!(!q.paused());
    }

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
