//! A connection as a worker's core sees it, with no socket in sight: a [`ReadBuf`] of plaintext to
//! frame in place, writes of plaintext (one WebSocket text frame per message once upgraded), how
//! much waits unsent, and what the handshake showed. [`super::stream::TlsStream`] is the real one
//! (rustls over a mio socket); the core's virtual-time tests use an in-memory one. Keeping the
//! trait here, apart from both, is what lets the core be compiled and tested without mio.

use std::io::{self, IoSlice};

use rustls::pki_types::CertificateDer;

/// Decrypted bytes waiting for framing. It holds memory only while it holds bytes: the first
/// bytes reserve room for a typical message or two, and a buffer emptied by framing is released,
/// so an idle connection keeps no read buffer at all.
#[derive(Debug, Default)]
pub struct ReadBuf {
    data: Vec<u8>,
}

const MIN_READ_BUF: usize = 4 * 1024;

impl ReadBuf {
    pub fn filled(&self) -> &[u8] {
        &self.data
    }

    /// The filled bytes, to decode in place (WebSocket frames are unmasked where they lie).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if self.data.capacity() == 0 {
            // Room for a typical SIP message or two, so a message spread over several TLS
            // records does not grow the buffer record by record.
            self.data.reserve(bytes.len().max(MIN_READ_BUF));
        }
        self.data.extend_from_slice(bytes);
    }

    /// Drops the first `n` filled bytes; an emptied buffer is released.
    pub fn consume(&mut self, n: usize) {
        if n >= self.data.len() {
            *self = ReadBuf::default();
        } else {
            self.data.drain(..n);
        }
    }
}

/// Plaintext bytes queued for a peer that is not reading, beyond which it is cut off.
pub const MAX_PENDING: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("peer is not reading: more bytes queued than its limit")]
    Backlog,
}

/// What the peer did to the connection, as the last read saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    /// The peer closed (TCP EOF or close_notify).
    pub closed: bool,
    /// ... without a TLS close_notify.
    pub unclean: bool,
}

/// One connection's plaintext side.
pub trait Wire {
    /// Reads what is available into the read buffer until it holds `limit` bytes (then
    /// [`Wire::more`] says data is still waiting); the number of plaintext bytes added.
    fn read(&mut self, limit: usize) -> Result<usize, StreamError>;
    /// Whether the last read stopped at its limit with data still waiting.
    fn more(&self) -> bool;
    /// How the peer ended the connection, if it did.
    fn ended(&self) -> Ended;
    /// The event loop saw the peer close: read until the end even after a short read.
    fn read_to_eof(&mut self, yes: bool);
    fn rbuf(&mut self) -> &mut ReadBuf;
    /// Queues a message given as slices (on a WebSocket, as one text frame).
    fn write(&mut self, slices: &[IoSlice<'_>]) -> Result<(), StreamError>;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.write(&[IoSlice::new(bytes)])
    }
    /// Queues a WebSocket control frame (ping, pong, close) with `payload`.
    fn write_control(&mut self, opcode: u8, payload: &[u8]) -> Result<(), StreamError>;
    /// Sends what can be sent now.
    fn flush(&mut self) -> Result<(), StreamError>;
    /// Plaintext queued and not yet taken by the peer's side (what a slow reader makes grow).
    fn queued(&self) -> usize;
    /// Most plaintext queued before a write fails with [`StreamError::Backlog`].
    fn set_max_pending(&mut self, n: usize);
    /// Whether the transport has bytes for the peer (the event loop then waits for writable).
    fn wants_write(&self) -> bool;
    fn is_handshaking(&self) -> bool;
    /// Whether writes are WebSocket frames (set once the upgrade is answered).
    fn ws(&self) -> bool;
    fn set_ws(&mut self, yes: bool);
    /// The peer's certificate chain, leaf first (empty when it showed none).
    fn peer_certificates(&self) -> &[CertificateDer<'static>];
    /// The server name a client asked for.
    fn sni(&self) -> Option<&str>;
    /// Whether the handshake agreed on TLS 1.3.
    fn tls13(&self) -> bool;
    /// Starts a clean close (close_notify) and sends what it can.
    fn close(&mut self);
}
