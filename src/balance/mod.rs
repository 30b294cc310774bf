//! Choosing a back end. Owns the back-end set as configured ([`Backend`]), the dialog key a new
//! dialog is hashed on ([`BalanceKey`]), and weighted rendezvous (highest-random-weight) hashing:
//! every back end scores the key, the best healthy score wins, so a back end that leaves moves
//! only its own dialogs and every siplb instance makes the same choice without talking to the
//! others. The hash is a fixed function (FNV-1a, splitmix64 finaliser), stable across processes.
//! With `--balance least-work` the choice looks at load instead: the back end with the least
//! outstanding work per unit of weight ([`work`]), ties broken by the same hash.

pub mod pool;
pub mod work;

use std::net::SocketAddr;

use crate::sip::Message;
use crate::sip::addr::{NameAddr, Uri};
use crate::sip::token::pin_of;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The name in its certificate (and the SNI siplb sends).
    pub name: String,
    pub addr: SocketAddr,
    /// Relative share of new dialogs; 0 takes none.
    pub weight: u32,
    /// Stable hash of the name, carried in Record-Route so a dialog finds its back end again.
    pub pin: u32,
    name_hash: u64,
}

impl Backend {
    pub fn new(name: String, addr: SocketAddr, weight: u32) -> Backend {
        let name_hash = fnv1a(name.as_bytes());
        Backend {
            pin: pin_of(&name),
            name,
            addr,
            weight,
            name_hash,
        }
    }
}

/// What identifies a dialog for hashing (`--balance`), or least work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BalanceKey {
    CallId,
    FromUser,
    ToUser,
    RuriUser,
    /// The healthy back end with the least outstanding work per unit of weight (Transaction
    /// Least-Work-Left), ties broken by the Call-ID hash.
    LeastWork,
}

impl BalanceKey {
    /// The key bytes of a request; the Call-ID when the chosen part is absent.
    pub fn key<'a>(self, m: &Message<'a>) -> &'a [u8] {
        let user_of = |v: Option<&'a [u8]>| -> Option<&'a [u8]> {
            let uri = NameAddr::parse(v?).ok()?.uri;
            Uri::parse(uri).ok()?.user
        };
        let chosen = match self {
            BalanceKey::CallId | BalanceKey::LeastWork => None,
            BalanceKey::FromUser => user_of(m.value(m.from)),
            BalanceKey::ToUser => user_of(m.value(m.to)),
            BalanceKey::RuriUser => m.request_uri().and_then(|u| Uri::parse(u).ok()?.user),
        };
        chosen.or_else(|| m.call_id()).unwrap_or(b"")
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key's score on one back end: `weight / -ln(u)` with `u` uniform in (0, 1), which gives
/// each back end a share of keys proportional to its weight.
fn score(key_hash: u64, b: &Backend) -> f64 {
    let h = mix(key_hash ^ b.name_hash);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(b.weight) / -u.ln()
}

/// The back end for `key` among those `usable` says may take new dialogs; `None` if none can.
pub fn choose(key: &[u8], backends: &[Backend], usable: impl Fn(usize) -> bool) -> Option<usize> {
    let kh = fnv1a(key);
    backends
        .iter()
        .enumerate()
        .filter(|&(i, b)| b.weight > 0 && usable(i))
        .map(|(i, b)| (i, score(kh, b)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// The back end with the least `work` per unit of weight among those `usable` says may take new
/// dialogs, ties broken by `key`'s hash (so equal, idle servers still share evenly).
pub fn least_work(
    key: &[u8],
    backends: &[Backend],
    usable: impl Fn(usize) -> bool,
    work: impl Fn(usize) -> u64,
) -> Option<usize> {
    let kh = fnv1a(key);
    backends
        .iter()
        .enumerate()
        .filter(|&(i, b)| b.weight > 0 && usable(i))
        .map(|(i, b)| (i, work(i) as f64 / f64::from(b.weight), score(kh, b)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .map(|(i, _, _)| i)
}

/// The back end a pin names, if it is still configured.
pub fn by_pin(pin: u32, backends: &[Backend]) -> Option<usize> {
    backends.iter().position(|b| b.pin == pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Backend::new(
                    format!("b{i}.example"),
                    SocketAddr::from(([127, 0, 0, 1], 6000)),
                    w,
                )
            })
            .collect()
    }

    #[test]
    fn spreads_by_weight() {
        let p = pool(&[100, 100, 200]);
        let mut n = [0usize; 3];
        for i in 0..30_000 {
            n[choose(format!("call-{i}").as_bytes(), &p, |_| true).unwrap()] += 1;
        }
        assert!(
            (6_500..8_500).contains(&n[0]) && (6_500..8_500).contains(&n[1]),
            "{n:?}"
        );
        assert!((13_500..16_500).contains(&n[2]), "{n:?}");
    }

    #[test]
    fn only_the_leaving_backends_keys_move() {
        let p = pool(&[100, 100, 100, 100]);
        for i in 0..5_000 {
            let k = format!("k{i}");
            let before = choose(k.as_bytes(), &p, |_| true).unwrap();
            let after = choose(k.as_bytes(), &p, |b| b != 2).unwrap();
            if before != 2 {
                assert_eq!(before, after, "a key not on the removed back end moved");
            }
        }
    }

    #[test]
    fn least_work_goes_where_the_least_work_per_weight_is_and_ties_follow_the_hash() {
        let p = pool(&[100, 100, 200]);
        // Equal work: exactly the hash's choice, so equal servers share evenly.
        for i in 0..2_000 {
            let k = format!("call-{i}");
            assert_eq!(
                least_work(k.as_bytes(), &p, |_| true, |_| 0),
                choose(k.as_bytes(), &p, |_| true)
            );
        }
        // Work per weight: 8/100, 4/100, 10/200 -> back end 1; with 6 on it, back end 2 (5/100).
        let work = [8u64, 4, 10];
        assert_eq!(least_work(b"k", &p, |_| true, |b| work[b]), Some(1));
        let work = [8u64, 6, 10];
        assert_eq!(least_work(b"k", &p, |_| true, |b| work[b]), Some(2));
        // Unusable and zero-weight back ends are never chosen, however idle.
        assert_eq!(least_work(b"k", &p, |b| b != 2, |b| work[b]), Some(1));
        let q = pool(&[0, 100]);
        assert_eq!(least_work(b"k", &q, |_| true, |b| [0, 50][b]), Some(1));
        assert_eq!(least_work(b"k", &q, |_| false, |_| 0), None);
    }

    #[test]
    fn zero_weight_and_no_backend() {
        let p = pool(&[0, 100]);
        assert!((0..100).all(|i| choose(format!("{i}").as_bytes(), &p, |_| true) == Some(1)));
        assert_eq!(choose(b"x", &p, |_| false), None);
        assert_eq!(by_pin(p[1].pin, &p), Some(1));
    }
}
