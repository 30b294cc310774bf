//! Slow peers and stopping: servers slow to read make siplb stop reading clients until they catch
//! up (nothing lost), a client that does not read loses its own connection when the output budget
//! is spent (never another's), and a draining worker waits for the dialogs in flight.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

/// An INVITE of about `n` bytes (its body padded).
fn big_invite(call: &str, n: usize) -> Vec<u8> {
    let body = "v".repeat(n);
    let head = String::from_utf8(invite(call)).unwrap();
    head.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .into_bytes()
}

/// `m` with about `n` bytes of headers more.
fn padded(m: &[u8], n: usize) -> Vec<u8> {
    let end = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    let pad = format!("X-Pad: {}\r\n", "p".repeat(1000)).repeat(n / 1000);
    [&m[..end], pad.as_bytes(), &m[end..]].concat()
}

#[test]
fn a_slow_server_pauses_reading_clients_until_it_catches_up_and_nothing_is_lost() {
    let mut sim = Sim::new(1, &[]);
    sim.all_up();
    let s = sim.conn_of(0).unwrap();
    sim.wire(s).window = 0;
    let c = sim.client();
    let mut sent = 0;
    while !sim.core.queued.paused() {
        assert!(sent < 100, "paused before 100 × 30 KB");
        sim.send(c, &big_invite(&format!("p{sent}"), 30_000));
        sent += 1;
    }
    assert!(sent >= 30, "not paused before 1 MiB waited: {sent}");
    assert_eq!(sim.core.m.backpressure_pauses, 1);
    // What the client sends now waits in its socket, unread.
    sim.send(c, &invite("later"));
    assert!(!sim.wire(c).inbound.is_empty(), "a paused client is not read");
    assert!(sim.is_open(c) && sim.is_open(s), "nobody is cut off");
    // The server reads again: clients are read again, and everything arrives in order.
    sim.wire(s).window = usize::MAX;
    sim.writable(s);
    assert!(!sim.core.queued.paused());
    sim.tick(Duration::from_millis(1));
    assert!(sim.wire(c).inbound.is_empty(), "the client was read again");
    let calls: Vec<String> = sim.received(s).iter().map(|m| call_id(m)).collect();
    let mut want: Vec<String> = (0..sent).map(|i| format!("p{i}")).collect();
    want.push("later".into());
    assert_eq!(calls, want);
    assert!(sim.received(c).is_empty(), "no client was answered for it");
}

