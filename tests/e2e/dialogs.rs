//! End to end: the dialog cases of the routing contract — the callee hangs up (from another
//! worker's connection and from the peer listener), CANCEL and the ACK of a non-2xx, REGISTER
//! then a call from the registrar to the registered client, pins surviving a back end leaving,
//! and the CRLF keep-alive.

use std::time::Duration;

use crate::common::*;
use siplb::load::msg::{self, Dialog};
use siplb::load::server::ByeOn;
use siplb::sip::Method;

fn callee_hangs_up(bye_on: ByeOn, peer_listen: bool) {
    let pki = Pki::new();
    let opts = Backends {
        count: 3,
        bye_after: Some(Duration::from_millis(20)),
        bye_on,
        silent: false,
        crash_on_invite: false,
    };
    // With a peer listener the back ends must know its address before they start: bind it on a
    // fixed free port first.
    let peer_addr = peer_listen.then(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
        l.local_addr().expect("addr")
    });
    let backends = start_backends(&pki, opts, peer_addr);
    let extra: Vec<String> = match peer_addr {
        Some(a) => vec!["--peer-listen".into(), a.to_string()],
        None => vec![],
    };
    let lb = start_balancer(&pki, &backends, 2, &extra);
    let mut call = call_opts(&pki, &lb, 60);
    call.remote_bye = true;
    let report = run_calls(call);
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    // The caller is done when it has the BYE; its 200 may still be on the way to the back end.
    let all_answered = || {
        report
            .call_ids
            .iter()
            .all(|id| backends.iter().any(|b| b.snapshot().saw(id, "200 BYE")))
    };
    wait_until("every BYE's 200 at its back end", all_answered);
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    assert_one_backend_per_call(&report, &stats);
    for id in &report.call_ids {
        assert_dialog(&stats, id, &["sent BYE", "200 BYE"]);
    }
    if bye_on == ByeOn::Other {
        // The BYEs left on the other worker's pool connection, so they crossed workers.
        let m = metrics_when(&lb, |m| m.handoffs >= 60);
        assert!(
            m.handoffs >= 60,
            "no cross-worker hand-off happened: {}",
            m.handoffs
        );
    }
    lb.shutdown();
}

#[test]
fn callee_bye_from_another_workers_connection() {
    callee_hangs_up(ByeOn::Other, false);
}

#[test]
fn callee_bye_through_the_peer_listener() {
    callee_hangs_up(ByeOn::Peer, true);
}

#[test]
fn cancel_and_non_2xx_ack_reach_the_invites_back_end() {
    let Harness { pki, backends, lb } = Harness::new().workers(2).start();
    let mut calls = Vec::new();
    for i in 0..6 {
        let mut c = TestClient::connect(&pki, &lb);
        let call_id = format!("cancel-{i}-{}", msg::unique(""));
        let mut d = new_dialog(&call_id, "sip:hold@pool.test");
        let branch = msg::branch();
        let invite = d.request("INVITE", None, Some(&branch), "");
        c.send(&invite);
        c.wait_for("180", |m| is_response(m, 180, Method::Invite));
        // CANCEL: same branch, same CSeq number, same Request-URI (RFC 3261 §9.1).
        c.send(&d.request("CANCEL", Some(1), Some(&branch), ""));
        c.wait_for("200 for CANCEL", |m| is_response(m, 200, Method::Cancel));
        let resp = c.wait_for("487", |m| is_response(m, 487, Method::Invite));
        let parsed = siplb::sip::Message::parse(&resp).expect("487 parses");
        // ACK for the non-2xx: INVITE's branch, To with the 487's tag.
        d.remote = parsed.value(parsed.to).map(msg::text).expect("To");
        c.send(&d.request("ACK", Some(1), Some(&branch), ""));
        calls.push((call_id, c));
    }
    // Nothing answers an ACK: wait until each reached a back end.
    wait_until("every ACK at a back end", || {
        calls
            .iter()
            .all(|(id, _)| backends.iter().any(|b| b.snapshot().saw(id, "ACK")))
    });
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    for (id, _) in &calls {
        assert_dialog(&stats, id, &["INVITE", "CANCEL", "ACK"]);
    }
    lb.shutdown();
}

