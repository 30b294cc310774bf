//! Running for months: a back end dying under load and coming back, a hung back end found by
//! its health probes, drain by weight=0, and the Prometheus endpoint.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;
use siplb::load::msg;
use siplb::sip::Method;

fn flags(f: &[&str]) -> Vec<String> {
    f.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_backend_dies_under_load_and_comes_back() {
    let Harness {
        pki,
        mut backends,
        lb,
    } = Harness::new()
        .workers(2)
        .flags(&flags(&["--health-interval", "1"]))
        .start();
    let mut call = call_opts(&pki, &lb, 500);
    call.rate = 50.0;
    let caller = std::thread::spawn(move || run_calls(call));
    wait_until("calls on the back end about to die", || {
        calls_that_saw(&backends[1..2], "BYE") >= 5
    });
    let (name, addr) = (backends[1].name.clone(), backends[1].addr);
    let dead = backends.remove(1).stop();
    let m = metrics_within(&lb, Duration::from_secs(20), |m| {
        m.backend(&name).is_some_and(|b| !b.up)
    });
    assert!(
        m.backend(&name).is_some_and(|b| !b.up),
        "{name} never went down: {m:?}"
    );
    // The same server comes back on the same address.
    let id = pki.identity(&[&name]);
    let back = {
        let mut tries = 0;
        loop {
            let opts = siplb::load::server::ServerOpts {
                listen: addr,
                name: name.clone(),
                tls: siplb::tls::mtls_server_config(
                    &id,
                    siplb::tls::roots_from_pem(pki.ca.pem()).expect("roots"),
                )
                .expect("tls"),
                peer: None,
                bye_after: None,
                bye_on: siplb::load::server::ByeOn::Same,
                silent: false,
                crash_on_invite: false,
                record: true,
                faults: Default::default(),
            };
            match siplb::load::server::spawn(opts) {
                Ok(h) => break h,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("rebinding {addr}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot restart the back end on {addr}: {e}"),
            }
        }
    };
    let report = caller.join().expect("caller");
    assert!(report.failed <= 10, "more than 2% failed: {}", report.summary());
    assert_eq!(report.ok + report.failed, 500);
    let again = back.stop();
    let late_calls = report
        .call_ids
        .iter()
        .filter(|id| again.calls.contains_key(*id))
        .count();
    assert!(late_calls > 0, "the back end got no call after it came back");
    let before = report
        .call_ids
        .iter()
        .filter(|id| dead.calls.contains_key(*id))
        .count();
    assert!(before > 0, "the back end had no call before it died");
    lb.shutdown();
}

#[test]
fn a_hung_backend_is_taken_out_by_its_health_probes() {
    let pki = Pki::new();
    let mut backends = start_backends(&pki, Backends::n(2), None);
    let hung = start_backend(
        &pki,
        &backend_name(2),
        pki.identity(&[&backend_name(2)]),
        Backends {
            silent: true,
            ..Backends::default()
        },
        None,
    );
    backends.push(hung);
    let lb = start_balancer(&pki, &backends, 2, &flags(&["--health-interval", "1"]));
    // Within 3 intervals (plus one publishing period) the hung back end is down in every worker.
    let m = metrics_within(&lb, Duration::from_millis(3250), |m| {
        m.backend(&backend_name(2)).is_some_and(|b| !b.up)
    });
    assert!(
        !m.backend(&backend_name(2)).expect("listed").up,
        "still up after the probes: {:?}",
        m.backends
    );
    let report = run_calls(call_opts(&pki, &lb, 60));
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    let hung = backends.pop().expect("hung").stop();
    assert!(
        report.call_ids.iter().all(|id| !hung.calls.contains_key(id)),
        "a call went to the hung back end"
    );
    lb.shutdown();
}

#[test]
fn weight_zero_takes_no_new_dialogs_but_finishes_its_own() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::default(), None);
    let file = pki.dir.path().join("backends.txt");
    let write = |drain: &str| {
        let text: String = backends
            .iter()
            .map(|b| {
                format!(
                    "{}={}{}\n",
                    b.name,
                    b.addr,
                    if b.name == drain { ",weight=0" } else { "" }
                )
            })
            .collect();
        std::fs::write(&file, text).expect("backends file");
    };
    write("");
    let lb = start_balancer(
        &pki,
        &[],
        2,
        &flags(&["--backends-file", &file.display().to_string()]),
    );
    // Dialogs until one lands on b0, the back end about to be drained.
    let mut c = TestClient::connect(&pki, &lb);
    let mut on_b0 = None;
    for i in 0..60 {
        let d = establish(&mut c, &format!("drain-{i}-{}", msg::unique("")));
        // The INVITE was answered, so the back end that has it recorded it already.
        if backends[0].snapshot().saw(&d.call_id, "INVITE") {
            on_b0 = Some(d);
            break;
        }
    }
    let mut d = on_b0.expect("no dialog landed on b0 in 60 tries");
    write(&backends[0].name);
    reload_and_wait(&lb);
    let report = run_calls(call_opts(&pki, &lb, 60));
    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.summary());
    let b0 = backends[0].snapshot();
    assert!(
        report.call_ids.iter().all(|id| !b0.calls.contains_key(id)),
        "a new dialog went to the weight=0 back end"
    );
    c.send(&d.request("BYE", None, None, ""));
    c.wait_for("200 BYE", |m| is_response(m, 200, Method::Bye));
    assert!(
        backends[0].snapshot().saw(&d.call_id, "BYE"),
        "the drained back end's dialog could not finish there"
    );
    lb.shutdown();
}

