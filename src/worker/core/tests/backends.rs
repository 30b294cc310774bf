//! The pool as the core runs it: probes count only when they carry this worker's secret, refused
//! connections are retried with back-off (not in a loop), and the operator's drain and disable.

use std::time::Duration;

use super::*;
use crate::admin::{AdminState, Override};
use crate::route::Avail;

#[test]
fn only_the_answer_to_our_own_probe_brings_a_server_up_and_none_leaves_siplb() {
    let mut sim = Sim::new(1, &[]);
    let c = sim.client();
    let mut probe = None;
    for _ in 0..100 {
        sim.tick(Duration::from_millis(10));
        if let Some(s) = sim.conn_of(0) {
            if sim.wire(s).is_handshaking() {
                sim.send(s, b"");
            }
            probe = sim.received(s).into_iter().find(|m| method(m) == "OPTIONS");
            if probe.is_some() {
                break;
            }
        }
    }
    let probe = probe.expect("a probe went out");
    let s = sim.conn_of(0).unwrap();
    let secret = format!("{SECRET:016x}");
    let text = String::from_utf8(probe.clone()).unwrap();
    assert!(call_id(&probe).contains(&secret), "{text}");
    // Someone who saw an earlier probe but not this worker's secret cannot bring it up.
    let forged = text.replace(&secret, "0123456789abcdef").into_bytes();
    sim.send(s, &answer(&forged, 200, Extra::default()));
    assert_ne!(sim.core.be.pool.avail(0), Avail::Up, "a forged answer counted");
    // The real answer does; neither reached the client.
    sim.send(s, &answer(&probe, 200, Extra::default()));
    assert_eq!(sim.core.be.pool.avail(0), Avail::Up);
    assert!(sim.received(c).is_empty());
}

#[test]
fn a_refusing_server_is_retried_with_back_off_and_reconnected_once_it_listens() {
    let mut sim = Sim::new(1, &[]);
    sim.refuse(0, true);
    sim.run_for(Duration::from_secs(5), Duration::from_millis(10));
    let tries = sim.attempts(0);
    // 500 turns of 10 ms; back-off from 100 ms to 500 ms makes it about ten tries.
    assert!((5..=15).contains(&tries), "{tries} connection attempts in 5 s");
    assert!(sim.conn_of(0).is_none());
    sim.refuse(0, false);
    sim.run_for(Duration::from_millis(600), Duration::from_millis(10));
    assert!(
        sim.conn_of(0).is_some(),
        "connected again within the longest back-off"
    );
    sim.all_up();
}

#[test]
fn a_server_refusing_our_certificate_after_a_tls13_handshake_backs_off_and_is_never_up() {
    let mut sim = Sim::new(2, &[]);
    sim.refuse_cert(0, true);
    let mut up = false;
    for _ in 0..1000 {
        sim.run_for(Duration::from_millis(10), Duration::from_millis(10));
        up |= sim.core.be.pool.avail(0) == Avail::Up;
    }
    // Doubling from 100 ms to 30 s: 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s — seven in ten seconds,
    // where a back-off reset by every completed handshake makes a hundred.
    let tries = sim.attempts(0);
    assert!((5..=9).contains(&tries), "{tries} handshakes in 10 s");
    assert!(!up, "a server that refuses our certificate was taken for up");
    assert_eq!(sim.core.be.pool.avail(1), Avail::Up, "the other one is up");
    assert!(
        sim.core.be.counters[0].failures.keys().any(|k| k.contains("TLS")),
        "{:?}",
        sim.core.be.counters[0].failures
    );
}

#[test]
fn with_the_tls_health_check_a_server_that_never_answers_options_stays_up_and_is_not_probed() {
    let mut sim = Sim::new(1, &["--health-check", "tls", "--health-interval", "1"]);
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.extend(sim.run_for(Duration::from_secs(1), Duration::from_millis(50)));
        assert_eq!(sim.core.be.pool.avail(0), Avail::Up);
    }
    let s = sim.conn_of(0).unwrap();
    seen.extend(sim.received(s).into_iter().map(|m| (0, m)));
    assert!(seen.is_empty(), "nothing was sent to it: {seen:?}");
}

fn set(sim: &Sim, name: &str, state: AdminState) {
    let mut o = sim.shared.admin.lock().unwrap();
    o.insert(name.to_string(), Override { state, weight: None });
    drop(o);
    sim.shared
        .admin_gen
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

#[test]
fn a_draining_server_keeps_its_dialogs_and_a_disabled_one_gets_nothing() {
    let mut sim = Sim::new(2, &[]);
    sim.all_up();
    let c = sim.client();
    // A dialog on b0 before the drain.
    let mut on_b0 = None;
    for i in 0..40 {
        let (ok, b) = sim.call(c, &format!("pre-{i}"));
        if b == 0 {
            on_b0 = Some(ok);
            break;
        }
    }
    let ok = on_b0.expect("one of 40 calls went to b0");
    set(&sim, "b0.test", AdminState::Draining);
    sim.tick(Duration::from_millis(1));
    for i in 0..20 {
        let call = format!("drained-{i}");
        assert_eq!(
            sim.invite(c, &call).0,
            1,
            "new dialogs avoid a draining server: {call}"
        );
    }
    let bye = in_dialog("BYE", &ok, 2);
    sim.send(c, &bye);
    let got = sim.serve_probes(0);
    assert_eq!(got.len(), 1, "the draining server still gets its dialog's BYE");
    assert_eq!(method(&got[0]), "BYE");
    // Disabled: not even new dialogs when it is the only one left.
    set(&sim, "b0.test", AdminState::Enabled);
    set(&sim, "b1.test", AdminState::Disabled);
    sim.tick(Duration::from_millis(1));
    for i in 0..20 {
        let call = format!("disabled-{i}");
        assert_eq!(sim.invite(c, &call).0, 0, "{call}");
    }
    set(&sim, "b0.test", AdminState::Disabled);
    sim.tick(Duration::from_millis(1));
    sim.send(c, &invite("nobody"));
    assert!(sim.who_got("nobody").is_empty());
    let heard = sim.received(c);
    assert_eq!(heard.iter().map(|m| status(m)).collect::<Vec<_>>(), [Some(503)]);
}
