//! Routing decisions without sockets: each rule of the contract, pins, loops, forged tokens.

use std::net::SocketAddr;

use super::*;
use crate::sip::addr::{NameAddr, Uri};
use crate::sip::header::Name;
use crate::sip::{Read, read};

mod sides;

const ADV: &str = "lb.test:5061";
const PEER_ADV: &str = "lb-s.test:5062";

fn backends() -> Vec<Backend> {
    (0..3)
        .map(|i| {
            Backend::new(
                format!("b{i}.test"),
                SocketAddr::from(([127, 0, 0, 1], 6000 + i)),
                100,
            )
        })
        .collect()
}

struct Fixture {
    key: std::sync::Arc<TokenKey>,
    backends: Vec<Backend>,
    tokens: TokenCache,
    rw: Rewrite,
    rr: Vec<Option<RouteTokens>>,
    conn_token: [u8; TOKEN_LEN],
    server_side: Option<(&'static str, &'static str)>,
    path: PathMode,
    follow: Option<usize>,
}

/// What a decision's rewrite stands for once [`Fixture::route`] has written the message out with
/// it (the bytes are what the tests look at).
static WRITTEN: Rewrite = Rewrite::unallocated();

impl Fixture {
    fn new() -> Fixture {
        let key = std::sync::Arc::new(TokenKey::from_secret(b"route tests"));
        let conn_token = key.encode(Token {
            worker: 0,
            slot: 7,
            generation: 1,
            pin: 0,
            role: Role::ClientVia,
            instance: 0,
            ws: false,
        });
        Fixture {
            key,
            backends: backends(),
            tokens: TokenCache::new(),
            rw: Rewrite::new(),
            rr: Vec::new(),
            conn_token,
            server_side: None,
            path: PathMode::Supported,
            follow: None,
        }
    }

    /// With a peer listener: double Record-Route, server-facing Via and Path.
    fn with_peer() -> Fixture {
        Fixture {
            server_side: Some((PEER_ADV, "lb-s.test")),
            ..Fixture::new()
        }
    }

    /// Routes `text` (with `\n` line ends) as if it came from a client or a server connection.
    fn route<A: Into<Avail>>(
        &mut self,
        text: &str,
        from_server: bool,
        usable: impl Fn(usize) -> A,
    ) -> (Decision<'static>, Vec<u8>) {
        let buf = text.replace('\n', "\r\n").into_bytes();
        let Read::Message(_, m) = read(&buf, 1 << 16) else {
            panic!("test message must parse: {text}")
        };
        let router = Router {
            key: std::sync::Arc::clone(&self.key),
            advertise: ADV.into(),
            adv_host: "lb.test".into(),
            server_side: self.server_side.map(|(a, h)| (a.into(), h.into())),
            wss: None,
            backends: self.backends.clone(),
            balance: BalanceKey::CallId,
            path: self.path,
            draining: false,
            work: Vec::new(),
        };
        let mut origin = Origin {
            worker: 0,
            slot: 7,
            generation: 1,
            token: &self.conn_token,
            peer_ip: b"192.0.2.9",
            peer_port: 40000,
            from_server,
            ws: false,
            backend: from_server.then_some(1),
            follow: self.follow.map(Follow::Backend),
            rr_cache: &mut self.rr,
        };
        let d = router.decide(
            &m,
            &mut origin,
            &mut ByAvail(usable),
            &mut self.tokens,
            &mut self.rw,
        );
        let mut out = Vec::new();
        let d = match d {
            Decision::ToBackend {
                backend,
                conn,
                rewrite,
            } => {
                rewrite.write_to(m.buf, &mut out);
                Decision::ToBackend {
                    backend,
                    conn,
                    rewrite: &WRITTEN,
                }
            }
            Decision::ToConnection { to, request, rewrite } => {
                rewrite.write_to(m.buf, &mut out);
                Decision::ToConnection {
                    to,
                    request,
                    rewrite: &WRITTEN,
                }
            }
            Decision::Answer {
                code,
                reason,
                retry_after,
            } => Decision::Answer {
                code,
                reason,
                retry_after,
            },
            Decision::Drop(why) => Decision::Drop(why),
            Decision::ProbeAnswer => Decision::ProbeAnswer,
            Decision::Absorbed => Decision::Absorbed,
        };
        (d, out)
    }
}