#[test]
fn register_then_the_registrar_calls_the_client() {
    let Harness { pki, backends, lb } = Harness::new().workers(2).start();
    let mut c = TestClient::connect(&pki, &lb);
    c.inbox.answer_requests = true;
    let mut reg = Dialog {
        call_id: msg::unique("reg-"),
        local: format!("<sip:callback@pool.test>;tag={}", msg::unique("f")),
        remote: "<sip:callback@pool.test>".into(),
        remote_target: "sip:pool.test".into(),
        route: vec![],
        cseq: 0,
        host: "client.invalid".into(),
    };
    c.send(&reg.request(
        "REGISTER",
        None,
        None,
        "Contact: <sip:callback@client.invalid;transport=tls>\r\nExpires: 3600\r\nSupported: path\r\n",
    ));
    c.wait_for("200 for REGISTER", |m| is_response(m, 200, Method::Register));
    // The registrar now calls the registered contact through siplb (Route from the Path).
    let invite = c.wait_for("INVITE from the registrar", |m| {
        m.method() == Some(Method::Invite)
    });
    let inv = siplb::sip::Message::parse(&invite).expect("INVITE parses");
    let cb_id = inv.call_id().map(msg::text).expect("Call-ID");
    assert!(
        inv.record_route.is_some(),
        "siplb record-routes the registrar's INVITE"
    );
    c.wait_for("ACK", |m| m.method() == Some(Method::Ack));
    c.wait_for("BYE", |m| m.method() == Some(Method::Bye));
    wait_until("the 200 for the registrar's BYE", || {
        backends.iter().any(|b| b.snapshot().saw(&cb_id, "200 BYE"))
    });
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    let registrar = stats
        .iter()
        .find(|s| s.saw(&cb_id, "sent INVITE"))
        .expect("a registrar sent the INVITE");
    assert!(
        registrar.saw(&cb_id, "200 INVITE") && registrar.saw(&cb_id, "200 BYE"),
        "{:?}",
        registrar.calls[&cb_id]
    );
    lb.shutdown();
}

#[test]
fn pins_keep_dialogs_on_their_back_end_when_another_leaves() {
    // Hash on the Request-URI user: in-dialog requests go to the server's Contact ("uas"), which
    // hashes to one fixed back end — only the pin in Record-Route keeps each dialog where it began.
    let Harness {
        pki,
        mut backends,
        lb,
    } = Harness::new()
        .workers(2)
        .flags(&["--balance".into(), "ruri-user".into()])
        .start();
    let mut call = call_opts(&pki, &lb, 90);
    call.vary_user = true;
    // Held long enough that none ends before every one is set up, even on a slow machine.
    call.hold = Duration::from_secs(3);
    call.rate = 300.0;
    call.concurrency = 90;
    let caller = std::thread::spawn(move || run_calls(call));
    wait_until("90 calls set up", || calls_that_saw(&backends, "ACK") >= 90);
    let gone = backends.remove(1).stop();
    let report = caller.join().expect("caller");
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    let on_gone: Vec<&String> = report
        .call_ids
        .iter()
        .filter(|id| gone.calls.contains_key(*id))
        .collect();
    assert!(!on_gone.is_empty(), "no call was on the back end that left");
    // Calls on the remaining back ends finished there; the others failed, none moved.
    for id in &report.call_ids {
        let seen = stats.iter().filter(|s| s.calls.contains_key(id)).count();
        if on_gone.contains(&id) {
            assert_eq!(seen, 0, "{id} moved from the departed back end");
        } else {
            assert_eq!(seen, 1, "{id} touched {seen} back ends");
            let s = stats.iter().find(|s| s.calls.contains_key(id)).expect("seen");
            assert!(
                s.saw(id, "BYE"),
                "{id}: BYE did not reach its back end: {:?}",
                s.calls[id]
            );
        }
    }
    assert_eq!(report.ok + on_gone.len(), 90, "{}", report.summary());
    lb.shutdown();
}

#[test]
fn crlf_keepalive_gets_a_pong() {
    let Harness {
        pki,
        backends: _backends,
        lb,
    } = Harness::new().backends(1).workers(1).start();
    let mut tls = tls_connect(lb.listen_addrs[0], pki.client_tls(None), LB_NAME).expect("handshake");
    use std::io::{Read, Write};
    tls.write_all(b"\r\n\r\n").expect("ping");
    let mut pong = [0u8; 2];
    tls.read_exact(&mut pong).expect("pong");
    assert_eq!(&pong, b"\r\n");
    lb.shutdown();
}
