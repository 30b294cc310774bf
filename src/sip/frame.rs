//! Stream framing (RFC 3261 §18.3, RFC 5626 §4.4.1): finds where one SIP message ends in a buffer
//! that may hold part of a message, one message, or many. Leading CRLFs are skipped, a CRLFCRLF is
//! a keep-alive ping, the header block ends at the first CRLFCRLF (found by the lexer in [`read`]'s
//! one pass, or with memchr's memmem by the stand-alone framer), and Content-Length — mandatory on
//! streams — gives the body. Returns offsets, never copies.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::header::Name;
use super::message::{Message, ParseError};
use super::scan::{self, Lines};

static HEAD_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));

/// Where a complete message lies in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// Leading CRLF bytes before the message (to be discarded).
    pub skip: usize,
    /// Length of the message itself, header block and body.
    pub len: usize,
    /// Length of the header block including its final empty line; the body starts here.
    pub head: usize,
}

impl Framed {
    /// Bytes to consume from the buffer once the message is handled.
    pub fn consumed(&self) -> usize {
        self.skip + self.len
    }

    /// The message's range in the buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.skip..self.skip + self.len
    }
}

/// The outcome of one framing attempt, in the manner of httparse's `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A whole message is in the buffer.
    Complete(Framed),
    /// A CRLFCRLF keep-alive ping of this many bytes; answer it with a single CRLF.
    Ping(usize),
    /// More bytes are needed.
    Partial,
    /// The stream cannot be framed; answer (if possible) and close the connection.
    Invalid(FrameError),
}

/// What there is when there is no whole message: the cases [`Status`] and [`Read`] share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Incomplete {
    Ping(usize),
    Partial,
    Invalid(FrameError),
}

impl From<Incomplete> for Status {
    fn from(i: Incomplete) -> Status {
        match i {
            Incomplete::Ping(n) => Status::Ping(n),
            Incomplete::Partial => Status::Partial,
            Incomplete::Invalid(e) => Status::Invalid(e),
        }
    }
}

