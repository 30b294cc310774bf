//! SIP over secure WebSocket (RFC 7118) end to end, real sockets and TLS: calls over a WebSocket
//! reach the pool and come back (the server's BYE too), a browser-like client registers and the
//! registrar calls it back through siplb over its WebSocket, and the server side of RFC 6455 on
//! bad input: each upgrade fault gets its HTTP status and a close, each frame fault its close
//! code, a slow upgrade is closed — and none of it harms the calls of others.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;
use siplb::load::caller::CallOpts;
use siplb::load::msg::{self, Dialog};
use siplb::load::server::ByeOn;
use siplb::sip::Method;
use siplb::ws::frame::{self, Decoder, Event, client_frame};

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: siplb.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\
Origin: https://phone.example.com\r\n\r\n";

fn wss_balancer(
    pki: &Pki,
    backends: &[siplb::load::server::ServerHandle],
    extra: &[&str],
) -> siplb::worker::Balancer {
    let mut flags: Vec<String> = vec!["--listen-wss".into(), "127.0.0.1:0".into()];
    flags.extend(extra.iter().map(|s| s.to_string()));
    start_balancer(pki, backends, 2, &flags)
}

fn ws_calls(pki: &Pki, lb: &siplb::worker::Balancer, n: usize) -> CallOpts {
    CallOpts {
        target: lb.wss_addrs[0],
        ws: true,
        ..call_opts(pki, lb, n)
    }
}

#[test]
fn calls_over_a_websocket_reach_the_pool_and_come_back() {
    let pki = Pki::new();
    // The servers hang up on another connection of siplb's than the INVITE came on: with two
    // workers, the BYE is handed to the WebSocket's worker, which frames it.
    let opts = Backends {
        bye_after: Some(Duration::from_millis(20)),
        bye_on: ByeOn::Other,
        ..Backends::default()
    };
    let backends = start_backends(&pki, opts, None);
    let lb = wss_balancer(&pki, &backends, &[]);
    assert_eq!(lb.wss_addrs.len(), 1);
    // One persistent WebSocket; the servers hang up over it.
    let report = run_calls(CallOpts {
        remote_bye: true,
        ..ws_calls(&pki, &lb, 60)
    });
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    // A WebSocket per call, the caller hanging up.
    let per_call = run_calls(CallOpts {
        per_call_connection: true,
        ..ws_calls(&pki, &lb, 20)
    });
    assert_eq!((per_call.ok, per_call.failed), (20, 0), "{}", per_call.summary());
    // TLS clients alongside.
    let tls = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!((tls.ok, tls.failed), (20, 0), "{}", tls.summary());
    wait_until("every server BYE answered over the WebSocket", || {
        calls_that_saw(&backends, "200 BYE") >= 60
    });
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    assert_one_backend_per_call(&report, &stats);
    for id in &report.call_ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "sent BYE", "200 BYE"]);
    }
    // The server saw the browser's Via (WSS, with received) and siplb's Record-Route naming the
    // WebSocket side for the client.
    let id = &per_call.call_ids[0];
    let last = stats
        .iter()
        .find_map(|s| s.last_request(id))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .expect("a request of the call");
    assert!(last.contains("SIP/2.0/WSS sipload.invalid;"), "{last}");
    assert!(last.contains(";received=127.0.0.1"), "{last}");
    let m = metrics_when(&lb, |m| m.ws_upgrades >= 21 && m.handoffs > 0);
    assert!(m.handoffs > 0, "no BYE crossed workers: {m:?}");
    assert_eq!((m.ws_accepted, m.ws_upgrades), (21, 21), "{m:?}");
    assert!(m.ws_refused.is_empty() && m.ws_failures.is_empty(), "{m:?}");
    let prom = m.prometheus();
    assert!(
        prom.contains("siplb_ws_connections_total{stage=\"upgraded\"} 21"),
        "{prom}"
    );
    lb.shutdown();
}

