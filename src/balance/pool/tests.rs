//! The pool and health state machine driven by hand: no sockets, no clocks but the ones given.

use super::*;

fn policy(check: HealthCheck) -> Policy {
    Policy {
        check,
        interval: Duration::from_secs(5),
        fast_interval: Duration::from_millis(250),
        rise: 2,
        fall: 2,
        size: 1,
    }
}

fn connects(out: &[Action]) -> usize {
    out.iter().filter(|a| matches!(a, Action::Connect { .. })).count()
}

fn probe_seq(out: &[Action]) -> Option<(ConnId, u32)> {
    out.iter().find_map(|a| match a {
        Action::Probe { conn, seq, .. } => Some((*conn, *seq)),
        _ => None,
    })
}

/// Opens connection 0 of back end 0 as `id` and completes its TLS 1.3 handshake.
fn handshake(p: &mut Pool, id: ConnId, now: Instant, out: &mut Vec<Action>) {
    p.tick(now, out);
    assert_eq!(connects(out), 1, "{out:?}");
    p.connecting(0, 0, id);
    p.handshake_done(0, id, true, now, out);
}

/// A pool whose back end 0 is up on connection 1 (handshake, tickets, a passed probe).
fn up_on_one_connection(t0: Instant) -> (Pool, Vec<Action>) {
    let mut p = Pool::new(policy(HealthCheck::Options), 1, t0);
    let mut out = Vec::new();
    handshake(&mut p, 1, t0, &mut out);
    p.data_read(0, 1, &mut out);
    out.clear();
    p.tick(t0, &mut out);
    let (_, seq) = probe_seq(&out).unwrap();
    p.probe_answer(0, 1, seq, 200, t0, &mut out);
    (p, out)
}

#[test]
fn a_refused_tls13_handshake_never_counts_as_up_and_backs_off() {
    let t0 = Instant::now();
    let mut p = Pool::new(policy(HealthCheck::Tls), 1, t0);
    let mut now = t0;
    let mut attempts = Vec::new();
    let mut out = Vec::new();
    // 7 seconds of a server that accepts TCP and refuses our certificate after our Finished.
    while now < t0 + Duration::from_secs(7) {
        out.clear();
        p.tick(now, &mut out);
        if connects(&out) == 1 {
            attempts.push(now);
            p.connecting(0, 0, 9);
            p.handshake_done(0, 9, true, now, &mut out);
            p.closed(0, 9, Closed::Tls, "TLS: alert UnknownCA", now, &mut out);
        }
        assert!(!out.iter().any(|a| matches!(a, Action::Up { .. })), "{out:?}");
        assert_eq!(p.avail(0), Avail::Down);
        now += Duration::from_millis(10);
    }
    assert!((4..=8).contains(&attempts.len()), "{} attempts", attempts.len());
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "back-off must grow: {gaps:?}"
    );
}

#[test]
fn nobody_listening_is_retried_at_least_twice_a_second() {
    let t0 = Instant::now();
    let mut p = Pool::new(policy(HealthCheck::Options), 1, t0);
    let mut now = t0;
    let mut last = None;
    let mut out = Vec::new();
    while now < t0 + Duration::from_secs(10) {
        out.clear();
        p.tick(now, &mut out);
        if connects(&out) == 1 {
            if let Some(l) = last {
                assert!(now - l <= MAX_BACKOFF_CONNECT + Duration::from_millis(10));
            }
            last = Some(now);
            p.connecting(0, 0, 1);
            p.closed(0, 1, Closed::Io, "connection refused", now, &mut out);
        }
        now += Duration::from_millis(10);
    }
}

#[test]
fn a_new_back_end_is_admitted_on_its_first_passing_probe() {
    let now = Instant::now();
    let mut p = Pool::new(policy(HealthCheck::Options), 1, now);
    let mut out = Vec::new();
    handshake(&mut p, 3, now, &mut out);
    assert_eq!(p.avail(0), Avail::Down, "not accepted before the server shows it");
    out.clear();
    p.tick(now, &mut out);
    let (conn, seq) = probe_seq(&out).expect("probe at once");
    assert_eq!(conn, 3);
    // An answer from another connection or with another number is not the probe's.
    assert!(!p.probe_answer(0, 4, seq, 200, now, &mut out));
    assert!(!p.probe_answer(0, 3, seq + 1, 200, now, &mut out));
    assert!(p.probe_answer(0, 3, seq, 200, now, &mut out));
    assert_eq!(p.avail(0), Avail::Up);
    assert!(out.contains(&Action::Up { backend: 0 }));
    assert_eq!(p.pick(0), Some(3));
}

