//! One whole call relayed through siplb's per-message path, in memory: rustls client/server pairs
//! on both hops (client -> siplb front, siplb -> back end over MTLS), no sockets. Each message is
//! encrypted by its sender, decrypted by siplb, framed, parsed, routed and rewritten by the real
//! `sip::read` / `route::Router` / `Rewrite`, written with `write_vectored`, and decrypted by the
//! receiver: INVITE, 100, 180, 200, ACK, BYE, 200.

use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::{ClientConnection, Connection, ServerConnection};
use siplb::balance::{Backend, BalanceKey};
use siplb::certs::Ca;
use siplb::load::msg;
use siplb::route::{ByAvail, Decision, Origin, PathMode, RouteTokens, Router};
use siplb::sip::token::TOKEN_LEN;
use siplb::sip::{Read, Rewrite, Role, Token, TokenCache, TokenKey, read};
use siplb::tls::{self, Identity};

/// Moves every TLS byte `from` has for `to`.
fn pump(from: &mut Connection, to: &mut Connection, wire: &mut Vec<u8>) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("write_tls");
    }
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process_new_packets().expect("process");
    }
}

fn plaintext(c: &mut Connection, into: &mut Vec<u8>) {
    into.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match c.reader().read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
}

fn handshake(a: &mut Connection, b: &mut Connection, wire: &mut Vec<u8>) {
    while a.is_handshaking() || b.is_handshaking() {
        pump(a, b, wire);
        pump(b, a, wire);
    }
}

struct Relay {
    client: Connection,
    lb_front: Connection,
    lb_back: Connection,
    server: Connection,
    /// One per worker in siplb, made once.
    router: Router,
    tokens: TokenCache,
    rw: Rewrite,
    rr: Vec<Option<RouteTokens>>,
    front_token: [u8; TOKEN_LEN],
    back_token: [u8; TOKEN_LEN],
    wire: Vec<u8>,
    buf: Vec<u8>,
}

impl Relay {
    fn new() -> Relay {
        let ca = Ca::new("bench CA").expect("CA");
        let id = |n: &str| {
            let l = ca.issue(&[n]).expect("leaf");
            Identity::from_pem(&l.cert_pem, &l.key_pem).expect("id")
        };
        let roots = tls::roots_from_pem(ca.pem()).expect("roots");
        let lb_id = id("localhost");
        let server_id = id("b0.bench");
        let front = tls::mtls_server_config(&lb_id, roots.clone()).expect("front");
        let client_cfg = tls::client_config(roots.clone(), Some(&id("client.bench"))).expect("client");
        let back_cfg = tls::client_config(roots.clone(), Some(&lb_id)).expect("back");
        let server_cfg = tls::mtls_server_config(&server_id, roots).expect("server");
        let mut client = Connection::Client(
            ClientConnection::new(client_cfg, tls::server_name("localhost").expect("n")).expect("c"),
        );
        let mut lb_front = Connection::Server(ServerConnection::new(front).expect("s"));
        let mut lb_back = Connection::Client(
            ClientConnection::new(back_cfg, tls::server_name("b0.bench").expect("n")).expect("c"),
        );
        let mut server = Connection::Server(ServerConnection::new(server_cfg).expect("s"));
        let mut wire = Vec::new();
        handshake(&mut client, &mut lb_front, &mut wire);
        handshake(&mut lb_back, &mut server, &mut wire);
        let key = TokenKey::from_secret(b"relay bench");
        Relay {
            client,
            lb_front,
            lb_back,
            server,
            front_token: key.encode(Token {
                worker: 0,
                slot: 1,
                generation: 0,
                pin: 0,
                role: Role::ClientVia,
                instance: 0,
                ws: false,
            }),
            back_token: key.encode(Token {
                worker: 0,
                slot: 2,
                generation: 0,
                pin: 0,
                role: Role::ServerVia,
                instance: 0,
                ws: false,
            }),
            router: Router {
                key: std::sync::Arc::new(key),
                advertise: "127.0.0.1:5061".into(),
                adv_host: "127.0.0.1".into(),
                server_side: None,
                wss: None,
                backends: vec![Backend::new(
                    "b0.bench".into(),
                    SocketAddr::from(([127, 0, 0, 1], 7000)),
                    100,
                )],
                balance: BalanceKey::CallId,
                path: PathMode::Supported,
                draining: false,
                work: Vec::new(),
            },
            tokens: TokenCache::new(),
            rw: Rewrite::new(),
            rr: Vec::new(),
            wire,
            buf: Vec::new(),
        }
    }

