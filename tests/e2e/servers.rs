//! End to end: siplb in front of servers that behave like real ones do — one that refuses
//! siplb's certificate after a TLS 1.3 handshake, back ends that start after siplb, a server that
//! never answers OPTIONS, one whose probes fail while its dialogs go on, CANCEL after a weight
//! change, and a server that dies after 180 Ringing.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use siplb::load::caller::CallOpts;
use siplb::load::msg;
use siplb::load::server::Faults;
use siplb::sip::Method;

/// The branch of a request's top Via (what its CANCEL and non-2xx ACK reuse).
fn top_branch(request: &[u8]) -> String {
    let m = siplb::sip::Message::parse(request).expect("request parses");
    m.top_via()
        .ok()
        .and_then(|v| v.branch())
        .map(msg::text)
        .expect("branch")
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

#[test]
fn back_ends_that_start_after_siplb_take_calls_a_second_after_they_listen() {
    let pki = Pki::new();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut args: Vec<String> = vec![
        "siplb".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        pki.lb.cert.display().to_string(),
        "--key".into(),
        pki.lb.key.display().to_string(),
        "--backend-ca".into(),
        pki.ca_path.display().to_string(),
        "--workers".into(),
        "2".into(),
    ];
    for (i, a) in addrs.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("{}={a}", backend_name(i)));
    }
    use clap::Parser;
    let cfg = siplb::cli::Args::try_parse_from(args)
        .expect("flags")
        .run
        .into_config()
        .expect("config");
    let lb = siplb::worker::Balancer::start(cfg).expect("starts");
    // Every worker has given up waiting for back ends that do not listen yet.
    assert!(lb.wait_ready(Duration::from_secs(20)), "workers never ready");
    let m = lb.metrics();
    assert_eq!(m.backends.len(), 3, "{m:?}");
    assert!(m.backends.iter().all(|b| !b.up), "{m:?}");
    let servers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let name = backend_name(i);
            start_backend_at(
                &pki,
                &name,
                pki.identity(&[&name]),
                Backends::n(1),
                None,
                a,
                Faults::default(),
            )
        })
        .collect();
    let m = metrics_within(&lb, Duration::from_secs(20), |m| {
        m.backends.len() == 3 && m.backends.iter().all(|b| b.up)
    });
    assert_eq!(m.backends.iter().filter(|b| b.up).count(), 3, "{m:?}");
    let report = run_calls(CallOpts {
        rate: 300.0,
        ..call_opts(&pki, &lb, 300)
    });
    let stats: Vec<_> = servers.into_iter().map(|s| s.stop()).collect();
    assert_eq!(report.failed, 0, "{}", report.summary());
    let per = assert_one_backend_per_call(&report, &stats);
    assert!(
        per.iter().all(|&n| n >= 30),
        "every back end takes its share: {per:?}"
    );
    lb.shutdown();
}

#[test]
fn health_check_tls_keeps_a_server_that_never_answers_options() {
    let pki = Pki::new();
    let faults = Faults::default();
    faults.ignore_options.store(true, Ordering::Relaxed);
    let name = backend_name(0);
    let mute = backend_with(&pki, 0, faults);
    let lb = start_balancer(
        &pki,
        std::slice::from_ref(&mute),
        1,
        &[
            "--health-check".into(),
            "tls".into(),
            "--health-interval".into(),
            "1".into(),
        ],
    );
    // That probes never take it out is shown in virtual time (worker::core's tests); here, that
    // calls go through with the tls check.
    let report = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!(report.failed, 0, "{}", report.summary());
    let m = lb.metrics();
    assert!(m.backend(&name).is_some_and(|b| b.up), "{m:?}");
    let stats = mute.stop();
    assert!(
        !stats.calls.keys().any(|c| c.starts_with("siplb-probe-")),
        "no probes with tls"
    );
    lb.shutdown();
}

