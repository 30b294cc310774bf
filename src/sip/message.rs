//! Parsing a framed message into borrowed views: the start line and the headers routing needs,
//! recorded as offsets into the message bytes. One pass over the header lines, no allocation.
//! Syntax errors come back as [`ParseError`] with a reason fit for a 400's reason phrase; missing
//! mandatory headers are reported separately by [`Message::missing`] so the caller can answer.

use std::ops::Range;

use super::addr::NameAddr;
use super::header::Name;
use super::method::Method;
use super::scan::{self, LineError, Lines};
use super::via::{Via, ViaError};

/// Headers accepted in one message before it is refused (a cap against header floods).
pub const MAX_HEADERS: usize = 256;
/// Longest header field accepted (folded lines included).
pub const MAX_LINE: usize = 16 * 1024;

/// A byte range inside the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Framing caps messages far below 4 GiB (`--max-message-bytes` is a u32-sized limit).
        debug_assert!(end <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// Where one header field lies: the whole line (with CRLF and folds), its value, and its first
/// comma-separated value. For list headers (Via, Route, Record-Route, Path, Contact) `next` is the
/// start of the second value on the same line, which is what popping the top value needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Field {
    pub line: Span,
    pub value: Span,
    pub top: Span,
    pub next: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: Method<'a>, uri: &'a [u8] },
    Response { code: u16, reason: &'a [u8] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Malformed Start Line")]
    BadStartLine,
    #[error("Version Not Supported")]
    BadVersion,
    #[error("Bad Status Code")]
    BadStatusCode,
    #[error("Malformed Header Line")]
    BadHeaderLine,
    #[error("Header Folding Without Header")]
    OrphanContinuation,
    #[error("Line Not Ended By CRLF")]
    BareLf,
    #[error("Too Many Headers")]
    TooManyHeaders,
    #[error("Header Line Too Long")]
    LineTooLong,
    #[error("Duplicate {0} Header")]
    Duplicate(&'static str),
    #[error("Bad Max-Forwards")]
    BadMaxForwards,
    #[error("Bad CSeq")]
    BadCSeq,
    #[error("Bad Content-Length")]
    BadContentLength,
    #[error("CSeq Method Does Not Match")]
    CSeqMismatch,
    #[error("Bad Via")]
    BadVia,
    #[error("Empty {0} Header")]
    Empty(&'static str),
    /// A control character other than HTAB in a header line (RFC 3261 §25.1 allows none); `line`
    /// is where that header line starts, so an answer can name it ([`ParseError::reason`]).
    #[error("Control Character In Header")]
    Control { line: u32 },
}

impl ParseError {
    /// The reason phrase of a 400 for this error in `msg`: as `Display`, with the header named
    /// for a control character.
    pub fn reason(&self, msg: &[u8]) -> String {
        match *self {
            ParseError::Control { line } => {
                let rest = msg.get(line as usize..).unwrap_or_default();
                let name = rest
                    .iter()
                    .position(|&b| b == b':' || b < 0x21 || b == 0x7f)
                    .map_or(&rest[..0], |n| &rest[..n.min(64)]);
                format!("Control Character In Header {}", String::from_utf8_lossy(name))
            }
            ref e => e.to_string(),
        }
    }
}

/// Why a syntactically valid request cannot be forwarded; `Display` is a 400 reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Missing {0} Header")]
    Missing(&'static str),
    #[error("Malformed Via Header")]
    Via(ViaError),
    #[error("Malformed {0} Header")]
    Malformed(&'static str),
}

impl From<LineError> for ParseError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::Malformed => ParseError::BadHeaderLine,
            LineError::OrphanContinuation => ParseError::OrphanContinuation,
            LineError::BareLf => ParseError::BareLf,
        }
    }
}

/// A parsed SIP message: views into `buf`, which is exactly one framed message.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub buf: &'a [u8],
    pub start: StartLine<'a>,
    /// Offset of the first header line (just after the start line's CRLF).
    pub headers_start: usize,
    /// Offset of the body (just after the empty line).
    pub body_start: usize,
    pub via: Option<Field>,
    /// Number of Via values in the whole message.
    pub via_count: u32,
    pub route: Option<Field>,
    /// The second Route line, when there is one: where the second Route value lies if the first
    /// line holds only one (popping siplb's double Record-Route needs it).
    pub route_line2: Option<Field>,
    pub record_route: Option<Field>,
    pub path: Option<Field>,
    pub contact: Option<Field>,
    pub max_forwards: Option<(Field, u32)>,
    pub call_id: Option<Field>,
    pub from: Option<Field>,
    pub to: Option<Field>,
    pub cseq: Option<(Field, u32, Method<'a>)>,
    pub content_length: Option<Field>,
    /// Content-Length as a number (framing reads it from here).
    pub content_length_value: Option<u32>,
    pub header_count: usize,
}

