//! End to end: the runtime admin API over real HTTP and `siplb ctl` against a running balancer —
//! list, drain (no new dialogs, existing ones finish), disable, enable, weight — and a
//! non-loopback `--admin` refused.

use crate::common::*;
use clap::Parser;
use siplb::sip::Method;

fn ctl(admin: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = siplb_command()
        .args(["ctl", "--admin", &admin.to_string()])
        .args(args)
        .output()
        .expect("siplb ctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Places `n` calls; how many reached each back end.
fn spread(
    pki: &Pki,
    lb: &siplb::worker::Balancer,
    backends: &[siplb::load::server::ServerHandle],
    n: usize,
) -> Vec<usize> {
    let report = run_calls(call_opts(pki, lb, n));
    assert_eq!(report.failed, 0, "{}", report.summary());
    let stats: Vec<_> = backends.iter().map(|b| b.snapshot()).collect();
    let mut per = vec![0; backends.len()];
    for id in &report.call_ids {
        for (i, s) in stats.iter().enumerate() {
            if s.calls.contains_key(id) {
                per[i] += 1;
            }
        }
    }
    per
}

#[test]
fn operators_drain_disable_enable_and_weigh_back_ends_at_run_time() {
    let Harness { pki, backends, lb } = Harness::new()
        .backends(3)
        .workers(2)
        .flags(&["--admin".into(), "127.0.0.1:0".into()])
        .start();
    let admin = lb.admin_addr.expect("admin address");
    // Health per worker is what the workers last published (a few times a second).
    let mut list = String::new();
    wait_until("every back end up in both workers' health", || {
        let (ok, l) = ctl(admin, &["backends"]);
        assert!(ok, "{l}");
        list = l;
        list.matches("\"health\":[\"up\",\"up\"]").count() == 3
    });
    for b in &backends {
        assert!(list.contains(&format!("\"name\":\"{}\"", b.name)), "{list}");
    }
    assert_eq!(list.matches("\"admin_state\":\"enabled\"").count(), 3, "{list}");
    assert_eq!(list.matches("\"health\":[\"up\",\"up\"]").count(), 3, "{list}");

    // A dialog on back end 0, then drain it: its dialog finishes, no new one goes there.
    let mut c = TestClient::connect(&pki, &lb);
    let (mut d, id) = (0..100)
        .find_map(|i| {
            let id = format!("drain-{i}");
            let d = establish(&mut c, &id);
            backends[0].snapshot().calls.contains_key(&id).then_some((d, id))
        })
        .expect("a dialog on back end 0");
    let (ok, body) = ctl(admin, &["drain", &backends[0].name]);
    assert!(ok, "{body}");
    let per = spread(&pki, &lb, &backends, 60);
    assert_eq!(per[0], 0, "a draining back end took new dialogs: {per:?}");
    c.send(&d.request("BYE", None, None, ""));
    c.wait_for("200 BYE", |m| {
        is_response(m, 200, Method::Bye) && m.call_id() == Some(id.as_bytes())
    });
    assert!(backends[0].snapshot().saw(&id, "BYE"));
    let (_, list) = ctl(admin, &["backends"]);
    assert!(list.contains("\"admin_state\":\"draining\""), "{list}");

    // Disable 1, enable 0: new dialogs only on 0 and 2.
    assert!(ctl(admin, &["disable", &backends[1].name]).0);
    assert!(ctl(admin, &["enable", &backends[0].name]).0);
    let per = spread(&pki, &lb, &backends, 60);
    assert!(per[1] == 0 && per[0] > 0 && per[2] > 0, "{per:?}");

    // Weights: 2 takes the lion's share.
    assert!(ctl(admin, &["enable", &backends[1].name]).0);
    assert!(ctl(admin, &["weight", &backends[2].name, "2000"]).0);
    let per = spread(&pki, &lb, &backends, 100);
    assert!(per[2] > 75, "weight 2000 against 100 and 100: {per:?}");

    // Unknown names and requests are refused.
    let (ok, body) = ctl(admin, &["drain", "nobody.pool.test"]);
    assert!(!ok && body.contains("no back end"), "{body}");
    // Admin states survive a reload for back ends that stay.
    reload_and_wait(&lb);
    let (_, list) = ctl(admin, &["backends"]);
    assert!(list.contains("\"weight\":2000"), "{list}");
    lb.shutdown();
}

#[test]
fn a_non_loopback_admin_address_is_refused() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let args = [
        "siplb",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &pki.lb.cert.display().to_string(),
        "--key",
        &pki.lb.key.display().to_string(),
        "--backend-ca",
        &pki.ca_path.display().to_string(),
        "--backend",
        &format!("{}={}", backends[0].name, backends[0].addr),
        "--admin",
        "0.0.0.0:0",
    ]
    .map(String::from);
    let cfg = siplb::cli::Args::try_parse_from(args)
        .expect("flags")
        .run
        .into_config()
        .expect("config");
    let err = match siplb::worker::Balancer::start(cfg) {
        Ok(lb) => {
            lb.shutdown();
            panic!("a non-loopback --admin was accepted");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("loopback"), "{err}");
}

#[test]
fn the_admin_api_on_a_unix_socket() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let sock = pki.dir.path().join("admin.sock");
    let lb = start_balancer(
        &pki,
        &backends,
        1,
        &["--admin".into(), sock.display().to_string()],
    );
    let out = siplb_command()
        .args([
            "ctl",
            "--admin",
            &sock.display().to_string(),
            "disable",
            &backends[0].name,
        ])
        .output()
        .expect("siplb ctl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report = run_calls(call_opts(&pki, &lb, 5));
    assert_eq!(
        report.failed,
        5,
        "a disabled back end took calls: {}",
        report.summary()
    );
    lb.shutdown();
}