#[test]
fn the_invite_a_websocket_client_sends_is_record_routed_over_the_ws_side() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let lb = wss_balancer(&pki, &backends, &["--advertise-wss", "ws.siplb.test:8443"]);
    let mut c = TestClient::connect_ws(&pki, lb.wss_addrs[0]);
    let d = establish(&mut c, "rr-ws");
    // The 200 the client got carries both of siplb's entries; the one the client follows names
    // the WebSocket side.
    let rr = d.route.join(", ");
    assert!(
        rr.contains("<sip:ws.siplb.test:8443;transport=ws;lr;siplb="),
        "{rr}"
    );
    let mut d = d;
    c.send(&d.request("BYE", None, None, ""));
    c.wait_for("200 BYE", |m| is_response(m, 200, Method::Bye));
    lb.shutdown();
}

#[test]
fn a_websocket_client_registers_and_the_registrar_calls_it_over_its_websocket() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::default(), None);
    let lb = wss_balancer(&pki, &backends, &[]);
    let mut c = TestClient::connect_ws(&pki, lb.wss_addrs[0]);
    c.inbox.answer_requests = true;
    let reg_id = msg::unique("reg-");
    let mut reg = Dialog {
        call_id: reg_id.clone(),
        // sipload's registrar calls back the user `callback`.
        local: format!("<sip:callback@pool.test>;tag={}", msg::unique("f")),
        remote: "<sip:callback@pool.test>".into(),
        remote_target: "sip:pool.test".into(),
        route: vec![],
        cseq: 0,
        host: "df7jal23ls0d.invalid".into(),
    };
    // What JsSIP sends.
    c.send(&reg.request(
        "REGISTER",
        None,
        None,
        "Contact: <sip:x8s3@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;\
+sip.instance=\"<urn:uuid:2a1e7b4c-0c7e-4b8e-9d4e-0a5f3e6d7c8b>\";expires=600\r\n\
Expires: 600\r\nSupported: path,gruu,outbound\r\n",
    ));
    c.wait_for("200 for REGISTER", |m| is_response(m, 200, Method::Register));
    // The registrar got a Path with `ob`: this flow, and only it, reaches the browser.
    let register = backends
        .iter()
        .find_map(|b| {
            b.snapshot()
                .last_request(&reg_id)
                .map(|r| String::from_utf8_lossy(r).into_owned())
        })
        .expect("a registrar saw the REGISTER");
    assert!(register.contains("\r\nPath: <sip:"), "{register}");
    assert!(register.contains(";lr;ob;siplb="), "{register}");
    // It calls the browser now, through siplb (Route from the Path), over the WebSocket.
    let invite = c.wait_for("INVITE from the registrar", |m| {
        m.method() == Some(Method::Invite)
    });
    let inv = siplb::sip::Message::parse(&invite).expect("INVITE parses");
    let cb_id = inv.call_id().map(msg::text).expect("Call-ID");
    // Towards the browser siplb names its WebSocket side: its Via says WSS, and the Record-Route
    // entry the browser follows has transport=ws (RFC 7118).
    let wss = format!("127.0.0.1:{}", lb.wss_addrs[0].port());
    let text = String::from_utf8_lossy(&invite).into_owned();
    assert!(
        text.contains(&format!("\r\nVia: SIP/2.0/WSS {wss};branch=")),
        "{text}"
    );
    assert!(
        text.contains(&format!("<sip:{wss};transport=ws;lr;siplb=")),
        "{text}"
    );
    c.wait_for("ACK", |m| m.method() == Some(Method::Ack));
    c.wait_for("BYE", |m| m.method() == Some(Method::Bye));
    wait_until("the 200 for the registrar's BYE", || {
        backends.iter().any(|b| b.snapshot().saw(&cb_id, "200 BYE"))
    });
    lb.shutdown();
}

/// A raw TLS connection to the WebSocket listener, for exchanges byte by byte.
fn raw(pki: &Pki, lb: &siplb::worker::Balancer) -> Tls {
    tls_connect(lb.wss_addrs[0], pki.client_tls(None), LB_NAME).expect("TLS handshake")
}