#[test]
fn a_probe_failed_back_end_keeps_its_dialogs_and_gets_no_new_ones() {
    let pki = Pki::new();
    let faults: Vec<Faults> = (0..2).map(|_| Faults::default()).collect();
    let servers: Vec<_> = (0..2).map(|i| backend_with(&pki, i, faults[i].clone())).collect();
    let lb = start_balancer(
        &pki,
        &servers,
        1,
        &[
            "--health-interval".into(),
            "1".into(),
            "--health-fall".into(),
            "1".into(),
        ],
    );
    let mut c = TestClient::connect(&pki, &lb);
    let mut d = establish(&mut c, "pinned-through-probes");
    let owner = servers
        .iter()
        .position(|s| s.snapshot().calls.contains_key("pinned-through-probes"))
        .expect("a back end has the call");
    faults[owner].ignore_options.store(true, Ordering::Relaxed);
    let m = metrics_within(&lb, Duration::from_secs(8), |m| {
        m.backend(&backend_name(owner)).is_some_and(|b| !b.up)
    });
    assert!(
        m.backend(&backend_name(owner)).is_some_and(|b| !b.up),
        "probes never failed"
    );
    // Its dialog still reaches it...
    c.send(&d.request("BYE", None, None, ""));
    c.wait_for("200 BYE", |m| {
        is_response(m, 200, Method::Bye) && m.call_id() == Some(&b"pinned-through-probes"[..])
    });
    assert!(servers[owner].snapshot().saw("pinned-through-probes", "BYE"));
    // ...and new dialogs go to the other one.
    let report = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!(report.failed, 0, "{}", report.summary());
    let stats: Vec<_> = servers.into_iter().map(|s| s.stop()).collect();
    for id in &report.call_ids {
        assert!(
            !stats[owner].calls.contains_key(id),
            "a new call reached the failing back end"
        );
    }
    lb.shutdown();
}

#[test]
fn cancel_after_a_weight_change_reaches_the_server_with_the_invite() {
    let pki = Pki::new();
    let servers = start_backends(&pki, Backends::n(3), None);
    let file = pki.dir.path().join("backends");
    let write = |zero: Option<usize>| {
        let text: String = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let w = if Some(i) == zero { 0 } else { 100 };
                format!("{}={},weight={w}\n", s.name, s.addr)
            })
            .collect();
        std::fs::write(&file, text).expect("backends file");
    };
    write(None);
    let lb = start_balancer(
        &pki,
        &[],
        1,
        &["--backends-file".into(), file.display().to_string()],
    );
    let mut c = TestClient::connect(&pki, &lb);
    let mut d = new_dialog("cancel-after-reweight", "sip:hold-me@pool.test");
    let invite = d.request("INVITE", None, None, "");
    c.send(&invite);
    c.wait_for("180", |m| is_response(m, 180, Method::Invite));
    let owner = servers
        .iter()
        .position(|s| s.snapshot().calls.contains_key("cancel-after-reweight"))
        .expect("a back end rings");
    // The ringing server takes no new dialogs now: the hash would send the CANCEL elsewhere.
    write(Some(owner));
    reload_and_wait(&lb);
    let branch = top_branch(&invite);
    c.send(&d.request("CANCEL", Some(1), Some(&branch), ""));
    c.wait_for("200 CANCEL", |m| is_response(m, 200, Method::Cancel));
    c.wait_for("487 INVITE", |m| is_response(m, 487, Method::Invite));
    assert!(servers[owner].snapshot().saw("cancel-after-reweight", "CANCEL"));
    lb.shutdown();
}

#[test]
fn a_server_that_dies_after_ringing_gets_the_caller_a_final_answer_at_once() {
    let pki = Pki::new();
    let dying = backend_with(
        &pki,
        0,
        Faults {
            crash_after_ringing: true,
            ..Faults::default()
        },
    );
    let lb = start_balancer(&pki, std::slice::from_ref(&dying), 1, &[]);
    let mut c = TestClient::connect(&pki, &lb);
    let mut d = new_dialog("dies-ringing", "sip:service@pool.test");
    let invite = d.request("INVITE", None, None, "");
    let sent = Instant::now();
    c.send(&invite);
    c.wait_for("180", |m| is_response(m, 180, Method::Invite));
    let resp = c.wait_for("503 from siplb", |m| is_response(m, 503, Method::Invite));
    eprintln!("final answer {:?} after the INVITE", sent.elapsed());
    let r = siplb::sip::Message::parse(&resp).expect("503 parses");
    assert!(r.to_tag().is_some(), "a final answer has a To tag");
    // That the ACK for siplb's own 503 stops at siplb is shown in virtual time (worker::core's
    // failover tests).
    dying.stop();
    lb.shutdown();
}
