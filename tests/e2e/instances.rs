//! End to end: several siplb instances as one service. A shared token key lets a dialog set up
//! through one instance end through another whose pool differs; different keys fall back to the
//! hash (counted as bad MACs); a connection token of one instance never reaches a connection of
//! another (430); a port in use is refused unless every instance asks for `--reuse-port`; the key
//! file is checked like a private key.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;
use siplb::sip::{Message, Method};

fn key_file(pki: &Pki, name: &str) -> String {
    let path = pki.dir.path().join(name);
    let out = siplb_command()
        .args(["keygen", &path.display().to_string()])
        .output()
        .expect("siplb keygen runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(&path).expect("key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "keygen writes an owner-only file");
    path.display().to_string()
}

/// A dialog through `first`, then its BYE (with the route set siplb wrote) through `second`:
/// the back end that got the BYE, if any.
fn bye_through_another(
    pki: &Pki,
    first: &siplb::worker::Balancer,
    second: &siplb::worker::Balancer,
    call_id: &str,
) -> Vec<u8> {
    let mut c = TestClient::connect(pki, first);
    let mut d = establish(&mut c, call_id);
    let mut c2 = TestClient::connect(pki, second);
    c2.send(&d.request("BYE", None, None, ""));
    c2.wait_for("answer to BYE", |m| m.cseq.is_some_and(|c| c.2 == Method::Bye))
}

#[test]
fn a_shared_key_keeps_dialogs_on_their_back_end_across_instances() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(5), None);
    let key = key_file(&pki, "token.key");
    let flags = vec!["--token-key-file".to_string(), key.clone()];
    // Two instances whose pools differ: 3 and 5 back ends.
    let a = start_balancer(&pki, &backends[..3], 1, &flags);
    let b = start_balancer(&pki, &backends, 1, &flags);
    let mut c = TestClient::connect(&pki, &a);
    let ids: Vec<String> = (0..40).map(|i| format!("shared-{i}")).collect();
    let mut dialogs: Vec<_> = ids.iter().map(|id| establish(&mut c, id)).collect();
    // The first instance goes away once it has passed every ACK on (the caller does not wait
    // for that); the dialogs end through the second.
    wait_until("every ACK at its back end", || {
        calls_that_saw(&backends, "ACK") >= ids.len()
    });
    a.shutdown();
    let mut c2 = TestClient::connect(&pki, &b);
    for (id, d) in ids.iter().zip(dialogs.iter_mut()) {
        c2.send(&d.request("BYE", None, None, ""));
        let ans = c2.wait_for("200 BYE", |m| {
            is_response(m, 200, Method::Bye) && m.call_id() == Some(id.as_bytes())
        });
        assert!(Message::parse(&ans).is_ok());
    }
    let stats: Vec<_> = backends.iter().map(|s| s.snapshot()).collect();
    for id in &ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "BYE"]);
    }
    assert_eq!(b.metrics().bad_tokens, 0);
    b.shutdown();
}

