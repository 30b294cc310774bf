//! A non-blocking TLS connection on a mio socket, in the manner of rustls' `tlsserver-mio`
//! example: read until WouldBlock, let rustls decrypt, keep the plaintext in one growable read
//! buffer that framing reads in place, and derive the poll interest from what rustls wants.
//! Writes go through rustls' `write_vectored`; what rustls will not take yet (its buffer limit)
//! waits in a local queue, which is capped so a peer that stops reading cannot grow us.

use std::io::{self, BufRead, IoSlice, Read, Write};

use rustls::pki_types::CertificateDer;

use mio::Interest;
use mio::net::TcpStream;
use rustls::Connection;

use super::wire::{Ended, Wire};
pub use super::wire::{MAX_PENDING, ReadBuf, StreamError};

pub struct TlsStream {
    pub sock: TcpStream,
    pub tls: Connection,
    /// Decrypted bytes not yet consumed by framing.
    pub rbuf: ReadBuf,
    /// Plaintext rustls did not accept yet.
    pending: Vec<u8>,
    /// The peer closed (TCP EOF or close_notify).
    pub closed: bool,
    /// The peer closed TCP without a TLS close_notify.
    pub unclean_close: bool,
    /// The last `read` stopped at its limit with data still waiting.
    pub more: bool,
    /// Most plaintext queued before a write fails with `Backlog` (default [`MAX_PENDING`]).
    pub max_pending: usize,
    /// Read until WouldBlock or EOF even after a short read: the poll event said the peer
    /// closed, and its FIN may wait behind the data.
    pub read_to_eof: bool,
    /// A WebSocket connection past its upgrade: every message written is one text frame.
    pub ws: bool,
}

/// The socket as rustls reads it, noting whether a read came back shorter than the room offered:
/// then the kernel had nothing more at that moment, and with edge-triggered polling any byte that
/// arrives later brings a new readiness event — so the read that would only return WouldBlock
/// can be skipped (one syscall per wake-up instead of two).
struct ShortRead<'a> {
    sock: &'a mut TcpStream,
    drained: bool,
}

impl Read for ShortRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.drained = n < buf.len();
        Ok(n)
    }
}

impl TlsStream {
    pub fn new(sock: TcpStream, tls: Connection) -> TlsStream {
        TlsStream {
            sock,
            tls,
            rbuf: ReadBuf::default(),
            pending: Vec::new(),
            closed: false,
            unclean_close: false,
            more: false,
            max_pending: MAX_PENDING,
            read_to_eof: false,
            ws: false,
        }
    }

