//! The routing decision driven by arbitrary bytes, for the `route_stream` fuzz target and the
//! unit tests' sweep. The first byte picks the side the bytes come from and which back ends are
//! up; the rest is a stream of messages. Beyond "no panic" it checks the properties routing rests
//! on: a forwarded request parses with our Via on top naming the connection it came from; a
//! response built from it comes back to that very connection; a BYE carrying our Record-Route goes
//! to the back end its pin names.

use std::net::SocketAddr;

use super::{ByAvail, Decision, Origin, PathMode, RouteTokens, Router};
use crate::balance::{Backend, BalanceKey};
use crate::sip::header::Name;
use crate::sip::response::{Extra, write_response};
use crate::sip::token::TOKEN_LEN;
use crate::sip::{Read, Rewrite, Role, Token, TokenCache, TokenKey, read};

pub fn exercise(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let key = std::sync::Arc::new(TokenKey::from_secret(b"exercise"));
    let backends: Vec<Backend> = (0..3)
        .map(|i| {
            Backend::new(
                format!("b{i}.test"),
                SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
                100,
            )
        })
        .collect();
    // Bit 4: a peer listener, so double Record-Route and a server-facing Via.
    let server_side = (ctl >> 4 & 1 == 1).then(|| ("lb-s.test:5062".into(), "lb-s.test".into()));
    let router = Router {
        key: std::sync::Arc::clone(&key),
        advertise: "lb.test:5061".into(),
        adv_host: "lb.test".into(),
        server_side,
        wss: None,
        backends,
        balance: BalanceKey::CallId,
        path: PathMode::Supported,
        draining: false,
        work: Vec::new(),
    };
    let me = Token {
        worker: 1,
        slot: 9,
        generation: 4,
        pin: 0,
        role: Role::ClientVia,
        instance: 0,
        ws: false,
    };
    let my_token = key.encode(me);
    let up = move |b: usize| ctl >> (1 + b) & 1 == 1;
    let mut pool = ByAvail(up);
    let mut tokens = TokenCache::new();
    let mut rw = Rewrite::new();
    let mut rr_cache: Vec<Option<RouteTokens>> = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let (f, m) = match read(&stream[pos..], 8192) {
            Read::Message(f, m) => (f, m),
            Read::Unparsable(f, _) => {
                pos += f.consumed();
                continue;
            }
            Read::Ping(n) => {
                pos += n;
                continue;
            }
            Read::Partial | Read::Invalid(_) => break,
        };
        pos += f.consumed();
        let from_server = ctl & 1 == 1;
        let d = router.decide(
            &m,
            &mut origin(me, &my_token, from_server, &mut rr_cache),
            &mut pool,
            &mut tokens,
            &mut rw,
        );
        let mut fwd = Vec::new();
        let be = match d {
            Decision::ToBackend {
                backend: be, rewrite, ..
            } => {
                assert!(
                    !from_server && up(be),
                    "sent to a back end that is down or from the wrong side"
                );
                rewrite.write_to(m.buf, &mut fwd);
                be
            }
            Decision::ToConnection { to, request, rewrite } => {
                // The direction rules: a server's request goes to a client; a response goes to
                // the other side from the one it came from, never back to its own side.
                assert_eq!(request, m.is_request());
                if request {
                    assert!(
                        from_server && to.role.names_client(),
                        "a client's request went to a connection"
                    );
                } else {
                    assert_eq!(
                        to.role.names_client(),
                        from_server,
                        "a response went back to its own side"
                    );
                }
                rewrite.write_to(m.buf, &mut fwd);
                continue;
            }
            Decision::Answer { code, .. } => {
                assert!(m.is_request() && (400..700).contains(&code));
                continue;
            }
            Decision::Drop(_) => {
                assert!(!m.is_request());
                continue;
            }
            Decision::ProbeAnswer | Decision::Absorbed => {
                panic!("no probe went out and no INVITE was answered here")
            }
        };
        // The forwarded request: well-formed, our Via on top, naming this connection.
        let Read::Message(_, out) = read(&fwd, 1 << 20) else {
            panic!(
                "forwarded request does not parse ({:?}): {}",
                crate::sip::Message::parse(&fwd).err(),
                String::from_utf8_lossy(&fwd)
            )
        };
        let side = router
            .server_side
            .as_ref()
            .map_or(&b"lb.test"[..], |(_, h)| h.as_bytes());
        assert_eq!(out.top_via().expect("our Via").host, side);
        // A server's answer to it comes back here.
        let mut resp = Vec::new();
        write_response(out.head(), 200, "OK", Extra::default(), &mut resp);
        let Read::Message(_, r) = read(&resp, 1 << 20) else {
            panic!("answer does not parse")
        };
        let back = router.decide(
            &r,
            &mut origin(me, &my_token, true, &mut rr_cache),
            &mut pool,
            &mut tokens,
            &mut rw,
        );
        assert!(
            matches!(back, Decision::ToConnection { to, request: false, .. } if to == me),
            "a response lost its way: {back:?}"
        );
        // An in-dialog request carrying our Record-Route stays on the back end the pin names.
        if out.record_route.is_some() && out.method() != Some(crate::sip::Method::Register) {
            // The client's route set: the Record-Route list reversed (RFC 3261 §12.1.2).
            let mut set: Vec<String> = out
                .values_of(Name::RecordRoute)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            set.reverse();
            let bye = format!(
                "BYE sip:uas@b.test SIP/2.0\r\nVia: SIP/2.0/TLS c.invalid;branch=z9hG4bKbye\r\nRoute: {}\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@a.test>;tag=1\r\nTo: <sip:b@b.test>;tag=2\r\nCall-ID: other\r\n\
CSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
                set.join(", ")
            );
            let Read::Message(_, b) = read(bye.as_bytes(), 1 << 20) else {
                continue;
            };
            let pinned = router.decide(
                &b,
                &mut origin(me, &my_token, false, &mut rr_cache),
                &mut pool,
                &mut tokens,
                &mut rw,
            );
            let Decision::ToBackend { backend, rewrite, .. } = pinned else {
                panic!("a pinned dialog was not forwarded: {pinned:?}")
            };
            assert_eq!(backend, be, "a pinned dialog moved");
            // None of our Route entries is left for the back end to follow.
            let mut fwd = Vec::new();
            rewrite.write_to(b.buf, &mut fwd);
            assert!(
                !String::from_utf8_lossy(&fwd).contains("siplb="),
                "our Route entries must all be popped"
            );
        }
    }
}

fn origin<'a>(
    me: Token,
    token: &'a [u8; TOKEN_LEN],
    from_server: bool,
    rr_cache: &'a mut Vec<Option<RouteTokens>>,
) -> Origin<'a> {
    Origin {
        worker: me.worker,
        slot: me.slot,
        generation: me.generation,
        token,
        peer_ip: b"192.0.2.1",
        peer_port: 5061,
        from_server,
        ws: false,
        backend: from_server.then_some(0),
        follow: None,
        rr_cache,
    }
}

#[cfg(test)]
mod tests {
    use super::exercise;

    #[test]
    fn seeds_and_their_mutations() {
        let invite = b"INVITE sip:bob@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS c.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n\
From: <sip:a@a.test>;tag=1\r\nTo: <sip:bob@pool.test>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for ctl in 0..32u8 {
            let mut data = vec![ctl];
            data.extend_from_slice(invite);
            exercise(&data);
            for _ in 0..500 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut d = data.clone();
                let at = 1 + (rng as usize) % (d.len() - 1);
                d[at] = b"\r\n:;,<> @=0z"[(rng >> 32) as usize % 12];
                exercise(&d);
            }
        }
    }
}
