//! End to end: real SIP dialogs through siplb (2 workers) to 3 sipload back ends, over real TLS
//! and MTLS on loopback.

use crate::common::*;

fn through_balancer(per_call_connection: bool) {
    let Harness { pki, backends, lb } = Harness::new().workers(2).start();
    let mut opts = call_opts(&pki, &lb, 300);
    opts.per_call_connection = per_call_connection;
    if per_call_connection {
        opts.rate = 150.0;
    }
    let report = run_calls(opts);
    assert_eq!((report.ok, report.failed), (300, 0), "{}", report.summary());
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    let shares = assert_one_backend_per_call(&report, &stats);
    for (i, n) in shares.iter().enumerate() {
        assert!(*n >= 60, "back end {i} got {n} of 300 calls (< 20%): {shares:?}");
    }
    // Every call went the whole way on its back end.
    for id in &report.call_ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "BYE"]);
    }
    lb.shutdown();
}

#[test]
fn calls_over_one_persistent_connection() {
    through_balancer(false);
}

#[test]
fn calls_with_a_new_connection_each() {
    through_balancer(true);
}

#[test]
fn calls_over_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED calls_over_ipv6: no IPv6 loopback on this machine");
        return;
    }
    // Listening and advertising on [::1]: bracketed hosts in Via, Record-Route and received=.
    let Harness { pki, backends, lb } = Harness::new()
        .workers(2)
        .flags(&["--listen".into(), "[::1]:0".into()])
        .start();
    assert!(lb.advertise().starts_with("[::1]:"), "{}", lb.advertise());
    let report = run_calls(call_opts(&pki, &lb, 60));
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    for id in &report.call_ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "BYE"]);
    }
    lb.shutdown();
}

/// RFC 3261 §8.2.6.2: the test server (every test's back end, and sipload's for operators) tags
/// the To of every answer to a request that had none — OPTIONS and REGISTER included.
#[test]
fn sipload_server_tags_every_answer() {
    use siplb::sip::{Message, Method};
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let mut ep = siplb::load::endpoint::Endpoint::new().expect("endpoint");
    let conn = ep
        .connect(
            backends[0].addr,
            pki.client_tls(Some(&["caller.test"])),
            siplb::tls::server_name(&backends[0].name).expect("name"),
        )
        .expect("connect");
    let mut inbox = Inbox::default();
    for (i, method) in ["OPTIONS", "REGISTER", "MESSAGE"].iter().enumerate() {
        let mut d = new_dialog(&format!("tag-{i}"), "sip:someone@pool.test");
        let extra = if *method == "REGISTER" {
            "Contact: <sip:someone@client.invalid;transport=tls>\r\n"
        } else {
            ""
        };
        assert!(ep.send(conn, &d.request(method, None, None, extra)), "send");
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while inbox.messages.len() < 3 {
        assert!(
            std::time::Instant::now() < until,
            "got {} of 3 answers",
            inbox.messages.len()
        );
        ep.turn(&mut inbox, std::time::Duration::from_millis(10))
            .expect("turn");
    }
    let answers: Vec<Message> = inbox
        .messages
        .iter()
        .map(|m| Message::parse(m).expect("answer parses"))
        .collect();
    assert_eq!(answers.len(), 3);
    for (a, method) in answers
        .iter()
        .zip([Method::Options, Method::Register, Method::Message])
    {
        assert!(is_response(a, 200, method), "{}", String::from_utf8_lossy(a.buf));
        assert!(
            a.to_tag().is_some(),
            "no To tag: {}",
            String::from_utf8_lossy(a.buf)
        );
    }
    for b in backends {
        b.stop();
    }
}
