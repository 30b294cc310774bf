//! The operator's first hour (issue 14): help under headings with every flag explained, logs a
//! machine or a pipe can read, a key that does not match its certificate named with both files,
//! metrics histograms and a `/metrics` a silent client cannot block, readiness for systemd, the
//! unit file, completions and the man page, private keys written owner-only, and sipload's
//! failure reasons.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use clap::CommandFactory;
use siplb::load::server::ServerHandle;

const SIPLB: &str = env!("CARGO_BIN_EXE_siplb");
const SIPLOAD: &str = env!("CARGO_BIN_EXE_sipload");

/// Every argument of `cmd` and its subcommands that has no help text.
fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        if id != "help" && id != "version" && a.get_help().is_none() && a.get_long_help().is_none() {
            out.push(format!("{path} {id}"));
        }
    }
    for sub in cmd.get_subcommands() {
        undocumented(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn help_has_headings_and_every_flag_says_what_it_does() {
    let out = siplb_command().arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Listeners and TLS:",
        "Back ends:",
        "Health checks:",
        "Limits and timeouts:",
        "Operations:",
    ] {
        assert!(help.contains(heading), "no '{heading}' in --help:\n{help}");
    }
    // The defaults that explain refusals are shown.
    assert!(help.contains("[default: 0.0.0.0:5061]"), "{help}");
    assert!(
        help.contains("number of CPUs"),
        "--workers says its default: {help}"
    );
    let mut missing = Vec::new();
    undocumented(&siplb::cli::Args::command(), "siplb", &mut missing);
    undocumented(&siplb::load::cli::Args::command(), "sipload", &mut missing);
    assert!(missing.is_empty(), "flags without help: {missing:?}");
}

#[test]
fn all_missing_required_flags_in_one_line() {
    let out = siplb_command().output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    for f in ["--cert", "--key", "--backend-ca", "--backend"] {
        assert!(err.contains(f), "{err}");
    }
}

#[test]
fn a_key_that_is_not_the_certificates_names_both_files() {
    let pki = Pki::new();
    let other = pki
        .ca
        .issue(&["other.test"])
        .expect("leaf")
        .write(pki.dir.path(), "other")
        .expect("write");
    let out = siplb_command()
        .args(["--listen", "127.0.0.1:0", "--backend", "b=127.0.0.1:1"])
        .arg("--cert")
        .arg(&pki.lb.cert)
        .arg("--key")
        .arg(&other.key)
        .arg("--backend-ca")
        .arg(&pki.ca_path)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&*pki.lb.cert.to_string_lossy()), "{err}");
    assert!(err.contains(&*other.key.to_string_lossy()), "{err}");
    assert!(!err.contains("KeyMismatch"), "{err}");
}

/// siplb as a child with `extra` flags and its log piped; returns once "siplb started" is logged
/// (so the log proves it comes after every bind), with the log so far and its back end (keep it
/// for as long as siplb runs).
fn start_logged(
    pki: &Pki,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String, Vec<ServerHandle>) {
    let backends = start_backends(pki, Backends::n(1), None);
    let mut cmd = siplb_command();
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "1", "--log", "info"])
        .arg("--cert")
        .arg(&pki.lb.cert)
        .arg("--key")
        .arg(&pki.lb.key)
        .arg("--backend-ca")
        .arg(&pki.ca_path)
        .args(["--backend", &format!("{}={}", backends[0].name, backends[0].addr)])
        .args(extra)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("siplb starts");
    let mut err = child.stderr.take().expect("stderr");
    let mut log = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&log).contains("siplb started") {
        assert!(
            Instant::now() < until,
            "no 'siplb started' in {}",
            String::from_utf8_lossy(&log)
        );
        match err.read(&mut byte) {
            Ok(1) => log.push(byte[0]),
            _ => panic!("log ended: {}", String::from_utf8_lossy(&log)),
        }
    }
    child.stderr = Some(err);
    (child, String::from_utf8_lossy(&log).into_owned(), backends)
}

