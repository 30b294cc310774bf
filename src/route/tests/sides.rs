//! Which side a message may go to: the peer listener's double Record-Route and server-facing
//! Via, spirals between two clients, Path, tokens that only travel the direction they were
//! minted for, and pins that only name connected back ends.

use super::*;

#[test]
fn double_record_route_and_alias_with_a_peer_listener() {
    let mut f = Fixture::with_peer();
    let (d, out) = f.route(&invite("d1", ""), false, |_| true);
    let Decision::ToBackend {
        backend: be, conn: 0, ..
    } = d
    else {
        panic!("{d:?}")
    };
    let m = parse(&out);
    let via = m.top_via().unwrap();
    assert_eq!(via.host, b"lb-s.test", "the server sees the server-facing side");
    assert!(String::from_utf8_lossy(m.at(m.via.unwrap().top)).ends_with(";alias"));
    let rr: Vec<&[u8]> = m.values_of(Name::RecordRoute).collect();
    assert_eq!(rr.len(), 2);
    assert!(String::from_utf8_lossy(rr[0]).starts_with("<sip:lb-s.test:5062;"));
    assert!(String::from_utf8_lossy(rr[1]).starts_with("<sip:lb.test:5061;"));
    assert_eq!(token_in(&f, rr[0]).role, Role::ServerRoute);
    assert_eq!(token_in(&f, rr[1]).role, Role::ClientRoute);
    let (server_set, client_set) = (
        rr.iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>(),
        rr.iter()
            .rev()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>(),
    );
    // The client's BYE (route set reversed, one Route line each): both our entries go, the pin
    // decides.
    let bye = |from: &str, to: &str, routes: String| {
        format!(
            "BYE sip:x@y.test SIP/2.0\nVia: SIP/2.0/TLS {from}.invalid;branch=z9hG4bKbye{from}\n{routes}Max-Forwards: 70\n\
From: <sip:{from}@a.test>;tag=a1\nTo: <sip:{to}@pool.test>;tag=b1\nCall-ID: other-id\nCSeq: 2 BYE\nContent-Length: 0\n\n"
        )
    };
    let lines: String = client_set.iter().map(|r| format!("Route: {r}\n")).collect();
    let (d, fwd) = f.route(&bye("alice", "bob", lines), false, |_| true);
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
        "both entries popped"
    );
    // The server's BYE, one Route line with both values: it reaches the client connection.
    let (d, fwd) = f.route(
        &bye("srv", "alice", format!("Route: {}\n", server_set.join(", "))),
        true,
        |_| true,
    );
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
    assert!(
        !String::from_utf8_lossy(&fwd).contains("Route:"),
        "both entries popped"
    );
    // A client that copies the server-facing entry on top is not turned back to a server.
    let (d, _) = f.route(
        &bye("mallory", "bob", format!("Route: {}\n", server_set[0])),
        false,
        |_| true,
    );
    assert!(matches!(d, Decision::Answer { code: 403, .. }), "{d:?}");
}

