//! End to end: the trust boundary inside SIP, played by an attacker with an ordinary TLS client.
//! A client cannot answer in a server's place by replaying siplb's Via, cannot take a server out
//! by making its answers too large, and cannot tell the servers a false address.

use std::time::Duration;

use crate::common::*;
use siplb::load::caller::CallOpts;
use siplb::load::msg;
use siplb::load::server::Faults;
use siplb::sip::{Message, Method};

/// An OPTIONS of about 60 KB: four 15 KB Via lines under the client's own.
fn fat_options(call_id: &str) -> Vec<u8> {
    let pad = "v".repeat(15_000);
    let mut vias = String::new();
    for i in 0..4 {
        vias.push_str(&format!(
            "Via: SIP/2.0/TLS hop{i}.invalid;branch=z9hG4bKhop{i};pad={pad}\r\n"
        ));
    }
    format!(
        "OPTIONS sip:service@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS fat.invalid;branch=z9hG4bK{call_id}\r\n{vias}\
Max-Forwards: 70\r\nFrom: <sip:fat@client.invalid>;tag=f1\r\nTo: <sip:service@pool.test>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn padded_backend(pki: &Pki, i: usize) -> siplb::load::server::ServerHandle {
    backend_with(
        pki,
        i,
        Faults {
            pad_options: 70_000,
            ..Faults::default()
        },
    )
}

#[test]
fn a_client_cannot_take_a_server_out_with_answers_too_large_for_it() {
    let pki = Pki::new();
    let server = padded_backend(&pki, 0);
    // The server's answer (the client's 60 KB of Via plus 70 KB of its own) is over the client
    // limit but within the server one: it reaches the client, the pool connection stays.
    let lb = start_balancer(&pki, std::slice::from_ref(&server), 1, &[]);
    let mut c = TestClient::connect(&pki, &lb);
    for i in 0..3 {
        let id = format!("fat-{i}");
        c.send(&fat_options(&id));
        let ok = c.wait_for("200 OPTIONS", |m| {
            is_response(m, 200, Method::Options) && m.call_id() == Some(id.as_bytes())
        });
        assert!(
            ok.len() > 65_536,
            "the whole answer came through ({} bytes)",
            ok.len()
        );
    }
    let report = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!(report.failed, 0, "{}", report.summary());
    let m = metrics_when(&lb, |m| m.backend(&server.name).is_some());
    let b = m.backend(&server.name).expect("back end");
    assert!(
        b.up && b.failures.is_empty(),
        "the pool connection was never lost: {b:?}"
    );
    lb.shutdown();

    // With a server limit below that answer: the answer is skipped by its Content-Length (it
    // arrives over several reads), the client gets 513 for its request, and the connection
    // stays.
    let lb = start_balancer(
        &pki,
        std::slice::from_ref(&server),
        1,
        &["--max-backend-message-bytes".into(), "65536".into()],
    );
    let mut c = TestClient::connect(&pki, &lb);
    c.send(&fat_options("fat-skipped"));
    let too_large = c.wait_for("513 OPTIONS", |m| is_response(m, 513, Method::Options));
    let r = Message::parse(&too_large).expect("513 parses");
    assert_eq!(r.call_id(), Some(&b"fat-skipped"[..]));
    let report = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!(report.failed, 0, "{}", report.summary());
    let m = metrics_when(&lb, |m| m.oversized_from_servers == 1);
    assert_eq!(m.oversized_from_servers, 1);
    let b = m.backend(&server.name).expect("back end");
    assert!(
        b.up && b.failures.is_empty(),
        "the pool connection was never lost: {b:?}"
    );
    lb.shutdown();
}

#[test]
fn a_client_replaying_siplbs_via_cannot_answer_in_the_servers_place() {
    // A server that rings until CANCEL: the INVITE's Via stays in flight.
    let Harness {
        pki,
        backends: servers,
        lb,
    } = Harness::new().backends(1).workers(1).start();
    let mut victim = TestClient::connect(&pki, &lb);
    let mut d = new_dialog("victim-call", "sip:hold-victim@pool.test");
    victim.send(&d.request("INVITE", None, None, ""));
    victim.wait_for("180", |m| is_response(m, 180, Method::Invite));
    // What the attacker learned (from a log, a proxying back end): siplb's Via on the INVITE as
    // the server got it.
    let seen = servers[0].snapshot();
    assert!(seen.saw("victim-call", "INVITE"));
    let our_via = seen
        .last_request("victim-call")
        .and_then(|r| {
            let m = Message::parse(r).ok()?;
            msg::values(&m, siplb::sip::header::Name::Via).first().cloned()
        })
        .expect("the server kept the INVITE");
    assert!(our_via.contains("branch=z9hG4bK"), "{our_via}");
    let mut attacker = TestClient::connect(&pki, &lb);
    let forged = format!(
        "SIP/2.0 200 OK\r\nVia: {our_via}\r\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKx\r\n\
From: {}\r\nTo: <sip:hold-victim@pool.test>;tag=evil\r\nCall-ID: victim-call\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:evil@attacker.invalid;transport=tls>\r\nContent-Length: 0\r\n\r\n",
        d.local
    );
    attacker.send(forged.as_bytes());
    for _ in 0..20 {
        attacker
            .ep
            .turn(&mut attacker.inbox, Duration::from_millis(10))
            .expect("turn");
    }
    let why = "response whose Via token is for the other direction";
    let m = metrics_when(&lb, |m| m.dropped.contains_key(why));
    assert_eq!(
        m.dropped.get(why),
        Some(&1),
        "the forged answer was not dropped: {:?}",
        m.dropped
    );
    // The victim never sees it; a CANCEL still ends the real call.
    std::thread::sleep(Duration::from_millis(300));
    victim
        .ep
        .turn(&mut victim.inbox, Duration::from_millis(50))
        .expect("turn");
    assert!(
        !victim
            .inbox
            .messages
            .iter()
            .any(|b| String::from_utf8_lossy(b).contains("tag=evil")),
        "the forged 200 reached the victim"
    );
    lb.shutdown();
}

#[test]
fn what_a_client_says_about_its_address_is_replaced_by_what_siplb_saw() {
    let Harness {
        pki,
        backends: servers,
        lb,
    } = Harness::new().backends(1).workers(1).start();
    let mut c = TestClient::connect(&pki, &lb);
    let liar = "OPTIONS sip:service@pool.test SIP/2.0\r\n\
Via: SIP/2.0/TLS liar.invalid;received=203.0.113.9;rport=1;branch=z9hG4bKliar\r\n\
Max-Forwards: 70\r\nFrom: <sip:liar@client.invalid>;tag=l1\r\nTo: <sip:service@pool.test>\r\n\
Call-ID: liar\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    c.send(liar.as_bytes());
    c.wait_for("200 OPTIONS", |m| is_response(m, 200, Method::Options));
    let got = servers[0].snapshot();
    let text = String::from_utf8_lossy(got.last_request("liar").expect("the server got it")).into_owned();
    let port = c.ep.local_addr(c.conn).expect("local address").port();
    assert!(
        text.contains(&format!(
            "liar.invalid;received=127.0.0.1;rport={port};branch=z9hG4bKliar"
        )),
        "{text}"
    );
    assert!(!text.contains("203.0.113.9"), "{text}");
    // A NUL in a header: 400 naming it, nothing forwarded.
    c.send(
        liar.replace("Call-ID: liar", "Call-ID: nul")
            .replace("Max-Forwards: 70", "Max-Forwards: 70\r\nX-Evil: a\0b")
            .as_bytes(),
    );
    let bad = c.wait_for("400", |m| m.status() == Some(400));
    assert!(
        String::from_utf8_lossy(&bad).contains("Control Character In Header X-Evil"),
        "{}",
        String::from_utf8_lossy(&bad)
    );
    assert!(servers[0].snapshot().last_request("nul").is_none());
    lb.shutdown();
}

#[test]
fn a_client_dripping_a_message_loses_its_connection_whatever_the_idle_timeout() {
    use std::io::{Read, Write};
    let Harness {
        pki,
        backends: _servers,
        lb,
    } = Harness::new()
        .backends(1)
        .workers(1)
        .flags(&[
            "--message-timeout".into(),
            "1".into(),
            "--idle-timeout".into(),
            "600".into(),
        ])
        .start();
    let mut s = tls_connect(lb.listen_addrs[0], pki.client_tls(None), LB_NAME).expect("connects");
    s.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let text =
        b"OPTIONS sip:service@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS drip.invalid;branch=z9hG4bKdrip\r\n";
    let mut closed = false;
    // One byte every 200 ms: 'active' all along, never a whole message.
    for &b in text.iter().cycle().take(100) {
        if s.write_all(&[b]).and_then(|_| s.flush()).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a dripping client kept its connection for 20 s");
    // Others are served as usual.
    let report = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!(report.failed, 0, "{}", report.summary());
    lb.shutdown();
}

/// This process's resident memory, in bytes (the balancer runs in it).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn one_attacker_among_fifty_clients_costs_the_others_nothing() {
    let _heavy = machine_to_ourselves();
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let pki = Pki::new();
    let servers: Vec<_> = (0..3).map(|i| padded_backend(&pki, i)).collect();
    let lb = start_balancer(
        &pki,
        &servers,
        2,
        &[
            // Short enough that the dripping attackers lose their connections during the run,
            // long enough that a server's padded answer, slow on a loaded machine, does not (3 s
            // was not, with the machine's two cores busy besides: a pool connection was cut).
            "--message-timeout".into(),
            "5".into(),
            "--max-output-bytes".into(),
            (2 << 20).to_string(),
        ],
    );
    let addr = lb.listen_addrs[0];
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    // Forged Vias and Routes, oversized requests with oversized answers, control bytes,
    // probe-like Call-IDs: one connection after another, for as long as the calls run.
    {
        let (stop, tls) = (Arc::clone(&stop), pki.client_tls(None));
        attackers.push(std::thread::spawn(move || {
            let fake_token = "ab".repeat(24);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let Some(mut s) = tls_connect(addr, Arc::clone(&tls), LB_NAME) else {
                    continue;
                };
                n += 1;
                let forged_via = format!(
                    "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS {LB_NAME};branch=z9hG4bK{}-{fake_token}\r\n\
From: <sip:a@x.invalid>;tag=1\r\nTo: <sip:b@pool.test>;tag=2\r\nCall-ID: forged-{n}\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n",
                    "0".repeat(24)
                );
                let forged_route = format!(
                    "BYE sip:b@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS x.invalid;branch=z9hG4bKr{n}\r\n\
Route: <sip:{LB_NAME};lr;siplb={fake_token}>\r\nMax-Forwards: 70\r\nFrom: <sip:a@x.invalid>;tag=1\r\n\
To: <sip:b@pool.test>;tag=2\r\nCall-ID: route-{n}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
                );
                let ctl = forged_route.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nX-Evil: a\u{1}b");
                let probe_like = forged_route
                    .replace("BYE sip:b@pool.test", "OPTIONS sip:b0.pool.test")
                    .replace("2 BYE", "1 OPTIONS")
                    .replace(
                        &format!("route-{n}"),
                        &format!("siplb-probe-0-0-{n}-0000000000000000@x"),
                    )
                    .replace(&format!("Route: <sip:{LB_NAME};lr;siplb={fake_token}>\r\n"), "")
                    .replace(";tag=2", "");
                let _ = s.write_all(forged_via.as_bytes());
                let _ = s.write_all(forged_route.as_bytes());
                let _ = s.write_all(ctl.as_bytes());
                let _ = s.write_all(probe_like.as_bytes());
                let _ = s.write_all(&fat_options(&format!("fat-attack-{n}")));
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
            }
        }));
    }
    // A drip: a byte every 200 ms on a fresh connection each time it is cut.
    {
        let (stop, tls) = (Arc::clone(&stop), pki.client_tls(None));
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let Some(mut s) = tls_connect(addr, Arc::clone(&tls), LB_NAME) else {
                    continue;
                };
                for &b in b"OPTIONS sip:drip@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS"
                    .iter()
                    .cycle()
                {
                    if stop.load(Ordering::Acquire) || s.write_all(&[b]).and_then(|_| s.flush()).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }));
    }
    // A slow reader: asks and asks, never reads.
    {
        let (stop, tls) = (Arc::clone(&stop), pki.client_tls(None));
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let Some(mut s) = tls_connect(addr, Arc::clone(&tls), LB_NAME) else {
                    continue;
                };
                for i in 0.. {
                    if stop.load(Ordering::Acquire)
                        || s.write_all(&fat_options(&format!("greedy-{i}"))).is_err()
                    {
                        break;
                    }
                }
            }
        }));
    }
    let before = rss();
    // 49 others: 500 calls over up to 49 connections at once.
    let report = run_calls(CallOpts {
        per_call_connection: true,
        concurrency: 49,
        rate: 50.0,
        ..call_opts(&pki, &lb, 500)
    });
    let peak = rss();
    stop.store(true, Ordering::Release);
    for a in attackers {
        let _ = a.join();
    }
    // A snapshot published after the last forged answer was read.
    let seen = lb.metrics().messages;
    let m = metrics_when(&lb, |m| m.messages > seen && m.dropped_responses > 0);
    assert_eq!(
        report.failed,
        0,
        "{}\nsiplb: shed {} (saturated {} times), retries: 503 {} no answer {} lost {}, \
         backpressure pauses {}, output-budget closes {}, answered by siplb {:?}, \
         handshakes failed {:?}, refused {:?}",
        report.summary(),
        m.shed,
        m.saturations,
        m.retries_503,
        m.retries_no_answer,
        m.failovers,
        m.backpressure_pauses,
        m.output_budget_closes,
        m.answers,
        m.handshake_failures,
        m.refused
    );
    assert_eq!(m.backends.len(), 3, "{:?}", m.backends);
    for b in &m.backends {
        assert!(
            b.up && b.failures.is_empty(),
            "a client took a back end out: {b:?}"
        );
    }
    assert!(m.dropped_responses > 0, "the forged answers were dropped");
    // The balancer, three back ends, the callers and the attackers share this process: it stays
    // under 512 MiB whatever the attacker does.
    eprintln!(
        "RSS {} MiB before the calls, {} MiB at the end",
        before >> 20,
        peak >> 20
    );
    assert!(peak < 512 << 20, "RSS {} MiB", peak >> 20);
    lb.shutdown();
}