#[test]
fn json_logs_are_json_lines_and_end_with_the_reason() {
    let pki = Pki::new();
    let (mut child, head, _backends) =
        start_logged(&pki, &["--log-format", "json", "--metrics", "127.0.0.1:0"], &[]);
    // A reload and a stop in quick succession (as `systemctl reload; systemctl stop` may do):
    // whatever order they are handled in, "siplb stopped" stays the last line.
    signal(&child, "-HUP");
    signal(&child, "-TERM");
    let (status, rest) = exit_and_log(&mut child, Duration::from_secs(40));
    assert!(status.success());
    let log = head + &rest;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let msg = |v: &serde_json::Value| v["message"].as_str().unwrap_or("").to_string();
    let started = lines.iter().find(|v| msg(v) == "siplb started").expect("started");
    // Plain values, not Rust debug forms; the metrics listener is bound before "started".
    assert!(
        started["listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "{started}"
    );
    assert!(
        started["metrics"]
            .as_str()
            .is_some_and(|m| m.starts_with("127.0.0.1:")),
        "{started}"
    );
    assert!(!log.contains("Some("), "{log}");
    let last = lines.last().expect("a line");
    assert_eq!(msg(last), "siplb stopped", "{log}");
    assert_eq!(last["reason"], "SIGTERM");
}

#[test]
fn a_piped_text_log_has_no_escape_codes() {
    let pki = Pki::new();
    let (mut child, head, _backends) = start_logged(&pki, &[], &[]);
    signal(&child, "-TERM");
    let (_, rest) = exit_and_log(&mut child, Duration::from_secs(40));
    let log = head + &rest;
    assert!(!log.contains('\u{1b}'), "escape codes in a piped log: {log:?}");
    assert!(log.contains("siplb stopped"), "{log}");
}

#[test]
fn readiness_and_stopping_are_told_to_systemd() {
    let pki = Pki::new();
    let sock_path = pki.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (mut child, _, _backends) =
        start_logged(&pki, &[], &[("NOTIFY_SOCKET", &*sock_path.to_string_lossy())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    signal(&child, "-TERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let (status, _) = exit_and_log(&mut child, Duration::from_secs(40));
    assert!(status.success());
}

fn get_metrics(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("ask");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    out
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn histograms_move_and_a_silent_client_blocks_nobody() {
    let Harness { pki, backends, lb } = Harness::new()
        .backends(2)
        .workers(2)
        .flags(&[
            "--metrics".into(),
            "127.0.0.1:0".into(),
            "--health-interval".into(),
            "1".into(),
        ])
        .start();
    let addr = lb.metrics_addr.expect("metrics");
    let b0 = &backends[0].name;
    // The back ends are listed once the workers first publish (4 times a second).
    wait_until("the back ends listed", || {
        get_metrics(addr).contains(&format!("siplb_backend_up{{backend=\"{b0}\"}} 1"))
    });
    // Clients that connect and never send, or ask and never read: they hold only themselves.
    let _silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut greedy = TcpStream::connect(addr).expect("connect");
    greedy.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").expect("ask");
    let before = get_metrics(addr);
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    // Every family from the start, histograms included.
    for family in [
        "siplb_setup_seconds_count",
        "siplb_connections_refused_total{reason=\"max-connections\"}",
        "siplb_messages_dropped_total{reason=\"\"}",
        "siplb_tls_handshake_failures_total{reason=\"\"}",
    ] {
        sample(&before, family);
    }
    sample(
        &before,
        &format!("siplb_backend_answer_seconds_count{{backend=\"{b0}\"}}"),
    );
    let report = run_calls(call_opts(&pki, &lb, 50));
    assert_eq!((report.ok, report.failed), (50, 0), "{}", report.summary());
    // Workers publish 4 times a second and probe once a second: wait until /metrics shows all
    // 50 calls and a probe, then check every family.
    let answered = |t: &str| -> f64 {
        backends
            .iter()
            .map(|b| {
                sample(
                    t,
                    &format!("siplb_backend_answer_seconds_count{{backend=\"{}\"}}", b.name),
                )
            })
            .sum()
    };
    let probe = format!("siplb_backend_probe_rtt_seconds_count{{backend=\"{b0}\"}}");
    let mut after = String::new();
    wait_until("/metrics to show the 50 calls and a probe", || {
        after = get_metrics(addr);
        sample(&after, "siplb_setup_seconds_count") >= 50.0
            && answered(&after) >= 50.0
            && sample(&after, &probe) >= 1.0
    });
    assert_eq!(sample(&after, "siplb_setup_seconds_count"), 50.0, "{after}");
    assert!(sample(&after, "siplb_setup_seconds_bucket{le=\"+Inf\"}") >= 50.0);
    let answers: f64 = backends
        .iter()
        .map(|b| {
            sample(
                &after,
                &format!("siplb_backend_answer_seconds_count{{backend=\"{}\"}}", b.name),
            )
        })
        .sum();
    assert_eq!(answers, 50.0, "{after}");
    assert!(
        sample(
            &after,
            &format!("siplb_backend_probe_rtt_seconds_count{{backend=\"{b0}\"}}")
        ) >= 1.0
    );
    lb.shutdown();
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/siplb.service")).expect("unit");
    for must in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(must), "{must}");
    }
    // Verified as installed: the binary where ExecStart says, here the one just built.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("siplb.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/siplb", SIPLB)).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // Lines about the unit itself (the host's other units may have complaints of their own).
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("siplb.service")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_flags() {
    let out = siplb_command()
        .args(["completions", "bash"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("--backend-ca") && text.contains("--log-format"));
    let out = siplb_command().arg("manpage").output().expect("runs");
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && man.contains(".TH siplb"), "{man}");
    assert!(man.contains("backend\\-ca"), "{man}");
}

#[test]
fn sipload_certs_writes_keys_only_the_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(SIPLOAD)
        .args(["certs", "--name", "a.test", "--name", "b.test", "--dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(out.status.success());
    for name in ["a.test", "b.test"] {
        let mode = std::fs::metadata(dir.path().join(format!("{name}.key.pem")))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name}: mode {mode:o}");
    }
}

#[test]
fn sipload_tells_refused_from_a_stalled_handshake() {
    let pki = Pki::new();
    // Nothing listens here.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let refused = free.local_addr().expect("addr");
    drop(free);
    let mut opts = call_opts_to(&pki, refused, 1);
    opts.timeout = Duration::from_secs(2);
    let r = run_calls(opts);
    assert_eq!(
        r.failures.keys().collect::<Vec<_>>(),
        ["connection refused"],
        "{}",
        r.summary()
    );
    // Something listens and never speaks TLS.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let mut opts = call_opts_to(&pki, mute.local_addr().expect("addr"), 1);
    opts.timeout = Duration::from_secs(1);
    let r = run_calls(opts);
    assert_eq!(
        r.failures.keys().collect::<Vec<_>>(),
        ["TLS handshake not finished within 1 s"],
        "{}",
        r.summary()
    );
    drop(mute);
}

/// A TLS scan or a flood of bad handshakes on the client and peer listeners costs a bounded
/// number of log lines at info and above (per-connection failures are at debug; a summary line
/// comes at most once a minute).
#[test]
fn a_scan_of_failed_handshakes_writes_a_bounded_log() {
    use std::io::Write;
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let peer_port = free_port();
    let peer = format!("127.0.0.1:{peer_port}");
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (mut child, port) = spawn_siplb(
        &pki,
        &backends,
        &["--peer-listen", &peer, "--metrics", &metrics.to_string()],
    );
    // /metrics is bound after the listeners.
    wait_started(metrics.port());
    let mut attempts = 0;
    for target in [port, peer_port] {
        for _ in 0..200 {
            // Plaintext on a TLS port, and a client that goes away: a failed handshake each.
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", target)) {
                let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: scan\r\n\r\n");
                attempts += 1;
            }
        }
    }
    assert_eq!(attempts, 400, "the listeners took every connection");
    // Every attempt failed its handshake (counted) before siplb is stopped.
    wait_until("400 failed handshakes counted", || {
        let text = get_metrics(metrics);
        let failed: f64 = text
            .lines()
            .filter(|l| l.starts_with("siplb_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        failed >= 400.0
    });
    signal(&child, "-TERM");
    let (status, log) = exit_and_log(&mut child, Duration::from_secs(20));
    assert!(status.success(), "exit {status}: {log}");
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| [" INFO ", " WARN ", " ERROR "].iter().any(|lvl| l.contains(lvl)))
        .collect();
    assert!(
        !loud.is_empty() && loud.len() <= 20,
        "{} lines at info and above for 400 failed handshakes:\n{log}",
        loud.len()
    );
    assert!(!log.contains("handshake failed"), "a per-connection line: {log}");
}