    /// Reads what is available into `rbuf`, until the socket is drained (a short read or
    /// WouldBlock, see [`ShortRead`]) or until `rbuf` holds `limit` bytes (then `more` is set:
    /// call again once the buffer has been consumed, since with edge-triggered polling no new
    /// event will come for data already waiting). Plaintext is drained after every batch of
    /// records, because rustls stops reading once its own plaintext buffer is full. Returns the
    /// number of plaintext bytes added.
    pub fn read(&mut self, limit: usize) -> Result<usize, StreamError> {
        let before = self.rbuf.filled().len();
        self.more = false;
        loop {
            if self.rbuf.filled().len() >= limit {
                self.more = true;
                return Ok(self.rbuf.filled().len() - before);
            }
            let mut sock = ShortRead {
                sock: &mut self.sock,
                drained: false,
            };
            match self.tls.read_tls(&mut sock) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(_) => {
                    let drained = sock.drained && !self.read_to_eof;
                    self.tls.process_new_packets()?;
                    self.drain_plaintext(limit)?;
                    if drained {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.drain_plaintext(limit)?;
        Ok(self.rbuf.filled().len() - before)
    }

    /// Moves decrypted bytes from rustls into `rbuf`, a chunk (at most a TLS record) at a time,
    /// allocating nothing when there are none.
    fn drain_plaintext(&mut self, limit: usize) -> Result<(), StreamError> {
        loop {
            if self.rbuf.filled().len() >= limit {
                self.more = true;
                return Ok(());
            }
            let mut reader = self.tls.reader();
            match reader.fill_buf() {
                // The peer's close_notify, after everything it sent.
                Ok([]) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(chunk) => {
                    let n = chunk.len();
                    self.rbuf.extend(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // TCP closed without close_notify: what arrived before still counts (a peer
                // that answers and hangs up at once must have its answer delivered).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.closed = true;
                    self.unclean_close = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Drops the first `n` bytes of the read buffer (the messages handled).
    pub fn consume(&mut self, n: usize) {
        self.rbuf.consume(n);
    }

    /// Queues a message given as slices (the rewritten original plus our inserts); on a
    /// WebSocket, as one text frame (its header written in the same vectored write).
    pub fn write(&mut self, slices: &[IoSlice<'_>]) -> Result<(), StreamError> {
        if !self.ws {
            return self.write_raw(slices);
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let (head, n) = crate::ws::frame::header(crate::ws::frame::OP_TEXT, total);
        let mut framed = [IoSlice::new(&[]); crate::sip::rewrite::MAX_SLICES + 1];
        if slices.len() < framed.len() {
            framed[0] = IoSlice::new(&head[..n]);
            framed[1..=slices.len()].copy_from_slice(slices);
            return self.write_raw(&framed[..=slices.len()]);
        }
        self.write_raw(&[IoSlice::new(&head[..n])])?;
        self.write_raw(slices)
    }

    /// Queues a WebSocket control frame (pong, close) with `payload`.
    pub fn write_control(&mut self, opcode: u8, payload: &[u8]) -> Result<(), StreamError> {
        let (head, n) = crate::ws::frame::header(opcode, payload.len());
        self.write_raw(&[IoSlice::new(&head[..n]), IoSlice::new(payload)])
    }

    /// Queues bytes as they are (the HTTP upgrade answer, or anything on a plain TLS stream).
    pub fn write_raw(&mut self, slices: &[IoSlice<'_>]) -> Result<(), StreamError> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut done = 0;
        if self.pending.is_empty() {
            done = self.tls.writer().write_vectored(slices)?;
        }
        if done < total {
            if self.pending.len() + total - done > self.max_pending {
                return Err(StreamError::Backlog);
            }
            // Keep the rest, in order, after whatever is already waiting.
            let mut skip = done;
            for s in slices {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                self.pending.extend_from_slice(&s[skip..]);
                skip = 0;
            }
        }
        Ok(())
    }

    /// Plaintext waiting for room in rustls (what a slow reader makes grow).
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.write(&[IoSlice::new(bytes)])
    }

    /// Sends what rustls has ready; moves queued plaintext into rustls as room appears.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        loop {
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.pending.is_empty() {
                return Ok(());
            }
            let n = self.tls.writer().write(&self.pending)?;
            if n == 0 {
                return Ok(());
            }
            self.pending.drain(..n);
        }
    }

    /// What to poll for: always readable (to see the peer close), writable while rustls has
    /// bytes for the socket.
    pub fn interest(&self) -> Interest {
        if self.tls.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Starts a clean TLS close (close_notify); the caller flushes and drops.
    pub fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
    }
}

impl Wire for TlsStream {
    fn read(&mut self, limit: usize) -> Result<usize, StreamError> {
        TlsStream::read(self, limit)
    }
    fn more(&self) -> bool {
        self.more
    }
    fn ended(&self) -> Ended {
        Ended {
            closed: self.closed,
            unclean: self.unclean_close,
        }
    }
    fn read_to_eof(&mut self, yes: bool) {
        self.read_to_eof = yes;
    }
    fn rbuf(&mut self) -> &mut ReadBuf {
        &mut self.rbuf
    }
    fn write(&mut self, slices: &[IoSlice<'_>]) -> Result<(), StreamError> {
        TlsStream::write(self, slices)
    }
    fn write_control(&mut self, opcode: u8, payload: &[u8]) -> Result<(), StreamError> {
        TlsStream::write_control(self, opcode, payload)
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        TlsStream::flush(self)
    }
    fn queued(&self) -> usize {
        TlsStream::queued(self)
    }
    fn set_max_pending(&mut self, n: usize) {
        self.max_pending = n;
    }
    fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }
    fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }
    fn ws(&self) -> bool {
        self.ws
    }
    fn set_ws(&mut self, yes: bool) {
        self.ws = yes;
    }
    fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        self.tls.peer_certificates().unwrap_or(&[])
    }
    fn sni(&self) -> Option<&str> {
        match &self.tls {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }
    fn tls13(&self) -> bool {
        self.tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
    }
    fn close(&mut self) {
        TlsStream::close(self)
    }
}
