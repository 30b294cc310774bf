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
            1 => match name[0].to_ascii_lowercase() {
                b'v' => Name::Via,
                b'i' => Name::CallId,
                b'f' => Name::From,
                b't' => Name::To,
                b'm' => Name::Contact,
                b'l' => Name::ContentLength,
                _ => Name::Other,
            },
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
        }
    }
}
