//! Per-message cost of the SIP layer on the forwarding path: frame + parse + validate + rewrite
//! of a realistic INVITE (SDP, 4 Vias, ~1 KB) as a client request, and of a 200 OK coming back
//! from a server (frame + parse + token check + Via pop). Results go in perf/README.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use siplb::sip::rewrite::MAGIC;
use siplb::sip::token::{TOKEN_LEN, TokenCache};
use siplb::sip::{Message, Read, Rewrite, Status, Token, TokenKey, frame, read};

#[path = "common/forward.rs"]
mod forward;
use forward::{MAX, forward_request, invite, ok_200};

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
    let conn = forward::conn_token(&key);
    let rr = key.encode(Token {
        worker: 1,
        slot: 42,
        generation: 7,
        pin: 0x1234,
        role: siplb::sip::Role::ClientRoute,
        instance: 0,
        ws: false,
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
                ws: false,
            }))
        })
    });
    g.bench_function("token_decode_uncached", |b| b.iter(|| key.decode(black_box(&rr))));
    g.finish();
    println!("INVITE bytes: {}, 200 OK bytes: {}", inv.len(), ok.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
