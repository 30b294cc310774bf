//! Outstanding work per back end (Transaction Least-Work-Left, Jiang et al., IEEE/ACM ToN 2012):
//! transactions siplb forwarded and has not yet seen a final answer for, an INVITE transaction
//! weighing 1.75 and any other 1. Counted in quarter transactions so the figure is an integer.
//!
//! Every worker must choose by the same figure without a lock on the message path: each back
//! end's total is one [`Work`] atomic shared by all workers (looked up by name, so it outlives a
//! reload). Each worker keeps its own table of the transactions it added ([`Outstanding`]): the
//! answer to a request comes back on the pool connection it left on, so on the same worker, which
//! takes the transaction out and the work off. A transaction never answered is given up after
//! 32 s (RFC 3261 Timer B / F). No I/O and no clock of its own: time comes from the caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sip::{Message, Method};

/// Quarter transactions an INVITE transaction weighs (1.75).
pub const INVITE_UNITS: u64 = 7;
/// Quarter transactions any other transaction weighs (1).
pub const OTHER_UNITS: u64 = 4;
/// A transaction with no final answer after this is over (Timer B / F).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(32);

/// One back end's outstanding work, and until when it said it is overloaded, shared by every
/// worker.
#[derive(Debug, Default)]
pub struct Work(AtomicU64, AtomicU64);

