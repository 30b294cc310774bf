//! Unit tests of the rewrite edits: forwarding a request, popping Vias, Max-Forwards,
//! received/rport, and the edit list's limits.

use super::*;
use crate::sip::frame::{Status, frame};
use crate::sip::message::Message;
use crate::sip::token::{Role, Token, TokenKey};

fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

fn apply(rw: &Rewrite, msg: &[u8]) -> String {
    let mut out = Vec::new();
    rw.write_to(msg, &mut out);
    assert_eq!(out.len(), rw.len(msg));
    // Whatever we produce must frame and parse again.
    assert!(matches!(frame(&out, 1 << 16), Status::Complete(f) if f.len == out.len()));
    Message::parse(&out).expect("rewritten message parses");
    String::from_utf8(out).unwrap()
}

const REQ: &str = "INVITE sip:bob@b.example SIP/2.0
Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1;rport
Route: <sip:lb.example:5061;lr>, <sip:next.example;lr>
Max-Forwards: 70
From: <sip:alice@a.example>;tag=f1
To: <sip:bob@b.example>
Call-ID: c1
CSeq: 1 INVITE
Content-Length: 4

body";

#[test]
fn forward_a_request() {
    let buf = crlf(REQ);
    let m = Message::parse(&buf).unwrap();
    let key = TokenKey::from_secret(b"k");
    let tok = key.encode(Token {
        worker: 1,
        slot: 2,
        generation: 3,
        pin: 4,
        role: Role::ClientRoute,
        instance: 0,
        ws: false,
    });
    let mut rw = Rewrite::new();
    let fwd = Forward {
        received: Some((b"192.0.2.7", 40000)),
        sent_by: b"lb.example:5061",
        ws: false,
        alias: false,
        branch: &[b'a'; 16],
        token: &tok,
        pop_route: m.route.map(|r| (r, false)),
        max_forwards: 69,
        record: [
            Some(Record {
                name: "Record-Route",
                host: b"lb.example:5061",
                token: &tok,
                sips: false,
                ws: false,
                ob: false,
            }),
            None,
        ],
        require_path: false,
    };
    rw.forward_request(&m, &m.top_via().unwrap(), &fwd).unwrap();
    let out = apply(&rw, &buf);
    let tok = std::str::from_utf8(&tok).unwrap();
    let want = format!(
        "INVITE sip:bob@b.example SIP/2.0
Via: SIP/2.0/TLS lb.example:5061;branch=z9hG4bKaaaaaaaaaaaaaaaa-{tok}
Record-Route: <sip:lb.example:5061;transport=tls;lr;siplb={tok}>
Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bKc1;rport=40000;received=192.0.2.7
Route: <sip:next.example;lr>
Max-Forwards: 69
From: <sip:alice@a.example>;tag=f1
To: <sip:bob@b.example>
Call-ID: c1
CSeq: 1 INVITE
Content-Length: 4

body"
    );
    assert_eq!(out, String::from_utf8(crlf(&want)).unwrap());
}

#[test]
fn pop_via_from_a_multi_value_line_and_a_whole_line() {
    let buf = crlf(
        "SIP/2.0 200 OK\nVia: SIP/2.0/TLS lb;branch=z9hG4bKx , SIP/2.0/TLS c;branch=z9hG4bKy\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
    );
    let m = Message::parse(&buf).unwrap();
    let mut rw = Rewrite::new();
    rw.pop_top(m.via.unwrap()).unwrap();
    assert_eq!(
        apply(&rw, &buf),
        String::from_utf8(crlf(
            "SIP/2.0 200 OK\nVia: SIP/2.0/TLS c;branch=z9hG4bKy\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
        ))
        .unwrap()
    );

    let buf = crlf(
        "SIP/2.0 200 OK\nv: SIP/2.0/TLS lb;branch=z9hG4bKx\nVia: SIP/2.0/TLS c;branch=z9hG4bKy\nContent-Length: 0\n\n",
    );
    let m = Message::parse(&buf).unwrap();
    rw.clear();
    rw.pop_top(m.via.unwrap()).unwrap();
    assert_eq!(
        apply(&rw, &buf),
        String::from_utf8(crlf(
            "SIP/2.0 200 OK\nVia: SIP/2.0/TLS c;branch=z9hG4bKy\nContent-Length: 0\n\n"
        ))
        .unwrap()
    );
}

#[test]
fn missing_max_forwards_is_added_and_received_always_tells_the_truth() {
    let buf =
        crlf("OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bK1\nContent-Length: 0\n\n");
    let m = Message::parse(&buf).unwrap();
    let mut rw = Rewrite::new();
    rw.set_max_forwards(&m, 70).unwrap();
    rw.via_received(&m, &m.top_via().unwrap(), b"192.0.2.7", 5061)
        .unwrap();
    let out = apply(&rw, &buf);
    assert!(out.contains("Max-Forwards: 70\r\n"), "{out}");
    assert!(out.contains("branch=z9hG4bK1;received=192.0.2.7\r\n"), "{out}");
    // What a client claims about itself is replaced by what siplb saw.
    let buf = crlf(
        "OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/TLS h.invalid;received=203.0.113.9;rport=1;branch=z9hG4bK1\nContent-Length: 0\n\n",
    );
    let m = Message::parse(&buf).unwrap();
    rw.clear();
    rw.via_received(&m, &m.top_via().unwrap(), b"2001:db8::1", 40001)
        .unwrap();
    let out = apply(&rw, &buf);
    assert!(
        out.contains("Via: SIP/2.0/TLS h.invalid;received=2001:db8::1;rport=40001;branch=z9hG4bK1\r\n"),
        "{out}"
    );
    assert!(!out.contains("203.0.113.9"), "{out}");
}

#[test]
fn edits_are_bounded_and_never_overlap() {
    let buf = crlf(REQ);
    let m = Message::parse(&buf).unwrap();
    let mut rw = Rewrite::new();
    rw.pop_top(m.route.unwrap()).unwrap();
    assert_eq!(rw.pop_top(m.route.unwrap()), Err(RewriteError::Overlap));
    rw.clear();
    for _ in 0..MAX_EDITS {
        rw.edit(0, 0, |s| s.push(b'x')).unwrap();
    }
    assert_eq!(rw.edit(0, 0, |_| {}), Err(RewriteError::TooManyEdits));
    assert_eq!(rw.slices(&buf).as_slice().len(), MAX_EDITS + 1);
}

#[test]
fn numbers() {
    for n in [0u32, 7, 10, 69, 255, u32::MAX] {
        let mut v = Vec::new();
        push_u32(&mut v, n);
        assert_eq!(v, n.to_string().into_bytes());
    }
}
