//! What a worker remembers about the initial INVITEs (and other out-of-dialog requests) it
//! forwarded, until their transaction is over: which back end and connection each went to, how
//! far it got, which back ends it was already given up on, and its bytes while it may still have
//! to go elsewhere. No I/O; the worker feeds it and acts on what it says. (The table kept the
//! name `Invites` from when it held INVITEs only.)
//!
//! - CANCEL and the ACK of a non-2xx answer carry no pin; they go where their INVITE went (not to
//!   whatever the hash says after a weight change, a health flap, a reload or a failover).
//! - A request that got nothing or only `100 Trying` never reached a point where a server owns
//!   it: when its back end's connection dies, answers 503 or says nothing in time, it is sent to
//!   the next back end (within `--max-retries`, never to one already given up on). An INVITE that
//!   got a provisional answer gets `503` from siplb at once when its connection dies (the caller
//!   would otherwise wait for its own timers, minutes), and the ACK to that 503 stops here.
//!
//! Entries are keyed by client connection, Call-ID and CSeq number (what CANCEL and ACK share with
//! their INVITE), through a fixed 64-bit hash so a look-up allocates nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How far an INVITE transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Sent; no answer yet.
    Sent,
    /// Only `100 Trying`: safe to send to another server.
    Trying,
    /// A provisional answer from the server (it owns the call now).
    Ringing,
    /// The server sent a non-2xx final answer; kept to route its ACK.
    Completed,
    /// siplb sent the final answer itself (the server was lost); its ACK stops here.
    AnsweredByUs,
}

impl Stage {
    /// The transaction is still waiting for a final answer.
    pub fn in_progress(self) -> bool {
        matches!(self, Stage::Sent | Stage::Trying | Stage::Ringing)
    }
}

/// The back ends an initial INVITE was already sent to and given up on (a lost connection, a
/// 503, no answer in time), and how many times it was sent again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    /// Back ends by position (the first 64).
    tried: u64,
    pub count: u8,
}

impl Retry {
    /// The INVITE was given up on back end `b`: the next try goes elsewhere.
    pub fn after(self, b: usize) -> Retry {
        Retry {
            tried: self.tried | 1u64.checked_shl(b as u32).unwrap_or(0),
            count: self.count.saturating_add(1),
        }
    }

    /// Whether back end `b` was tried and given up on.
    pub fn tried(self, b: usize) -> bool {
        1u64.checked_shl(b as u32)
            .is_some_and(|bit| self.tried & bit != 0)
    }
}

/// One initial INVITE.
#[derive(Debug, Clone)]
pub struct Invite {
    pub backend: usize,
    /// The pool connection it went out on.
    pub conn: usize,
    /// The client connection (slot, generation).
    pub client: (u32, u32),
    pub call_id: Vec<u8>,
    pub cseq: u32,
    /// An INVITE (else another out-of-dialog request: no ACK, no setup time, forgotten at its
    /// final answer).
    pub invite: bool,
    pub stage: Stage,
    /// Back ends it was given up on, and how often it was sent again (at most `--max-retries`).
    pub retry: Retry,
    /// The INVITE as the client sent it, while a final answer may still have to be made for it.
    pub bytes: Vec<u8>,
    pub since: Instant,
    /// When the INVITE was sent to the back end (for the answer and setup histograms).
    pub sent: Instant,
}

/// What [`Invites::answered`] measured.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// The back end's first answer to the INVITE: which back end, and after how long.
    pub first_answer: Option<(usize, Duration)>,
    /// The first 2xx: INVITE sent to 2xx on its way to the caller.
    pub setup: Option<Duration>,
}

/// RFC 3261 Timer B: an INVITE with no answer at all is given up after this.
const NO_ANSWER_FOR: Duration = Duration::from_secs(32);
/// Timer C: a ringing INVITE is given up after this.
const RINGING_FOR: Duration = Duration::from_secs(200);
/// Timer D: how long a completed transaction is kept for its ACK.
const COMPLETED_FOR: Duration = Duration::from_secs(32);

/// At most this many INVITEs are remembered per worker; past it an INVITE is routed as usual
/// but its CANCEL and ACK are hashed and it is not eligible for failover.
pub const MAX_ENTRIES: usize = 65_536;
/// At most this many bytes of INVITEs are kept per worker for failover; past it an INVITE is
/// remembered without its bytes (its CANCEL and ACK still follow it; no retry, no 503 by siplb).
pub const MAX_BYTES: usize = 32 << 20;

/// The INVITEs of one worker, within [`MAX_ENTRIES`] and [`MAX_BYTES`].
#[derive(Debug, Default)]
pub struct Invites {
    map: HashMap<u64, Invite>,
    /// Bytes of the INVITEs kept, for the budget.
    bytes: usize,
}

/// The key: client slot, generation, Call-ID and CSeq number.
pub fn key(client: (u32, u32), call_id: &[u8], cseq: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&client.0.to_be_bytes());
    eat(&client.1.to_be_bytes());
    eat(&cseq.to_be_bytes());
    eat(call_id);
    h
}

