//! An in-memory [`Wire`]: what the test's peer sent waits in `inbound` until the core reads it,
//! what the core writes goes to `sent` as far as the peer's `window` lets it (a slow reader has
//! a small one) and waits in `pending` beyond, up to the core's limit. The handshake is done at
//! the first read.

use std::io::IoSlice;

use rustls::pki_types::CertificateDer;

use crate::tls::wire::{Ended, MAX_PENDING, ReadBuf, StreamError, Wire};

pub struct Pipe {
    pub inbound: Vec<u8>,
    rbuf: ReadBuf,
    pending: Vec<u8>,
    /// What the peer has taken.
    pub sent: Vec<u8>,
    /// How many more bytes the peer takes (`usize::MAX`: all).
    pub window: usize,
    max_pending: usize,
    handshaking: bool,
    more: bool,
    pub ended: Ended,
    ws: bool,
    /// The core closed it (close_notify).
    pub closed_by_us: bool,
    /// The handshake agrees on TLS 1.3.
    pub tls13: bool,
    /// What the next read after the handshake fails with (a peer's TLS alert, say).
    pub fail: Option<rustls::Error>,
}

impl Pipe {
    pub fn new() -> Pipe {
        Pipe {
            inbound: Vec::new(),
            rbuf: ReadBuf::default(),
            pending: Vec::new(),
            sent: Vec::new(),
            window: usize::MAX,
            max_pending: MAX_PENDING,
            handshaking: true,
            more: false,
            ended: Ended::default(),
            ws: false,
            closed_by_us: false,
            tls13: false,
            fail: None,
        }
    }

    fn write_raw(&mut self, head: &[u8], slices: &[IoSlice<'_>]) -> Result<(), StreamError> {
        let total = head.len() + slices.iter().map(|s| s.len()).sum::<usize>();
        if self.pending.len() + total > self.max_pending {
            return Err(StreamError::Backlog);
        }
        self.pending.extend_from_slice(head);
        for s in slices {
            self.pending.extend_from_slice(s);
        }
        self.take();
        Ok(())
    }

    fn take(&mut self) {
        let n = self.pending.len().min(self.window);
        self.sent.extend(self.pending.drain(..n));
        self.window -= n;
    }
}

impl Wire for Pipe {
    fn read(&mut self, limit: usize) -> Result<usize, StreamError> {
        if std::mem::replace(&mut self.handshaking, false) {
            return Ok(0);
        }
        if let Some(e) = self.fail.take() {
            return Err(StreamError::Tls(e));
        }
        let room = limit.saturating_sub(self.rbuf.filled().len());
        let n = room.min(self.inbound.len());
        self.rbuf.extend(&self.inbound[..n]);
        self.inbound.drain(..n);
        self.more = !self.inbound.is_empty();
        Ok(n)
    }
    fn more(&self) -> bool {
        self.more
    }
    fn ended(&self) -> Ended {
        self.ended
    }
    fn read_to_eof(&mut self, _: bool) {}
    fn rbuf(&mut self) -> &mut ReadBuf {
        &mut self.rbuf
    }
    fn write(&mut self, slices: &[IoSlice<'_>]) -> Result<(), StreamError> {
        // Once upgraded, a message is one text frame (the contract `TlsStream` keeps too).
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let (head, n) = crate::ws::frame::header(crate::ws::frame::OP_TEXT, total);
        let head = if self.ws { &head[..n] } else { &[][..] };
        self.write_raw(head, slices)
    }
    fn write_control(&mut self, opcode: u8, payload: &[u8]) -> Result<(), StreamError> {
        let (head, n) = crate::ws::frame::header(opcode, payload.len());
        self.write_raw(&head[..n], &[IoSlice::new(payload)])
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        self.take();
        Ok(())
    }
    fn queued(&self) -> usize {
        self.pending.len()
    }
    fn set_max_pending(&mut self, n: usize) {
        self.max_pending = n;
    }
    fn wants_write(&self) -> bool {
        false
    }
    fn is_handshaking(&self) -> bool {
        self.handshaking
    }
    fn ws(&self) -> bool {
        self.ws
    }
    fn set_ws(&mut self, yes: bool) {
        self.ws = yes;
    }
    fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &[]
    }
    fn sni(&self) -> Option<&str> {
        None
    }
    fn tls13(&self) -> bool {
        self.tls13
    }
    fn close(&mut self) {
        self.closed_by_us = true;
    }
}
