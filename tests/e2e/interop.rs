//! Interop: SIPp (Debian's sip-tester, built without TLS) drives calls through siplb, with
//! stunnel4 in front of it as the TLS client that checks siplb's certificate; and SIPp serves
//! calls as siplb's back ends, behind stunnel4 as their MTLS face. A SIP implementation we did
//! not write must complete its calls, each on one back end.
//! Skips, saying why, when sipp or stunnel4 is not installed; .ci/run installs both.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True (and says why `test` skips) when SIPp or stunnel4 is missing; `.ci/run` installs both.
fn missing_tools(test: &str) -> bool {
    let missing: Vec<&str> = ["sipp", "stunnel4"]
        .into_iter()
        .filter(|t| !installed(t))
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED {test}: {missing:?} not installed (apt-get install sip-tester stunnel4)");
    }
    !missing.is_empty()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sipp_calls_through_stunnel_and_siplb() {
    if missing_tools("sipp_calls_through_stunnel_and_siplb") {
        return;
    }
    let Harness { pki, backends, lb } = Harness::new().workers(2).start();

    // stunnel: plain TCP from SIPp in, TLS to siplb out, verifying siplb's chain and name.
    let plain = free_port();
    let conf = pki.dir.path().join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[sip]\nclient = yes\naccept = 127.0.0.1:{plain}\nconnect = {}\n\
             CAfile = {}\nverifyChain = yes\ncheckHost = {LB_NAME}\nsni = {LB_NAME}\n",
            lb.listen_addrs[0],
            pki.ca_path.display()
        ),
    )
    .expect("stunnel conf");
    let _stunnel = stunnel(&conf, plain);

    let calls = 20;
    let out = Command::new("sipp")
        .args([
            "-sn",
            "uac",
            "-t",
            "t1",
            "-i",
            "127.0.0.1",
            "-p",
            &free_port().to_string(),
        ])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            "20",
            "-l",
            "10",
            "-s",
            "conference",
        ])
        .args(["-timeout", "30s", "-timeout_error", "-nostdin", "-trace_err"])
        .arg(format!("127.0.0.1:{plain}"))
        .current_dir(pki.dir.path())
        .output()
        .expect("sipp runs");
    let errors = std::fs::read_dir(pki.dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_errors.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        out.status.success(),
        "sipp failed ({}):\n{}\n{}\nerrors:\n{errors}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    // SIPp finished: every BYE was answered, so its INVITE, ACK and BYE reached the back end.
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    // Every SIPp call (siplb's own health probes aside): INVITE, ACK and BYE on exactly one back end.
    let all: std::collections::BTreeSet<&String> = stats
        .iter()
        .flat_map(|s| s.calls.keys())
        .filter(|id| !id.starts_with("siplb-probe-"))
        .collect();
    assert_eq!(all.len(), calls, "back ends saw {} calls", all.len());
    for id in all {
        assert_dialog(&stats, id, &["INVITE", "ACK", "BYE"]);
    }
    lb.shutdown();
}

/// stunnel4 as a back end's TLS face: MTLS (siplb's client certificate verified against the test
/// CA) in front of a plain-TCP SIPp UAS, showing `name`'s certificate; returns once it listens.
fn stunnel_server(pki: &Pki, name: &str, tls_port: u16, sipp_port: u16) -> Killed {
    let leaf = pki
        .ca
        .issue(&[name])
        .expect("cert")
        .write(pki.dir.path(), name)
        .expect("write cert");
    let conf = pki.dir.path().join(format!("{name}.stunnel.conf"));
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[sip]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{sipp_port}\n\
             cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\n",
            leaf.cert.display(),
            leaf.key.display(),
            pki.ca_path.display()
        ),
    )
    .expect("stunnel conf");
    stunnel(&conf, tls_port)
}

/// stunnel4 running `conf`, once it listens on `port`.
fn stunnel(conf: &std::path::Path, port: u16) -> Killed {
    let k = Killed(
        Command::new("stunnel4")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 runs"),
    );
    wait_until(&format!("stunnel4 listening on {port}"), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    k
}

/// A SIPp UAS that passes OPTIONS (`-aa`) but answers every INVITE 503 with a Retry-After.
const BUSY_UAS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="overloaded uas">
  <recv request="INVITE" />
  <send>
    <![CDATA[
      SIP/2.0 503 Service Unavailable
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]busy[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Retry-After: 30
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK" />
</scenario>
"#;

/// Three SIPp servers behind siplb (2 workers), one of them overloaded: it passes its OPTIONS
/// probes but answers every INVITE 503 with Retry-After. Every one of 300 calls completes: siplb
/// retries the INVITE on another server and keeps new dialogs off the busy one.
#[test]
fn sipp_servers_one_overloaded_lose_no_call() {
    if missing_tools("sipp_servers_one_overloaded_lose_no_call") {
        return;
    }
    let pki = Pki::new();
    std::fs::write(pki.dir.path().join("busy.xml"), BUSY_UAS).expect("scenario");
    let mut keep = Vec::new();
    let mut extra: Vec<String> = vec!["--health-interval".into(), "1".into()];
    for i in 0..3 {
        let (tls, plain) = (free_port(), free_port());
        let scenario: &[&str] = if i == 0 {
            &["-sf", "busy.xml"]
        } else {
            &["-sn", "uas"]
        };
        keep.push(Killed(
            Command::new("sipp")
                .args(scenario)
                .args(["-t", "t1", "-i", "127.0.0.1", "-p", &plain.to_string()])
                .args(["-aa", "-nostdin"])
                .current_dir(pki.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sipp runs"),
        ));
        wait_until(&format!("sipp listening on {plain}"), || {
            TcpStream::connect(("127.0.0.1", plain)).is_ok()
        });
        let name = backend_name(i);
        keep.push(stunnel_server(&pki, &name, tls, plain));
        extra.extend(["--backend".into(), format!("{name}=127.0.0.1:{tls}")]);
    }
    let lb = start_balancer(&pki, &[], 2, &extra);
    let m = metrics_within(&lb, Duration::from_secs(20), |m| {
        m.backends.len() == 3 && m.backends.iter().all(|b| b.up)
    });
    assert_eq!(
        m.backends.iter().filter(|b| b.up).count(),
        3,
        "SIPp servers up behind stunnel4: {:?}",
        m.backends
    );
    let report = run_calls(siplb::load::caller::CallOpts {
        rate: 60.0,
        ..call_opts(&pki, &lb, 300)
    });
    assert_eq!((report.ok, report.failed), (300, 0), "{}", report.summary());
    let m = metrics_when(&lb, |m| m.retries_503 > 0);
    assert!(m.retries_503 > 0, "the busy server was never tried: {m:?}");
    let busy = m.backend(&backend_name(0)).expect("listed");
    assert!(busy.overloaded, "{busy:?}");
    lb.shutdown();
}