impl Invites {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// INVITEs still waiting for a final answer (what draining waits for).
    pub fn in_progress(&self) -> usize {
        self.map.values().filter(|i| i.stage.in_progress()).count()
    }

    /// Remembers `inv` within the budget; false if the table is full.
    pub fn insert(&mut self, mut inv: Invite) -> bool {
        let k = key(inv.client, &inv.call_id, inv.cseq);
        if self.map.len() >= MAX_ENTRIES && !self.map.contains_key(&k) {
            return false;
        }
        if self.bytes + inv.bytes.len() > MAX_BYTES {
            inv.bytes = Vec::new();
        }
        self.bytes += inv.bytes.len();
        if let Some(old) = self.map.insert(k, inv) {
            self.bytes -= old.bytes.len();
        }
        true
    }

    /// Drops the bytes kept for an entry (they are not needed any more).
    fn forget_bytes(bytes: &mut usize, inv: &mut Invite) {
        *bytes -= inv.bytes.len();
        inv.bytes = Vec::new();
    }

    /// Bytes kept for failover now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, client: (u32, u32), call_id: &[u8], cseq: u32) -> Option<&Invite> {
        self.map
            .get(&key(client, call_id, cseq))
            .filter(|i| i.call_id == call_id && i.client == client && i.cseq == cseq)
    }

    /// A response from the server to the INVITE, on its way to the client.
    /// A response to a remembered INVITE on its way to the client. Returns what the metrics
    /// want: the back end and how long it took to answer at all (on the first answer), and how
    /// long the call took to set up (on the first 2xx).
    pub fn answered(
        &mut self,
        client: (u32, u32),
        call_id: &[u8],
        cseq: u32,
        code: u16,
        now: Instant,
    ) -> Timings {
        let k = key(client, call_id, cseq);
        let Some(inv) = self.map.get_mut(&k).filter(|i| i.call_id == call_id) else {
            return Timings::default();
        };
        let took = now.saturating_duration_since(inv.sent);
        let timings = Timings {
            first_answer: (inv.invite && inv.stage == Stage::Sent).then_some((inv.backend, took)),
            setup: (inv.invite && (200..300).contains(&code)).then_some(took),
        };
        match code {
            100 if inv.stage == Stage::Sent => inv.stage = Stage::Trying,
            101..=199 => inv.stage = Stage::Ringing,
            // A non-INVITE transaction has no ACK to route: over at its final answer.
            200.. if !inv.invite => {
                if let Some(old) = self.map.remove(&k) {
                    self.bytes -= old.bytes.len();
                }
            }
            200..=299 => {
                // The ACK of a 2xx is in the dialog, routed by its pin.
                if let Some(old) = self.map.remove(&k) {
                    self.bytes -= old.bytes.len();
                }
            }
            300.. => {
                inv.stage = Stage::Completed;
                Self::forget_bytes(&mut self.bytes, inv);
                inv.since = now;
            }
            _ => {}
        }
        timings
    }

    /// Takes out the requests that got no answer at all (not even 100 Trying) within `limit` and
    /// whose bytes are kept (so they can go to another back end). `waiting(conn)` says the pool
    /// connection a request went out on still holds output: the request may not have left siplb
    /// yet, and the delay is ours, not the server's, so it is not taken.
    pub fn unanswered(
        &mut self,
        now: Instant,
        limit: Duration,
        waiting: impl Fn(usize) -> bool,
    ) -> Vec<Invite> {
        let keys: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, i)| {
                i.stage == Stage::Sent
                    && !i.bytes.is_empty()
                    && now.saturating_duration_since(i.sent) >= limit
                    && !waiting(i.conn)
            })
            .map(|(k, _)| *k)
            .collect();
        let late: Vec<Invite> = keys.into_iter().filter_map(|k| self.map.remove(&k)).collect();
        self.bytes -= late.iter().map(|i| i.bytes.len()).sum::<usize>();
        late
    }

    /// Takes the entry out of the table (its INVITE is about to go to another back end).
    pub fn take(&mut self, client: (u32, u32), call_id: &[u8], cseq: u32) -> Option<Invite> {
        self.get(client, call_id, cseq)?;
        let inv = self.map.remove(&key(client, call_id, cseq))?;
        self.bytes -= inv.bytes.len();
        Some(inv)
    }

    /// The in-progress INVITEs that went out on connection `conn`, taken out of the table.
    pub fn lost_on(&mut self, conn: usize) -> Vec<Invite> {
        let keys: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, i)| i.conn == conn && i.stage.in_progress())
            .map(|(k, _)| *k)
            .collect();
        let lost: Vec<Invite> = keys.into_iter().filter_map(|k| self.map.remove(&k)).collect();
        self.bytes -= lost.iter().map(|i| i.bytes.len()).sum::<usize>();
        lost
    }

    /// A reload moved back ends (`map[old] = new`): entries follow theirs; those of a back end
    /// that left are forgotten.
    pub fn remap(&mut self, map: &[Option<usize>]) {
        self.map
            .retain(|_, i| match map.get(i.backend).copied().flatten() {
                Some(n) => {
                    i.backend = n;
                    true
                }
                None => false,
            });
    }

    /// Forgets what is over: unanswered, ringing too long, or completed long enough ago.
    pub fn expire(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.map.retain(|_, i| {
            let limit = match i.stage {
                Stage::Sent | Stage::Trying => NO_ANSWER_FOR,
                Stage::Ringing => RINGING_FOR,
                Stage::Completed | Stage::AnsweredByUs => COMPLETED_FOR,
            };
            let keep = now.duration_since(i.since) < limit;
            if !keep {
                *bytes -= i.bytes.len();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(stage: Stage) -> Invite {
        Invite {
            backend: 1,
            conn: 4,
            client: (7, 2),
            call_id: b"c1".to_vec(),
            cseq: 1,
            invite: true,
            stage,
            retry: Retry::default(),
            bytes: b"INVITE".to_vec(),
            since: Instant::now(),
            sent: Instant::now(),
        }
    }

    #[test]
    fn retries_remember_every_back_end_given_up_on() {
        let r = Retry::default();
        assert!(!r.tried(1) && r.count == 0);
        let r = r.after(1).after(5);
        assert!(r.tried(1) && r.tried(5) && !r.tried(0) && !r.tried(2));
        assert_eq!(r.count, 2);
        // Back ends past the first 64 are never marked, but still counted.
        let far = Retry::default().after(70);
        assert!(!far.tried(70) && far.count == 1);
    }

    #[test]
    fn only_invites_with_no_answer_at_all_time_out() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let mut t = Invites::default();
        let mut silent = inv(Stage::Sent);
        silent.sent = t0;
        let mut trying = inv(Stage::Trying);
        trying.call_id = b"c2".to_vec();
        trying.sent = t0;
        let mut no_bytes = inv(Stage::Sent);
        no_bytes.call_id = b"c3".to_vec();
        no_bytes.sent = t0;
        no_bytes.bytes = Vec::new();
        for i in [silent, trying, no_bytes] {
            assert!(t.insert(i));
        }
        assert!(
            t.unanswered(t0 + limit - Duration::from_millis(1), limit, |_| false)
                .is_empty()
        );
        // Still in our own output queue towards the server: not the server's silence.
        assert!(t.unanswered(t0 + limit, limit, |conn| conn == 4).is_empty());
        let late = t.unanswered(t0 + limit, limit, |_| false);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].call_id, b"c1");
        assert_eq!(t.len(), 2, "the others stay");
        assert_eq!(t.bytes(), b"INVITE".len(), "the taken one's bytes are released");
    }

    #[test]
    fn follows_the_transaction_to_its_end() {
        let now = Instant::now();
        let mut t = Invites::default();
        t.insert(inv(Stage::Sent));
        assert_eq!(t.get((7, 2), b"c1", 1).map(|i| i.backend), Some(1));
        assert!(t.get((7, 3), b"c1", 1).is_none(), "another connection's");
        assert!(t.get((7, 2), b"c1", 2).is_none());
        t.answered((7, 2), b"c1", 1, 100, now);
        assert_eq!(t.get((7, 2), b"c1", 1).unwrap().stage, Stage::Trying);
        t.answered((7, 2), b"c1", 1, 180, now);
        assert_eq!(t.get((7, 2), b"c1", 1).unwrap().stage, Stage::Ringing);
        t.answered((7, 2), b"c1", 1, 486, now);
        let done = t.get((7, 2), b"c1", 1).unwrap();
        assert_eq!(done.stage, Stage::Completed);
        assert!(done.bytes.is_empty());
        assert_eq!(t.in_progress(), 0);
        t.expire(now + COMPLETED_FOR);
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
        t.insert(inv(Stage::Sent));
        t.answered((7, 2), b"c1", 1, 200, now);
        assert!(t.is_empty(), "a 2xx ends it");
    }

    #[test]
    fn the_table_keeps_to_its_budget() {
        let mut t = Invites::default();
        let big = vec![b'x'; MAX_BYTES / 2 + 1];
        for n in 0..3u32 {
            assert!(t.insert(Invite {
                cseq: n,
                bytes: big.clone(),
                ..inv(Stage::Sent)
            }));
        }
        assert!(t.bytes() <= MAX_BYTES, "{}", t.bytes());
        assert!(
            t.get((7, 2), b"c1", 2).is_some_and(|i| i.bytes.is_empty()),
            "kept, without bytes"
        );
        let lost = t.lost_on(4);
        assert_eq!(lost.len(), 3);
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn a_lost_connection_gives_back_only_its_unfinished_invites() {
        let mut t = Invites::default();
        t.insert(inv(Stage::Ringing));
        t.insert(Invite {
            call_id: b"c2".to_vec(),
            stage: Stage::Completed,
            ..inv(Stage::Sent)
        });
        t.insert(Invite {
            call_id: b"c3".to_vec(),
            conn: 5,
            ..inv(Stage::Sent)
        });
        let lost = t.lost_on(4);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].call_id, b"c1");
        assert_eq!(t.len(), 2);
    }
}