impl<'a> Message<'a> {
    /// Parses one framed message (`buf` from the first byte of the start line through the body).
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let head = match memchr::memmem::find(buf, b"\r\n\r\n") {
            Some(i) => i + 4,
            // A head cut short: take everything as header lines.
            None => buf.len(),
        };
        Message::parse_head(buf, head)
    }

    /// Parses a message whose header block (start line through the empty line) is the first
    /// `head` bytes of `buf`.
    pub fn parse_head(buf: &'a [u8], head: usize) -> Result<Message<'a>, ParseError> {
        let mut m = Message::start(buf)?;
        m.body_start = head.max(m.headers_start).min(buf.len());
        let block_end = m.body_start.saturating_sub(2).max(m.headers_start);
        m.scan_headers(Lines::new(&buf[m.headers_start..block_end]))?;
        m.check_cseq()
    }

    /// Parses the head at the start of `buf`, finding where it ends in the same pass (the
    /// forwarding path's framing). `None` when `buf` holds no complete head or the head does not
    /// parse: the caller then frames the slow way, which tells the two apart. `body_start` is set;
    /// `buf` still runs past the message.
    pub fn parse_stream(buf: &'a [u8]) -> Option<Message<'a>> {
        let mut m = Message::start(buf).ok()?;
        let from = m.headers_start;
        let ended = m.scan_headers(Lines::new(&buf[from..])).ok()??;
        m.body_start = from + ended + 2;
        m.check_cseq().ok()
    }

    /// The start line, and an empty message around it.
    fn start(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let nl = memchr::memchr(b'\n', buf).ok_or(ParseError::BadStartLine)?;
        if nl == 0 || buf[nl - 1] != b'\r' {
            return Err(ParseError::BareLf);
        }
        let start = parse_start_line(&buf[..nl - 1])?;
        Ok(Message {
            buf,
            start,
            headers_start: nl + 1,
            body_start: nl + 1,
            via: None,
            via_count: 0,
            route: None,
            route_line2: None,
            record_route: None,
            path: None,
            contact: None,
            max_forwards: None,
            call_id: None,
            from: None,
            to: None,
            cseq: None,
            content_length: None,
            content_length_value: None,
            header_count: 0,
        })
    }

    fn check_cseq(self) -> Result<Message<'a>, ParseError> {
        if let (StartLine::Request { method, .. }, Some((_, _, cm))) = (self.start, self.cseq)
            && method != cm
        {
            return Err(ParseError::CSeqMismatch);
        }
        Ok(self)
    }

    /// Reads every header line `lines` yields (a block starting at `headers_start`); returns
    /// where the lexer found the empty line, if it did.
    fn scan_headers(&mut self, mut lines: Lines<'a>) -> Result<Option<usize>, ParseError> {
        let from = self.headers_start;
        let block = &self.buf[from..];
        for h in lines.by_ref() {
            let h = h?;
            if h.has_control() {
                return Err(ParseError::Control {
                    line: (from + h.line_start) as u32,
                });
            }
            self.header_count += 1;
            if self.header_count > MAX_HEADERS {
                return Err(ParseError::TooManyHeaders);
            }
            if h.line_len > MAX_LINE {
                return Err(ParseError::LineTooLong);
            }
            let name = Name::classify_in(&block[h.line_start..], h.name.len());
            if name == Name::Other {
                continue;
            }
            let line = Span::new(from + h.line_start, from + h.line_start + h.line_len);
            let voff = from + scan::offset_in(block, h.value);
            let value = Span::new(voff, voff + h.value.len());
            let mut field = Field {
                line,
                value,
                top: value,
                next: None,
            };
            match name {
                Name::Via | Name::Route | Name::RecordRoute | Name::Path | Name::Contact => {
                    let slot = match name {
                        Name::Via => &mut self.via,
                        Name::Route => &mut self.route,
                        Name::RecordRoute => &mut self.record_route,
                        Name::Path => &mut self.path,
                        _ => &mut self.contact,
                    };
                    let later = slot.is_some();
                    // Only a later Route line past the second, or a Via line, needs nothing more
                    // than a count (Via) or nothing at all.
                    if later && (name != Name::Route || self.route_line2.is_some()) {
                        if name == Name::Via {
                            let n = if h.commas {
                                scan::Values::new(h.value).count() as u32
                            } else {
                                u32::from(!h.value.is_empty())
                            };
                            if n == 0 {
                                return Err(ParseError::Empty(name.as_str()));
                            }
                            self.via_count += n;
                        }
                        continue;
                    }
                    // The top value and where the second starts; a line without a comma holds
                    // one value, the whole (trimmed) field.
                    let (n, second) = if h.commas {
                        let mut vals = scan::Values::new(h.value);
                        let Some(top) = vals.next() else {
                            if later {
                                continue;
                            }
                            return Err(ParseError::Empty(name.as_str()));
                        };
                        let toff = from + scan::offset_in(block, top);
                        field.top = Span::new(toff, toff + top.len());
                        let second = vals.next().map(|s| (from + scan::offset_in(block, s)) as u32);
                        (1 + u32::from(second.is_some()) + vals.count() as u32, second)
                    } else if h.value.is_empty() {
                        if later {
                            continue;
                        }
                        return Err(ParseError::Empty(name.as_str()));
                    } else {
                        (1, None)
                    };
                    field.next = second;
                    if name == Name::Via {
                        self.via_count += n;
                    }
                    if later {
                        // The second Route line (Via never gets here when later).
                        self.route_line2 = Some(field);
                    } else {
                        *slot = Some(field);
                    }
                }
                Name::MaxForwards => {
                    once(self.max_forwards.is_some(), name)?;
                    // RFC 3261 §20.22 and RFC 4475 §3.1.2.4: 0 to 255.
                    let n = scan::parse_u32(h.value)
                        .filter(|&n| n <= 255)
                        .ok_or(ParseError::BadMaxForwards)?;
                    self.max_forwards = Some((field, n));
                }
                Name::CSeq => {
                    once(self.cseq.is_some(), name)?;
                    let (n, method) = parse_cseq(h.value).ok_or(ParseError::BadCSeq)?;
                    self.cseq = Some((field, n, method));
                }
                Name::CallId => set_once(&mut self.call_id, field, name, h.value)?,
                Name::From => set_once(&mut self.from, field, name, h.value)?,
                Name::To => set_once(&mut self.to, field, name, h.value)?,
                Name::ContentLength => {
                    set_once(&mut self.content_length, field, name, h.value)?;
                    let n = scan::parse_u32(h.value).ok_or(ParseError::BadContentLength)?;
                    self.content_length_value = Some(n);
                }
                Name::Other => {}
            }
        }
        Ok(lines.ended())
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The bytes of a span of this message.
    pub fn at(&self, s: Span) -> &'a [u8] {
        &self.buf[s.range()]
    }

    /// The value of a single-valued header, if present.
    pub fn value(&self, f: Option<Field>) -> Option<&'a [u8]> {
        f.map(|f| self.at(f.value))
    }

    /// The To tag; a request that has one belongs to a dialog (RFC 3261 §12.2).
    pub fn to_tag(&self) -> Option<&'a [u8]> {
        NameAddr::parse(self.value(self.to)?).ok()?.tag()
    }

    pub fn call_id(&self) -> Option<&'a [u8]> {
        self.value(self.call_id)
    }

    /// The top Via value, parsed.
    pub fn top_via(&self) -> Result<Via<'a>, ViaError> {
        let f = self.via.ok_or(ViaError::Missing)?;
        Via::parse(self.at(f.top))
    }

    pub fn body(&self) -> &'a [u8] {
        &self.buf[self.body_start.min(self.buf.len())..]
    }

    /// The header block including the start line, without the final empty line.
    pub fn head(&self) -> &'a [u8] {
        &self.buf[..self.body_start.saturating_sub(2).max(self.headers_start)]
    }

    /// What a proxy checks before forwarding a request: the mandatory headers are there, the top
    /// Via is usable, and From / To are well-formed addresses. Returns the parsed top Via.
    pub fn validate_request(&self) -> Result<Via<'a>, Rejection> {
        if let Some(name) = self.missing() {
            return Err(Rejection::Missing(name));
        }
        let via = self.top_via().map_err(Rejection::Via)?;
        for (f, name) in [(self.from, "From"), (self.to, "To")] {
            if let Some(v) = self.value(f) {
                NameAddr::parse(v).map_err(|_| Rejection::Malformed(name))?;
            }
        }
        Ok(via)
    }

    /// Every value of header `name`, in order, over all its lines. Lexes the head again, so it is
    /// for the less common paths (loop checks, load tools), not for every message.
    pub fn values_of(&self, name: Name) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values_where(move |n| Name::classify(n) == name)
    }

    /// Every value of a header siplb has no [`Name`] for (`name` in any case), as
    /// [`Message::values_of`].
    pub fn values_named(&self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values_where(move |n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    fn values_where(&self, keep: impl Fn(&[u8]) -> bool + 'a) -> impl Iterator<Item = &'a [u8]> + 'a {
        let head = self.head();
        let block = &head[self.headers_start.min(head.len())..];
        Lines::new(block)
            .map_while(Result::ok)
            .filter(move |h| keep(h.name))
            .flat_map(|h| scan::Values::new(h.value))
    }

    /// The first mandatory request header (RFC 3261 §8.1.1) that is missing, if any.
    pub fn missing(&self) -> Option<&'static str> {
        [
            (self.via.is_none(), "Via"),
            (self.from.is_none(), "From"),
            (self.to.is_none(), "To"),
            (self.call_id.is_none(), "Call-ID"),
            (self.cseq.is_none(), "CSeq"),
        ]
        .into_iter()
        .find_map(|(miss, name)| miss.then_some(name))
    }
}

