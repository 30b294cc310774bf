//! The connections of one worker, by slot. A slot's generation changes every time it is freed,
//! and routing tokens carry (slot, generation), so a message for a connection that has gone can
//! never reach whichever connection took its slot later.

use std::time::Instant;

use ::core::net::SocketAddr;

use crate::sip::token::TOKEN_LEN;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SIP client on the front listener.
    Client,
    /// One of this worker's pool connections to back end `0`.
    Backend(usize),
    /// A back-end server that connected to the peer listener; its back end once verified.
    Peer(Option<usize>),
}

impl Kind {
    pub fn is_server(self) -> bool {
        !matches!(self, Kind::Client)
    }

    /// The back end on the other side, when known.
    pub fn backend(self) -> Option<usize> {
        match self {
            Kind::Client => None,
            Kind::Backend(b) => Some(b),
            Kind::Peer(b) => b,
        }
    }
}

/// What the event loop saw of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    /// The peer closed its side (what arrived before it still counts).
    pub read_closed: bool,
    pub error: bool,
}

/// A WebSocket client's state: its HTTP upgrade not yet read, or open with its frame decoder.
#[derive(Debug)]
pub enum WsState {
    Upgrading,
    Open(crate::ws::frame::Decoder),
}

/// The text of an address as written into `received=`, kept inline so a message needs no
/// allocation to quote it.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 46],
    len: u8,
}

impl IpText {
    pub fn new(addr: SocketAddr) -> IpText {
        let s = addr.ip().to_string();
        let mut buf = [0u8; 46];
        let len = s.len().min(buf.len());
        buf[..len].copy_from_slice(&s.as_bytes()[..len]);
        IpText { buf, len: len as u8 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

pub struct Conn<S> {
    pub kind: Kind,
    pub stream: S,
    pub peer: SocketAddr,
    pub peer_ip: IpText,
    /// Our Via token naming this connection (computed once).
    pub token: [u8; TOKEN_LEN],
    /// Record-Route / Path tokens for this (client) connection, per back end, made on first use.
    pub rr_tokens: Vec<Option<crate::route::RouteTokens>>,
    /// Polled for writable too (else readable only).
    pub interest: bool,
    pub opened: Instant,
    pub last_active: Instant,
    /// Already in the worker's list of connections to flush this turn.
    pub dirty: bool,
    /// Bytes of an oversized message from a server still to skip.
    pub skip: usize,
    /// Since when part of a message has waited in the read buffer.
    pub partial_since: Option<Instant>,
    /// Left unread while servers were slow (in the worker's list of clients to read later).
    pub paused: bool,
    /// A WebSocket client (`--listen-wss`): where its upgrade and frames stand.
    pub ws: Option<Box<WsState>>,
    /// A WebSocket ping went out since the client last sent anything (see `Core::sweep`).
    pub pinged: bool,
    /// The federation partner (its domain) whose edge this client is.
    pub partner: Option<std::sync::Arc<str>>,
}

impl<S> Conn<S> {
    /// After framing: a message (or upgrade) begun and not finished (`waiting`) starts the clock
    /// of --message-timeout; an empty buffer stops it.
    pub fn message_begun(&mut self, waiting: bool, now: Instant) {
        self.partial_since = match (waiting, self.partial_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
    }
}

/// A connection named for a step later in the turn (a close, a registration): a slot is reused
/// by the next connection accepted once its own closed, often within the same turn, and what
/// was decided about the old connection must not befall the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub slot: usize,
    generation: u32,
}

/// A slot: its generation stays for as long as the worker runs (tokens name it), while the
/// connection is boxed, so a closed connection gives all of its memory back and 10 000 slots
/// that were once busy cost 16 bytes each, not a whole connection's state.
struct Entry<S> {
    generation: u32,
    conn: Option<Box<Conn<S>>>,
}

pub struct Slots<S> {
    entries: Vec<Entry<S>>,
    free: Vec<usize>,
    open: usize,
}

impl<S> Default for Slots<S> {
    fn default() -> Slots<S> {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            open: 0,
        }
    }
}

impl<S> Slots<S> {
    /// The slot and generation the next insert will use.
    pub fn vacant(&mut self) -> (usize, u32) {
        let slot = match self.free.last() {
            Some(&s) => s,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    conn: None,
                });
                self.free.push(self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        (slot, self.entries[slot].generation)
    }

    /// Fills the slot [`Slots::vacant`] returned.
    pub fn insert(&mut self, conn: Conn<S>) -> usize {
        let (slot, _) = self.vacant();
        self.free.pop();
        self.entries[slot].conn = Some(Box::new(conn));
        self.open += 1;
        slot
    }

    pub fn get(&self, slot: usize) -> Option<&Conn<S>> {
        self.entries.get(slot)?.conn.as_deref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Conn<S>> {
        self.entries.get_mut(slot)?.conn.as_deref_mut()
    }

    /// The connection in `slot`, only if it is still the one `generation` named.
    pub fn get_checked(&mut self, slot: usize, generation: u32) -> Option<&mut Conn<S>> {
        let e = self.entries.get_mut(slot)?;
        if e.generation != generation {
            return None;
        }
        e.conn.as_deref_mut()
    }

    /// The connection now in `slot`, as a later step must find it again.
    pub fn stamp(&self, slot: usize) -> Stamp {
        Stamp {
            slot,
            generation: self.generation(slot),
        }
    }

    /// Whether the connection `stamp` named is still open (not closed, its slot not taken by
    /// another since).
    pub fn holds(&self, stamp: Stamp) -> bool {
        self.entries
            .get(stamp.slot)
            .is_some_and(|e| e.generation == stamp.generation && e.conn.is_some())
    }

    pub fn generation(&self, slot: usize) -> u32 {
        self.entries.get(slot).map_or(0, |e| e.generation)
    }

    pub fn remove(&mut self, slot: usize) -> Option<Conn<S>> {
        let e = self.entries.get_mut(slot)?;
        let conn = e.conn.take()?;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(slot);
        self.open -= 1;
        Some(*conn)
    }

    pub fn len(&self) -> usize {
        self.open
    }

    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Slots in use (for sweeps).
    pub fn occupied(&self) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.conn.is_some())
            .map(|(i, _)| i)
            .collect()
    }
}
