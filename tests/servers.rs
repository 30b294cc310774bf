//! End to end: siplb in front of servers that behave like real ones do — one that refuses
//! siplb's certificate after a TLS 1.3 handshake, back ends that start after siplb, a server that
//! never answers OPTIONS, one whose probes fail while its dialogs go on, CANCEL after a weight
//! change, and a server that dies after 180 Ringing.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
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

/// A TLS 1.3 server named `name` that verifies client certificates against a CA siplb's
/// certificate is not from: siplb's side of the handshake completes, then the server's alert
/// arrives. Counts the handshakes it was offered.
fn refusing_server(pki: &Pki, name: &str) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let other = siplb::certs::Ca::new("some other CA").expect("CA");
    let roots = siplb::tls::roots_from_pem(other.pem()).expect("roots");
    let id = pki.identity(&[name]);
    let cfg = siplb::tls::mtls_server_config(&id, roots).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (count2, stop2) = (Arc::clone(&count), Arc::clone(&stop));
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop2.load(Ordering::Acquire) {
            let Ok((mut sock, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            count2.fetch_add(1, Ordering::AcqRel);
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
            let Ok(mut conn) = rustls::ServerConnection::new(Arc::clone(&cfg)) else {
                continue;
            };
            // Runs until the client's certificate is refused (the alert goes out) or it fails.
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    break;
                }
            }
            let _ = conn.write_tls(&mut sock);
        }
    });
    (addr, count, stop)
}

#[test]
fn a_server_refusing_our_certificate_over_tls13_is_retried_with_growing_backoff_and_never_up() {
    let pki = Pki::new();
    let good = start_backends(&pki, Backends::n(1), None);
    let (addr, count, stop) = refusing_server(&pki, "refuser.pool.test");
    let (mut child, _) = spawn_siplb(&pki, &good, &["--backend", &format!("refuser.pool.test={addr}")]);
    std::thread::sleep(Duration::from_secs(4));
    let handshakes = count.load(Ordering::Acquire);
    let _ = child.kill();
    let out = child.wait_with_output().expect("siplb output");
    stop.store(true, Ordering::Release);
    let log = String::from_utf8_lossy(&out.stderr);
    // Doubling from 100 ms: 0, 0.1, 0.3, 0.7, 1.5, 3.1 s — six or so in four seconds per worker
    // (two workers), where a back-off reset on every handshake makes dozens.
    assert!(
        (4..=16).contains(&handshakes),
        "{handshakes} handshakes in 4 s:\n{log}"
    );
    let up_lines = log
        .lines()
        .filter(|l| l.contains("back end up") && l.contains("refuser.pool.test"))
        .count();
    assert_eq!(up_lines, 0, "a refused back end was logged as up:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("back end down") && l.contains("refuser.pool.test")),
        "{log}"
    );
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
    std::thread::sleep(Duration::from_secs(3));
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
    // The ACK for siplb's own 503 stops at siplb (the server never sees it).
    d.remote = r.value(r.to).map(msg::text).expect("To");
    let branch = top_branch(&invite);
    c.send(&d.request("ACK", Some(1), Some(&branch), ""));
    std::thread::sleep(Duration::from_millis(500));
    let stats = dying.stop();
    assert!(
        !stats.saw("dies-ringing", "ACK"),
        "{:?}",
        stats.calls.get("dies-ringing")
    );
    lb.shutdown();
}
