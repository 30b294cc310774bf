//! Federation partners end to end, with three throwaway CAs (ours, partner A's, partner B's):
//! A's edge calls through the pool and is called back (a server's BYE to A's user); certificates
//! that fail a partner's checks are refused with their reason; a partner speaking for another
//! domain gets 403 and nothing reaches a server; a SIGHUP that removes a partner closes its
//! connections and keeps everyone else's calls (its edges may connect again, as any client
//! without a trusted certificate can).

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use siplb::load::caller::CallOpts;
use siplb::load::server::ByeOn;
use siplb::sip::Method;

const A: &str = "a.example";
const B: &str = "b.example";
const A_EDGE: &str = "sbc.a.example";

/// Our PKI, partner A (its edge named `sbc.a.example` only) and partner B (any name under
/// b.example), and the flags that configure them.
fn partners() -> (Pki, PartnerPki, PartnerPki, Vec<String>) {
    let pki = Pki::new();
    let a = PartnerPki::new(&pki, A);
    let b = PartnerPki::new(&pki, B);
    let flags = vec![
        "--partner".into(),
        a.flag(&[A_EDGE]),
        "--partner".into(),
        b.flag(&[]),
    ];
    (pki, a, b, flags)
}

/// The caller's side of a dialog from `user@domain`.
fn dialog_from(call_id: &str, user: &str, domain: &str) -> siplb::load::msg::Dialog {
    let mut d = new_dialog(call_id, "sip:service@pool.test");
    d.local = format!("<sip:{user}@{domain}>;tag={}", siplb::load::msg::unique("f"));
    d.host = domain.into();
    d
}

fn partner_stats(lb: &siplb::worker::Balancer, domain: &str) -> siplb::metrics::PartnerMetrics {
    lb.metrics().partners.get(domain).cloned().unwrap_or_default()
}

#[test]
fn a_partner_edge_calls_through_the_pool_and_is_called_back() {
    let (pki, a, _b, mut flags) = partners();
    let opts = Backends {
        bye_after: Some(Duration::from_millis(20)),
        bye_on: ByeOn::Same,
        ..Backends::default()
    };
    let backends = start_backends(&pki, opts, None);
    flags.extend(["--admin".into(), "127.0.0.1:0".into()]);
    let lb = start_balancer(&pki, &backends, 2, &flags);
    // The servers hang up: their BYE goes back to A's user over A's connection.
    let report = run_calls(CallOpts {
        tls: a.edge(&pki, &[A_EDGE]),
        from_domain: A.into(),
        remote_bye: true,
        ..call_opts(&pki, &lb, 40)
    });
    assert_eq!((report.ok, report.failed), (40, 0), "{}", report.summary());
    assert_eq!(report.call_ids.len(), 40);
    wait_until("every server BYE answered by A's user", || {
        calls_that_saw(&backends, "200 BYE") >= 40
    });
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    assert_one_backend_per_call(&report, &stats);
    for id in &report.call_ids {
        assert_dialog(&stats, id, &["INVITE", "ACK", "sent BYE", "200 BYE"]);
    }
    let m = metrics_when(&lb, |m| m.partners.get(A).is_some_and(|p| p.requests >= 80));
    let pa = m.partners.get(A).cloned().unwrap_or_default();
    assert_eq!(pa.connections, 1, "{pa:?}");
    assert!(pa.requests >= 80, "INVITE and ACK of every call: {pa:?}");
    assert!(pa.refusals.is_empty(), "{pa:?}");
    // B is configured and listed, with nothing from it.
    assert_eq!(
        m.partners.get(B).map(|p| p.connections),
        Some(0),
        "{:?}",
        m.partners
    );
    let prom = m.prometheus();
    assert!(
        prom.contains("siplb_partner_connections_total{partner=\"a.example\"} 1"),
        "{prom}"
    );
    // `siplb ctl partners` lists both, with A's open connection.
    let admin = lb.admin_addr.expect("admin");
    let out = siplb_command()
        .args(["ctl", "--admin", &admin.to_string(), "partners"])
        .output()
        .expect("ctl");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    assert!(list.contains("\"domain\":\"a.example\""), "{list}");
    assert!(list.contains("\"domain\":\"b.example\""), "{list}");
    lb.shutdown();
}

