//! Byte-level lexing shared by framing and parsing: header lines (with RFC 3261 §7.3.1 folding),
//! comma-separated values that respect quoted strings and `<...>`, `;` parameters, and the small
//! helpers around them. Everything borrows from the input; nothing allocates.

use memchr::memchr;

/// Spaces, tabs and the CR/LF of a folded line all count as linear white space (LWS).
#[inline]
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 `token` characters, as a lookup table (httparse-style) since every header name and
/// parameter name is checked byte by byte.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

/// RFC 3261 `token` characters (header names, methods, parameter names).
#[inline]
pub fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// `s` without leading and trailing LWS.
#[inline]
pub fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// Parses ASCII decimal digits only (no sign, no space); `None` on anything else or overflow.
pub fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).ok()
}

/// Offset of `inner` inside `outer`; `inner` must be a sub-slice of `outer`.
#[inline]
pub fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let off = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    debug_assert!(off <= outer.len() && off + inner.len() <= outer.len());
    off
}

/// One header field, possibly folded over several lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'a> {
    pub name: &'a [u8],
    /// The value with surrounding LWS trimmed; folded line breaks stay inside it.
    pub value: &'a [u8],
    /// Offset of the line in the scanned block, and its length including the final CRLF.
    pub line_start: usize,
    pub line_len: usize,
    /// The line holds a comma: only then can a list header hold more than one value.
    pub commas: bool,
    /// The line holds a control byte other than HTAB and the CRLF that ends or folds it.
    pub controls: bool,
}

impl RawHeader<'_> {
    /// Whether the value holds a control byte it may not (RFC 3261 §25.1): anything below 0x20 or
    /// DEL but HTAB and the CRLF of a fold, except — inside a quoted string only — as the second
    /// byte of a quoted-pair (RFC 4475's intmeth case). The lexer has already found whether the
    /// line holds any such byte at all; only then is the value looked at again.
    pub fn has_control(&self) -> bool {
        self.controls && !controls_allowed(self.value)
    }
}

/// The careful look behind [`RawHeader::has_control`]: true if every control byte in `v` is
/// allowed. A lone CR or LF never is.
fn controls_allowed(v: &[u8]) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in v.iter().enumerate() {
        let ctl = b < 0x20 || b == 0x7f;
        if escaped {
            escaped = false;
            if matches!(b, b'\r' | b'\n') {
                return false;
            }
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'\t' => {}
            b'\r' if v.get(i + 1) == Some(&b'\n') => {}
            b'\n' if i > 0 && v[i - 1] == b'\r' => {}
            _ if ctl => return false,
            _ => {}
        }
    }
    true
}

/// Why a header line could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// A line with no `name:` shape (no colon, or a name with non-token bytes).
    Malformed,
    /// A line that starts with white space but follows no header (folding of nothing).
    OrphanContinuation,
    /// A line not ended by CRLF.
    BareLf,
}

/// Bytes the lexer looks at in one step.
const CHUNK: usize = 64;

/// Bit `i` set when byte `base + i` is [`special`]; past the block's end, no bits.
#[inline(always)]
fn chunk_mask(block: &[u8], base: usize) -> u64 {
    let rest = block.get(base..).unwrap_or_default();
    match rest.first_chunk::<CHUNK>() {
        Some(c) => mask64(c),
        None => {
            // The block's last bytes, padded with a byte that is not special.
            let mut padded = [b'a'; CHUNK];
            padded[..rest.len()].copy_from_slice(rest);
            mask64(&padded)
        }
    }
}

#[inline(always)]
fn mask64(c: &[u8; CHUNK]) -> u64 {
    c.chunks_exact(16).enumerate().fold(0, |m, (i, q)| {
        let q = q.first_chunk::<16>().map_or(0, simd::specials16);
        m | u64::from(q) << (16 * i)
    })
}

/// Bytes the lexer stops at ("special"): control bytes (CR and LF among them, so line ends) and
/// the comma (so list headers with one value need no second look); everything else is skipped a
/// chunk at a time.
///
/// The one place siplb uses `unsafe` (issue 13): finding the special bytes of a 16-byte chunk
/// with SSE2 — compare, or, movemask — is what makes the lexer cheap (a third of the
/// instructions of a per-byte or 8-byte SWAR loop, which the compiler does not vectorise into a
/// movemask). Stable Rust offers no safe way to call these intrinsics from ordinary code.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    #[inline(always)]
    pub(super) fn specials16(c: &[u8; 16]) -> u16 {
        // SAFETY: SSE2 is part of the x86_64 baseline, so every CPU this build runs on has these
        // instructions; the unaligned load reads exactly the 16 bytes `c` borrows.
        unsafe {
            let x = _mm_loadu_si128(c.as_ptr().cast::<__m128i>());
            let ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
            let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
            let comma = _mm_cmpeq_epi8(x, _mm_set1_epi8(b',' as i8));
            _mm_movemask_epi8(_mm_or_si128(ctl, _mm_or_si128(del, comma))) as u16
        }
    }
}

