//! Per-source admission (`--rate-limit-per-ip N`): out-of-dialog requests from one source
//! address, all workers together, at most N a second with a burst of N. A token bucket per
//! address, kept in a fixed table of atomic words indexed by a keyed hash of the address: memory
//! is bounded whatever the number of addresses (a flood from spoofed or many sources fills no
//! map), and the per-request cost is one compare-and-swap, no lock. Two addresses that share a
//! slot share a bucket (stricter for both, never looser); with 65 536 slots that takes many active
//! sources. No I/O; time comes from the caller as milliseconds on its own clock.

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sip::siphash::SipHasher24;

/// Slots in the table (a power of two): 512 KiB.
const SLOTS: usize = 1 << 16;
/// Tokens are kept in sixteenths, in the low 24 bits of a slot; the high 40 bits hold the time
/// (ms) the bucket was last filled up to. A slot of 0 is a full bucket never used.
const FRAC: u64 = 16;
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// The largest rate the packing holds (burst = rate, in sixteenths, within 24 bits).
pub const MAX_RATE: u32 = (TOKEN_MASK / FRAC) as u32;

/// The buckets of every source address, shared by all workers.
pub struct SourceLimit {
    /// Requests a second (and burst), at most [`MAX_RATE`].
    rate: u64,
    slots: Box<[AtomicU64]>,
    /// Hash key, random per process, so no one can aim many addresses at one slot.
    key: [u8; 16],
}

impl SourceLimit {
    /// A limit of `rate` requests a second per address (burst `rate`), capped at [`MAX_RATE`].
    pub fn new(rate: u32, key: [u8; 16]) -> SourceLimit {
        SourceLimit {
            rate: u64::from(rate.clamp(1, MAX_RATE)),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            key,
        }
    }

    /// Takes one token from `ip`'s bucket at `now_ms` (a clock that starts above 0 and does not
    /// go back); false when the bucket is empty, and the request is to be refused.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> bool {
        let now_ms = now_ms.max(1) & ((1 << (64 - TOKEN_BITS)) - 1);
        let cap = self.rate * FRAC;
        let slot = &self.slots[self.index(ip)];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (mut at, mut tokens) = (cur >> TOKEN_BITS, cur & TOKEN_MASK);
            if at == 0 {
                (at, tokens) = (now_ms, cap);
            }
            // Another worker's clock read a little later than ours: no refill, never a reset
            // (a reset to a full bucket let a flood through twice the burst).
            let now_ms = now_ms.max(at);
            // Refill by whole sixteenths, moving the fill time only by what they account for, so
            // requests closer together than a sixteenth's worth still refill over time.
            let added = (now_ms - at) * self.rate * FRAC / 1000;
            if tokens + added >= cap {
                (at, tokens) = (now_ms, cap);
            } else if added > 0 {
                at += added * 1000 / (self.rate * FRAC);
                tokens += added;
            }
            if tokens < FRAC {
                return false;
            }
            let new = (at << TOKEN_BITS) | (tokens - FRAC);
            match slot.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    fn index(&self, ip: IpAddr) -> usize {
        let mut h = SipHasher24::new(&self.key);
        match ip {
            IpAddr::V4(a) => h.write(&a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => h.write(&v4.octets()),
                None => h.write(&a.octets()),
            },
        }
        (h.finish() as usize) & (SLOTS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_burst_of_n_then_n_a_second() {
        let l = SourceLimit::new(50, [7; 16]);
        let a = ip("192.0.2.1");
        let t0 = 1_000;
        let burst = (0..200).filter(|_| l.admit(a, t0)).count();
        assert_eq!(burst, 50);
        // Four seconds of a flood, a request every millisecond: 50 a second get through.
        let admitted = (1..=4_000).filter(|ms| l.admit(a, t0 + ms)).count();
        assert!((199..=201).contains(&admitted), "{admitted}");
    }

    #[test]
    fn sources_do_not_share_their_buckets_and_an_idle_one_fills_up_to_the_burst_only() {
        let l = SourceLimit::new(10, [1; 16]);
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        assert_eq!((0..20).filter(|_| l.admit(a, 5)).count(), 10);
        assert_eq!((0..20).filter(|_| l.admit(b, 5)).count(), 10, "another address");
        // An IPv4-mapped IPv6 address is the IPv4 source.
        assert!(!l.admit(ip("::ffff:192.0.2.1"), 5));
        // An hour idle: a full bucket, not an hour's worth.
        assert_eq!((0..100).filter(|_| l.admit(a, 3_600_005)).count(), 10);
    }

    #[test]
    fn a_clock_read_earlier_by_another_worker_refills_nothing() {
        let l = SourceLimit::new(50, [3; 16]);
        let a = ip("192.0.2.9");
        assert_eq!((0..60).filter(|_| l.admit(a, 10_000)).count(), 50);
        // A worker whose turn began 5 ms earlier sees a fill time ahead of its clock.
        assert!(!l.admit(a, 9_995), "an earlier clock reset the bucket");
    }

    #[test]
    fn slow_requests_below_the_rate_always_pass() {
        let l = SourceLimit::new(5, [2; 16]);
        let a = ip("198.51.100.7");
        // Four a second for a minute: never refused.
        assert_eq!((0..240).filter(|i| l.admit(a, 1 + i * 250)).count(), 240);
    }
}