#[test]
fn a_dialog_between_two_clients_behind_siplb_is_a_spiral_not_a_loop() {
    let mut f = Fixture::with_peer();
    // alice registered earlier: her Path names the server-facing side.
    let reg = "REGISTER sip:pool.test SIP/2.0\nVia: SIP/2.0/TLS alice.invalid;branch=z9hG4bKr1\nMax-Forwards: 70\n\
From: <sip:alice@pool.test>;tag=r1\nTo: <sip:alice@pool.test>\nCall-ID: reg1\nCSeq: 1 REGISTER\n\
Supported: path\nContact: <sip:alice@alice.invalid;transport=tls>\nContent-Length: 0\n\n";
    let (_, out) = f.route(reg, false, |_| true);
    let m = parse(&out);
    let path = String::from_utf8_lossy(m.at(m.path.expect("Path").top)).into_owned();
    assert!(path.starts_with("<sip:lb-s.test:5062;"), "{path}");
    assert!(String::from_utf8_lossy(&out).contains("\r\nRequire: path\r\n"));
    // bob's INVITE passes through siplb to the registrar...
    let (_, out) = f.route(&invite("spiral", ""), false, |_| true);
    // ...which sends it back towards alice, its Route the Path: the same Call-ID, From, CSeq and
    // Request-URI, our first Via still in it. A spiral: it goes to alice's connection.
    let back = String::from_utf8(out).unwrap().replace("\r\n", "\n").replacen(
        "Via:",
        &format!("Via: SIP/2.0/TLS b1.test;branch=z9hG4bKk1\nRoute: {path}\nVia:"),
        1,
    );
    let (d, _) = f.route(&back, true, |_| true);
    assert!(matches!(d, Decision::ToConnection { request: true, .. }), "{d:?}");
    // The very same message back from the same side is a loop.
    let (_, out) = f.route(&invite("loop2", ""), false, |_| true);
    let again = String::from_utf8(out).unwrap().replace("\r\n", "\n").replacen(
        "Via:",
        "Via: SIP/2.0/TLS b1.test;branch=z9hG4bKk2\nVia:",
        1,
    );
    assert!(matches!(
        f.route(&again, false, |_| true).0,
        Decision::Answer { code: 482, .. }
    ));
}

#[test]
fn path_only_when_supported_or_asked_for_and_sips_stays_sips() {
    let reg = "REGISTER sip:pool.test SIP/2.0\nVia: SIP/2.0/TLS a.invalid;branch=z9hG4bKr2\nMax-Forwards: 70\n\
From: <sip:a@pool.test>;tag=r1\nTo: <sip:a@pool.test>\nCall-ID: reg2\nCSeq: 1 REGISTER\nContent-Length: 0\n\n";
    let mut f = Fixture::new();
    let (_, out) = f.route(reg, false, |_| true);
    assert!(parse(&out).path.is_none(), "no Supported: path, no Path");
    f.path = PathMode::Always;
    let (_, out) = f.route(reg, false, |_| true);
    let m = parse(&out);
    assert_eq!(
        token_in(&f, m.at(m.path.expect("Path").top)).role,
        Role::ServerRoute
    );
    let (_, out) = f.route(
        &invite("s1", "").replace("INVITE sip:bob", "INVITE sips:bob"),
        false,
        |_| true,
    );
    let m = parse(&out);
    assert!(String::from_utf8_lossy(m.at(m.record_route.unwrap().top)).starts_with("<sips:lb.test"));
}

#[test]
fn tokens_only_travel_the_direction_they_were_minted_for() {
    let mut f = Fixture::new();
    let (_, out) = f.route(&invite("dir", ""), false, |_| true);
    let fwd = String::from_utf8(out).unwrap();
    let our_via = fwd
        .lines()
        .find(|l| l.starts_with("Via: SIP/2.0/TLS lb.test"))
        .unwrap()
        .to_string();
    let resp = format!(
        "SIP/2.0 200 OK\n{our_via}\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKc1\nFrom: <sip:alice@a.test>;tag=a1\n\
To: <sip:bob@pool.test>;tag=b1\nCall-ID: dir\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
    );
    // The Via siplb put on a request to a server, replayed by a client: dropped.
    let (d, _) = f.route(&resp, false, |_| true);
    assert!(matches!(d, Decision::Drop(_)), "{d:?}");
    assert!(matches!(
        f.route(&resp, true, |_| true).0,
        Decision::ToConnection { .. }
    ));
    // A server's request whose Route carries a Via token (not a Route token): refused.
    let via_tok = our_via.rsplit('-').next().unwrap().trim_end_matches(";alias");
    let req = format!(
        "BYE sip:a@a.invalid SIP/2.0\nVia: SIP/2.0/TLS b1.test;branch=z9hG4bKs9\nRoute: <sip:lb.test:5061;lr;siplb={via_tok}>\n\
Max-Forwards: 70\nFrom: <sip:b@pool.test>;tag=b1\nTo: <sip:a@a.test>;tag=a1\nCall-ID: dir\nCSeq: 5 BYE\nContent-Length: 0\n\n"
    );
    assert!(matches!(
        f.route(&req, true, |_| true).0,
        Decision::Answer { code: 404, .. }
    ));
    // A Route that is not ours stays, whatever parameter it carries.
    let rr =
        fwd.lines().find(|l| l.starts_with("Record-Route:")).unwrap()["Record-Route: ".len()..].to_string();
    let foreign = rr.replace("lb.test:5061", "elsewhere.test");
    let bye = invite("foreign", &format!("Route: {foreign}\n"));
    let (_, out) = f.route(&bye, false, |_| true);
    assert!(String::from_utf8_lossy(&out).contains("elsewhere.test"));
}