#[test]
fn partner_certificates_that_fail_their_partners_checks_are_refused_with_the_reason() {
    let (pki, a, b, mut flags) = partners();
    let revoked = a.ca.issue(&[A_EDGE]).expect("leaf");
    let crl = pki.dir.path().join("a.crl.pem");
    a.ca.write_crl(&crl, &[revoked.serial]).expect("crl");
    flags.extend(["--crl".into(), crl.display().to_string()]);
    let backends = start_backends(&pki, Backends::n(2), None);
    let lb = start_balancer(&pki, &backends, 2, &flags);
    let addr = lb.listen_addrs[0];
    // Someone else's CA that calls itself A's.
    let forged = siplb::certs::Ca::new("a.example partner CA").expect("forged CA");
    let cases: Vec<(&str, Arc<rustls::ClientConfig>, &str, &str)> = vec![
        (
            "A's CA, a name not in A's list",
            a.edge(&pki, &["rogue.a.example"]),
            A,
            "name-not-allowed",
        ),
        (
            "B's certificate naming A's edge",
            b.edge(&pki, &[A_EDGE]),
            B,
            "name-not-allowed",
        ),
        (
            "a revoked A certificate",
            PartnerPki::edge_tls(&pki, &revoked),
            A,
            "revoked",
        ),
        (
            "an expired A certificate",
            PartnerPki::edge_tls(&pki, &a.ca.issue_expired(&[A_EDGE]).expect("leaf")),
            A,
            "expired",
        ),
        (
            "a CA forging A's CA name",
            PartnerPki::edge_tls(&pki, &forged.issue(&[A_EDGE]).expect("leaf")),
            A,
            "bad-signature",
        ),
    ];
    assert_eq!(cases.len(), 5);
    for (what, cfg, partner, reason) in cases {
        let before = partner_stats(&lb, partner)
            .refusals
            .get(reason)
            .copied()
            .unwrap_or(0);
        let mut c = TestClient::connect_to(addr, cfg);
        // TLS 1.3: the client's certificate is judged after its handshake ends on its side;
        // the refusal closes the connection before anything it sends is read.
        let _ = c.ep.send(
            c.conn,
            &new_dialog("refused", "sip:s@pool.test").request("OPTIONS", None, None, ""),
        );
        assert!(c.closed_by_peer(), "{what}: not closed");
        let m = metrics_when(&lb, |m| {
            m.partners
                .get(partner)
                .and_then(|p| p.refusals.get(reason))
                .is_some_and(|&n| n > before)
        });
        let p = m.partners.get(partner).cloned().unwrap_or_default();
        assert_eq!(p.refusals.get(reason).copied(), Some(before + 1), "{what}: {p:?}");
        assert_eq!(
            p.connections, 0,
            "{what}: a refused edge counted as connected: {p:?}"
        );
        assert!(
            c.inbox.messages.is_empty(),
            "{what}: got an answer: {:?}",
            c.inbox.messages
        );
    }
    // None of it reached a server, and the good ones still get through.
    assert_eq!(calls_that_saw(&backends, "OPTIONS"), 0);
    for (who, cfg, domain) in [
        ("A's edge", a.edge(&pki, &[A_EDGE]), A),
        ("B's edge", b.edge(&pki, &["sbc2.b.example"]), B),
        (
            "a client without a certificate",
            pki.client_tls(None),
            "client.invalid",
        ),
    ] {
        let report = run_calls(CallOpts {
            tls: cfg,
            from_domain: domain.into(),
            ..call_opts(&pki, &lb, 10)
        });
        assert_eq!((report.ok, report.failed), (10, 0), "{who}: {}", report.summary());
    }
    lb.shutdown();
}

