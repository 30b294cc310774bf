//! Hostile input against a running balancer: each case gets the answer the README names (a SIP
//! error response or a closed connection), and afterwards 100 good calls all complete — nothing
//! a hostile peer does may harm other connections.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use siplb::load::caller::CallOpts;

fn tls(pki: &Pki, lb: &siplb::worker::Balancer) -> Tls {
    tls_connect(lb.listen_addrs[0], pki.client_tls(None), LB_NAME).expect("TLS handshake")
}

/// How the hostile peer connects: its TLS client config and the host its From names.
struct Peer {
    tls: std::sync::Arc<rustls::ClientConfig>,
    from: &'static str,
    /// The partner domain its edge certificate makes it (checked in the metrics).
    partner: Option<&'static str>,
}

impl Peer {
    fn connect(&self, lb: &siplb::worker::Balancer) -> Tls {
        tls_connect(lb.listen_addrs[0], self.tls.clone(), LB_NAME).expect("TLS handshake")
    }

    fn request(&self, method: &str, extra: &str, drop: &[&str]) -> String {
        request(method, extra, drop).replace("@client.invalid>", &format!("@{}>", self.from))
    }
}

fn request(method: &str, extra: &str, drop: &[&str]) -> String {
    let mut headers = vec![
        "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bKhostile".to_string(),
        "Max-Forwards: 70".into(),
        "From: <sip:h@client.invalid>;tag=h1".into(),
        "To: <sip:svc@pool.test>".into(),
        format!("Call-ID: hostile-{}", siplb::load::msg::unique("")),
        format!("CSeq: 1 {method}"),
    ];
    headers.retain(|h| !drop.iter().any(|d| h.starts_with(d)));
    format!(
        "{method} sip:svc@pool.test SIP/2.0\r\n{}\r\n{extra}Content-Length: 0\r\n\r\n",
        headers.join("\r\n")
    )
}

#[test]
fn hostile_peers_get_answers_or_closed_and_good_calls_still_complete() {
    let pki = Pki::new();
    let peer = Peer {
        tls: pki.client_tls(None),
        from: "client.invalid",
        partner: None,
    };
    hostile_set(&pki, &peer, &[], call_opts);
}

/// The same set from a federation partner's edge (its certificate from its own CA, its users in
/// its domain): the partner rules change nothing in what hostile input gets, and the partner's
/// good calls and everyone else's still complete.
#[test]
fn the_hostile_set_over_a_partner_connection() {
    let pki = Pki::new();
    let partner = PartnerPki::new(&pki, "a.example");
    let peer = Peer {
        tls: partner.edge(&pki, &["sbc.a.example"]),
        from: "a.example",
        partner: Some("a.example"),
    };
    let flags = ["--partner".to_string(), partner.flag(&[])];
    let edge = peer.tls.clone();
    hostile_set(&pki, &peer, &flags, move |pki, lb, n| CallOpts {
        tls: edge.clone(),
        from_domain: "a.example".into(),
        ..call_opts(pki, lb, n)
    });
}

