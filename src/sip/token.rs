//! Routing tokens: the only state siplb needs to route a message travels inside it. A token names
//! a connection (worker, slot, generation), the [`Role`] it was minted for (which side of siplb it
//! may steer a message to) and, in Record-Route and Path URIs, the back end a dialog is pinned to. It is hex text (valid in a Via branch and a URI parameter) with a
//! truncated HMAC-SHA256 (ring) over a version byte and the fields, so a forged or altered token
//! is refused instead of steering a message to somebody else's connection.
//!
//! The branch hash (RFC 3261 §16.11) is SipHash-2-4 keyed from the secret (fixed by this project,
//! so instances sharing the key agree), not a MAC: it only has to be the same
//! for retransmissions (and for CANCEL / non-2xx ACK, which share the INVITE's branch) and unlikely
//! to collide otherwise.

use std::hash::Hasher;

use super::siphash::SipHasher24;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Encoded token length: 20 payload bytes and 8 MAC bytes, as hex.
pub const TOKEN_LEN: usize = 56;
const PAYLOAD: usize = 20;
const MAC: usize = 8;
const VERSION: u8 = 2;

/// What a token was minted for. The role is covered by the MAC, so a token written for one
/// direction can never steer a message the other way (a client cannot answer in a server's place
/// by copying the Via siplb put on the server's request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Our Via on a request sent to a server; names the client connection its responses go to.
    #[default]
    ClientVia = 1,
    /// Our Via on a request sent to a client; names the server connection its responses go to.
    ServerVia = 2,
    /// The client-facing Record-Route entry: what clients put in their Route (pin + client).
    ClientRoute = 3,
    /// The server-facing Record-Route entry and Path: what servers put in their Route to reach
    /// the client connection it names.
    ServerRoute = 4,
}

impl Role {
    fn from_byte(b: u8) -> Option<Role> {
        Some(match b {
            1 => Role::ClientVia,
            2 => Role::ServerVia,
            3 => Role::ClientRoute,
            4 => Role::ServerRoute,
            _ => return None,
        })
    }

    /// Whether the connection a token of this role names is a client's (else a server's).
    pub fn names_client(self) -> bool {
        !matches!(self, Role::ServerVia)
    }
}

/// A connection of a worker, what the token is for, and optionally the back end a dialog is
/// pinned to (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token {
    pub worker: u16,
    pub slot: u32,
    pub generation: u32,
    pub pin: u32,
    pub role: Role,
    /// The siplb process that minted it (set by [`TokenKey::encode`]): a connection token from
    /// another instance names none of this one's connections.
    pub instance: u32,
    /// The client connection it names is a WebSocket (`--listen-wss`): what siplb writes
    /// towards it (its Via, the Record-Route the client follows) names the WebSocket side.
    pub ws: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token has the wrong length")]
    Length,
    #[error("token is not hex")]
    NotHex,
    #[error("token was not made by this balancer (MAC mismatch)")]
    BadMac,
    #[error("token version {0} is not understood")]
    Version(u8),
    #[error("token role {0} is not understood")]
    Role(u8),
    #[error("the system random generator failed")]
    Random,
}

/// The secret behind tokens and branches, shared by a process's workers (and by every instance
/// given the same `--token-key-file`), and this process's instance id.
pub struct TokenKey {
    mac: hmac::Key,
    branch_seed: [u8; 16],
    instance: u32,
    /// The key before a rotation, accepted until the instant given.
    previous: Option<(hmac::Key, std::time::Instant)>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A fresh random key (tokens from before a restart are refused; pins then fall back to the
    /// hash, which picks the same back end while the pool is unchanged).
    pub fn generate() -> Result<TokenKey, TokenError> {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TokenError::Random)?;
        Ok(TokenKey::from_secret(&secret))
    }

