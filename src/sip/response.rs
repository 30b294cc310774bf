//! Responses siplb answers itself (400, 482, 483, 503, 513, ...): built as RFC 3261 §8.2.6 says,
//! copying Via (all values, in order), From, Call-ID and CSeq from the request and adding a To tag
//! when the request's To has none. Works from the raw head so that even a request that failed to
//! parse (or a head cut off by the size limit) gets the best answer its bytes allow. Never answer
//! an ACK: the caller checks that (RFC 3261 §17.1.1.3: ACK has no response).

use std::hash::Hasher;

use super::siphash::SipHasher24;

use super::addr::NameAddr;
use super::header::Name;
use super::message::{Message, parse_cseq};
use super::rewrite::push_u32;
use super::scan::{Lines, Values};
use super::token::hex_into;
use super::via::Via;

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
    // A fixed function of the request, the same on every instance and build.
    let mut tag_hash = SipHasher24::new(&[0; 16]);
    let mut to: Option<&[u8]> = None;
    let (mut from, mut call_id, mut cseq) = (false, false, false);
    for h in Lines::new(block) {
        let Ok(h) = h else { break };
        let name = Name::classify(h.name);
        if h.has_control() {
            continue;
        }
        // Copy only what is well-formed, and single-valued headers once: an answer to a broken
        // request must not be broken itself.
        let copy = match name {
            Name::Via => {
                let mut vals = Values::new(h.value).peekable();
                vals.peek().is_some() && vals.all(|v| Via::parse(v).is_ok())
            }
            Name::From => !std::mem::replace(&mut from, true) && NameAddr::parse(h.value).is_ok(),
            Name::CallId => !std::mem::replace(&mut call_id, true) && valid_call_id(h.value),
            Name::CSeq => !std::mem::replace(&mut cseq, true) && parse_cseq(h.value).is_some(),
            Name::To if to.is_none() => {
                to = NameAddr::parse(h.value).is_ok().then_some(h.value);
                false
            }
            _ => false,
        };
        if copy {
            line(out, name.as_str(), h.value);
            tag_hash.write(h.value);
        }
    }
    if let Some(to) = to {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(to);
        let has_tag = NameAddr::parse(to).is_ok_and(|a| a.tag().is_some());
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

/// The seconds of a response's `Retry-After` (RFC 3261 §20.33), if it has a readable one.
pub fn retry_after(m: &Message) -> Option<u32> {
    let head = m.head();
    let v = Lines::new(&head[m.headers_start.min(head.len())..])
        .map_while(Result::ok)
        .find(|h| h.name.eq_ignore_ascii_case(b"retry-after"))?
        .value;
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&v[..digits]).ok()?.parse().ok()
}

/// The ACK siplb sends for a non-2xx final answer it keeps from the caller (RFC 3261 §17.1.1.3):
/// the INVITE's Request-URI, the answer's top Via (siplb's, so the branch matches the server's
/// transaction), From, To with the server's tag, Call-ID and the CSeq number. False (and nothing
/// written) if the answer lacks one of them.
pub fn write_ack(request_uri: &[u8], answer: &Message, out: &mut Vec<u8>) -> bool {
    write_for_answer("ACK", request_uri, answer, false, out)
}

/// The CANCEL siplb sends for an INVITE it gave up on, once that server's provisional answer
/// `answer` shows a transaction to cancel (RFC 3261 §9.1): as the ACK, but with the To of the
/// request (the server's tag left out). False (and nothing written) if the answer lacks a part.
pub fn write_cancel(request_uri: &[u8], answer: &Message, out: &mut Vec<u8>) -> bool {
    write_for_answer("CANCEL", request_uri, answer, true, out)
}