#[test]
fn a_partner_speaking_for_another_domain_gets_403_and_nothing_reaches_a_server() {
    let (pki, a, _b, flags) = partners();
    let backends = start_backends(&pki, Backends::n(2), None);
    let lb = start_balancer(&pki, &backends, 2, &flags);
    let mut c = TestClient::connect_to(lb.listen_addrs[0], a.edge(&pki, &[A_EDGE]));
    let forbidden = |c: &mut TestClient, d: &mut siplb::load::msg::Dialog, extra: &str, header: &str| {
        c.send(&d.request("INVITE", None, None, extra));
        let got = c.wait_for("403", |m| {
            is_response(m, 403, Method::Invite) && m.call_id() == Some(d.call_id.as_bytes())
        });
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            text.contains(&format!("403 Forbidden ({header} outside a.example)")),
            "{text}"
        );
    };
    let mut bob = dialog_from("from-b", "bob", B);
    forbidden(&mut c, &mut bob, "", "From");
    let mut ceo = dialog_from("pai-ours", "alice", A);
    forbidden(
        &mut c,
        &mut ceo,
        "P-Asserted-Identity: <sip:ceo@pool.test>\r\n",
        "P-Asserted-Identity",
    );
    let mut tel = dialog_from("pai-tel", "alice", A);
    forbidden(
        &mut c,
        &mut tel,
        "P-Asserted-Identity: <sip:alice@a.example>, <tel:+15550100>\r\n",
        "P-Asserted-Identity",
    );
    // A look-alike domain is another domain.
    let mut lookalike = dialog_from("lookalike", "alice", "evila.example");
    forbidden(&mut c, &mut lookalike, "", "From");
    // The connection stays, and A's own users get through.
    let d = establish_dialog(&mut c, dialog_from("own", "alice", "sales.a.example"));
    assert_eq!(d.call_id, "own");
    wait_until("A's own call at a server", || {
        calls_that_saw(&backends, "ACK") >= 1
    });
    // A snapshot taken after the ACK left (the one connection is on one worker).
    let m = metrics_when(&lb, |m| {
        m.forwarded_requests >= 2
            && m.partners
                .get(A)
                .is_some_and(|p| p.refusals.values().sum::<u64>() >= 4)
    });
    let pa = m.partners.get(A).cloned().unwrap_or_default();
    assert_eq!(pa.refusals.get("from-outside-domain").copied(), Some(2), "{pa:?}");
    assert_eq!(
        pa.refusals.get("identity-outside-domain").copied(),
        Some(2),
        "{pa:?}"
    );
    assert_eq!(m.answers_with(403), 4);
    for id in ["from-b", "pai-ours", "pai-tel", "lookalike"] {
        assert!(
            !backends.iter().any(|b| b.snapshot().calls.contains_key(id)),
            "{id} reached a server"
        );
    }
    assert_eq!(m.forwarded_requests, 2, "only A's own INVITE and ACK: {m:?}");
    lb.shutdown();
}