    /// A key from a given secret (tests, and instances that must accept each other's tokens).
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&mac, b"siplb branch seed");
        let mut branch_seed = [0u8; 16];
        branch_seed.copy_from_slice(&derived.as_ref()[..16]);
        TokenKey {
            mac,
            branch_seed,
            instance: 0,
            previous: None,
        }
    }

    /// This key as instance `id` mints it.
    pub fn with_instance(mut self, id: u32) -> TokenKey {
        self.instance = id;
        self
    }

    /// This key, still accepting tokens made with `old` until `until` (a key rotation).
    pub fn rotated_from(mut self, old: &TokenKey, until: std::time::Instant) -> TokenKey {
        self.instance = old.instance;
        self.previous = Some((old.mac.clone(), until));
        self
    }

    pub fn instance(&self) -> u32 {
        self.instance
    }

    pub fn encode(&self, t: Token) -> [u8; TOKEN_LEN] {
        let payload = payload(Token {
            instance: self.instance,
            ..t
        });
        let tag = hmac::sign(&self.mac, &payload);
        let mut out = [0u8; TOKEN_LEN];
        hex_into(&payload, &mut out[..PAYLOAD * 2]);
        hex_into(&tag.as_ref()[..MAC], &mut out[PAYLOAD * 2..]);
        out
    }

    pub fn decode(&self, s: &[u8]) -> Result<Token, TokenError> {
        if s.len() != TOKEN_LEN {
            return Err(TokenError::Length);
        }
        let mut raw = [0u8; PAYLOAD + MAC];
        unhex_into(s, &mut raw)?;
        let (payload, mac) = raw.split_at(PAYLOAD);
        let ok = |k: &hmac::Key| constant_time_eq(&hmac::sign(k, payload).as_ref()[..MAC], mac);
        let previous_ok = || {
            self.previous
                .as_ref()
                .is_some_and(|(k, until)| std::time::Instant::now() < *until && ok(k))
        };
        if !ok(&self.mac) && !previous_ok() {
            return Err(TokenError::BadMac);
        }
        if payload[0] != VERSION {
            return Err(TokenError::Version(payload[0]));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]]);
        Ok(Token {
            worker: u16::from_be_bytes([payload[1], payload[2]]),
            slot: u32_at(3),
            generation: u32_at(7),
            pin: u32_at(11),
            role: Role::from_byte(payload[15] & !WS_BIT).ok_or(TokenError::Role(payload[15]))?,
            instance: u32_at(16),
            ws: payload[15] & WS_BIT != 0,
        })
    }

    /// 16 hex characters derived from `parts`: the same inputs always give the same branch.
    pub fn branch(&self, parts: &[&[u8]]) -> [u8; 16] {
        self.branch_of(parts.iter().copied())
    }

    /// As [`TokenKey::branch`], over parts given one by one.
    pub fn branch_of<'p>(&self, parts: impl IntoIterator<Item = &'p [u8]>) -> [u8; 16] {
        let mut h = SipHasher24::new(&self.branch_seed);
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        let mut out = [0u8; 16];
        hex_into(&h.finish().to_be_bytes(), &mut out);
        out
    }
}

/// Slots in a [`TokenCache`].
const CACHE_SLOTS: usize = 256;

/// Tokens already verified, so the many responses that come back through one connection skip
/// the HMAC. A token is taken from the cache only when it is byte for byte one that passed
/// verification (compared in constant time), so the cache can never accept a forgery. One per
/// worker; a direct-mapped table indexed by MAC bytes, which are uniformly distributed.
pub struct TokenCache {
    slots: Box<[Option<Verified>]>,
    /// Tokens refused for their MAC (another key, or forged).
    pub bad_mac: u64,
}

/// A token's text and what it decoded to.
type Verified = ([u8; TOKEN_LEN], Token);

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new()
    }
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache {
            slots: vec![None; CACHE_SLOTS].into_boxed_slice(),
            bad_mac: 0,
        }
    }

    pub fn decode(&mut self, key: &TokenKey, s: &[u8]) -> Result<Token, TokenError> {
        let r = self.decode_inner(key, s);
        if r == Err(TokenError::BadMac) {
            self.bad_mac += 1;
        }
        r
    }

    fn decode_inner(&mut self, key: &TokenKey, s: &[u8]) -> Result<Token, TokenError> {
        let s: &[u8; TOKEN_LEN] = s.try_into().map_err(|_| TokenError::Length)?;
        let idx = (usize::from(s[TOKEN_LEN - 2]) << 8 | usize::from(s[TOKEN_LEN - 1])) % CACHE_SLOTS;
        if let Some((known, t)) = &self.slots[idx]
            && constant_time_eq(known, s)
        {
            return Ok(*t);
        }
        let t = key.decode(s)?;
        self.slots[idx] = Some((*s, t));
        Ok(t)
    }
}

/// The bit of the role byte that says the connection is a WebSocket (tokens minted before
/// WebSocket listeners have it clear).
const WS_BIT: u8 = 0x80;

fn payload(t: Token) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[0] = VERSION;
    p[1..3].copy_from_slice(&t.worker.to_be_bytes());
    p[3..7].copy_from_slice(&t.slot.to_be_bytes());
    p[7..11].copy_from_slice(&t.generation.to_be_bytes());
    p[11..15].copy_from_slice(&t.pin.to_be_bytes());
    p[15] = t.role as u8 | if t.ws { WS_BIT } else { 0 };
    p[16..20].copy_from_slice(&t.instance.to_be_bytes());
    p
}

