//! End to end: real SIP dialogs through siplb (2 workers) to 3 sipload back ends, over real TLS
//! and MTLS on loopback.

mod common;

use common::*;

fn through_balancer(per_call_connection: bool) {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::default(), None);
    let lb = start_balancer(&pki, &backends, 2, &[]);
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
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::default(), None);
    // Listening and advertising on [::1]: bracketed hosts in Via, Record-Route and received=.
    let lb = start_balancer(&pki, &backends, 2, &["--listen".into(), "[::1]:0".into()]);
    assert!(lb.advertise().starts_with("[::1]:"), "{}", lb.advertise());
    let report = run_calls(call_opts(&pki, &lb, 60));
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    for id in &report.call_ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "BYE"]);
    }
    lb.shutdown();
}
