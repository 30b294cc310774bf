//! Interop: SIPp (Debian's sip-tester, built without TLS) drives calls through siplb, with
//! stunnel4 in front of it as the TLS client that checks siplb's certificate. A SIP
//! implementation we did not write must complete its calls, each on one back end.
//! Skips, saying why, when sipp or stunnel4 is not installed; .ci/run installs both.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn sipp_calls_through_stunnel_and_siplb() {
    for tool in ["sipp", "stunnel4"] {
        if !installed(tool) {
            eprintln!(
                "SKIPPED sipp_calls_through_stunnel_and_siplb: `{tool}` is not installed (apt-get install sip-tester stunnel4)"
            );
            return;
        }
    }
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::default(), None);
    let lb = start_balancer(&pki, &backends, 2, &[]);

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
    let _stunnel = Killed(
        Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 runs"),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", plain)).is_err() {
        assert!(Instant::now() < until, "stunnel4 did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }

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