#[test]
fn different_keys_fall_back_to_the_hash_and_count_bad_macs() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(3), None);
    let a = start_balancer(
        &pki,
        &backends,
        1,
        &["--token-key-file".into(), key_file(&pki, "a.key")],
    );
    let b = start_balancer(
        &pki,
        &backends,
        1,
        &["--token-key-file".into(), key_file(&pki, "b.key")],
    );
    let ans = bye_through_another(&pki, &a, &b, "two-keys");
    // Same pool, so the hash finds the same back end; the pin was not believed.
    assert_eq!(Message::parse(&ans).ok().and_then(|m| m.status()), Some(200));
    let m = metrics_when(&b, |m| m.bad_tokens > 0);
    assert!(m.bad_tokens > 0, "the foreign pin was not counted");
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_connection_token_of_one_instance_gets_430_from_another() {
    let pki = Pki::new();
    let key = key_file(&pki, "token.key");
    let flags = vec![
        "--token-key-file".to_string(),
        key,
        "--peer-listen".into(),
        "127.0.0.1:0".into(),
    ];
    let backends = start_backends(&pki, Backends::n(1), None);
    let a = start_balancer(&pki, &backends, 1, &flags);
    let b = start_balancer(&pki, &backends, 1, &flags);
    // A dialog through A: the back end's view of its Record-Route names A's client connection.
    let mut c = TestClient::connect(&pki, &a);
    // (Read from the 200 the client got: the server's last request may already be the ACK.)
    let dialog = establish(&mut c, "flow-a");
    let invite: Vec<String> = dialog.route.iter().rev().cloned().collect();
    // The server sends its BYE through B: B has no such connection.
    let bye = format!(
        "BYE sip:caller@client.invalid SIP/2.0\r\nVia: SIP/2.0/TLS b0.pool.test;branch=z9hG4bKx430\r\n\
Route: {}\r\nMax-Forwards: 70\r\nFrom: <sip:service@pool.test>;tag=s1\r\nTo: <sip:caller@client.invalid>;tag=c1\r\n\
Call-ID: flow-a\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        invite.join(", ")
    );
    let peer = b.peer_addr.expect("peer listener");
    let mut ep = siplb::load::endpoint::Endpoint::new().expect("endpoint");
    let id = pki.identity(&[&backend_name(0)]);
    let cfg = siplb::tls::client_config(
        siplb::tls::roots_from_pem(pki.ca.pem()).expect("roots"),
        Some(&id),
    )
    .expect("config");
    let conn = ep
        .connect(peer, cfg, siplb::tls::server_name(LB_NAME).expect("name"))
        .expect("connect");
    assert!(ep.send(conn, bye.as_bytes()));
    let mut inbox = Inbox::default();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !inbox.messages.iter().any(|m| m.starts_with(b"SIP/2.0 430")) {
        assert!(
            std::time::Instant::now() < until,
            "no 430: {:?}",
            inbox
                .messages
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect::<Vec<_>>()
        );
        ep.turn(&mut inbox, Duration::from_millis(10)).expect("turn");
    }
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_port_in_use_is_refused_unless_every_instance_asks_to_share_it() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let (mut first, port) = spawn_siplb(&pki, &backends, &["--reuse-port"]);
    let listen = format!("127.0.0.1:{port}");
    let run = |extra: &[&str]| {
        let mut cmd = siplb_command();
        cmd.args(["--listen", &listen, "--cert", &pki.lb.cert.display().to_string()])
            .args(["--key", &pki.lb.key.display().to_string()])
            .args(["--backend-ca", &pki.ca_path.display().to_string()])
            .args(["--backend", &format!("{}={}", backends[0].name, backends[0].addr)])
            .args(extra);
        cmd
    };
    let out = run(&[]).output().expect("runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use") && err.lines().count() == 1, "{err}");
    // With --reuse-port on both, the second one starts (and serves its metrics) too.
    let metrics = free_port();
    let mut second = run(&["--reuse-port", "--metrics", &format!("127.0.0.1:{metrics}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runs");
    wait_started(metrics);
    assert!(
        second.try_wait().expect("status").is_none(),
        "the second instance exited"
    );
    let _ = second.kill();
    let _ = first.kill();
    let _ = second.wait();
    let _ = first.wait();
}

#[test]
fn a_key_file_others_can_read_or_too_short_is_refused_naming_it() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let loose = pki.dir.path().join("loose.key");
    std::fs::write(&loose, "x".repeat(64)).expect("write");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let short = pki.dir.path().join("short.key");
    std::fs::write(&short, "x".repeat(16)).expect("write");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for f in [&loose, &short] {
        let out = siplb_command()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cert",
                &pki.lb.cert.display().to_string(),
            ])
            .args(["--key", &pki.lb.key.display().to_string()])
            .args(["--backend-ca", &pki.ca_path.display().to_string()])
            .args(["--backend", &format!("{}={}", backends[0].name, backends[0].addr)])
            .args(["--token-key-file", &f.display().to_string()])
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&f.display().to_string()) && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn a_rolling_restart_of_two_instances_on_one_port_costs_no_call() {
    let _heavy = machine_to_ourselves();
    use siplb::load::caller::CallOpts;
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(3), None);
    let key = key_file(&pki, "token.key");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let spawn = || {
        let metrics = free_port();
        let mut cmd = siplb_command();
        cmd.args(["--metrics", &format!("127.0.0.1:{metrics}")]);
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--reuse-port",
            "--workers",
            "1",
        ])
        .args(["--token-key-file", &key])
        .args(["--cert", &pki.lb.cert.display().to_string()])
        .args(["--key", &pki.lb.key.display().to_string()])
        .args(["--backend-ca", &pki.ca_path.display().to_string()])
        .stderr(std::process::Stdio::null());
        for b in &backends {
            cmd.args(["--backend", &format!("{}={}", b.name, b.addr)]);
        }
        let child = cmd.spawn().expect("siplb starts");
        wait_started(metrics);
        // It shares the port from the start; it takes the old one's place once it can route.
        wait_workers_ready(metrics, 1);
        child
    };
    let stop = |mut c: std::process::Child| {
        // SIGTERM: stop accepting, let dialogs in flight end, exit 0.
        let _ = std::process::Command::new("kill")
            .args(["-s", "TERM", &c.id().to_string()])
            .status();
        let status = c.wait().expect("exits");
        assert!(status.success(), "{status}");
    };
    let (a, b) = (spawn(), spawn());
    let opts = CallOpts {
        rate: 50.0,
        per_call_connection: true,
        retry: true,
        ..call_opts_to(&pki, format!("127.0.0.1:{port}").parse().expect("addr"), 400)
    };
    let caller = std::thread::spawn(move || run_calls(opts));
    // Replace A once a quarter of the calls are done, B at half, while the calls go on.
    let done = |n: usize| {
        wait_until(&format!("{n} calls done"), || {
            calls_that_saw(&backends, "BYE") >= n
        })
    };
    done(100);
    let a2 = spawn();
    stop(a);
    done(200);
    let b2 = spawn();
    stop(b);
    let report = caller.join().expect("caller");
    assert_eq!(report.failed, 0, "{}", report.summary());
    assert_eq!(report.ok, 400);
    stop(a2);
    stop(b2);
}

#[test]
fn a_key_rotated_by_reload_keeps_the_dialogs_made_with_the_old_one() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(3), None);
    let key = key_file(&pki, "token.key");
    let lb = start_balancer(&pki, &backends, 1, &["--token-key-file".into(), key.clone()]);
    let mut c = TestClient::connect(&pki, &lb);
    let ids: Vec<String> = (0..10).map(|i| format!("rotate-{i}")).collect();
    let mut dialogs: Vec<_> = ids.iter().map(|id| establish(&mut c, id)).collect();
    // A new key in the same file, then SIGHUP's reload.
    std::fs::remove_file(&key).expect("rm");
    key_file(&pki, "token.key");
    reload_and_wait(&lb);
    for (id, d) in ids.iter().zip(dialogs.iter_mut()) {
        c.send(&d.request("BYE", None, None, ""));
        c.wait_for("200 BYE", |m| {
            is_response(m, 200, Method::Bye) && m.call_id() == Some(id.as_bytes())
        });
    }
    let stats: Vec<_> = backends.iter().map(|s| s.snapshot()).collect();
    for id in &ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "BYE"]);
    }
    assert_eq!(
        metrics_when(&lb, |_| true).bad_tokens,
        0,
        "the old key was refused"
    );
    lb.shutdown();
}
