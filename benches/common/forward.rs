//! The forwarding path of one client INVITE, shared by the criterion bench (`benches/sip.rs`)
//! and the callgrind instruction count (`examples/read_instructions.rs`), so both measure the
//! same work.

use siplb::sip::token::TOKEN_LEN;
use siplb::sip::{Forward, Read, Rewrite, Token, TokenKey, read};

pub const MAX: usize = 64 * 1024;
pub const ADVERTISED: &[u8] = b"lb.biloxi.example.com:5061";

pub fn invite() -> Vec<u8> {
    let text = include_str!("../invite.sip").replace('\n', "\r\n");
    let body = text.len() - text.find("\r\n\r\n").expect("head end") - 4;
    text.replace("{CL}", &body.to_string()).into_bytes()
}

/// A 200 OK as the back end sends it: our Via (with a real token) on top of the client's.
pub fn ok_200(key: &TokenKey) -> Vec<u8> {
    let tok = key.encode(Token {
        worker: 1,
        slot: 42,
        generation: 7,
        pin: 0,
        role: siplb::sip::Role::ClientVia,
        instance: 0,
        ws: false,
    });
    format!(
        "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TLS lb.biloxi.example.com:5061;branch=z9hG4bK0123456789abcdef-{}\r\n\
Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bKnashds8;received=192.0.2.10;rport=5061\r\n\
Record-Route: <sip:lb.biloxi.example.com:5061;transport=tls;lr;siplb={}>\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4:5061;transport=tls>\r\n\
Content-Length: 0\r\n\r\n",
        std::str::from_utf8(&tok).expect("hex"),
        std::str::from_utf8(&tok).expect("hex"),
    )
    .into_bytes()
}

/// What the balancer does to a client INVITE; returns the bytes it would hand to rustls.
/// The connection's Via token and its Record-Route token for the chosen back end are computed once
/// per connection (and back end) by the balancer, so they come in precomputed here as well.
pub fn forward_request(
    buf: &[u8],
    key: &TokenKey,
    conn_token: &[u8; TOKEN_LEN],
    rr: &[u8; TOKEN_LEN],
    rw: &mut Rewrite,
) -> usize {
    let Read::Message(_, m) = read(buf, MAX) else {
        panic!("bench INVITE must frame and parse")
    };
    let via = m.validate_request().expect("valid");
    let branch = key.branch(&[via.branch().unwrap_or(b""), via.host]);
    let fwd = Forward {
        received: Some((b"192.0.2.10", 5061)),
        sent_by: ADVERTISED,
        ws: false,
        branch: &branch,
        token: conn_token,
        pop_route: m.route.map(|r| (r, false)),
        alias: true,
        require_path: false,
        max_forwards: m.max_forwards.map_or(70, |(_, n)| n.saturating_sub(1)),
        record: [
            Some(siplb::sip::rewrite::Record {
                name: "Record-Route",
                host: ADVERTISED,
                token: rr,
                sips: false,
                ws: false,
                ob: false,
            }),
            None,
        ],
    };
    rw.forward_request(&m, &via, &fwd).expect("rewrite");
    rw.slices(m.buf).as_slice().iter().map(|s| s.len()).sum()
}

/// The client connection's token the bench INVITE is forwarded with.
pub fn conn_token(key: &TokenKey) -> [u8; TOKEN_LEN] {
    key.encode(Token {
        worker: 1,
        slot: 42,
        generation: 7,
        pin: 0,
        role: siplb::sip::Role::ClientRoute,
        instance: 0,
        ws: false,
    })
}