/// A request in the INVITE transaction `answer` answers (ACK or CANCEL: same branch, Call-ID,
/// From and CSeq number), to `request_uri`; `untagged` leaves the To tag out.
fn write_for_answer(
    method: &str,
    request_uri: &[u8],
    answer: &Message,
    untagged: bool,
    out: &mut Vec<u8>,
) -> bool {
    let (Some(via), Some(from), Some(to), Some(call_id), Some((_, n, _))) = (
        answer.via.map(|f| answer.at(f.top)),
        answer.value(answer.from),
        answer.value(answer.to),
        answer.call_id(),
        answer.cseq,
    ) else {
        return false;
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request_uri);
    out.extend_from_slice(b" SIP/2.0\r\n");
    line(out, "Via", via);
    line(out, "Max-Forwards", b"70");
    line(out, "From", from);
    // The `;tag=` parameter cut out, after the name-addr's `>` if it has one.
    let after = memchr::memchr(b'>', to).map_or(0, |i| i + 1);
    let tag = to[after..]
        .windows(5)
        .position(|w| w.eq_ignore_ascii_case(b";tag="))
        .map(|p| after + p)
        .filter(|_| untagged);
    out.extend_from_slice(b"To: ");
    match tag {
        Some(p) => {
            let end = memchr::memchr(b';', &to[p + 1..]).map_or(to.len(), |e| p + 1 + e);
            out.extend_from_slice(&to[..p]);
            out.extend_from_slice(&to[end..]);
        }
        None => out.extend_from_slice(to),
    }
    out.extend_from_slice(b"\r\n");
    line(out, "Call-ID", call_id);
    out.extend_from_slice(b"CSeq: ");
    push_u32(out, n);
    out.push(b' ');
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    true
}

/// A Call-ID we can echo: non-empty, one line, no white space (RFC 3261 §25.1 callid).
fn valid_call_id(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| b > b' ' && b != 0x7f)
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

    #[test]
    fn ack_for_an_answer_we_keep_matches_the_servers_transaction() {
        let answer = b"SIP/2.0 503 Service Unavailable\r\n\
Via: SIP/2.0/TLS lb.example;branch=z9hG4bKours-tok, SIP/2.0/TLS a.example;branch=z9hG4bK1\r\n\
From: <sip:alice@a.example>;tag=f1\r\nTo: <sip:bob@b.example>;tag=srv\r\nCall-ID: c1@a\r\n\
CSeq: 7 INVITE\r\nRetry-After: 42 (overloaded)\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(answer).expect("parses");
        assert_eq!(retry_after(&m), Some(42));
        let mut out = Vec::new();
        assert!(write_ack(b"sip:bob@b.example", &m, &mut out));
        let ack = Message::parse(&out).expect("our ACK parses");
        assert_eq!(ack.request_uri(), Some(&b"sip:bob@b.example"[..]));
        assert_eq!(ack.via_count, 1, "only our Via");
        assert_eq!(
            ack.top_via().expect("via").branch(),
            Some(&b"z9hG4bKours-tok"[..])
        );
        assert_eq!(ack.to_tag(), Some(&b"srv"[..]));
        assert_eq!(ack.cseq.map(|c| (c.1, c.2)), Some((7, crate::sip::Method::Ack)));
        let ringing = String::from_utf8_lossy(answer)
            .replace("503 Service Unavailable", "180 Ringing")
            .replace(
                "To: <sip:bob@b.example>;tag=srv",
                "To: \"Bob\" <sip:bob@b.example>;tag=srv;x=1",
            );
        let ringing = Message::parse(ringing.as_bytes()).expect("parses");
        let mut out = Vec::new();
        assert!(write_cancel(b"sip:bob@b.example", &ringing, &mut out));
        let cancel = Message::parse(&out).expect("our CANCEL parses");
        assert_eq!(cancel.method(), Some(crate::sip::Method::Cancel));
        assert_eq!(cancel.to_tag(), None, "{}", String::from_utf8_lossy(&out));
        assert_eq!(
            cancel.value(cancel.to),
            Some(&b"\"Bob\" <sip:bob@b.example>;x=1"[..])
        );
        assert_eq!(
            cancel.top_via().expect("via").branch(),
            Some(&b"z9hG4bKours-tok"[..])
        );
        let no_header = Message::parse(REQ).expect("parses");
        assert_eq!(retry_after(&no_header), None);
    }

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
    fn broken_headers_are_not_echoed() {
        // Found by the fuzzer: an empty Via, a CSeq without a space, a To with a stray quote.
        let req = b"INVITE sip:b SIP/2.0\r\nVia:\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nCSeq: 1INVITE\r\n\
To: <sip:b\">\r\nCall-ID: a\r\nCall-ID: b\r\n\r\n";
        let mut out = Vec::new();
        write_response(req, 400, "Bad Request", Extra::default(), &mut out);
        let m = Message::parse(&out).expect("our answer parses");
        assert_eq!((m.via_count, m.cseq.is_none(), m.to.is_none()), (1, true, true));
        assert_eq!(m.call_id(), Some(&b"a"[..]));
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