#[test]
fn after_a_lost_connection_fast_probes_bring_it_back_after_rise_passes() {
    let t0 = Instant::now();
    let (mut p, mut out) = up_on_one_connection(t0);
    assert_eq!(p.avail(0), Avail::Up);
    out.clear();
    p.closed(0, 1, Closed::Io, "closed by peer", t0, &mut out);
    assert!(out.contains(&Action::FailOver { backend: 0, conn: 1 }));
    assert_eq!(p.avail(0), Avail::Down);
    // Reconnected: two passes a fast interval apart, not two health intervals.
    let mut now = t0 + Duration::from_millis(200);
    out.clear();
    handshake(&mut p, 2, now, &mut out);
    p.data_read(0, 2, &mut out);
    let mut passes = 0;
    while p.avail(0) != Avail::Up {
        out.clear();
        p.tick(now, &mut out);
        if let Some((conn, seq)) = probe_seq(&out) {
            p.probe_answer(0, conn, seq, 200, now, &mut out);
            passes += 1;
        }
        now += Duration::from_millis(50);
        assert!(now < t0 + Duration::from_secs(2), "did not come back fast");
    }
    assert_eq!(passes, 2);
}

#[test]
fn failed_probes_take_it_out_of_new_dialogs_but_not_of_its_own() {
    let t0 = Instant::now();
    let (mut p, mut out) = up_on_one_connection(t0);
    let mut now = t0;
    for _ in 0..2 {
        now += Duration::from_secs(5);
        out.clear();
        p.tick(now, &mut out);
        let (conn, seq) = probe_seq(&out).expect("probe");
        p.probe_answer(0, conn, seq, 503, now, &mut out);
    }
    assert_eq!(p.avail(0), Avail::Connected);
    assert!(out.iter().any(|a| matches!(a, Action::Down { .. })));
    assert_eq!(p.pick(0), Some(1), "its dialogs still reach it");
}

#[test]
fn tls_check_needs_no_probe_and_an_accepted_connection_is_up() {
    let t0 = Instant::now();
    let mut p = Pool::new(policy(HealthCheck::Tls), 1, t0);
    let mut out = Vec::new();
    handshake(&mut p, 5, t0, &mut out);
    assert_eq!(p.avail(0), Avail::Down);
    out.clear();
    p.tick(t0 + ACCEPT_GRACE, &mut out);
    assert_eq!(p.avail(0), Avail::Up);
    for s in 1..100 {
        out.clear();
        p.tick(t0 + Duration::from_secs(s), &mut out);
        assert!(probe_seq(&out).is_none());
        assert_eq!(p.avail(0), Avail::Up);
    }
}

#[test]
fn tls12_is_accepted_when_the_handshake_ends() {
    let t0 = Instant::now();
    let mut p = Pool::new(policy(HealthCheck::Tls), 1, t0);
    let mut out = Vec::new();
    p.tick(t0, &mut out);
    p.connecting(0, 0, 1);
    p.handshake_done(0, 1, false, t0, &mut out);
    assert_eq!(p.avail(0), Avail::Up);
}

#[test]
fn an_overloaded_back_end_takes_no_new_dialogs_until_its_retry_after() {
    let t0 = Instant::now();
    let (mut p, mut out) = up_on_one_connection(t0);
    assert_eq!(p.avail(0), Avail::Up);
    p.overloaded(0, t0 + Duration::from_secs(30));
    // Its own dialogs and transactions still reach it over its connection.
    assert_eq!(p.avail(0), Avail::Connected);
    assert!(p.pick(0).is_some());
    // A shorter Retry-After does not cut a longer one short.
    p.overloaded(0, t0 + Duration::from_secs(5));
    p.tick(t0 + Duration::from_secs(29), &mut out);
    assert_eq!(p.avail(0), Avail::Connected);
    assert!(p.is_overloaded(0));
    p.tick(t0 + Duration::from_secs(30), &mut out);
    assert_eq!(p.avail(0), Avail::Up);
    assert!(!p.is_overloaded(0));
}
