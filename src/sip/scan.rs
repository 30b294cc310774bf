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

/// Iterates the header fields of a header block: the bytes after the start line's CRLF up to (not
/// including) the empty line. Folded continuation lines belong to the field before them.
pub struct Lines<'a> {
    block: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    pub fn new(block: &'a [u8]) -> Self {
        Lines { block, pos: 0 }
    }

    /// Byte position of the next unread line in the block.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// End (exclusive, after its `\n`) of the physical line starting at `from`.
    fn line_end(&self, from: usize) -> Result<usize, LineError> {
        match memchr(b'\n', &self.block[from..]) {
            Some(i) => {
                let nl = from + i;
                if nl == from || self.block[nl - 1] != b'\r' {
                    return Err(LineError::BareLf);
                }
                Ok(nl + 1)
            }
            // The block handed to us ends with the last header's CRLF; a block cut short (a
            // lenient scan of a partial head) ends mid-line, which we take as the line's end.
            None => Ok(self.block.len()),
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<RawHeader<'a>, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        if start >= self.block.len() {
            return None;
        }
        let first = self.block[start];
        if first == b' ' || first == b'\t' {
            self.pos = self.block.len();
            return Some(Err(LineError::OrphanContinuation));
        }
        let mut end = match self.line_end(start) {
            Ok(e) => e,
            Err(e) => {
                self.pos = self.block.len();
                return Some(Err(e));
            }
        };
        // Folding: a following line that starts with SP/HT continues this field.
        while end < self.block.len() && matches!(self.block[end], b' ' | b'\t') {
            end = match self.line_end(end) {
                Ok(e) => e,
                Err(e) => {
                    self.pos = self.block.len();
                    return Some(Err(e));
                }
            };
        }
        self.pos = end;
        let line = &self.block[start..end];
        // name = token, then optional SP/HT, then ':' (RFC 3261 §25.1 HCOLON).
        let name_len = line.iter().position(|&b| !is_token(b)).unwrap_or(line.len());
        let mut colon = name_len;
        while colon < line.len() && matches!(line[colon], b' ' | b'\t') {
            colon += 1;
        }
        if name_len == 0 || line.get(colon) != Some(&b':') {
            return Some(Err(LineError::Malformed));
        }
        Some(Ok(RawHeader {
            name: &line[..name_len],
            value: trim(&line[colon + 1..]),
            line_start: start,
            line_len: end - start,
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
