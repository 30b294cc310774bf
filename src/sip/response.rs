//! Responses siplb answers itself (400, 482, 483, 503, 513, ...): built as RFC 3261 §8.2.6 says,
//! copying Via (all values, in order), From, Call-ID and CSeq from the request and adding a To tag
//! when the request's To has none. Works from the raw head so that even a request that failed to
//! parse (or a head cut off by the size limit) gets the best answer its bytes allow. Never answer
//! an ACK: the caller checks that (RFC 3261 §17.1.1.3: ACK has no response).

use std::hash::{DefaultHasher, Hasher};

use super::addr::NameAddr;
use super::header::Name;
use super::rewrite::push_u32;
use super::scan::Lines;
use super::token::hex_into;

/// Extra headers an answer may carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extra {
    /// `Retry-After` seconds (503).
    pub retry_after: Option<u32>,
}

/// Writes a complete response for the request whose head (start line and headers, possibly cut
/// short) is `head` into `out`.
pub fn write_response(head: &[u8], code: u16, reason: &str, extra: Extra, out: &mut Vec<u8>) {
    out.extend_from_slice(b"SIP/2.0 ");
    push_u32(out, u32::from(code));
    out.push(b' ');
    // The reason phrase comes from our own tables, but keep it on one line whatever it holds.
    out.extend(reason.bytes().filter(|b| !b.is_ascii_control()));
    out.extend_from_slice(b"\r\n");
    let block = memchr::memchr(b'\n', head).map_or(&b""[..], |nl| &head[nl + 1..]);
    let mut tag_hash = DefaultHasher::new();
    let mut to: Option<&[u8]> = None;
    for h in Lines::new(block) {
        let Ok(h) = h else { break };
        let name = Name::classify(h.name);
        match name {
            Name::Via | Name::From | Name::CallId | Name::CSeq => {
                line(out, name.as_str(), h.value);
                tag_hash.write(h.value);
            }
            Name::To if to.is_none() => to = Some(h.value),
            _ => {}
        }
    }
    if let Some(to) = to {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(to);
        let has_tag = NameAddr::parse(to).map(|a| a.tag().is_some()).unwrap_or(true);
        if !has_tag {
            // Deterministic, so a retransmitted request gets the same answer (RFC 3261 §8.2.6.2).
            let mut tag = [0u8; 16];
            hex_into(&tag_hash.finish().to_be_bytes(), &mut tag);
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(&tag);
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(secs) = extra.retry_after {
        out.extend_from_slice(b"Retry-After: ");
        push_u32(out, secs);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Server: siplb\r\nContent-Length: 0\r\n\r\n");
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::frame::{Status, frame};
    use crate::sip::message::Message;

    const REQ: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/TLS a.example;branch=z9hG4bK1, SIP/2.0/TLS p.example;branch=z9hG4bK0\r\n\
v: SIP/2.0/TLS q.example;branch=z9hG4bKq\r\n\
Max-Forwards: 0\r\nFrom: <sip:alice@a.example>;tag=f1\r\nTo: Bob <sip:bob@b.example>\r\n\
Call-ID: c1@a\r\nCSeq: 1 INVITE\r\nSubject: x\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn answer_copies_dialog_headers_and_adds_to_tag() {
        let mut out = Vec::new();
        write_response(REQ, 483, "Too Many Hops", Extra::default(), &mut out);
        let Status::Complete(f) = frame(&out, 4096) else {
            panic!("unframable")
        };
        assert_eq!(f.len, out.len());
        let m = Message::parse(&out).expect("our own answer parses");
        assert_eq!(m.status(), Some(483));
        assert_eq!(m.via_count, 3, "all Via values, in order");
        assert_eq!(m.top_via().unwrap().host, b"a.example");
        assert_eq!(m.call_id(), Some(&b"c1@a"[..]));
        let to = NameAddr::parse(m.value(m.to).unwrap()).unwrap();
        let tag = to.tag().expect("To tag added").to_vec();
        assert!(!String::from_utf8_lossy(&out).contains("Subject"));
        // A retransmission gets the same tag.
        let mut again = Vec::new();
        write_response(REQ, 483, "Too Many Hops", Extra::default(), &mut again);
        assert_eq!(out, again);
        assert_eq!(tag.len(), 16);
    }

    #[test]
    fn keeps_existing_tag_and_adds_retry_after() {
        let req = b"BYE sip:b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK2\r\nTo: <sip:b>;tag=t9\r\n\r\n";
        let mut out = Vec::new();
        write_response(
            req,
            503,
            "Service Unavailable",
            Extra { retry_after: Some(5) },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("To: <sip:b>;tag=t9\r\n"), "{text}");
        assert!(text.contains("Retry-After: 5\r\n"), "{text}");
    }

    #[test]
    fn garbage_head_still_gives_a_wellformed_answer() {
        let mut out = Vec::new();
        write_response(
            b"INVITE x\r\n\x01\x02 broken",
            400,
            "Bad\r\nRequest",
            Extra::default(),
            &mut out,
        );
        assert!(out.starts_with(b"SIP/2.0 400 BadRequest\r\n"));
        assert!(Message::parse(&out).is_ok());
    }
}