fn invite(call_id: &str, extra: &str) -> String {
    format!(
        "INVITE sip:bob@pool.test SIP/2.0\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKc1\nMax-Forwards: 70\n\
From: <sip:alice@a.test>;tag=a1\nTo: <sip:bob@pool.test>\nCall-ID: {call_id}\nCSeq: 1 INVITE\n{extra}Content-Length: 0\n\n"
    )
}

#[test]
fn client_invite_goes_to_a_backend_record_routed_with_our_via() {
    let mut f = Fixture::new();
    let (d, out) = f.route(&invite("c1", ""), false, |_| true);
    let Decision::ToBackend {
        backend: be, conn: 0, ..
    } = d
    else {
        panic!("{d:?}")
    };
    let Read::Message(_, m) = read(&out, 1 << 16) else {
        panic!("forwarded message parses")
    };
    let via = m.top_via().unwrap();
    assert_eq!(via.host, b"lb.test");
    let rr = NameAddr::parse(m.at(m.record_route.expect("Record-Route").top)).unwrap();
    let tok = Uri::parse(rr.uri)
        .unwrap()
        .params
        .get(b"siplb")
        .flatten()
        .expect("token");
    let t = f.key.decode(tok).unwrap();
    assert_eq!((t.slot, t.generation, t.pin), (7, 1, f.backends[be].pin));
    assert_eq!(m.max_forwards.map(|(_, n)| n), Some(69));
    assert!(String::from_utf8_lossy(&out).contains(";received=192.0.2.9"));
}

#[test]
fn answers_siplb_gives_itself() {
    let mut f = Fixture::new();
    let (d, _) = f.route(
        &invite("c2", "").replace("Max-Forwards: 70", "Max-Forwards: 0"),
        false,
        |_| true,
    );
    assert!(matches!(d, Decision::Answer { code: 483, .. }), "{d:?}");
    let (d, _) = f.route(&invite("c3", ""), false, |_| false);
    assert!(
        matches!(
            d,
            Decision::Answer {
                code: 503,
                retry_after: Some(RETRY_AFTER),
                ..
            }
        ),
        "{d:?}"
    );
    let (d, _) = f.route(&invite("c4", "").replace("Call-ID: c4\n", ""), false, |_| true);
    assert!(
        matches!(&d, Decision::Answer { code: 400, reason, .. } if reason.contains("Call-ID")),
        "{d:?}"
    );
}

#[test]
fn pins_beat_the_hash_and_fail_rather_than_move() {
    let mut f = Fixture::new();
    let (d, out) = f.route(&invite("pinned-call", ""), false, |_| true);
    let Decision::ToBackend {
        backend: be, conn: 0, ..
    } = d
    else {
        panic!("{d:?}")
    };
    let Read::Message(_, m) = read(&out, 1 << 16) else {
        panic!()
    };
    let rr = String::from_utf8_lossy(m.at(m.record_route.unwrap().top)).into_owned();
    // The BYE of that dialog, with a Call-ID that would hash elsewhere: the pin decides.
    for other_id in ["x1", "x2", "x3", "x4", "x5", "x6"] {
        let bye = format!(
            "BYE sip:uas@b.test SIP/2.0\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKb1\nRoute: {rr}\nMax-Forwards: 70\n\
From: <sip:alice@a.test>;tag=a1\nTo: <sip:bob@pool.test>;tag=b1\nCall-ID: {other_id}\nCSeq: 2 BYE\nContent-Length: 0\n\n"
        );
        let (d, fwd) = f.route(&bye, false, |_| true);
        assert_eq!(
            d,
            Decision::ToBackend {
                backend: be,
                conn: 0,
                rewrite: &WRITTEN
            }
        );
        assert!(
            !String::from_utf8_lossy(&fwd).contains("Route:"),
            "our Route was not removed"
        );
        let (d, _) = f.route(&bye, false, |b| b != be);
        assert!(
            matches!(d, Decision::Answer { code: 503, .. }),
            "a pinned dialog moved: {d:?}"
        );
    }
    // A forged token is not a pin: the request is hashed like a new one.
    let forged = rr.replace("siplb=0", "siplb=1").replace("siplb=1", "siplb=2");
    let bye = invite("forged", &format!("Route: {forged}\n"));
    let (d, _) = f.route(&bye, false, |_| true);
    assert!(matches!(d, Decision::ToBackend { .. }), "{d:?}");
}