/// Elsewhere, the same mask a byte at a time.
#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub(super) fn specials16(c: &[u8; 16]) -> u16 {
        c.iter().enumerate().fold(0, |m, (i, &b)| {
            m | u16::from(b < 0x20 || b == 0x7f || b == b',') << i
        })
    }
}

/// Lexes the header fields of a header block — the bytes after the start line's CRLF up to (not
/// including) the empty line — in one forward pass: the special bytes of 16-byte chunks are found
/// together, and the lexer jumps from one to the next, so line ends, folds, commas and control
/// bytes cost one look each and plain text costs nearly nothing. Folded continuation lines belong
/// to the field before them.
pub struct Lines<'a> {
    block: &'a [u8],
    pos: usize,
    /// The chunk being walked and its special bytes not consumed yet.
    base: usize,
    mask: u64,
    /// Where the empty line that ends a header block starts, once the lexer has reached it.
    ended: Option<usize>,
}

impl<'a> Lines<'a> {
    pub fn new(block: &'a [u8]) -> Self {
        Lines {
            block,
            pos: 0,
            base: 0,
            mask: chunk_mask(block, 0),
            ended: None,
        }
    }

    /// Where the empty line ending the header block starts, if the lexer stopped at one: a
    /// block may run on into the body, so framing and lexing take one pass.
    pub fn ended(&self) -> Option<usize> {
        self.ended
    }

    /// The next special byte's position, consuming it.
    #[inline(always)]
    fn next_special(&mut self) -> Option<usize> {
        loop {
            if self.mask != 0 {
                let i = self.base + self.mask.trailing_zeros() as usize;
                self.mask &= self.mask - 1;
                return Some(i);
            }
            self.base += CHUNK;
            if self.base >= self.block.len() {
                return None;
            }
            self.mask = chunk_mask(self.block, self.base);
        }
    }

    fn fail(&mut self, e: LineError) -> Option<Result<RawHeader<'a>, LineError>> {
        self.pos = self.block.len();
        Some(Err(e))
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<RawHeader<'a>, LineError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        let block = self.block;
        let start = self.pos;
        let &first = block.get(start)?;
        if first == b'\r' && block.get(start + 1) == Some(&b'\n') {
            self.ended = Some(start);
            self.pos = block.len();
            return None;
        }
        if first == b' ' || first == b'\t' {
            return self.fail(LineError::OrphanContinuation);
        }
        let (mut commas, mut controls) = (false, false);
        // `end` is past the line's CRLF; `text_end` is where its text stops. A block cut short
        // (a lenient scan of a partial head) ends mid-line, which is taken as the line's end.
        let (end, text_end) = loop {
            let Some(p) = self.next_special() else {
                break (block.len(), block.len());
            };
            match block[p] {
                b',' => commas = true,
                b'\t' => {}
                b'\r' if block.get(p + 1) == Some(&b'\n') => {
                    self.next_special(); // the LF
                    if !matches!(block.get(p + 2), Some(b' ' | b'\t')) {
                        break (p + 2, p);
                    }
                    // A fold: the field goes on.
                }
                b'\r' if p + 1 == block.len() => break (block.len(), p),
                b'\n' => return self.fail(LineError::BareLf),
                _ => controls = true,
            }
        };
        self.pos = end;
        // name = token, then optional SP/HT, then ':' (RFC 3261 §25.1 HCOLON).
        let text = &block[start..text_end];
        let name_len = text.iter().position(|&b| !is_token(b)).unwrap_or(text.len());
        let name = &text[..name_len];
        let mut colon = start + name_len;
        while colon < text_end && matches!(block[colon], b' ' | b'\t') {
            colon += 1;
        }
        if name.is_empty() || colon >= text_end || block[colon] != b':' {
            return self.fail(LineError::Malformed);
        }
        let (mut vs, mut ve) = (colon + 1, text_end);
        while vs < ve && is_lws(block[vs]) {
            vs += 1;
        }
        while ve > vs && is_lws(block[ve - 1]) {
            ve -= 1;
        }
        Some(Ok(RawHeader {
            name,
            value: &block[vs..ve],
            line_start: start,
            line_len: end - start,
            commas,
            controls,
        }))
    }
}

/// Splits a header value at top-level commas: commas inside quoted strings, `<...>` and `[...]`
/// do not separate values. Yields each value trimmed of LWS; empty values are skipped.
pub struct Values<'a> {
    rest: &'a [u8],
}

impl<'a> Values<'a> {
    pub fn new(value: &'a [u8]) -> Self {
        Values { rest: value }
    }
}