#[test]
fn metrics_are_prometheus_text_naming_every_backend() {
    let Harness { pki, backends, lb } = Harness::new()
        .workers(2)
        .flags(&flags(&["--metrics", "127.0.0.1:0"]))
        .start();
    let report = run_calls(call_opts(&pki, &lb, 30));
    assert_eq!(report.failed, 0);
    metrics_when(&lb, |m| m.forwarded_requests >= 90);
    let addr = lb.metrics_addr.expect("metrics address");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    // Every line is a comment or `name{labels} value` with a number for a value.
    for line in body.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        assert!(
            value == "NaN" || value.parse::<f64>().is_ok(),
            "bad value: {line}"
        );
        let name = series.split('{').next().unwrap_or("");
        assert!(
            name.starts_with("siplb_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
    for b in &backends {
        let want = format!("siplb_backend_up{{backend=\"{}\"}} 1", b.name);
        assert!(body.contains(&want), "missing {want}");
    }
    assert!(
        body.contains("siplb_requests_total{method=\"INVITE\"} 30"),
        "INVITE count missing"
    );
    lb.shutdown();
}

#[test]
fn invites_lost_with_their_backend_are_retried_on_the_next() {
    let pki = Pki::new();
    let mut backends = start_backends(&pki, Backends::n(2), None);
    let crashy = Backends {
        crash_on_invite: true,
        ..Backends::default()
    };
    backends.push(start_backend(
        &pki,
        &backend_name(2),
        pki.identity(&[&backend_name(2)]),
        crashy,
        None,
    ));
    let lb = start_balancer(&pki, &backends, 2, &flags(&["--health-interval", "1"]));
    let mut call = call_opts(&pki, &lb, 100);
    call.rate = 100.0;
    let report = run_calls(call);
    assert_eq!((report.ok, report.failed), (100, 0), "{}", report.summary());
    let m = metrics_when(&lb, |m| m.failovers > 0);
    assert!(m.failovers > 0, "no INVITE needed a failover");
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    // Every call completed on one of the healthy back ends.
    for id in &report.call_ids {
        let on: Vec<_> = stats[..2].iter().filter(|s| s.saw(id, "BYE")).collect();
        assert_eq!(on.len(), 1, "{id} did not finish on exactly one healthy back end");
    }
    lb.shutdown();
}