#[test]
fn pinned_and_followed_requests_go_to_a_connected_back_end_new_dialogs_do_not() {
    let mut f = Fixture::new();
    let (d, out) = f.route(&invite("p1", ""), false, |_| true);
    let Decision::ToBackend {
        backend: be, conn: 0, ..
    } = d
    else {
        panic!()
    };
    let m = parse(&out);
    let rr = String::from_utf8_lossy(m.at(m.record_route.unwrap().top)).into_owned();
    let bye = format!(
        "BYE sip:uas@b.test SIP/2.0\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKb9\nRoute: {rr}\nMax-Forwards: 70\n\
From: <sip:alice@a.test>;tag=a1\nTo: <sip:bob@pool.test>;tag=b1\nCall-ID: p1\nCSeq: 2 BYE\nContent-Length: 0\n\n"
    );
    let probe_failed = |b: usize| if b == be { Avail::Connected } else { Avail::Up };
    assert_eq!(
        f.route(&bye, false, probe_failed).0,
        Decision::ToBackend {
            backend: be,
            conn: 0,
            rewrite: &WRITTEN
        }
    );
    let (d, _) = f.route(&invite("p1", ""), false, probe_failed);
    assert!(
        matches!(d, Decision::ToBackend { backend: b, conn: 0, .. } if b != be),
        "{d:?}"
    );
    // A CANCEL follows its INVITE's back end, not the hash.
    let other = (be + 1) % 3;
    f.follow = Some(other);
    let cancel = invite("p1", "")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    assert_eq!(
        f.route(&cancel, false, |_| true).0,
        Decision::ToBackend {
            backend: other,
            conn: 0,
            rewrite: &WRITTEN
        }
    );
}

#[test]
fn a_server_cannot_answer_for_a_client_with_the_via_siplb_wrote_towards_that_client() {
    let mut f = Fixture::new();
    // siplb's Via on a request it sent to a client names the server connection (ServerVia).
    let server_conn = f.key.encode(Token {
        worker: 0,
        slot: 3,
        generation: 1,
        pin: 0,
        role: Role::ServerVia,
        instance: 0,
        ws: false,
    });
    let resp = format!(
        "SIP/2.0 200 OK\nVia: SIP/2.0/TLS lb.test:5061;branch=z9hG4bK{}-{}\nFrom: <sip:b@pool.test>;tag=b1\n\
To: <sip:a@a.test>;tag=a1\nCall-ID: back\nCSeq: 1 BYE\nContent-Length: 0\n\n",
        "0".repeat(BRANCH_HASH),
        std::str::from_utf8(&server_conn).unwrap()
    );
    // From the client it was meant for: goes to the server connection.
    assert!(matches!(
        f.route(&resp, false, |_| true).0,
        Decision::ToConnection {
            to: Token {
                slot: 3,
                role: Role::ServerVia,
                ..
            },
            request: false,
            ..
        }
    ));
    // From a server: dropped.
    assert!(matches!(f.route(&resp, true, |_| true).0, Decision::Drop(_)));
}