impl From<Incomplete> for Read<'_> {
    fn from(i: Incomplete) -> Self {
        match i {
            Incomplete::Ping(n) => Read::Ping(n),
            Incomplete::Partial => Read::Partial,
            Incomplete::Invalid(e) => Read::Invalid(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    /// Over the limit, but framable: its head (`head` bytes after `skip`) is complete and its
    /// Content-Length gives its whole length `len`, so a reader can skip it and go on.
    #[error("message is larger than the {limit}-byte limit")]
    Oversized {
        limit: usize,
        skip: usize,
        head: usize,
        len: usize,
    },
    #[error("Content-Length is required on stream transports and is missing")]
    MissingContentLength,
    #[error("Content-Length is not a number")]
    BadContentLength,
    #[error("Content-Length appears more than once")]
    DuplicateContentLength,
    #[error("the first line is not a SIP/2.0 request or status line")]
    NotSip,
    #[error("a header line is malformed")]
    BadHeaderLine,
}

/// Longest first line we wait for before deciding the peer is not speaking SIP.
const MAX_START_LINE: usize = 8 * 1024;

/// Frames the next message in `buf`, which must not grow past `max` bytes per message. This is
/// the stand-alone framer; the forwarding path uses [`read`], which frames and parses in one pass.
pub fn frame(buf: &[u8], max: usize) -> Status {
    let (skip, head) = match locate_head(buf, max) {
        Ok(found) => found,
        Err(i) => return i.into(),
    };
    let msg = &buf[skip..];
    match content_length(&msg[..head]).map_err(Incomplete::Invalid) {
        Ok(body) => complete(msg, skip, head, body, max).map_or_else(Status::from, Status::Complete),
        Err(i) => i.into(),
    }
}

/// The outcome of [`read`]: a framed message, parsed or not.
// The parsed message is large (offsets of every routing header) but lives on the stack for one
// message; boxing it would put an allocation on the per-message path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Read<'a> {
    /// A whole message, parsed; `Message::buf` is exactly the message.
    Message(Framed, Message<'a>),
    /// A whole message that does not parse: answer 400 (requests) or drop it (responses), then go
    /// on with the next one.
    Unparsable(Framed, ParseError),
    /// A CRLFCRLF keep-alive ping of this many bytes; answer it with a single CRLF.
    Ping(usize),
    /// More bytes are needed.
    Partial,
    /// The stream cannot be framed; answer (if possible) and close the connection.
    Invalid(FrameError),
}

/// Frames and parses the next message in one pass over its head: the lexer finds the empty line
/// and the parser records Content-Length as it goes. A head not complete yet, or one that does
/// not parse, is framed the slow way after that pass (memmem, then parse), which tells the two
/// apart; the fuzz exercise checks both ways agree.
pub fn read(buf: &[u8], max: usize) -> Read<'_> {
    // The common case in one pass: a whole head that parses, its end found by the lexer.
    let skip = leading_crlfs(buf);
    if skip < 4 {
        let msg = &buf[skip..];
        if let Some(m) = Message::parse_stream(&msg[..msg.len().min(max)]) {
            let head = m.body_start;
            return with_body(msg, skip, head, m, max);
        }
    }
    // A partial head, one that does not parse, a ping or garbage: frame first, then parse.
    let (skip, head) = match locate_head(buf, max) {
        Ok(found) => found,
        Err(i) => return i.into(),
    };
    let msg = &buf[skip..];
    match Message::parse_head(msg, head) {
        Ok(m) => with_body(msg, skip, head, m, max),
        // Framed by its Content-Length all the same, so the next message can be read.
        Err(e) => match content_length(&msg[..head])
            .map_err(Incomplete::Invalid)
            .and_then(|body| complete(msg, skip, head, body, max))
        {
            Ok(f) => Read::Unparsable(f, e),
            Err(i) => i.into(),
        },
    }
}

/// A parsed head whose body (by its Content-Length) is whole, still arriving, or too large.
fn with_body<'a>(msg: &'a [u8], skip: usize, head: usize, mut m: Message<'a>, max: usize) -> Read<'a> {
    let Some(body) = m.content_length_value else {
        return Read::Invalid(FrameError::MissingContentLength);
    };
    match complete(msg, skip, head, body as usize, max) {
        Ok(f) => {
            m.buf = &msg[..f.len];
            Read::Message(f, m)
        }
        Err(i) => i.into(),
    }
}

/// Skips leading CRLFs and finds the end of the header block: `(skip, head length)`, or the
/// status to return when there is no complete head yet.
fn locate_head(buf: &[u8], max: usize) -> Result<(usize, usize), Incomplete> {
    let skip = leading_crlfs(buf);
    if skip >= 4 {
        return Err(Incomplete::Ping(4));
    }
    let msg = &buf[skip..];
    if msg.is_empty() || msg == b"\r" {
        // Nothing yet, or a CRLF (maybe the start of a ping, maybe a pong) with nothing after it.
        return Err(Incomplete::Partial);
    }
    if !start_line_plausible(msg) {
        return Err(Incomplete::Invalid(FrameError::NotSip));
    }
    let Some(end) = HEAD_END.find(msg) else {
        if msg.len() > max {
            return Err(Incomplete::Invalid(FrameError::TooLarge { limit: max }));
        }
        return Err(Incomplete::Partial);
    };
    let head = end + 4;
    if head > max {
        return Err(Incomplete::Invalid(FrameError::TooLarge { limit: max }));
    }
    Ok((skip, head))
}

/// The message is `head + body` bytes: complete, still arriving, or too large.
fn complete(msg: &[u8], skip: usize, head: usize, body: usize, max: usize) -> Result<Framed, Incomplete> {
    match head.checked_add(body) {
        Some(len) if len <= max && msg.len() >= len => Ok(Framed { skip, len, head }),
        Some(len) if len <= max => Err(Incomplete::Partial),
        Some(len) => Err(Incomplete::Invalid(FrameError::Oversized {
            limit: max,
            skip,
            head,
            len,
        })),
        None => Err(Incomplete::Invalid(FrameError::TooLarge { limit: max })),
    }
}

/// Counts CRLF pairs at the start of `buf`, in bytes (stopping at 4: that is already a ping).
fn leading_crlfs(buf: &[u8]) -> usize {
    let mut n = 0;
    while n < 4 && buf.len() >= n + 2 && buf[n] == b'\r' && buf[n + 1] == b'\n' {
        n += 2;
    }
    n
}

/// Checks what there is of the first line: printable, and (once the line is complete) either
/// starting `SIP/2.0 ` or ending ` SIP/2.0`. Rejects TLS records, HTTP and binary garbage early,
/// instead of buffering them up to the size limit.
fn start_line_plausible(msg: &[u8]) -> bool {
    let line_end = memchr::memchr(b'\n', msg);
    let line = match line_end {
        Some(i) => &msg[..i],
        None if msg.len() > MAX_START_LINE => return false,
        None => msg,
    };
    // The first word must be a method token or "SIP/x.y"; the parser checks the rest of the line.
    let word = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if !line[..word].iter().all(|&b| scan::is_token(b) || b == b'/') {
        return false;
    }
    if line_end.is_none() {
        return true;
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Versions other than 2.0 still frame, so the parser can answer 505 instead of a hang-up.
    let tail = &line[line.len().saturating_sub(12)..];
    line.starts_with(b"SIP/") || memchr::memmem::find(tail, b" SIP/").is_some()
}

/// The Content-Length of a complete header block (start line through the empty line). Only lines
/// that can be Content-Length (starting with `c` or `l`) are lexed; the parser checks the rest.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let first_nl = memchr::memchr(b'\n', head).ok_or(FrameError::NotSip)?;
    // The header block proper: after the start line, without the final empty line's CRLF.
    let block = &head[first_nl + 1..head.len() - 2];
    let mut found: Option<usize> = None;
    let mut pos = 0;
    while pos < block.len() {
        let line_start = pos;
        pos = memchr::memchr(b'\n', &block[pos..]).map_or(block.len(), |i| pos + i + 1);
        let line = &block[line_start..pos];
        let maybe = match line[0] {
            b'l' | b'L' => line.get(1).is_some_and(|&b| matches!(b, b':' | b' ' | b'\t')),
            b'c' | b'C' => line.len() > 14 && line[..14].eq_ignore_ascii_case(b"content-length"),
            _ => false,
        };
        if !maybe {
            continue;
        }
        // Lex from here: the iterator takes folded continuation lines into the value.
        let Some(h) = Lines::new(&block[line_start..]).next() else {
            break;
        };
        let h = h.map_err(|_| FrameError::BadHeaderLine)?;
        if Name::classify(h.name) == Name::ContentLength {
            let n = scan::parse_u32(h.value).ok_or(FrameError::BadContentLength)? as usize;
            if found.is_some_and(|prev| prev != n) {
                return Err(FrameError::DuplicateContentLength);
            }
            found = Some(n);
        }
    }
    found.ok_or(FrameError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;
    const OPTIONS: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nl: 4\r\n\r\nbody";

    #[test]
    fn one_message() {
        let st = frame(OPTIONS, MAX);
        let Status::Complete(f) = st else { panic!("{st:?}") };
        assert_eq!((f.skip, f.len, f.head), (0, OPTIONS.len(), OPTIONS.len() - 4));
    }

    #[test]
    fn every_split_point_is_partial_until_whole() {
        for cut in 0..OPTIONS.len() {
            assert_eq!(frame(&OPTIONS[..cut], MAX), Status::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn many_messages_with_crlf_between() {
        let mut buf = Vec::new();
        for _ in 0..5 {
            buf.extend_from_slice(OPTIONS);
            buf.extend_from_slice(b"\r\n");
        }
        let mut pos = 0;
        let mut seen = 0;
        while pos < buf.len() {
            match frame(&buf[pos..], MAX) {
                Status::Complete(f) => {
                    assert_eq!(&buf[pos..][f.range()], OPTIONS);
                    pos += f.consumed();
                    seen += 1;
                }
                Status::Partial => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, 5);
        assert_eq!(&buf[pos..], b"\r\n");
    }

    #[test]
    fn keepalive_ping_and_lone_crlf() {
        assert_eq!(frame(b"\r\n\r\n", MAX), Status::Ping(4));
        assert_eq!(frame(b"\r\n\r\nOPTIONS", MAX), Status::Ping(4));
        assert_eq!(frame(b"\r\n", MAX), Status::Partial);
        assert_eq!(frame(b"\r\n\r", MAX), Status::Partial);
        assert_eq!(frame(b"\r", MAX), Status::Partial);
    }

    #[test]
    fn content_length_rules() {
        let missing = b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n";
        assert_eq!(
            frame(missing, MAX),
            Status::Invalid(FrameError::MissingContentLength)
        );
        let bad = b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(frame(bad, MAX), Status::Invalid(FrameError::BadContentLength));
        let dup = b"SIP/2.0 200 OK\r\nContent-Length: 1\r\nl: 2\r\n\r\nab";
        assert_eq!(
            frame(dup, MAX),
            Status::Invalid(FrameError::DuplicateContentLength)
        );
        let folded = b"SIP/2.0 200 OK\r\nContent-Length:\r\n 2\r\n\r\nab";
        assert!(matches!(frame(folded, MAX), Status::Complete(f) if f.len == folded.len()));
    }

    #[test]
    fn size_limits() {
        assert_eq!(
            frame(OPTIONS, 20),
            Status::Invalid(FrameError::TooLarge { limit: 20 })
        );
        // Body pushes it over the limit even though the head fits.
        assert!(matches!(
            frame(OPTIONS, OPTIONS.len() - 1),
            Status::Invalid(FrameError::Oversized { limit, skip: 0, len, head })
                if limit == OPTIONS.len() - 1 && len == OPTIONS.len() && head == OPTIONS.len() - 4
        ));
        let huge = b"SIP/2.0 200 OK\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(frame(huge, MAX), Status::Invalid(FrameError::BadContentLength));
        let big = b"SIP/2.0 200 OK\r\nContent-Length: 4000000000\r\n\r\n";
        assert!(matches!(
            frame(big, MAX),
            Status::Invalid(FrameError::Oversized { len, .. }) if len > 4_000_000_000
        ));
    }

    #[test]
    fn garbage_is_refused_early() {
        assert_eq!(
            frame(&[0x16, 0x03, 0x01, 0x00], MAX),
            Status::Invalid(FrameError::NotSip)
        );
        assert_eq!(
            frame(b"GET / HTTP/1.1\r\n", MAX),
            Status::Invalid(FrameError::NotSip)
        );
        assert_eq!(
            frame(b"\x00\x01garbage", MAX),
            Status::Invalid(FrameError::NotSip)
        );
        assert_eq!(frame(b"INVITE sip:x SIP/2.0", MAX), Status::Partial);
        assert_eq!(
            frame(&[b'A'; MAX_START_LINE + 1], MAX),
            Status::Invalid(FrameError::NotSip)
        );
    }
}
