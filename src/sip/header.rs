//! Names of the header fields routing cares about, recognised case-insensitively and in their
//! compact forms (RFC 3261 §7.3.3, RFC 3327 for Path). Everything else is `Other` and is passed
//! through untouched.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Name {
    Via,
    Route,
    RecordRoute,
    MaxForwards,
    CallId,
    From,
    To,
    CSeq,
    Contact,
    ContentLength,
    Path,
    Other,
}

impl Name {
    /// Classifies a header name. Dispatches on length first so most names cost one comparison.
    pub fn classify(name: &[u8]) -> Name {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            1 => Name::compact(name[0]),
            2 if is(b"to") => Name::To,
            3 if is(b"via") => Name::Via,
            4 if is(b"from") => Name::From,
            4 if is(b"cseq") => Name::CSeq,
            4 if is(b"path") => Name::Path,
            5 if is(b"route") => Name::Route,
            7 if is(b"call-id") => Name::CallId,
            7 if is(b"contact") => Name::Contact,
            12 if is(b"max-forwards") => Name::MaxForwards,
            12 if is(b"record-route") => Name::RecordRoute,
            14 if is(b"content-length") => Name::ContentLength,
            _ => Name::Other,
        }
    }

    /// Classifies the name that is the first `len` bytes of `text` (a header line from its
    /// first byte, so the bytes after the name are there to read): the name is compared as one
    /// or two lower-cased 8-byte words instead of byte by byte. `len` must cover a token (the
    /// lexer's name), which is what makes OR-ing 0x20 a safe lower-casing here.
    #[inline]
    pub fn classify_in(text: &[u8], len: usize) -> Name {
        const fn word(s: &[u8]) -> u64 {
            let mut w = [0u8; 8];
            let mut i = 0;
            while i < s.len() && i < 8 {
                w[i] = s[i];
                i += 1;
            }
            u64::from_le_bytes(w)
        }
        let Some(c) = text.first_chunk::<16>() else {
            return Name::classify(text.get(..len).unwrap_or_default());
        };
        let lo = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) | 0x2020_2020_2020_2020;
        let hi = u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]])
            | 0x2020_2020_2020_2020;
        let first = |n: usize| lo & (u64::MAX >> (64 - 8 * n));
        match len {
            1 => Name::compact(c[0]),
            2 if first(2) == word(b"to") => Name::To,
            3 if first(3) == word(b"via") => Name::Via,
            4 if first(4) == word(b"from") => Name::From,
            4 if first(4) == word(b"cseq") => Name::CSeq,
            4 if first(4) == word(b"path") => Name::Path,
            5 if first(5) == word(b"route") => Name::Route,
            7 if first(7) == word(b"call-id") => Name::CallId,
            7 if first(7) == word(b"contact") => Name::Contact,
            12 if lo == word(b"max-forw") && hi & 0xffff_ffff == word(b"ards") => Name::MaxForwards,
            12 if lo == word(b"record-r") && hi & 0xffff_ffff == word(b"oute") => Name::RecordRoute,
            14 if lo == word(b"content-") && hi & 0xffff_ffff_ffff == word(b"length") => Name::ContentLength,
            _ => Name::Other,
        }
    }

    /// The compact forms (RFC 3261 §7.3.3) siplb cares about.
    fn compact(b: u8) -> Name {
        match b.to_ascii_lowercase() {
            b'v' => Name::Via,
            b'i' => Name::CallId,
            b'f' => Name::From,
            b't' => Name::To,
            b'm' => Name::Contact,
            b'l' => Name::ContentLength,
            _ => Name::Other,
        }
    }

    /// The full name, as siplb writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Via => "Via",
            Name::Route => "Route",
            Name::RecordRoute => "Record-Route",
            Name::MaxForwards => "Max-Forwards",
            Name::CallId => "Call-ID",
            Name::From => "From",
            Name::To => "To",
            Name::CSeq => "CSeq",
            Name::Contact => "Contact",
            Name::ContentLength => "Content-Length",
            Name::Path => "Path",
            Name::Other => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Name;

    #[test]
    fn long_and_compact_forms() {
        for (s, n) in [
            (&b"VIA"[..], Name::Via),
            (b"v", Name::Via),
            (b"i", Name::CallId),
            (b"Call-Id", Name::CallId),
            (b"f", Name::From),
            (b"T", Name::To),
            (b"m", Name::Contact),
            (b"l", Name::ContentLength),
            (b"content-LENGTH", Name::ContentLength),
            (b"Record-Route", Name::RecordRoute),
            (b"max-forwards", Name::MaxForwards),
            (b"PATH", Name::Path),
            (b"cseq", Name::CSeq),
            (b"Route", Name::Route),
            (b"Content-Type", Name::Other),
            (b"c", Name::Other),
            (b"", Name::Other),
        ] {
            assert_eq!(Name::classify(s), n, "{}", String::from_utf8_lossy(s));
            let line = [s, &b": some value here"[..]].concat();
            assert_eq!(
                Name::classify_in(&line, s.len()),
                n,
                "{}",
                String::from_utf8_lossy(s)
            );
        }
    }
}