/// The pin for a back end: a stable hash of its configured name (FNV-1a), never 0. Pinning by
/// name rather than by position lets a pin survive back ends being added or removed.
pub fn pin_of(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in name.as_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (which must be twice as long).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

fn unhex_into(s: &[u8], out: &mut [u8]) -> Result<(), TokenError> {
    let nib = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TokenError::NotHex),
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_secret(b"test secret")
    }

    #[test]
    fn round_trip() {
        let t = Token {
            worker: 3,
            slot: 70_000,
            generation: u32::MAX,
            pin: pin_of("b1"),
            role: Role::ServerRoute,
            instance: 0,
            ws: false,
        };
        let k = key();
        let enc = k.encode(t);
        assert!(enc.iter().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(k.decode(&enc), Ok(t));
        // A WebSocket client's token says so, under the MAC like the role.
        let ws = Token { ws: true, ..t };
        let enc_ws = k.encode(ws);
        assert_eq!(k.decode(&enc_ws), Ok(ws));
        assert_ne!(enc_ws, enc);
        let mut flipped = enc_ws;
        flipped[30] = enc[30]; // the high nibble of the role byte
        assert_eq!(
            k.decode(&flipped),
            Err(TokenError::BadMac),
            "the bit is covered by the MAC"
        );
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let k = key();
        let enc = k.encode(Token {
            worker: 1,
            slot: 2,
            generation: 3,
            pin: 0,
            role: Role::ClientVia,
            instance: 0,
            ws: false,
        });
        // Flip each character in turn: every alteration must be caught.
        for i in 0..TOKEN_LEN {
            let mut bad = enc;
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            assert!(k.decode(&bad).is_err(), "altered char {i} accepted");
        }
        assert_eq!(
            TokenKey::from_secret(b"other").decode(&enc),
            Err(TokenError::BadMac)
        );
        assert_eq!(k.decode(&enc[1..]), Err(TokenError::Length));
        let mut upper = enc;
        upper.make_ascii_uppercase();
        if upper != enc {
            assert_eq!(k.decode(&upper), Err(TokenError::NotHex));
        }
    }

    #[test]
    fn the_role_is_part_of_what_the_mac_covers() {
        let k = key();
        let t = Token {
            worker: 1,
            slot: 2,
            generation: 3,
            pin: 4,
            role: Role::ClientVia,
            instance: 0,
            ws: false,
        };
        let a = k.encode(t);
        let b = k.encode(Token {
            role: Role::ServerVia,
            ..t
        });
        assert_ne!(a, b);
        // Splicing the role byte of one token into the MAC of another is caught.
        let mut spliced = a;
        spliced[30..32].copy_from_slice(&b[30..32]);
        assert_eq!(k.decode(&spliced), Err(TokenError::BadMac));
        assert_eq!(k.decode(&b).map(|t| t.role), Ok(Role::ServerVia));
    }

    #[test]
    fn a_rotated_key_accepts_the_previous_one_for_its_grace_only() {
        let old = TokenKey::from_secret(b"old secret").with_instance(7);
        let t = Token {
            worker: 1,
            slot: 2,
            generation: 3,
            pin: 4,
            role: Role::ClientRoute,
            instance: 0,
            ws: false,
        };
        let minted = old.encode(t);
        let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let new = TokenKey::from_secret(b"new secret").rotated_from(&old, later);
        assert_eq!(new.instance(), 7, "the instance stays");
        assert_eq!(new.decode(&minted), Ok(Token { instance: 7, ..t }));
        let expired = TokenKey::from_secret(b"new secret").rotated_from(&old, std::time::Instant::now());
        assert_eq!(expired.decode(&minted), Err(TokenError::BadMac));
        // What the new key mints, the old one does not take.
        assert_eq!(old.decode(&new.encode(t)), Err(TokenError::BadMac));
    }

    #[test]
    fn branches_are_deterministic_and_distinct() {
        let k = key();
        assert_eq!(k.branch(&[b"z9hG4bK1", b"h"]), k.branch(&[b"z9hG4bK1", b"h"]));
        assert_ne!(k.branch(&[b"z9hG4bK1", b"h"]), k.branch(&[b"z9hG4bK2", b"h"]));
        // Part boundaries matter: ("ab","c") is not ("a","bc").
        assert_ne!(k.branch(&[b"ab", b"c"]), k.branch(&[b"a", b"bc"]));
        assert_ne!(
            key().branch(&[b"x"]),
            TokenKey::from_secret(b"other").branch(&[b"x"])
        );
    }

    #[test]
    fn cache_returns_what_verification_returns_and_refuses_forgeries() {
        let k = key();
        let mut cache = TokenCache::new();
        for slot in 0..1000 {
            let t = Token {
                worker: 0,
                slot,
                generation: 1,
                pin: 0,
                role: Role::ServerVia,
                instance: 0,
                ws: false,
            };
            let enc = k.encode(t);
            assert_eq!(cache.decode(&k, &enc), Ok(t));
            assert_eq!(cache.decode(&k, &enc), Ok(t), "cached");
            let mut bad = enc;
            bad[5] = if bad[5] == b'0' { b'1' } else { b'0' };
            assert!(cache.decode(&k, &bad).is_err());
            assert_eq!(cache.decode(&k, &enc[..10]), Err(TokenError::Length));
        }
    }

    #[test]
    fn pins_are_stable_and_nonzero() {
        assert_eq!(pin_of("server-a"), pin_of("server-a"));
        assert_ne!(pin_of("server-a"), pin_of("server-b"));
        assert_ne!(pin_of(""), 0);
    }
}