fn once(seen: bool, name: Name) -> Result<(), ParseError> {
    if seen {
        Err(ParseError::Duplicate(name.as_str()))
    } else {
        Ok(())
    }
}

fn set_once(slot: &mut Option<Field>, f: Field, name: Name, value: &[u8]) -> Result<(), ParseError> {
    once(slot.is_some(), name)?;
    if value.is_empty() {
        return Err(ParseError::Empty(name.as_str()));
    }
    *slot = Some(f);
    Ok(())
}

/// `Method SP Request-URI SP SIP/2.0` or `SIP/2.0 SP code SP reason`; single spaces only, as in
/// RFC 3261 §7.1 (RFC 4475 §3.1.2.10 and .11 show why extra white space is refused).
fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    if let Some(rest) = line.strip_prefix(b"SIP/") {
        let rest = rest.strip_prefix(b"2.0 ").ok_or(ParseError::BadVersion)?;
        if rest.len() < 3 || (rest.len() > 3 && rest[3] != b' ') {
            return Err(ParseError::BadStatusCode);
        }
        let code = scan::parse_u32(&rest[..3])
            .filter(|c| (100..=699).contains(c))
            .ok_or(ParseError::BadStatusCode)? as u16;
        let reason = rest.get(4..).unwrap_or(b"");
        if reason.iter().any(|&b| b < 0x20 && b != b'\t') {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response { code, reason });
    }
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
    let method = &line[..sp1];
    let rest = &line[sp1 + 1..];
    let sp2 = memchr::memchr(b' ', rest).ok_or(ParseError::BadStartLine)?;
    let (uri, version) = (&rest[..sp2], &rest[sp2 + 1..]);
    if method.is_empty() || !method.iter().all(|&b| scan::is_token(b)) {
        return Err(ParseError::BadStartLine);
    }
    // RFC 4475 §3.1.2.8 (ltgtruri): no brackets or quotes around or inside the Request-URI.
    if uri.is_empty()
        || !uri.contains(&b':')
        || uri
            .iter()
            .any(|&b| b <= b' ' || b == 0x7f || b"<>\"".contains(&b))
    {
        return Err(ParseError::BadStartLine);
    }
    if version != b"SIP/2.0" {
        return Err(if version.starts_with(b"SIP/") && !version.contains(&b' ') {
            ParseError::BadVersion
        } else {
            ParseError::BadStartLine
        });
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        uri,
    })
}

/// `1*DIGIT LWS Method`.
pub(crate) fn parse_cseq(v: &[u8]) -> Option<(u32, Method<'_>)> {
    let split = v.iter().position(|&b| scan::is_lws(b))?;
    let n = scan::parse_u32(&v[..split])?;
    let m = scan::trim(&v[split..]);
    (!m.is_empty() && m.iter().all(|&b| scan::is_token(b))).then(|| (n, Method::parse(m)))
}