/// Index of the first top-level occurrence of `sep` in `s`: not inside a quoted string (with
/// backslash escapes) nor inside `<...>`. IPv6 references hold neither `,` nor `;`, so brackets
/// need no tracking. memchr3 jumps between the only bytes that matter.
pub fn find_top_level(s: &[u8], sep: u8) -> Option<usize> {
    // Parameters and short values: a byte loop beats setting up a vector search.
    if s.len() < 48 {
        let mut i = 0;
        while let Some(&b) = s.get(i) {
            match b {
                _ if b == sep => return Some(i),
                b'"' => i = skip_quoted(s, i + 1)?,
                b'<' => i += memchr(b'>', &s[i..])?,
                _ => {}
            }
            i += 1;
        }
        return None;
    }
    let mut i = 0;
    while i < s.len() {
        i += memchr::memchr3(sep, b'"', b'<', &s[i..])?;
        match s[i] {
            b'"' => i = skip_quoted(s, i + 1)?,
            b'<' => i += memchr(b'>', &s[i..])?,
            _ => return Some(i),
        }
        i += 1;
    }
    None
}

/// Index of the closing quote of a quoted string whose body starts at `from`.
fn skip_quoted(s: &[u8], mut from: usize) -> Option<usize> {
    loop {
        from += memchr::memchr2(b'"', b'\\', &s[from..])?;
        if s[from] == b'"' {
            return Some(from);
        }
        from += 2;
        if from > s.len() {
            return None;
        }
    }
}

/// Index of the first `needle` outside double-quoted strings.
pub fn find_unquoted(s: &[u8], needle: u8) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    i += if s[i] == b'\\' { 2 } else { 1 };
                }
            }
            b if b == needle => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (v, rest) = match find_top_level(self.rest, b',') {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &self.rest[self.rest.len()..]),
            };
            self.rest = rest;
            let v = trim(v);
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
}

/// `;name[=value]` parameters, as found after a Via sent-by, a URI, or a name-addr's `>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params<'a> {
    /// The raw text starting at (or before) the first `;`.
    pub raw: &'a [u8],
}

impl<'a> Params<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Params { raw }
    }

    /// The parameter named `name` (case-insensitive): `Some(None)` when present without a value.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Non-empty parameters.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.all().filter(|(n, _)| !n.is_empty())
    }

    /// Every `;` segment, empty names included (for checking well-formedness in the same pass).
    pub fn all(&self) -> ParamIter<'a> {
        ParamIter { rest: self.raw }
    }
}

/// A parameter name: a non-empty token.
pub fn is_param_name(n: &[u8]) -> bool {
    !n.is_empty() && n.iter().all(|&b| is_token(b))
}

pub struct ParamIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let semi = find_top_level(self.rest, b';')?;
        let after = &self.rest[semi + 1..];
        let end = find_top_level(after, b';').unwrap_or(after.len());
        let p = &after[..end];
        self.rest = &after[end..];
        Some(match memchr(b'=', p) {
            Some(eq) => (trim(&p[..eq]), Some(unquote(trim(&p[eq + 1..])))),
            None => (trim(p), None),
        })
    }
}

/// Strips one pair of surrounding double quotes, if present.
pub fn unquote(s: &[u8]) -> &[u8] {
    if s.len() >= 2 && s[0] == b'"' && s[s.len() - 1] == b'"' {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(block: &[u8]) -> Vec<(String, String)> {
        Lines::new(block)
            .map(|h| {
                let h = h.expect("line");
                (
                    String::from_utf8_lossy(h.name).into_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_fold_and_trim() {
        let block = b"Via: a\r\n b\r\nTo :\t x \r\nEmpty:\r\n";
        assert_eq!(
            names(block),
            vec![
                ("Via".into(), "a\r\n b".into()),
                ("To".into(), "x".into()),
                ("Empty".into(), "".into()),
            ]
        );
    }

    #[test]
    fn lines_reject_bad_shapes() {
        assert_eq!(Lines::new(b"NoColon\r\n").next(), Some(Err(LineError::Malformed)));
        assert_eq!(
            Lines::new(b" folded\r\n").next(),
            Some(Err(LineError::OrphanContinuation))
        );
        assert_eq!(Lines::new(b"A: b\nC: d\r\n").next(), Some(Err(LineError::BareLf)));
        assert_eq!(
            Lines::new(b"Bad Name: x\r\n").next(),
            Some(Err(LineError::Malformed))
        );
    }

    #[test]
    fn values_respect_quotes_and_brackets() {
        let v: Vec<&[u8]> = Values::new(b"\"a, \\\"b\" <sip:x;p=1,2>;t=1 , <sip:[::1]>,,  c").collect();
        assert_eq!(
            v,
            vec![
                &b"\"a, \\\"b\" <sip:x;p=1,2>;t=1"[..],
                &b"<sip:[::1]>"[..],
                &b"c"[..]
            ]
        );
    }

    #[test]
    fn params_lookup() {
        let p = Params::new(b";branch=z9hG4bK1 ; RPORT;received=\"1.2.3.4\";;x");
        assert_eq!(p.get(b"branch"), Some(Some(&b"z9hG4bK1"[..])));
        assert_eq!(p.get(b"rport"), Some(None));
        assert_eq!(p.get(b"received"), Some(Some(&b"1.2.3.4"[..])));
        assert_eq!(p.get(b"x"), Some(None));
        assert_eq!(p.get(b"nope"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32(b"70"), Some(70));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b" 1"), None);
    }
}