/// Reads until the HTTP head has come (or EOF); the head.
fn http_head(s: &mut Tls) -> String {
    read_head(s)
}

/// Whether siplb closes the connection (EOF or reset) within a deadline — a hang detector.
fn closed(s: &mut Tls) -> bool {
    let sock = s.sock.try_clone().expect("sock");
    closes_within(s, &sock, Duration::from_secs(20))
}

/// An upgraded WebSocket, ready for frames.
fn upgraded(pki: &Pki, lb: &siplb::worker::Balancer) -> Tls {
    let mut s = raw(pki, lb);
    s.write_all(UPGRADE.as_bytes()).expect("upgrade");
    let head = http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    s
}

/// The server's frames until `want` returns true for one of them (or the connection ends):
/// (opcode-ish event, payload) pairs.
fn frames_until(s: &mut Tls, want: impl Fn(&Event, &[u8]) -> bool) -> Vec<(Event, Vec<u8>)> {
    s.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut d = Decoder::of_server(1 << 20);
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        loop {
            let e = d.next(&mut buf);
            let payload = match &e {
                Event::Message { range, .. } | Event::Ping(range) => buf[range.clone()].to_vec(),
                _ => Vec::new(),
            };
            match e {
                Event::Partial => break,
                e => {
                    let done = want(&e, &payload) || matches!(e, Event::Fail(..));
                    seen.push((e, payload));
                    if done {
                        return seen;
                    }
                }
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return seen,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The close frame's code siplb sent (read raw: a close frame is header + 2-byte code + reason).
fn close_code(s: &mut Tls) -> Option<u16> {
    s.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Frames from the server: skip to the first close (opcode 8).
        let mut at = 0;
        while at + 2 <= buf.len() {
            let (op, len) = (buf[at] & 0x0F, usize::from(buf[at + 1] & 0x7F));
            if op == frame::OP_CLOSE && at + 2 + len <= buf.len() {
                return (len >= 2).then(|| u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
            }
            at += 2 + len;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn options(call_id: &str) -> String {
    format!(
        "OPTIONS sip:svc@pool.test SIP/2.0\r\nVia: SIP/2.0/WSS abc.invalid;branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@abc.invalid>;tag=1\r\nTo: <sip:svc@pool.test>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

const M: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

#[test]
fn upgrade_faults_get_their_http_status_and_a_close() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(2), None);
    let lb = wss_balancer(
        &pki,
        &backends,
        &[
            "--wss-allow-origin",
            "https://phone.example.com",
            "--message-timeout",
            "1",
        ],
    );
    let cases: Vec<(String, &str)> = vec![
        (
            "GET / HTTP/1.1\r\nHost: siplb.test\r\n\r\n".into(),
            "HTTP/1.1 426 ",
        ),
        (
            UPGRADE.replace("Protocol: sip", "Protocol: chat"),
            "HTTP/1.1 400 ",
        ),
        (
            UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            "HTTP/1.1 400 ",
        ),
        (UPGRADE.replace("Version: 13", "Version: 7"), "HTTP/1.1 426 "),
        (
            UPGRADE.replace("phone.example.com", "evil.example"),
            "HTTP/1.1 403 ",
        ),
        (UPGRADE.replace("GET", "POST"), "HTTP/1.1 405 "),
        (
            UPGRADE.replace("\r\n\r\n", &format!("\r\nX-Pad: {}\r\n\r\n", "p".repeat(9000))),
            "HTTP/1.1 431 ",
        ),
        // SIP straight over TLS on the WebSocket port.
        (options("sip-on-ws-port"), "HTTP/1.1 400 "),
    ];
    assert_eq!(cases.len(), 8);
    for (req, want) in &cases {
        let mut s = raw(&pki, &lb);
        s.write_all(req.as_bytes()).expect("send");
        let head = http_head(&mut s);
        assert!(head.starts_with(want), "{req:?}: {head}");
        assert!(closed(&mut s), "{req:?}: not closed");
    }
    // A slow upgrade: half a head, then nothing — closed by --message-timeout.
    let mut slow = raw(&pki, &lb);
    slow.write_all(&UPGRADE.as_bytes()[..30]).expect("send");
    assert!(closed(&mut slow), "a slow upgrade was not closed");
    // Others' WebSocket calls were never harmed.
    let report = run_calls(ws_calls(&pki, &lb, 30));
    assert_eq!((report.ok, report.failed), (30, 0), "{}", report.summary());
    assert_eq!(
        calls_that_saw(&backends, "OPTIONS"),
        0,
        "a refused upgrade's bytes reached a server"
    );
    let m = metrics_when(&lb, |m| m.ws_refused.values().sum::<u64>() >= 8);
    assert_eq!(m.ws_refused.values().sum::<u64>(), 8, "{:?}", m.ws_refused);
    lb.shutdown();
}

#[test]
fn frame_faults_get_their_close_code_and_harm_no_one() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(2), None);
    let lb = wss_balancer(&pki, &backends, &["--max-message-bytes", "4096"]);
    let text = |p: &[u8]| client_frame(frame::OP_TEXT, true, p, M);
    let mut unmasked = text(options("unmasked").as_bytes());
    unmasked[1] &= 0x7F;
    let mut long_ping = client_frame(frame::OP_PING, true, &[7; 126], M);
    long_ping[0] = 0x89;
    let mut two = client_frame(frame::OP_TEXT, false, b"OPTIONS", M);
    two.extend(text(b"again"));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked frame", unmasked, 1002),
        (
            "invalid UTF-8 in a text frame",
            text(&[b'O', 0xff, 0xfe, b'x']),
            1007,
        ),
        ("a message over --max-message-bytes", text(&[b'x'; 5000]), 1009),
        (
            "a fragmented ping",
            client_frame(frame::OP_PING, false, b"p", M),
            1002,
        ),
        ("a ping over 125 bytes", long_ping, 1002),
        (
            "a continuation with no message",
            client_frame(frame::OP_CONT, true, b"x", M),
            1002,
        ),
        ("a new message inside a fragmented one", two, 1002),
        (
            "an invalid close code",
            client_frame(frame::OP_CLOSE, true, &[0x03, 0xEC], M),
            1002,
        ),
        (
            "a reserved opcode",
            {
                let mut f = text(b"x");
                f[0] = 0x83;
                f
            },
            1002,
        ),
    ];
    assert_eq!(cases.len(), 9);
    for (what, bytes, want) in &cases {
        let mut s = upgraded(&pki, &lb);
        s.write_all(bytes).expect("send");
        assert_eq!(close_code(&mut s), Some(*want), "{what}");
        assert!(closed(&mut s), "{what}: not closed");
    }
    // The close handshake: our close is echoed, then the connection ends.
    let mut s = upgraded(&pki, &lb);
    s.write_all(&client_frame(
        frame::OP_CLOSE,
        true,
        &[0x03, 0xE8, b'b', b'y', b'e'],
        M,
    ))
    .expect("close");
    assert_eq!(close_code(&mut s), Some(1000));
    assert!(closed(&mut s), "not closed after the close handshake");
    // A SIP request in three fragments with a ping between them: the pong comes, then the answer
    // in one text frame.
    let mut s = upgraded(&pki, &lb);
    let req = options("fragmented");
    let (a, rest) = req.as_bytes().split_at(10);
    let (b, c) = rest.split_at(40);
    let mut bytes = client_frame(frame::OP_TEXT, false, a, M);
    bytes.extend(client_frame(frame::OP_PING, true, b"still there?", [1, 2, 3, 4]));
    bytes.extend(client_frame(frame::OP_CONT, false, b, [5, 6, 7, 8]));
    bytes.extend(client_frame(frame::OP_CONT, true, c, M));
    s.write_all(&bytes).expect("send");
    let seen = frames_until(&mut s, |e, p| {
        matches!(e, Event::Message { .. }) && p.starts_with(b"SIP/2.0 ")
    });
    assert_eq!(seen.first().map(|(e, _)| e), Some(&Event::Pong), "{seen:?}");
    let answer = seen
        .last()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    assert!(answer.starts_with("SIP/2.0 200"), "{seen:?}");
    assert!(answer.contains("Call-ID: fragmented"), "{answer}");
    // Two SIP messages in one WebSocket message: 400, and the connection stays.
    let twice = format!("{}{}", options("one"), options("two"));
    s.write_all(&text(twice.as_bytes())).expect("send");
    let seen = frames_until(&mut s, |_, p| p.starts_with(b"SIP/2.0 400"));
    let last = seen
        .last()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    assert!(
        last.starts_with("SIP/2.0 400 One SIP Message Per WebSocket Message"),
        "{seen:?}"
    );
    s.write_all(&text(options("after").as_bytes())).expect("send");
    let seen = frames_until(&mut s, |_, p| p.starts_with(b"SIP/2.0 200"));
    assert!(!seen.is_empty(), "the connection did not stay");
    // Nobody else was harmed.
    let report = run_calls(ws_calls(&pki, &lb, 30));
    assert_eq!((report.ok, report.failed), (30, 0), "{}", report.summary());
    let m = metrics_when(&lb, |m| m.ws_failures.values().sum::<u64>() >= 9);
    assert_eq!(m.ws_failures.values().sum::<u64>(), 9, "{:?}", m.ws_failures);
    lb.shutdown();
}

#[test]
fn siplb_ends_its_side_of_a_websocket_with_a_close_frame() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let lb = wss_balancer(&pki, &backends, &["--idle-timeout", "1"]);
    // Idle past --idle-timeout: 1000, then the close.
    let mut idle = upgraded(&pki, &lb);
    assert_eq!(close_code(&mut idle), Some(1000));
    assert!(closed(&mut idle), "the idle WebSocket was not closed");
    lb.shutdown();
    // Stopping: 1001 (going away) to a WebSocket that is still busy.
    let lb = wss_balancer(&pki, &backends, &[]);
    let mut busy = upgraded(&pki, &lb);
    busy.write_all(&client_frame(
        frame::OP_TEXT,
        true,
        options("before-stop").as_bytes(),
        M,
    ))
    .expect("send");
    let seen = frames_until(&mut busy, |_, p| p.starts_with(b"SIP/2.0 200"));
    assert!(!seen.is_empty(), "no answer before the stop");
    let stopper = std::thread::spawn(move || lb.shutdown());
    assert_eq!(close_code(&mut busy), Some(1001));
    stopper.join().expect("shutdown");
}

/// Browsers send nothing between registrations: siplb pings a silent WebSocket client half-way
/// to `--idle-timeout`, and a client that answers (sipload's, like a browser) stays connected
/// well past it; one that does not is closed at it (`siplb_ends_its_side_...` above).
#[test]
fn a_websocket_client_that_answers_pings_outlives_the_idle_timeout() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let lb = wss_balancer(&pki, &backends, &["--idle-timeout", "1"]);
    let mut c = TestClient::connect_ws(&pki, lb.wss_addrs[0]);
    let mut d = new_dialog("keepalive-1", "sip:svc@pool.test");
    c.send(&d.request("OPTIONS", None, None, ""));
    c.wait_for("200 OPTIONS", |m| is_response(m, 200, Method::Options));
    // An observation window for what must not happen: three idle timeouts of silence.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert!(
            c.ep.is_open(c.conn),
            "siplb closed a WebSocket client that answers its pings"
        );
        let _ = c.ep.turn(&mut c.inbox, Duration::from_millis(20));
    }
    let mut d2 = new_dialog("keepalive-2", "sip:svc@pool.test");
    c.send(&d2.request("OPTIONS", None, None, ""));
    c.wait_for("200 OPTIONS after the silence", |m| {
        is_response(m, 200, Method::Options) && m.call_id() == Some(&b"keepalive-2"[..])
    });
    lb.shutdown();
}
