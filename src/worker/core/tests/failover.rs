//! An initial INVITE whose server is lost, answers 503 or says nothing: before any answer but 100
//! the caller never notices (the next server gets it), after a provisional it gets a prompt 503.

use std::time::Duration;

use super::*;

#[test]
fn a_server_lost_before_it_answered_costs_the_caller_nothing() {
    let mut sim = Sim::new(2, &[]);
    sim.all_up();
    let c = sim.client();
    let (first, _) = sim.invite(c, "lost-early");
    sim.lose(sim.conn_of(first).unwrap());
    let again = sim.who_got("lost-early");
    assert_eq!(again.len(), 1, "the INVITE went out once more");
    let (next, inv) = &again[0];
    assert_ne!(*next, first, "to the other server");
    assert!(sim.received(c).is_empty(), "the caller heard nothing of it");
    assert_eq!(sim.core.m.failovers, 1);
    // The next server's answers reach the caller.
    let s = sim.conn_of(*next).unwrap();
    sim.send(s, &answer(inv, 180, Extra::default()));
    let heard = sim.received(c);
    assert_eq!(heard.iter().map(|m| status(m)).collect::<Vec<_>>(), [Some(180)]);
}

#[test]
fn a_server_lost_after_a_provisional_gets_the_caller_a_503_not_a_second_server() {
    let mut sim = Sim::new(2, &[]);
    sim.all_up();
    let c = sim.client();
    let (first, inv) = sim.invite(c, "lost-late");
    let s = sim.conn_of(first).unwrap();
    sim.send(s, &answer(&inv, 180, Extra::default()));
    assert_eq!(
        sim.received(c).iter().map(|m| status(m)).collect::<Vec<_>>(),
        [Some(180)]
    );
    sim.lose(s);
    let heard = sim.received(c);
    assert_eq!(heard.len(), 1);
    assert_eq!(
        status(&heard[0]),
        Some(503),
        "{}",
        String::from_utf8_lossy(&heard[0])
    );
    assert!(sim.who_got("lost-late").is_empty(), "no second server rings");
    // siplb gave the final answer: the caller's ACK for it stops at siplb.
    sim.send(c, &request("ACK", "lost-late", 1));
    assert!(sim.who_got("lost-late").is_empty(), "the ACK went nowhere");
    assert_eq!(sim.core.m.failovers, 0);
}

#[test]
fn a_503_goes_to_the_next_server_is_acked_and_keeps_new_calls_off_the_first() {
    let mut sim = Sim::new(2, &[]);
    sim.all_up();
    let c = sim.client();
    let (first, inv) = sim.invite(c, "busy");
    let s = sim.conn_of(first).unwrap();
    let retry = Extra {
        retry_after: Some(30),
    };
    sim.send(s, &answer(&inv, 503, retry));
    let got = sim.who_got("busy");
    let methods: Vec<(usize, String)> = got.iter().map(|(b, m)| (*b, method(m))).collect();
    assert_eq!(methods.len(), 2, "{methods:?}");
    assert!(
        methods.contains(&(first, "ACK".to_string())),
        "the 503 was ACKed: {methods:?}"
    );
    assert!(
        methods.contains(&(1 - first, "INVITE".to_string())),
        "{methods:?}"
    );
    assert!(sim.received(c).is_empty(), "the caller never heard the 503");
    assert_eq!(sim.core.m.retries_503, 1);
    assert!(sim.core.be.pool.is_overloaded(first));
    // New calls stay off the first server for its Retry-After, whatever their Call-ID.
    for i in 0..12 {
        let call = format!("after-{i}");
        assert_eq!(sim.invite(c, &call).0, 1 - first, "{call}");
    }
    sim.run_for(Duration::from_secs(31), Duration::from_millis(250));
    assert!(
        !sim.core.be.pool.is_overloaded(first),
        "back after its Retry-After"
    );
}

#[test]
fn when_every_server_says_503_the_caller_gets_503_with_retry_after() {
    let mut sim = Sim::new(2, &[]);
    sim.all_up();
    let c = sim.client();
    sim.send(c, &invite("all-busy"));
    for _ in 0..2 {
        let got = sim.who_got("all-busy");
        let (b, inv) = got
            .into_iter()
            .find(|(_, m)| method(m) == "INVITE")
            .expect("an INVITE reached a server");
        let s = sim.conn_of(b).unwrap();
        sim.send(s, &answer(&inv, 503, Extra::default()));
    }
    let heard = sim.received(c);
    assert_eq!(heard.len(), 1);
    assert_eq!(status(&heard[0]), Some(503));
    assert!(String::from_utf8_lossy(&heard[0]).contains("Retry-After:"));
}

#[test]
fn a_silent_server_is_taken_out_and_the_invite_tried_on_the_next() {
    let mut sim = Sim::new(2, &["--backend-answer-timeout", "2"]);
    sim.all_up();
    let c = sim.client();
    let (first, _) = sim.invite(c, "silent");
    let before = sim.run_for(Duration::from_millis(1750), Duration::from_millis(250));
    assert!(before.is_empty(), "nothing more before the timeout: {before:?}");
    let after = sim.run_for(Duration::from_millis(750), Duration::from_millis(250));
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].0, 1 - first, "the next server got it");
    assert_eq!(call_id(&after[0].1), "silent");
    assert!(
        sim.core.be.pool.is_overloaded(first),
        "a silent server takes no new dialogs"
    );
    assert_eq!(sim.core.m.retries_no_answer, 1);
    assert!(sim.received(c).is_empty());
}
