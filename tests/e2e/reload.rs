//! SIGHUP reload: a new back-end CA and a changed back-ends file take effect for new connections
//! and calls, while an established dialog goes on; a reload that fails keeps what runs.

use crate::common::*;
use siplb::certs::Ca;
use siplb::load::msg;
use siplb::sip::Method;
use siplb::tls::Identity;

#[test]
fn reload_takes_a_new_ca_and_backend_file_without_dropping_a_call() {
    let pki = Pki::new();
    let opts = Backends::default();
    let mut backends = start_backends(&pki, Backends::n(2), None);
    let file = pki.dir.path().join("backends.txt");
    let ca_file = pki.dir.path().join("backend-ca.pem");
    std::fs::write(&ca_file, pki.ca.pem()).expect("ca");
    std::fs::write(
        &file,
        backends
            .iter()
            .map(|b| format!("{}={}\n", b.name, b.addr))
            .collect::<String>(),
    )
    .expect("file");
    let mut args = vec!["--backends-file".to_string(), file.display().to_string()];
    args.extend(["--backend-ca".into(), ca_file.display().to_string()]);
    let lb = start_balancer(&pki, &[], 2, &args);

    // An established call (INVITE, 200, ACK) on whichever back end the hash picks.
    let mut c = TestClient::connect(&pki, &lb);
    let mut d = establish(&mut c, &msg::unique("reload-"));
    // Answered, so recorded by the back end that has it.
    let host = backends
        .iter()
        .position(|b| b.snapshot().saw(&d.call_id, "INVITE"))
        .expect("a back end has the call");
    let other = 1 - host;

    // A new back end whose certificate comes from a new CA; the file drops the other old one.
    let new_ca = Ca::new("second pool CA").expect("CA");
    let leaf = new_ca.issue(&[&backend_name(2)]).expect("leaf");
    let newcomer = start_backend(
        &pki,
        &backend_name(2),
        Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).expect("id"),
        opts,
        None,
    );
    std::fs::write(&ca_file, format!("{}{}", pki.ca.pem(), new_ca.pem())).expect("ca");
    std::fs::write(
        &file,
        format!(
            "{}={}\n{}={}\n",
            backends[host].name, backends[host].addr, newcomer.name, newcomer.addr
        ),
    )
    .expect("file");
    reload_and_wait(&lb);

    // The established call ends on its back end.
    c.send(&d.request("BYE", None, None, ""));
    c.wait_for("200 BYE", |m| is_response(m, 200, Method::Bye));
    assert!(
        backends[host].snapshot().saw(&d.call_id, "BYE"),
        "the BYE did not reach the call's back end"
    );

    // New calls reach the new back end (new CA trusted) and never the removed one.
    let report = run_calls(call_opts(&pki, &lb, 60));
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    let removed = backends.remove(other).stop();
    assert!(
        report.call_ids.iter().all(|id| !removed.calls.contains_key(id)),
        "a new call reached the removed back end"
    );
    let fresh = newcomer.snapshot();
    assert!(
        report.call_ids.iter().any(|id| fresh.calls.contains_key(id)),
        "no new call reached the new back end"
    );

    // A reload that cannot read its files keeps the running configuration.
    std::fs::write(&ca_file, "not a certificate").expect("ca");
    assert!(lb.reload().is_err(), "a broken CA file was accepted");
    let report = run_calls(call_opts(&pki, &lb, 20));
    assert_eq!((report.ok, report.failed), (20, 0), "{}", report.summary());
    lb.shutdown();
}