#[test]
fn a_sighup_that_removes_a_partner_closes_its_connections_and_keeps_the_others() {
    let (pki, a, b, _) = partners();
    let file = pki.dir.path().join("partners.conf");
    let both = format!(
        "# federation\n{}   # A Corp\n{}\n",
        a.flag(&[A_EDGE]),
        b.flag(&[])
    );
    std::fs::write(&file, &both).expect("partners file");
    let revoked = a.ca.issue(&[A_EDGE]).expect("leaf");
    let crl = pki.dir.path().join("a.crl.pem");
    a.ca.write_crl(&crl, &[revoked.serial]).expect("crl");
    let backends = start_backends(&pki, Backends::n(2), None);
    let metrics = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let file_arg = file.display().to_string();
    let crl_arg = crl.display().to_string();
    let (mut child, port) = spawn_siplb(
        &pki,
        &backends,
        &[
            "--partners-file",
            &file_arg,
            "--crl",
            &crl_arg,
            "--metrics",
            &metrics_addr,
            // A's dialog never ends (its connection is closed): do not wait it out on SIGTERM.
            "--drain-timeout",
            "1",
        ],
    );
    wait_workers_ready(metrics, 2);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // A revoked edge is refused (and logged, below).
    let mut refused = TestClient::connect_to(addr, PartnerPki::edge_tls(&pki, &revoked));
    let _ = refused.ep.send(refused.conn, b"\r\n\r\n");
    assert!(refused.closed_by_peer(), "the revoked edge was not closed");
    // A's and B's edges each in a dialog; plain clients' calls held while the reload lands.
    let mut ca = TestClient::connect_to(addr, a.edge(&pki, &[A_EDGE]));
    let _da = establish_dialog(&mut ca, dialog_from("a-call", "alice", A));
    let mut cb = TestClient::connect_to(addr, b.edge(&pki, &["sbc.b.example"]));
    let mut db = establish_dialog(&mut cb, dialog_from("b-call", "bob", B));
    let opts = CallOpts {
        hold: Duration::from_millis(1500),
        ..call_opts_to(&pki, addr, 20)
    };
    let caller = std::thread::spawn(move || siplb::load::caller::run(opts).expect("caller"));
    wait_until("the held calls established", || {
        calls_that_saw(&backends, "ACK") >= 22
    });
    std::fs::write(&file, format!("# A is gone\n{}\n", b.flag(&[]))).expect("partners file");
    signal(&child, "-HUP");
    assert!(ca.closed_by_peer(), "A's connection outlived its partner");
    // B's dialog goes on over its connection.
    cb.send(&db.request("BYE", None, None, ""));
    cb.wait_for("200 BYE", |m| {
        is_response(m, 200, Method::Bye) && m.call_id() == Some(&b"b-call"[..])
    });
    let report = caller.join().expect("caller");
    assert_eq!((report.ok, report.failed), (20, 0), "{}", report.summary());
    signal(&child, "-TERM");
    let (status, log) = exit_and_log(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{log}");
    let line = |needle: &[&str]| {
        log.lines()
            .filter(|l| needle.iter().all(|n| l.contains(n)))
            .count()
    };
    assert_eq!(
        line(&["partner certificate refused", "a.example", "revoked"]),
        1,
        "{log}"
    );
    assert_eq!(line(&["partner removed", "a.example"]), 1, "{log}");
    assert!(line(&["partner edge connected", "b.example"]) >= 1, "{log}");
    assert_eq!(line(&["partner removed", "b.example"]), 0, "{log}");
}

/// A balancer (2 workers, one back end) that reads its partners from a file holding `lines`; the
/// file (to rewrite before a reload), the back ends and the balancer.
fn with_partners_file(
    pki: &Pki,
    lines: &str,
) -> (
    std::path::PathBuf,
    Vec<siplb::load::server::ServerHandle>,
    siplb::worker::Balancer,
) {
    let file = pki.dir.path().join("partners.conf");
    std::fs::write(&file, format!("{lines}\n")).expect("partners file");
    let backends = start_backends(pki, Backends::n(1), None);
    let lb = start_balancer(
        pki,
        &backends,
        2,
        &["--partners-file".into(), file.display().to_string()],
    );
    (file, backends, lb)
}

/// Runs the siplb binary with `args` (and our certificates); its exit code and stderr.
fn siplb_with(pki: &Pki, args: &[&str]) -> (i32, String) {
    let out = siplb_command()
        .args(["--listen", "127.0.0.1:0", "--backend", "b0.pool.test=127.0.0.1:9"])
        .args(["--cert", &pki.lb.cert.display().to_string()])
        .args(["--key", &pki.lb.key.display().to_string()])
        .args(["--backend-ca", &pki.ca_path.display().to_string()])
        .args(args)
        .output()
        .expect("siplb runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_partner_flags_and_files_are_one_line_refusals() {
    let (pki, a, _b, _) = partners();
    let bad_file = pki.dir.path().join("bad-partners.conf");
    std::fs::write(&bad_file, format!("{}\nc.example\n", a.flag(&[]))).expect("file");
    let bad_file = bad_file.display().to_string();
    let twice = pki.dir.path().join("twice.conf");
    std::fs::write(&twice, format!("{}\n", a.flag(&[]))).expect("file");
    let twice = twice.display().to_string();
    let a_flag = a.flag(&[]);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--partner", "a.example"],
            2,
            "--partner: 'a.example' is not DOMAIN=CA_PEM",
        ),
        (
            vec!["--partner", "a.example=ca.pem,weight=2"],
            2,
            "unknown option 'weight=2'",
        ),
        (vec!["--partner", "*.a.example=ca.pem"], 2, "is not a DNS name"),
        (
            vec!["--partner", "a.example=x", "--partner", "A.example.=y"],
            2,
            "given twice",
        ),
        (
            vec!["--partners-file", "/nonexistent/partners.conf"],
            1,
            "/nonexistent/partners.conf",
        ),
        (vec!["--partners-file", &bad_file], 1, "bad-partners.conf:2:"),
        (
            vec!["--partner", &a_flag, "--partners-file", &twice],
            1,
            "given twice",
        ),
        (
            vec!["--partner", "a.example=/nonexistent/a-ca.pem"],
            1,
            "/nonexistent/a-ca.pem",
        ),
    ];
    assert_eq!(cases.len(), 8);
    for (args, code, needle) in cases {
        let (got, err) = siplb_with(&pki, &args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_reload_with_a_broken_partners_file_keeps_the_partners_running_and_one_that_adds_a_partner_applies() {
    let (pki, a, _b, _) = partners();
    let (file, _backends, lb) = with_partners_file(&pki, &a.flag(&[A_EDGE]));
    std::fs::write(&file, "a.example\n").expect("file");
    let e = lb.reload().expect_err("a broken partners file was taken");
    assert!(e.to_string().contains("partners.conf:1:"), "{e}");
    let report = run_calls(CallOpts {
        tls: a.edge(&pki, &[A_EDGE]),
        from_domain: A.into(),
        ..call_opts(&pki, &lb, 10)
    });
    assert_eq!((report.ok, report.failed), (10, 0), "{}", report.summary());
    let m = metrics_when(&lb, |m| m.partners.get(A).is_some_and(|p| p.connections >= 1));
    assert_eq!(
        m.partners.get(A).map(|p| p.connections),
        Some(1),
        "{:?}",
        m.partners
    );
    // A reload that adds B: B's next edge is B's (before it, the same certificate is only an
    // unverified client).
    let b = PartnerPki::new(&pki, B);
    std::fs::write(&file, format!("{}\n{}\n", a.flag(&[A_EDGE]), b.flag(&[]))).expect("file");
    reload_and_wait(&lb);
    let report = run_calls(CallOpts {
        tls: b.edge(&pki, &["edge.b.example"]),
        from_domain: B.into(),
        ..call_opts(&pki, &lb, 10)
    });
    assert_eq!((report.ok, report.failed), (10, 0), "{}", report.summary());
    let m = metrics_when(&lb, |m| m.partners.get(B).is_some_and(|p| p.requests >= 30));
    let pb = m.partners.get(B).cloned().unwrap_or_default();
    // INVITE, ACK and BYE of each call.
    assert_eq!((pb.connections, pb.requests), (1, 30), "{pb:?}");
    lb.shutdown();
}

/// Partners beside `--client-ca --require-client-cert`: clients with a `--client-ca` certificate
/// are unchanged (they connect and call), clients without one are still refused, and a partner's
/// edge — whose CA is not `--client-ca` — is still the partner's.
#[test]
fn partners_leave_required_client_certificates_as_they_were() {
    let (pki, a, _b, mut flags) = partners();
    flags.extend([
        "--client-ca".into(),
        pki.ca_path.display().to_string(),
        "--require-client-cert".into(),
    ]);
    let backends = start_backends(&pki, Backends::n(2), None);
    let lb = start_balancer(&pki, &backends, 2, &flags);
    let client = run_calls(CallOpts {
        tls: pki.client_tls(Some(&["phone.client.test"])),
        ..call_opts(&pki, &lb, 10)
    });
    assert_eq!((client.ok, client.failed), (10, 0), "{}", client.summary());
    let anonymous = run_calls(call_opts(&pki, &lb, 3));
    assert_eq!(
        (anonymous.ok, anonymous.failed),
        (0, 3),
        "{}",
        anonymous.summary()
    );
    let edge = run_calls(CallOpts {
        tls: a.edge(&pki, &[A_EDGE]),
        from_domain: A.into(),
        ..call_opts(&pki, &lb, 10)
    });
    assert_eq!((edge.ok, edge.failed), (10, 0), "{}", edge.summary());
    // Each worker publishes on its own: wait for both counts.
    let m = metrics_when(&lb, |m| {
        m.clients_verified >= 2 && m.partners.get(A).is_some_and(|p| p.connections >= 1)
    });
    assert_eq!(
        m.partners.get(A).map(|p| p.connections),
        Some(1),
        "{:?}",
        m.partners
    );
    // The partner's edge and the verified client both count as verified.
    assert_eq!(m.clients_verified, 2, "{m:?}");
    lb.shutdown();
}

/// A reload that changes a partner (its edge names) applies to new connections: the edge
/// already connected under the old names keeps its connection and its calls; a new connection
/// with a name the partner no longer has is refused.
#[test]
fn a_reload_that_changes_a_partner_applies_to_new_connections() {
    let (pki, a, _b, _) = partners();
    let (file, _backends, lb) = with_partners_file(&pki, &a.flag(&[A_EDGE]));
    let mut old = TestClient::connect_to(lb.listen_addrs[0], a.edge(&pki, &[A_EDGE]));
    let _ = establish_dialog(&mut old, dialog_from("before-change", "alice", A));
    std::fs::write(&file, format!("{}\n", a.flag(&["sbc2.a.example"]))).expect("file");
    reload_and_wait(&lb);
    // The old connection goes on.
    let d = establish_dialog(&mut old, dialog_from("after-change", "alice", A));
    assert_eq!(d.call_id, "after-change");
    // A new one with the old name is refused; with the new name it is A's.
    let mut stale = TestClient::connect_to(lb.listen_addrs[0], a.edge(&pki, &[A_EDGE]));
    let _ = stale.ep.send(stale.conn, b"\r\n\r\n");
    assert!(
        stale.closed_by_peer(),
        "an edge with a name A no longer has got in"
    );
    let fresh = run_calls(CallOpts {
        tls: a.edge(&pki, &["sbc2.a.example"]),
        from_domain: A.into(),
        ..call_opts(&pki, &lb, 5)
    });
    assert_eq!((fresh.ok, fresh.failed), (5, 0), "{}", fresh.summary());
    let m = metrics_when(&lb, |m| {
        m.partners
            .get(A)
            .is_some_and(|p| p.refusals.contains_key("name-not-allowed") && p.connections >= 2)
    });
    let pa = m.partners.get(A).cloned().unwrap_or_default();
    assert_eq!(pa.refusals.get("name-not-allowed"), Some(&1), "{pa:?}");
    assert_eq!(pa.connections, 2, "{pa:?}");
    lb.shutdown();
}
