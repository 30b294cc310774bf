//! WebSocket frames from a client (RFC 6455 §5), decoded in place in the connection's read
//! buffer: every client frame must be masked and is unmasked where it lies; a message in one
//! frame is handed on as the slice it occupies (no copy); the fragments of a longer message are
//! moved together behind its first one. Control frames (ping, pong, close) may come between
//! fragments. Anything the RFC forbids ends in a close code for the caller to send.

use std::ops::Range;

/// Close codes siplb sends (RFC 6455 §7.4.1).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// What the next bytes of the buffer hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole data message (one SIP message), unmasked, at `range` of the buffer.
    Message { range: Range<usize>, text: bool },
    /// A ping: answer a pong with the payload at `range`.
    Ping(Range<usize>),
    /// A pong (ignored).
    Pong,
    /// The client closes with `code` (none given: `None`); answer the close and end.
    Close(Option<u16>),
    /// More bytes are needed.
    Partial,
    /// A protocol violation: send a close with this code and end.
    Fail(u16, &'static str),
}

/// A fragmented message being put together: its payload so far at `start..end`.
#[derive(Debug, Clone, Copy)]
struct Frag {
    text: bool,
    start: usize,
    end: usize,
}

/// The decoding state of one connection; positions are offsets into its read buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    max: usize,
    /// Decoding a client's frames (which must be masked); a server's are never masked.
    from_client: bool,
    /// Where the next frame starts.
    pos: usize,
    frag: Option<Frag>,
}

impl Decoder {
    /// `max`: the largest message (`--max-message-bytes`).
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max,
            from_client: true,
            pos: 0,
            frag: None,
        }
    }

    /// The client side's decoder of a server's (unmasked) frames, for sipload and tests.
    pub fn of_server(max: usize) -> Decoder {
        Decoder {
            from_client: false,
            ..Decoder::new(max)
        }
    }

    /// How many bytes from the start of the buffer the caller may drop: everything before an
    /// unfinished message and the next frame.
    pub fn consumable(&self) -> usize {
        self.frag.map_or(self.pos, |f| f.start)
    }

    /// The caller dropped `n` (at most [`Decoder::consumable`]) bytes from the buffer's start.
    pub fn consumed(&mut self, n: usize) {
        self.pos -= n;
        if let Some(f) = &mut self.frag {
            f.start -= n;
            f.end -= n;
        }
    }

    /// Decodes frames of `buf` (the connection's whole unconsumed read buffer) up to the next
    /// event; fragments that do not finish a message are absorbed on the way (in a loop: a flood
    /// of tiny fragments costs no stack).
    pub fn next(&mut self, buf: &mut [u8]) -> Event {
        loop {
            if let Some(e) = self.frame(buf) {
                return e;
            }
        }
    }

    /// One frame: its event, or `None` for a fragment that does not end its message.
    fn frame(&mut self, buf: &mut [u8]) -> Option<Event> {
        let raw = &buf[self.pos.min(buf.len())..];
        let (Some(&b0), Some(&b1)) = (raw.first(), raw.get(1)) else {
            return Some(Event::Partial);
        };
        let (fin, rsv, op) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0F);
        if rsv != 0 {
            return Some(Event::Fail(
                code::PROTOCOL,
                "reserved bits set (no extension was agreed)",
            ));
        }
        let masked = b1 & 0x80 != 0;
        if masked != self.from_client {
            return Some(Event::Fail(
                code::PROTOCOL,
                if self.from_client {
                    "client frames must be masked"
                } else {
                    "server frames must not be masked"
                },
            ));
        }
        let control = op & 0x8 != 0;
        if !matches!(op, OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
            return Some(Event::Fail(code::PROTOCOL, "unknown opcode"));
        }
        let (len, head) = match b1 & 0x7F {
            126 => match raw.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Some(Event::Partial),
            },
            127 => match raw.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    (u64::from_be_bytes(a), 10)
                }
                None => return Some(Event::Partial),
            },
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Some(Event::Fail(
                code::PROTOCOL,
                "a control frame must be whole and at most 125 bytes",
            ));
        }
        let so_far = self.frag.map_or(0, |f| f.end - f.start) as u64;
        if !control && so_far.saturating_add(len) > self.max as u64 {
            return Some(Event::Fail(code::TOO_BIG, "message over --max-message-bytes"));
        }
        match (op, self.frag.is_some()) {
            (OP_CONT, false) => return Some(Event::Fail(code::PROTOCOL, "continuation without a message")),
            (OP_TEXT | OP_BINARY, true) => {
                return Some(Event::Fail(
                    code::PROTOCOL,
                    "a new message inside a fragmented one",
                ));
            }
            _ => {}
        }
        let len = len as usize;
        let start = self.pos + head + if masked { 4 } else { 0 };
        if buf.len() < start + len {
            return Some(Event::Partial);
        }
        if masked {
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&buf[start - 4..start]);
            unmask(&mut buf[start..start + len], mask);
        }
        self.pos = start + len;
        let payload = start..start + len;
        match op {
            OP_PING => Some(Event::Ping(payload)),
            OP_PONG => Some(Event::Pong),
            OP_CLOSE => Some(close(&buf[payload])),
            _ => self.data(buf, op, fin, payload),
        }
    }

    /// A data frame: a whole message, or a fragment put behind the ones before it.
    fn data(&mut self, buf: &mut [u8], op: u8, fin: bool, payload: Range<usize>) -> Option<Event> {
        let (text, range) = match self.frag.take() {
            None => (op == OP_TEXT, payload),
            Some(mut f) => {
                let n = payload.len();
                buf.copy_within(payload, f.end);
                f.end += n;
                (f.text, f.start..f.end)
            }
        };
        if !fin {
            self.frag = Some(Frag {
                text,
                start: range.start,
                end: range.end,
            });
            return None;
        }
        if text && std::str::from_utf8(&buf[range.clone()]).is_err() {
            return Some(Event::Fail(
                code::INVALID_DATA,
                "a text message that is not UTF-8",
            ));
        }
        Some(Event::Message { range, text })
    }
}