#[test]
fn a_turn_with_many_clients_ready_holds_them_back_once_servers_fall_behind() {
    // A worker that fell behind finds many clients' requests at once, its server reading
    // nothing: past the backpressure threshold in the middle of that turn the rest wait, and the
    // server's connection (which may hold 2 MB here) is never overrun and closed.
    let mut sim = Sim::new(1, &["--max-output-bytes", "2000000"]);
    sim.all_up();
    let s = sim.conn_of(0).unwrap();
    sim.wire(s).window = 0;
    let clients: Vec<usize> = (0..60).map(|_| sim.client()).collect();
    assert_eq!(clients.len(), 60);
    for (i, &c) in clients.iter().enumerate() {
        sim.wire(c)
            .inbound
            .extend_from_slice(&big_invite(&format!("many-{i}"), 50_000));
    }
    // One turn: every client readable.
    for &c in &clients {
        readable(&mut sim, c);
    }
    sim.core.handle_timeout(sim.now);
    assert!(sim.is_open(s), "the server's connection was overrun and closed");
    assert_eq!(sim.core.m.backpressure_pauses, 1);
    let waiting = clients
        .iter()
        .filter(|&&c| !sim.wire(c).inbound.is_empty())
        .count();
    assert!(waiting > 30, "only {waiting} clients held back");
    // The server reads again: every request arrives, none lost.
    sim.wire(s).window = usize::MAX;
    sim.writable(s);
    for _ in 0..10 {
        sim.tick(Duration::from_millis(1));
    }
    let mut got: Vec<String> = sim.received(s).iter().map(|m| call_id(m)).collect();
    got.retain(|c| c.starts_with("many-"));
    got.sort();
    let mut want: Vec<String> = (0..60).map(|i| format!("many-{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    assert!(clients.iter().all(|&c| sim.is_open(c)));
}

#[test]
fn the_client_holding_the_most_output_loses_its_connection_and_no_one_else() {
    let mut sim = Sim::new(1, &["--max-output-bytes", "200000"]);
    sim.all_up();
    let s = sim.conn_of(0).unwrap();
    let slow = sim.client();
    let good = sim.client();
    sim.wire(slow).window = 0;
    sim.wire(good).window = 0;
    // Each caller has a call ringing; the good one's peer reads later, the slow one's never.
    let mut invites = Vec::new();
    for (c, call) in [(slow, "slow"), (good, "good")] {
        sim.send(c, &invite(call));
        let got = sim.who_got(call);
        assert_eq!(got.len(), 1);
        invites.push((c, got[0].1.clone()));
    }
    let good_ring = padded(&answer(&invites[1].1, 180, Extra::default()), 20_000);
    sim.send(s, &good_ring);
    let slow_ring = padded(&answer(&invites[0].1, 180, Extra::default()), 20_000);
    let mut n = 0;
    while sim.is_open(slow) {
        assert!(n < 20, "the budget never ran out: {:?}", sim.core.m.dropped);
        sim.send(s, &slow_ring);
        n += 1;
    }
    assert!(n >= 9, "closed before the budget was spent: {n}");
    assert_eq!(sim.core.m.output_budget_closes, 1);
    assert!(sim.is_open(good) && sim.is_open(s), "only the hog was closed");
    sim.wire(good).window = usize::MAX;
    sim.writable(good);
    let heard = sim.received(good);
    assert_eq!(heard.len(), 1, "the good caller got its ringing");
    assert_eq!(status(&heard[0]), Some(180));
}

/// The event loop's view of one readable event, handled without ending the turn.
fn readable(sim: &mut Sim, slot: usize) {
    let ready = Readiness {
        readable: true,
        ..Readiness::default()
    };
    let now = sim.now;
    sim.core.handle_event(slot, ready, now);
}

#[test]
fn a_close_decided_for_a_connection_gone_since_spares_the_one_that_took_its_slot() {
    let mut sim = Sim::new(1, &["--max-output-bytes", "200000"]);
    sim.all_up();
    let s = sim.conn_of(0).unwrap();
    let hog = sim.client();
    sim.wire(hog).window = 0;
    let (_, inv) = sim.invite(hog, "hog");
    let ring = padded(&answer(&inv, 180, Extra::default()), 20_000);
    // One turn: the server's answers spend the budget (the hog is to be closed at the end of
    // the turn), the hog's connection breaks meanwhile (closed at once), and a new client is
    // accepted into the slot it left.
    let mut n = 0;
    while sim.core.m.output_budget_closes == 0 {
        assert!(n < 20, "the budget never ran out");
        sim.wire(s).inbound.extend_from_slice(&ring);
        readable(&mut sim, s);
        n += 1;
    }
    sim.wire(hog).fail = Some(rustls::Error::AlertReceived(
        rustls::AlertDescription::DecodeError,
    ));
    readable(&mut sim, hog);
    assert!(!sim.is_open(hog), "a broken connection is closed at once");
    // Its wire goes back to the shell (to come off the poll), closed, once.
    assert!(sim.core.poll_released().is_some_and(|w| w.closed_by_us));
    assert!(sim.core.poll_released().is_none());
    let peer = "198.51.100.9:40999".parse().unwrap();
    let newcomer = sim.core.handle_accepted(Pipe::new(), peer, Kind::Client, false);
    assert_eq!(newcomer, hog, "the slot is taken again in the same turn");
    sim.core.handle_timeout(sim.now);
    assert!(
        sim.is_open(newcomer),
        "the newcomer was closed for what the hog did"
    );
    assert_eq!(sim.core.m.output_budget_closes, 1);
    // It is registered with the poll once, and works.
    assert_eq!(sim.core.poll_register(), Some(newcomer));
    assert_eq!(sim.core.poll_register(), None);
    sim.send(newcomer, b"");
    let (ok, _) = sim.call(newcomer, "newcomer");
    assert_eq!(status(&ok), Some(200));
}

#[test]
fn a_connection_closed_before_it_was_registered_leaves_only_its_successor_to_register() {
    let mut sim = Sim::new(1, &[]);
    sim.all_up();
    let first = sim.core.handle_accepted(
        Pipe::new(),
        "198.51.100.9:1".parse().unwrap(),
        Kind::Client,
        false,
    );
    sim.core.close(first, crate::worker::core::CloseReason::Io);
    let second = sim.core.handle_accepted(
        Pipe::new(),
        "198.51.100.9:2".parse().unwrap(),
        Kind::Client,
        false,
    );
    assert_eq!(second, first, "the slot is taken again");
    // Registering its socket twice would fail the second time, and that failure would close it.
    assert_eq!(sim.core.poll_register(), Some(second));
    assert_eq!(sim.core.poll_register(), None);
    assert!(sim.is_open(second));
}

#[test]
fn draining_waits_for_invites_and_dialogs_in_flight_and_refuses_new_ones() {
    let mut sim = Sim::new(1, &["--drain-timeout", "600"]);
    sim.all_up();
    let c = sim.client();
    let (ok, _) = sim.call(c, "before");
    sim.send(c, &invite("ringing"));
    let got = sim.who_got("ringing");
    assert_eq!(got.len(), 1);
    let ringing = got[0].1.clone();
    sim.shared.draining.store(true, Ordering::Release);
    // The worker sees the drain at its next turn.
    sim.tick(Duration::from_millis(1));
    let now = sim.now;
    assert!(!sim.core.drained(now), "an INVITE is in progress and a dialog up");
    // A new dialog is refused by siplb; the server never sees it.
    sim.send(c, &invite("new"));
    let heard = sim.received(c);
    assert_eq!(heard.iter().map(|m| status(m)).collect::<Vec<_>>(), [Some(503)]);
    assert!(sim.who_got("new").is_empty());
    // The ringing call is answered (a dialog more), and both end.
    let s = sim.conn_of(0).unwrap();
    sim.send(s, &dialog_answer(&ringing, 200));
    let ok2 = sim.received(c).pop().expect("the 200");
    sim.tick(Duration::from_secs(1));
    assert!(!sim.core.drained(sim.now), "two dialogs up");
    for (ok, cseq) in [(ok, 2), (ok2, 2)] {
        let bye = in_dialog("BYE", &ok, cseq);
        sim.send(c, &bye);
        let got = sim.serve_probes(0);
        assert_eq!(got.len(), 1, "the BYE reached the dialog's server");
        sim.send(s, &answer(&got[0], 200, Extra::default()));
    }
    assert_eq!(sim.shared.active_dialogs.load(Ordering::Acquire), 0);
    assert!(sim.core.drained(sim.now), "no dialog left: drained");
}

#[test]
fn draining_ends_at_the_drain_timeout_whatever_is_in_flight() {
    let mut sim = Sim::new(1, &["--drain-timeout", "30"]);
    sim.all_up();
    let c = sim.client();
    sim.call(c, "forever");
    sim.shared.draining.store(true, Ordering::Release);
    assert!(!sim.core.drained(sim.now));
    sim.run_for(Duration::from_secs(29), Duration::from_millis(500));
    assert!(!sim.core.drained(sim.now));
    sim.run_for(Duration::from_secs(2), Duration::from_millis(500));
    assert!(sim.core.drained(sim.now));
}