#[test]
fn a_slow_server_gets_backpressure_not_a_closed_connection() {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let faults = Faults::default();
    let name = backend_name(0);
    let server = backend_with(&pki, 0, faults.clone());
    let lb = start_balancer(
        &pki,
        std::slice::from_ref(&server),
        1,
        &["--health-check".into(), "tls".into()],
    );
    // The server stops reading; a client sends 12 MB of requests, far more than the socket
    // buffers and the 4 MiB a client connection may have queued.
    faults.stall.store(true, Ordering::Release);
    let addr = lb.listen_addrs[0];
    let tls = pki.client_tls(None);
    let sender = std::thread::spawn(move || {
        let mut s = tls_connect(addr, tls, LB_NAME).expect("connects");
        s.sock
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // The bulk in the bodies: the answers stay small, so this client (which never reads)
        // is not itself the one cut off for not reading — only the server is slow here.
        for i in 0..200 {
            let head = format!(
                "OPTIONS sip:service@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS fat.invalid;branch=z9hG4bKflood-{i}\r\n\
Max-Forwards: 70\r\nFrom: <sip:fat@client.invalid>;tag=f1\r\nTo: <sip:service@pool.test>\r\n\
Call-ID: flood-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Type: text/plain\r\nContent-Length: 60000\r\n\r\n"
            );
            s.write_all(&[head.into_bytes(), vec![b'v'; 60_000]].concat())
                .expect("siplb takes them, in time");
        }
        s
    });
    let m = metrics_within(&lb, Duration::from_secs(10), |m| m.backpressure_pauses > 0);
    assert!(m.backpressure_pauses > 0, "siplb never paused its clients");
    faults.stall.store(false, Ordering::Release);
    let _conn = sender.join().expect("sender");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while server
        .snapshot()
        .calls
        .keys()
        .filter(|k| k.starts_with("flood-"))
        .count()
        < 200
    {
        assert!(
            std::time::Instant::now() < until,
            "not every request reached the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A closed pool connection would show within a publish period: take a snapshot made after
    // the last request arrived.
    let seen = lb.metrics().messages;
    let m = metrics_when(&lb, |m| m.messages > seen);
    let b = m.backend(&name).expect("back end");
    assert!(b.failures.is_empty(), "the pool connection was closed: {b:?}");
    lb.shutdown();
}