#[test]
fn responses_follow_our_via_token_or_are_dropped() {
    let mut f = Fixture::new();
    let (_, out) = f.route(&invite("r1", ""), false, |_| true);
    let fwd = String::from_utf8(out).unwrap();
    let our_via = fwd
        .lines()
        .find(|l| l.starts_with("Via: SIP/2.0/TLS lb.test"))
        .unwrap()
        .to_string();
    let resp = format!(
        "SIP/2.0 200 OK\n{our_via}\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKc1\nFrom: <sip:alice@a.test>;tag=a1\n\
To: <sip:bob@pool.test>;tag=b1\nCall-ID: r1\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
    );
    let (d, out) = f.route(&resp, true, |_| true);
    assert_eq!(
        d,
        Decision::ToConnection {
            to: Token {
                worker: 0,
                slot: 7,
                generation: 1,
                pin: 0,
                role: Role::ClientVia,
                instance: 0,
                ws: false,
            },
            request: false,
            rewrite: &WRITTEN
        }
    );
    assert!(
        !String::from_utf8_lossy(&out).contains("lb.test"),
        "our Via was not popped"
    );
    let foreign = resp.replace("lb.test", "other.test");
    assert!(matches!(f.route(&foreign, true, |_| true).0, Decision::Drop(_)));
}

#[test]
fn server_requests_need_our_route_token() {
    let mut f = Fixture::new();
    let (_, out) = f.route(&invite("s1", ""), false, |_| true);
    let Read::Message(_, m) = read(&out, 1 << 16) else {
        panic!()
    };
    let rr = String::from_utf8_lossy(m.at(m.record_route.unwrap().top)).into_owned();
    let bye = format!(
        "BYE sip:alice@client.invalid SIP/2.0\nVia: SIP/2.0/TLS b1.test;branch=z9hG4bKs1\nRoute: {rr}\nMax-Forwards: 70\n\
From: <sip:bob@pool.test>;tag=b1\nTo: <sip:alice@a.test>;tag=a1\nCall-ID: s1\nCSeq: 1 BYE\nContent-Length: 0\n\n"
    );
    let (d, _) = f.route(&bye, true, |_| true);
    assert!(
        matches!(
            d,
            Decision::ToConnection {
                to: Token {
                    slot: 7,
                    generation: 1,
                    ..
                },
                request: true,
                ..
            }
        ),
        "{d:?}"
    );
    let (d, _) = f.route(&bye.replace(&format!("Route: {rr}\n"), ""), true, |_| true);
    assert!(matches!(d, Decision::Answer { code: 404, .. }), "{d:?}");
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop() {
    let mut f = Fixture::new();
    let (_, out) = f.route(&invite("loop", ""), false, |_| true);
    // The server sends the very request back to siplb (its own Via on top of ours).
    let text = String::from_utf8(out).unwrap().replace("\r\n", "\n").replacen(
        "Via:",
        "Via: SIP/2.0/TLS b0.test;branch=z9hG4bKsrv\nVia:",
        1,
    );
    let (d, _) = f.route(&text, false, |_| true);
    assert!(matches!(d, Decision::Answer { code: 482, .. }), "{d:?}");
    // A spiral (new Request-URI) is not a loop.
    let spiral = text.replacen("INVITE sip:bob@pool.test", "INVITE sip:bob-mobile@pool.test", 1);
    assert!(matches!(
        f.route(&spiral, false, |_| true).0,
        Decision::ToBackend { .. }
    ));
}

/// The value of `siplb=` in a Record-Route / Path / Route value, decoded.
fn token_in(f: &Fixture, v: &[u8]) -> Token {
    let addr = NameAddr::parse(v).unwrap();
    let uri = Uri::parse(addr.uri).unwrap();
    f.key
        .decode(uri.params.get(b"siplb").flatten().expect("token"))
        .unwrap()
}

fn parse(out: &[u8]) -> Message<'_> {
    let Read::Message(_, m) = read(out, 1 << 16) else {
        panic!("forwarded message parses")
    };
    m
}