/// A close frame's payload: nothing, or a valid code and a UTF-8 reason.
fn close(payload: &[u8]) -> Event {
    match payload {
        [] => Event::Close(None),
        [_] => Event::Fail(code::PROTOCOL, "a close frame with a one-byte payload"),
        [a, b, reason @ ..] => {
            let c = u16::from_be_bytes([*a, *b]);
            let valid = matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                Event::Fail(code::PROTOCOL, "an invalid close code")
            } else if std::str::from_utf8(reason).is_err() {
                Event::Fail(code::INVALID_DATA, "a close reason that is not UTF-8")
            } else {
                Event::Close(Some(c))
            }
        }
    }
}

/// XORs `data` with the repeating 4-byte `mask`, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The header of a server frame (never masked) with `opcode` and a payload of `len` bytes:
/// the bytes, and how many of them are used.
pub fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// A client frame (masked with `mask`), as a test or load client sends it.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (mut h, n) = header(opcode, payload.len());
    if !fin {
        h[0] &= 0x7F;
    }
    h[1] |= 0x80;
    let mut out = Vec::with_capacity(n + 4 + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Every event of `bytes`, with the bytes its range held when it came (a later fragment
    /// may be moved over a ping's payload once the ping is answered).
    fn events_with_payloads(bytes: &[u8], max: usize) -> Vec<(Event, Vec<u8>)> {
        let mut buf = bytes.to_vec();
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        loop {
            let e = d.next(&mut buf);
            let payload = match &e {
                Event::Message { range, .. } | Event::Ping(range) => buf[range.clone()].to_vec(),
                _ => Vec::new(),
            };
            let end = matches!(e, Event::Partial | Event::Fail(..) | Event::Close(_));
            out.push((e, payload));
            if end {
                return out;
            }
        }
    }

    fn events(bytes: &[u8], max: usize) -> (Vec<Event>, Vec<u8>) {
        let ev = events_with_payloads(bytes, max);
        let mut buf = bytes.to_vec();
        let mut d = Decoder::new(max);
        while !matches!(
            d.next(&mut buf),
            Event::Partial | Event::Fail(..) | Event::Close(_)
        ) {}
        (ev.into_iter().map(|(e, _)| e).collect(), buf)
    }

    #[test]
    fn the_rfc_6455_examples() {
        // §5.7: a single-frame masked text message "Hello".
        let hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (ev, buf) = events(&hello, 100);
        assert_eq!(
            ev[0],
            Event::Message {
                range: 6..11,
                text: true
            }
        );
        assert_eq!(&buf[6..11], b"Hello");
        assert_eq!(client_frame(OP_TEXT, true, b"Hello", M), hello);
        assert_eq!(header(OP_TEXT, 5).0[..2], [0x81, 0x05]);
        assert_eq!(header(OP_BINARY, 256).0[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(
            header(OP_BINARY, 65536).0[..10],
            [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn fragments_with_a_ping_between_come_out_as_one_message() {
        let mut bytes = client_frame(OP_TEXT, false, b"INVITE sip:", M);
        bytes.extend(client_frame(OP_PING, true, b"are you there", M));
        bytes.extend(client_frame(OP_CONT, false, b"bob@pool", [1, 2, 3, 4]));
        bytes.extend(client_frame(OP_CONT, true, b".test SIP/2.0", [9, 9, 9, 9]));
        bytes.extend(client_frame(OP_BINARY, true, b"next", M));
        let ev = events_with_payloads(&bytes, 1000);
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert!(matches!(ev[0].0, Event::Ping(_)), "{ev:?}");
        assert_eq!(ev[0].1, b"are you there");
        assert!(matches!(ev[1].0, Event::Message { text: true, .. }), "{ev:?}");
        assert_eq!(ev[1].1, b"INVITE sip:bob@pool.test SIP/2.0");
        assert!(matches!(ev[2].0, Event::Message { text: false, .. }), "{ev:?}");
        assert_eq!(ev[2].1, b"next");
        assert_eq!(ev[3].0, Event::Partial);
    }

    #[test]
    fn split_at_every_byte_it_waits_then_decodes_the_same() {
        let mut bytes = client_frame(OP_TEXT, false, &[b'a'; 130], M);
        bytes.extend(client_frame(OP_CONT, true, &[b'b'; 70_000], M));
        for cut in 0..bytes.len() {
            if cut % 997 != 0 && cut > 200 && cut < bytes.len() - 200 {
                continue; // every byte of the headers, a sample of the payload
            }
            let mut buf = bytes[..cut].to_vec();
            let mut d = Decoder::new(100_000);
            let first = d.next(&mut buf);
            assert!(matches!(first, Event::Partial), "{cut}: {first:?}");
            // At most the first fragment's header may go before the message is whole.
            assert!(d.consumable() <= 8, "{cut}: {}", d.consumable());
            buf.extend_from_slice(&bytes[cut..]);
            match d.next(&mut buf) {
                Event::Message { range, .. } => {
                    assert_eq!(range.len(), 70_130);
                    assert!(buf[range.clone()][..130].iter().all(|&b| b == b'a'));
                    assert!(buf[range][130..].iter().all(|&b| b == b'b'));
                }
                e => panic!("{cut}: {e:?}"),
            }
            assert_eq!(d.consumable(), bytes.len());
        }
    }

    #[test]
    fn consuming_keeps_a_fragmented_message_in_place() {
        let mut buf = client_frame(OP_TEXT, true, b"one", M);
        let first = buf.len();
        buf.extend(client_frame(OP_TEXT, false, b"tw", M));
        let mut d = Decoder::new(100);
        assert!(matches!(d.next(&mut buf), Event::Message { .. }));
        assert_eq!(d.next(&mut buf), Event::Partial);
        // The caller drops what it handled: the first message and the fragment's header, not the
        // fragment.
        let n = d.consumable();
        assert_eq!(n, first + 6);
        buf.drain(..n);
        d.consumed(n);
        buf.extend(client_frame(OP_CONT, true, b"o", M));
        let Event::Message { range, .. } = d.next(&mut buf) else {
            panic!()
        };
        assert_eq!(&buf[range], b"two");
        assert_eq!(d.consumable(), buf.len());
    }

    #[test]
    fn violations_get_their_close_code() {
        let text = |p: &[u8]| client_frame(OP_TEXT, true, p, M);
        let mut unmasked = text(b"hi");
        unmasked[1] &= 0x7F;
        let mut rsv = text(b"hi");
        rsv[0] |= 0x40;
        let mut op3 = text(b"hi");
        op3[0] = 0x83;
        let mut long_ping = client_frame(OP_PING, true, &[0; 126], M);
        long_ping[0] = 0x89;
        let mut two_texts = client_frame(OP_TEXT, false, b"a", M);
        two_texts.extend(text(b"b"));
        for (bytes, want) in [
            (unmasked, code::PROTOCOL),
            (rsv, code::PROTOCOL),
            (op3, code::PROTOCOL),
            (client_frame(OP_PING, false, b"x", M), code::PROTOCOL),
            (long_ping, code::PROTOCOL),
            (client_frame(OP_CONT, true, b"x", M), code::PROTOCOL),
            (two_texts, code::PROTOCOL),
            (text(&[0xff, 0xfe]), code::INVALID_DATA),
            (text(&[b'x'; 101]), code::TOO_BIG),
            (client_frame(OP_CLOSE, true, &[3], M), code::PROTOCOL),
            (client_frame(OP_CLOSE, true, &[0x03, 0xEC], M), code::PROTOCOL), // 1004
            (
                client_frame(OP_CLOSE, true, &[0x03, 0xE8, 0xff], M),
                code::INVALID_DATA,
            ),
        ] {
            let (ev, _) = events(&bytes, 100);
            assert!(
                matches!(ev.last(), Some(Event::Fail(c, _)) if *c == want),
                "{bytes:02x?}: {ev:?}"
            );
        }
        // Too big is known from the header, before the payload arrives.
        let big = client_frame(OP_BINARY, true, &[0; 5000], M);
        assert!(matches!(
            events(&big[..8], 100).0[0],
            Event::Fail(code::TOO_BIG, _)
        ));
        // Fragments that add up to too much.
        let mut frags = client_frame(OP_TEXT, false, &[b'a'; 60], M);
        frags.extend(client_frame(OP_CONT, true, &[b'a'; 60], M));
        assert!(matches!(
            events(&frags, 100).0.last(),
            Some(Event::Fail(code::TOO_BIG, _))
        ));
        // A good close.
        let (ev, _) = events(&client_frame(OP_CLOSE, true, &[0x03, 0xE8, b'o', b'k'], M), 100);
        assert_eq!(ev, vec![Event::Close(Some(1000))]);
        assert_eq!(
            events(&client_frame(OP_CLOSE, true, b"", M), 100).0,
            vec![Event::Close(None)]
        );
    }
}