/// Runs every hostile case as `peer` against a balancer with `extra` flags, then 100 good calls
/// made by `good` (and, for a partner, 20 by an ordinary client): every case gets its answer or
/// its close, and every good call completes.
fn hostile_set(
    pki: &Pki,
    peer: &Peer,
    extra: &[String],
    good: impl Fn(&Pki, &siplb::worker::Balancer, usize) -> CallOpts,
) {
    let backends = start_backends(pki, Backends::default(), None);
    let mut flags: Vec<String> = [
        "--max-message-bytes",
        "4096",
        "--handshake-timeout",
        "1",
        "--idle-timeout",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend_from_slice(extra);
    let lb = start_balancer(pki, &backends, 2, &flags);
    let request = |method: &str, extra: &str, drop: &[&str]| peer.request(method, extra, drop);
    let tls = |_: &Pki, lb: &siplb::worker::Balancer| peer.connect(lb);

    // Requests that get a SIP answer on a connection that stays usable.
    let mut s = tls(pki, &lb);
    for (req, want) in [
        (
            request("OPTIONS", "", &["Call-ID"]),
            "SIP/2.0 400 Missing Call-ID Header",
        ),
        (
            request("OPTIONS", "", &["CSeq"]),
            "SIP/2.0 400 Missing CSeq Header",
        ),
        (
            request("OPTIONS", "", &["Max-Forwards"]).replace("Via:", "Max-Forwards: 0\r\nVia:"),
            "SIP/2.0 483",
        ),
        (
            request(
                "OPTIONS",
                &"Via: SIP/2.0/TLS relay.invalid;branch=z9hG4bKr\r\n".repeat(69),
                &[],
            ),
            "SIP/2.0 200",
        ),
    ] {
        s.write_all(req.as_bytes()).expect("send");
        let got = read_head(&mut s);
        assert!(got.starts_with(want), "wanted {want}, got {got:?}");
    }
    // A response with no Via of ours is dropped; the connection still works.
    s.write_all(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS elsewhere.invalid;branch=z9hG4bKx\r\nCall-ID: r\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
        .expect("send");
    s.write_all(request("OPTIONS", "", &[]).as_bytes()).expect("send");
    assert!(
        read_head(&mut s).starts_with("SIP/2.0 200"),
        "connection unusable after a stray response"
    );

    // Answer, then close: a bad Content-Length, an oversize message.
    for (req, want) in [
        (
            request("OPTIONS", "", &[]).replace("Content-Length: 0", "Content-Length: abc"),
            "SIP/2.0 400",
        ),
        (
            request("MESSAGE", "Content-Type: text/plain\r\n", &[]).replace(
                "Content-Length: 0\r\n\r\n",
                &format!("Content-Length: 5000\r\n\r\n{}", "x".repeat(5000)),
            ),
            "SIP/2.0 513",
        ),
    ] {
        let mut s = tls(pki, &lb);
        s.write_all(req.as_bytes()).expect("send");
        let got = read_head(&mut s);
        assert!(got.starts_with(want), "wanted {want}, got {got:?}");
        let sock = s.sock.try_clone().expect("sock");
        assert!(
            closes_within(&mut s, &sock, Duration::from_secs(5)),
            "not closed after {want}"
        );
    }

    // Closed without an answer: binary garbage, plaintext on the TLS port, a client that stops
    // mid-header (slowloris), one that never finishes its TLS handshake.
    let mut garbage = tls(pki, &lb);
    garbage
        .write_all(&[
            0u8, 0xff, 0x13, 0x37, b'\n', 0x01, 0x02, b'\r', b'\n', b'\r', b'\n',
        ])
        .expect("send");
    let sock = garbage.sock.try_clone().expect("sock");
    assert!(
        closes_within(&mut garbage, &sock, Duration::from_secs(5)),
        "binary garbage did not close"
    );
    let mut plain = TcpStream::connect(lb.listen_addrs[0]).expect("connect");
    plain
        .write_all(request("OPTIONS", "", &[]).as_bytes())
        .expect("send");
    let sock = plain.try_clone().expect("sock");
    assert!(
        closes_within(&mut plain, &sock, Duration::from_secs(5)),
        "plaintext on the TLS port did not close"
    );
    let mut slow = tls(pki, &lb);
    slow.write_all(b"INVITE sip:svc@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS sl")
        .expect("send");
    let mut no_handshake = TcpStream::connect(lb.listen_addrs[0]).expect("connect");
    // 300 idle TLS connections stay open while the good calls run.
    let idle: Vec<Tls> = (0..300).map(|_| tls(pki, &lb)).collect();

    let report = run_calls(good(pki, &lb, 100));
    assert_eq!((report.ok, report.failed), (100, 0), "{}", report.summary());
    let others = run_calls(call_opts(pki, &lb, 20));
    assert_eq!((others.ok, others.failed), (20, 0), "{}", others.summary());
    if let Some(domain) = peer.partner {
        // The hostile connections and the good calls' were all the partner's edge.
        let m = metrics_when(&lb, |m| {
            m.partners.get(domain).is_some_and(|p| p.connections >= 305)
        });
        let p = m.partners.get(domain).cloned().unwrap_or_default();
        assert!(p.connections >= 305, "{p:?}");
        assert!(p.refusals.is_empty(), "{p:?}");
    }

    let sock = slow.sock.try_clone().expect("sock");
    assert!(
        closes_within(&mut slow, &sock, Duration::from_secs(10)),
        "slowloris client not closed (idle timeout)"
    );
    let sock = no_handshake.try_clone().expect("sock");
    assert!(
        closes_within(&mut no_handshake, &sock, Duration::from_secs(10)),
        "silent TCP client not closed (handshake timeout)"
    );
    drop(idle);
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    assert_one_backend_per_call(&report, &stats);
    lb.shutdown();
}

#[test]
fn connections_per_source_address_are_capped() {
    let Harness {
        pki,
        backends: _backends,
        lb,
    } = Harness::new()
        .backends(1)
        .workers(2)
        .flags(&["--max-connections-per-ip".into(), "2".into()])
        .start();
    let handshakes = |n: usize| -> Vec<Option<Tls>> {
        (0..n)
            .map(|_| tls_connect(lb.listen_addrs[0], pki.client_tls(None), LB_NAME))
            .collect()
    };
    let mut first = handshakes(2);
    assert!(
        first.iter().all(Option::is_some),
        "the first two connections were refused"
    );
    assert!(
        handshakes(1)[0].is_none(),
        "a third connection from the same address got in"
    );
    first.pop();
    // The close reaches siplb asynchronously: a refused try holds nothing, so try until one gets
    // in (or the deadline says the slot was never given back).
    wait_until("the freed slot to be given back", || handshakes(1)[0].is_some());
    lb.shutdown();
}

#[test]
fn a_flood_is_read_in_turns_all_answered_and_starves_nobody() {
    let _heavy = machine_to_ourselves();
    // A small message limit makes each bounded read small, so the flood must wait on the backlog.
    let Harness {
        pki,
        backends: _backends,
        lb,
    } = Harness::new()
        .workers(2)
        .flags(&["--max-message-bytes".into(), "1024".into()])
        .start();
    // ~2 MB of requests in one go: many times what a connection may read in one event-loop turn.
    const N: usize = 6000;
    let flood: String = (0..N).map(|_| request("OPTIONS", "", &[])).collect();
    let mut s = tls(&pki, &lb);

    let caller = {
        let opts = call_opts(&pki, &lb, 100);
        std::thread::spawn(move || run_calls(opts))
    };
    s.write_all(flood.as_bytes()).expect("flood");

    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(10);
    let count = |b: &[u8]| b.windows(11).filter(|w| w == b"SIP/2.0 200").count();
    while count(&got) < N && Instant::now() < until {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("flood connection failed: {e}"),
        }
    }
    assert_eq!(count(&got), N, "not every flooded request was answered");
    let report = caller.join().expect("caller");
    assert_eq!((report.ok, report.failed), (100, 0), "{}", report.summary());
    lb.shutdown();
}

/// A client that sends its last request and hangs up at once (data and FIN together): the read
/// that drains the data comes back short, and siplb skips the read that would find nothing — but
/// not when the event says the peer closed, or the FIN behind the data would go unseen until the
/// idle timeout (180 s). The request is forwarded and the connection closed.
#[test]
fn a_request_and_a_hang_up_together_are_both_seen() {
    let Harness { pki, backends, lb } = Harness::new().backends(1).workers(1).start();
    for round in 0..5 {
        let mut s = tls(&pki, &lb);
        let req = request("OPTIONS", "", &[]);
        let call_id = req
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .expect("Call-ID")
            .to_string();
        s.conn.writer().write_all(req.as_bytes()).expect("request");
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock).expect("send");
        }
        s.sock.shutdown(std::net::Shutdown::Write).expect("FIN");
        // siplb closes its side: EOF (after its close_notify) well before the 5 s read timeout.
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.sock.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break false,
                Err(_) => break true,
            }
        };
        assert!(
            closed,
            "round {round}: siplb did not see the FIN behind the request"
        );
        let until = Instant::now() + Duration::from_secs(5);
        while backends[0].snapshot().last_request(&call_id).is_none() {
            assert!(
                Instant::now() < until,
                "round {round}: the request was not forwarded"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    lb.shutdown();
}