    /// Sends `msg` from the client (`to_server`) or from the server, through siplb; returns what
    /// the far end received.
    fn hop(&mut self, msg: &[u8], to_server: bool) -> Vec<u8> {
        let (src, lb_in, lb_out, dst) = if to_server {
            (
                &mut self.client,
                &mut self.lb_front,
                &mut self.lb_back,
                &mut self.server,
            )
        } else {
            (
                &mut self.server,
                &mut self.lb_back,
                &mut self.lb_front,
                &mut self.client,
            )
        };
        src.writer().write_all(msg).expect("send");
        pump(src, lb_in, &mut self.wire);
        plaintext(lb_in, &mut self.buf);
        let Read::Message(_, m) = read(&self.buf, 64 * 1024) else {
            panic!("siplb could not read the message")
        };
        let token = if to_server {
            &self.front_token
        } else {
            &self.back_token
        };
        let mut origin = Origin {
            worker: 0,
            slot: if to_server { 1 } else { 2 },
            generation: 0,
            token,
            peer_ip: b"127.0.0.1",
            peer_port: 40000,
            from_server: !to_server,
            ws: false,
            backend: (!to_server).then_some(0),
            follow: None,
            rr_cache: &mut self.rr,
        };
        let d = self.router.decide(
            &m,
            &mut origin,
            &mut ByAvail(|_| true),
            &mut self.tokens,
            &mut self.rw,
        );
        let (Decision::ToBackend { rewrite, .. } | Decision::ToConnection { rewrite, .. }) = d else {
            panic!("{d:?}")
        };
        let n = lb_out
            .writer()
            .write_vectored(rewrite.slices(m.buf).as_slice())
            .expect("relay");
        assert_eq!(n, rewrite.len(m.buf), "rustls took only part of the message");
        pump(lb_out, dst, &mut self.wire);
        let mut got = Vec::new();
        plaintext(dst, &mut got);
        got
    }
}

/// The seven messages of a call as the client and server send them (recorded once).
fn script(r: &mut Relay) -> Vec<(Vec<u8>, bool)> {
    let invite = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/invite.sip"))
        .expect("invite")
        .replace('\n', "\r\n");
    let body = invite.len() - invite.find("\r\n\r\n").expect("head") - 4;
    let invite = invite
        .replace("{CL}", &body.to_string())
        .replace("Route: <sip:lb.biloxi.example.com:5061;transport=tls;lr>\r\n", "");
    let at_server = r.hop(invite.as_bytes(), true);
    let Read::Message(_, fwd) = read(&at_server, 1 << 16) else {
        panic!()
    };
    let mut out = vec![(invite.clone().into_bytes(), true)];
    let contact = "Contact: <sip:uas@127.0.0.1:7000;transport=tls>\r\n";
    for (code, reason) in [(100, "Trying"), (180, "Ringing"), (200, "OK")] {
        let tag = (code != 100).then_some("srvtag");
        let resp = msg::response(
            &fwd,
            code,
            reason,
            tag,
            code != 100,
            if code == 200 { contact } else { "" },
        );
        r.hop(&resp, false);
        out.push((resp, false));
    }
    let rr = msg::values(&fwd, siplb::sip::header::Name::RecordRoute);
    let mut d = msg::Dialog {
        call_id: fwd.call_id().map(msg::text).expect("call-id"),
        local: fwd.value(fwd.from).map(msg::text).expect("from"),
        remote: format!("{};tag=srvtag", fwd.value(fwd.to).map(msg::text).expect("to")),
        remote_target: "sip:uas@127.0.0.1:7000;transport=tls".into(),
        route: rr,
        cseq: 314159,
        host: "pc33.atlanta.example.com".into(),
    };
    let ack = d.request("ACK", Some(314159), None, "");
    r.hop(&ack, true);
    out.push((ack, true));
    let bye = d.request("BYE", None, None, "");
    let bye_at_server = r.hop(&bye, true);
    out.push((bye, true));
    let Read::Message(_, b) = read(&bye_at_server, 1 << 16) else {
        panic!()
    };
    let ok = msg::response(&b, 200, "OK", None, false, "");
    r.hop(&ok, false);
    out.push((ok, false));
    out
}

fn bench(c: &mut Criterion) {
    let mut r = Relay::new();
    let call = script(&mut r);
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_call_7_messages_tls_both_hops", |b| {
        b.iter(|| {
            for (m, to_server) in &call {
                black_box(r.hop(m, *to_server));
            }
        })
    });
    // What a new client connection costs siplb's front (the per-call mode): a full TLS 1.3
    // handshake with client certificates, and one resumed from a session ticket.
    let ca = Ca::new("bench CA").expect("CA");
    let id = |n: &str| {
        let l = ca.issue(&[n]).expect("leaf");
        Identity::from_pem(&l.cert_pem, &l.key_pem).expect("id")
    };
    let roots = tls::roots_from_pem(ca.pem()).expect("roots");
    let front = tls::mtls_server_config(&id("localhost"), roots.clone()).expect("front");
    let resuming = tls::client_config(roots.clone(), Some(&id("client.bench"))).expect("client");
    let mut full = (*tls::client_config(roots, Some(&id("client.bench"))).expect("client")).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let full = std::sync::Arc::new(full);
    let mut wire = Vec::new();
    for (name, cfg) in [("tls_handshake_full", full), ("tls_handshake_resumed", resuming)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut c = Connection::Client(
                    ClientConnection::new(cfg.clone(), tls::server_name("localhost").expect("n")).expect("c"),
                );
                let mut s = Connection::Server(ServerConnection::new(front.clone()).expect("s"));
                handshake(&mut c, &mut s, &mut wire);
                // TLS 1.3 tickets arrive after the handshake: take them for the next round.
                pump(&mut s, &mut c, &mut wire);
                black_box(c.negotiated_cipher_suite())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