impl Work {
    /// Quarter transactions outstanding on this back end, all workers together.
    pub fn units(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The back end answered 503: overloaded until `until` (milliseconds on the caller's
    /// clock); a later, longer one extends it.
    pub fn overload(&self, until: u64) {
        self.1.fetch_max(until, Ordering::Relaxed);
    }

    /// Until when (milliseconds on the callers' clock) the back end is overloaded; 0: never was.
    pub fn overloaded_until(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }
}

/// The transactions one worker sent and is waiting on, and the shared totals it moves.
#[derive(Debug, Default)]
pub struct Outstanding {
    /// Transaction key (Call-ID, CSeq number and method) → (back end, units, sent).
    open: HashMap<u64, (usize, u64, Instant)>,
    /// The shared total of each back end, by position in the worker's current back-end list.
    totals: Vec<Arc<Work>>,
    /// This worker's own share of each total (what its metrics report, so workers add up).
    mine: Vec<u64>,
}

impl Outstanding {
    /// Follows a new back-end list: `totals[i]` is the shared total of back end `i`, `map[old]`
    /// its new position. Transactions of back ends that left are given up.
    pub fn remap(&mut self, totals: Vec<Arc<Work>>, map: &[Option<usize>]) {
        let old = std::mem::replace(&mut self.totals, totals);
        self.mine = vec![0; self.totals.len()];
        let mut open = std::mem::take(&mut self.open);
        open.retain(|_, (b, units, _)| match map.get(*b).copied().flatten() {
            Some(n) => {
                *b = n;
                true
            }
            None => {
                if let Some(w) = old.get(*b) {
                    w.0.fetch_sub(*units, Ordering::Relaxed);
                }
                false
            }
        });
        for &(b, units, _) in open.values() {
            self.mine[b] += units;
        }
        self.open = open;
    }

    /// Request `m` went to back end `b`: its transaction is outstanding until answered. ACK has
    /// no answer and is not counted; a request already outstanding (same Call-ID, CSeq and
    /// method, a retransmission) is not counted twice.
    pub fn sent(&mut self, b: usize, m: &Message, now: Instant) {
        let (Some(method), Some(k)) = (m.method(), key(m)) else {
            return;
        };
        if method == Method::Ack || b >= self.totals.len() || self.open.contains_key(&k) {
            return;
        }
        let units = if method == Method::Invite {
            INVITE_UNITS
        } else {
            OTHER_UNITS
        };
        self.totals[b].0.fetch_add(units, Ordering::Relaxed);
        self.mine[b] += units;
        self.open.insert(k, (b, units, now));
    }

    /// Response `m` came from back end `b`: a final answer ends its transaction (once: a
    /// retransmitted 2xx finds nothing left to end).
    pub fn answered(&mut self, b: usize, m: &Message) {
        if m.status().is_none_or(|c| c < 200) || self.open.is_empty() {
            return;
        }
        // Only the back end the request went to can end its transaction.
        if let Some(k) = key(m)
            && self.open.get(&k).is_some_and(|&(to, _, _)| to == b)
            && let Some((b, units, _)) = self.open.remove(&k)
        {
            self.done(b, units);
        }
    }

    /// Gives up transactions unanswered for [`GIVE_UP_AFTER`].
    pub fn expire(&mut self, now: Instant) {
        let mut over = Vec::new();
        self.open.retain(|_, &mut (b, units, sent)| {
            let keep = now.saturating_duration_since(sent) < GIVE_UP_AFTER;
            if !keep {
                over.push((b, units));
            }
            keep
        });
        for (b, units) in over {
            self.done(b, units);
        }
    }

    /// Every back end's shared total, by position (what the router chooses by).
    pub fn totals(&self) -> &[Arc<Work>] {
        &self.totals
    }

    /// Back end `b`'s outstanding work, all workers together, in quarter transactions.
    pub fn total(&self, b: usize) -> u64 {
        self.totals.get(b).map_or(0, |w| w.units())
    }

    /// This worker's part of back end `b`'s outstanding work, in transactions.
    pub fn mine(&self, b: usize) -> f64 {
        self.mine.get(b).map_or(0.0, |&u| u as f64 / 4.0)
    }

    fn done(&mut self, b: usize, units: u64) {
        if let Some(w) = self.totals.get(b) {
            w.0.fetch_sub(units, Ordering::Relaxed);
        }
        if let Some(m) = self.mine.get_mut(b) {
            *m -= units;
        }
    }
}

/// A transaction's key: Call-ID, CSeq number and CSeq method, through a fixed 64-bit hash (what
/// a request and its answers share).
fn key(m: &Message) -> Option<u64> {
    let (call_id, (_, n, method)) = (m.call_id()?, m.cseq?);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &x in bytes {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&n.to_be_bytes());
    eat(method.as_bytes());
    eat(call_id);
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, call_id: &str, n: u32) -> Vec<u8> {
        format!(
            "{method} sip:x@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS a.example;branch=z9hG4bK{call_id}{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@a.example>;tag=1\r\nTo: <sip:x@pool.test>\r\n\
             Call-ID: {call_id}\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn answer(code: u16, method: &str, call_id: &str, n: u32) -> Vec<u8> {
        format!(
            "SIP/2.0 {code} X\r\nVia: SIP/2.0/TLS a.example;branch=z9hG4bK{call_id}{n}\r\n\
             From: <sip:a@a.example>;tag=1\r\nTo: <sip:x@pool.test>;tag=2\r\n\
             Call-ID: {call_id}\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn msg(b: &[u8]) -> Message<'_> {
        Message::parse(b).expect("parses")
    }

    /// Two workers sharing the totals of two back ends.
    fn two_workers() -> (Outstanding, Outstanding, Vec<Arc<Work>>) {
        let totals: Vec<Arc<Work>> = (0..2).map(|_| Arc::new(Work::default())).collect();
        let (mut a, mut b) = (Outstanding::default(), Outstanding::default());
        a.remap(totals.clone(), &[]);
        b.remap(totals.clone(), &[]);
        (a, b, totals)
    }

    #[test]
    fn an_invite_weighs_1_75_until_its_final_answer_and_every_worker_sees_it() {
        let t0 = Instant::now();
        let (mut w0, mut w1, totals) = two_workers();
        let inv = request("INVITE", "c1", 1);
        w0.sent(0, &msg(&inv), t0);
        w1.sent(0, &msg(&request("OPTIONS", "c2", 1)), t0);
        assert_eq!(totals[0].units(), INVITE_UNITS + OTHER_UNITS);
        assert_eq!(
            (w0.total(0), w1.total(0)),
            (11, 11),
            "one figure for every worker"
        );
        assert_eq!((w0.mine(0), w1.mine(0)), (1.75, 1.0));
        // Provisional answers end nothing; the final one does, once.
        w0.answered(0, &msg(&answer(180, "INVITE", "c1", 1)));
        assert_eq!(totals[0].units(), 11);
        w0.answered(0, &msg(&answer(200, "INVITE", "c1", 1)));
        w0.answered(0, &msg(&answer(200, "INVITE", "c1", 1)));
        assert_eq!(totals[0].units(), OTHER_UNITS);
        // An answer from another back end, or to another method, ends nothing.
        w1.answered(1, &msg(&answer(200, "OPTIONS", "c2", 1)));
        w1.answered(0, &msg(&answer(200, "INVITE", "c2", 1)));
        assert_eq!(totals[0].units(), OTHER_UNITS);
        w1.answered(0, &msg(&answer(200, "OPTIONS", "c2", 1)));
        assert_eq!(totals[0].units(), 0);
    }

    #[test]
    fn acks_are_not_transactions_and_retransmissions_count_once() {
        let (mut w, _, totals) = two_workers();
        let t0 = Instant::now();
        w.sent(1, &msg(&request("ACK", "c1", 1)), t0);
        assert_eq!(totals[1].units(), 0);
        let bye = request("BYE", "c1", 2);
        w.sent(1, &msg(&bye), t0);
        w.sent(1, &msg(&bye), t0);
        assert_eq!(totals[1].units(), OTHER_UNITS);
    }

    #[test]
    fn an_unanswered_transaction_is_given_up_after_32_s() {
        let (mut w, _, totals) = two_workers();
        let t0 = Instant::now();
        w.sent(0, &msg(&request("INVITE", "lost", 1)), t0);
        w.expire(t0 + GIVE_UP_AFTER - Duration::from_millis(1));
        assert_eq!(totals[0].units(), INVITE_UNITS);
        w.expire(t0 + GIVE_UP_AFTER);
        assert_eq!((totals[0].units(), w.mine(0)), (0, 0.0));
    }

    #[test]
    fn a_reload_moves_work_with_its_back_end_and_gives_up_a_removed_ones() {
        let (mut w, _, totals) = two_workers();
        let t0 = Instant::now();
        w.sent(0, &msg(&request("INVITE", "a", 1)), t0);
        w.sent(1, &msg(&request("INVITE", "b", 1)), t0);
        // Back end 0 leaves; back end 1 becomes 0.
        w.remap(vec![Arc::clone(&totals[1])], &[None, Some(0)]);
        assert_eq!((totals[0].units(), totals[1].units()), (0, INVITE_UNITS));
        assert_eq!(w.mine(0), 1.75);
        w.answered(0, &msg(&answer(486, "INVITE", "b", 1)));
        assert_eq!(totals[1].units(), 0);
    }
}
