//! Per-message cost of the SIP layer on the forwarding path: frame + parse + validate + rewrite
//! of a realistic INVITE (SDP, 4 Vias, ~1 KB) as a client request, and of a 200 OK coming back
//! from a server (frame + parse + token check + Via pop). Results go in perf/README.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use siplb::sip::rewrite::MAGIC;
use siplb::sip::token::{TOKEN_LEN, TokenCache};
use siplb::sip::{Forward, Message, Read, Rewrite, Status, Token, TokenKey, frame, read};

const MAX: usize = 64 * 1024;
const ADVERTISED: &[u8] = b"lb.biloxi.example.com:5061";

fn invite() -> Vec<u8> {
    let text = include_str!("invite.sip").replace('\n', "\r\n");
    let body = text.len() - text.find("\r\n\r\n").expect("head end") - 4;
    text.replace("{CL}", &body.to_string()).into_bytes()
}

/// A 200 OK as the back end sends it: our Via (with a real token) on top of the client's.
fn ok_200(key: &TokenKey) -> Vec<u8> {
    let tok = key.encode(Token {
        worker: 1,
        slot: 42,
        generation: 7,
        pin: 0,
        role: siplb::sip::Role::ClientVia,
        instance: 0,
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
fn forward_request(
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
            }),
            None,
        ],
    };
    rw.forward_request(&m, &via, &fwd).expect("rewrite");
    rw.slices(m.buf).as_slice().iter().map(|s| s.len()).sum()
}

/// What the balancer does to a server's response: check our Via, decode where it goes, pop it.
fn forward_response(buf: &[u8], key: &TokenKey, cache: &mut TokenCache, rw: &mut Rewrite) -> (Token, usize) {
    let Read::Message(_, m) = read(buf, MAX) else {
        panic!("bench 200 must frame and parse")
    };
    let via = m.top_via().expect("via");
    let branch = via.branch().expect("branch");
    let tok = &branch[branch.len() - TOKEN_LEN..];
    assert!(branch.starts_with(MAGIC));
    let t = cache.decode(key, tok).expect("our token");
    rw.clear();
    rw.pop_top(m.via.expect("via")).expect("pop");
    (t, rw.slices(m.buf).as_slice().iter().map(|s| s.len()).sum())
}

fn bench(c: &mut Criterion) {
    let key = TokenKey::from_secret(b"bench");
    let conn = key.encode(Token {
        worker: 1,
        slot: 42,
        generation: 7,
        pin: 0,
        role: siplb::sip::Role::ClientRoute,
        instance: 0,
    });
    let rr = key.encode(Token {
        worker: 1,
        slot: 42,
        generation: 7,
        pin: 0x1234,
        role: siplb::sip::Role::ClientRoute,
        instance: 0,
    });
    let mut cache = TokenCache::new();
    let inv = invite();
    let ok = ok_200(&key);
    let mut rw = Rewrite::new();
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("invite_frame_parse_rewrite", |b| {
        b.iter(|| forward_request(black_box(&inv), &key, &conn, &rr, &mut rw))
    });
    g.bench_function("ok200_frame_parse_rewrite", |b| {
        b.iter(|| forward_response(black_box(&ok), &key, &mut cache, &mut rw))
    });
    g.bench_function("frame_only_invite", |b| b.iter(|| frame(black_box(&inv), MAX)));
    g.bench_function("parse_only_invite", |b| {
        let Status::Complete(f) = frame(&inv, MAX) else {
            panic!()
        };
        b.iter(|| Message::parse(black_box(&inv[f.range()])).map(|m| m.header_count))
    });
    g.bench_function("token_encode", |b| {
        b.iter(|| {
            key.encode(black_box(Token {
                worker: 1,
                slot: 2,
                generation: 3,
                pin: 4,
                role: siplb::sip::Role::ClientRoute,
                instance: 0,
            }))
        })
    });
    g.bench_function("token_decode_uncached", |b| b.iter(|| key.decode(black_box(&rr))));
    g.finish();
    println!("INVITE bytes: {}, 200 OK bytes: {}", inv.len(), ok.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
