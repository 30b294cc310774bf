//! The binaries as an operator meets them: refusals (one line, exit 2 for flags, 1 for files),
//! SIGHUP reloads, SIGTERM stops with exit 0.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refusals_are_one_line_with_the_right_exit_code() {
    let siplb = env!("CARGO_BIN_EXE_siplb");
    for (args, code, needle) in [
        (&["--bogus"][..], 2, "--bogus"),
        (&["--workers", "many"], 2, "--workers"),
        (&["--backend", "b=127.0.0.1:1"], 2, "--cert"),
        (
            &[
                "--cert",
                "/nonexistent/c.pem",
                "--key",
                "/nonexistent/k.pem",
                "--backend-ca",
                "/nonexistent/ca.pem",
                "--backend",
                "b=127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ],
            1,
            "/nonexistent/",
        ),
        (
            &[
                "--cert",
                "c",
                "--key",
                "k",
                "--backend-ca",
                "ca",
                "--backend",
                "b=127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--require-client-cert",
            ],
            2,
            "--client-ca",
        ),
    ] {
        let (got, err) = run(siplb, args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let sipload = env!("CARGO_BIN_EXE_sipload");
    let (got, err) = run(sipload, &["call", "--target", "127.0.0.1:1"]);
    assert_eq!((got, err.trim().lines().count()), (2, 1), "{err}");
    let (got, err) = run(
        sipload,
        &["call", "--target", "127.0.0.1:1", "--ca", "/nonexistent/ca.pem"],
    );
    assert_eq!(got, 1, "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    assert_eq!(run(siplb, &["--help"]).0, 0);
}

/// Waits for `child` to exit (at most `limit`), then returns its status and everything it logged.
#[test]
fn sighup_reloads_and_sigterm_exits_zero() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    // Listening means the signal handlers are in place (they come first).
    let metrics = free_port();
    let (mut child, _) = spawn_siplb(&pki, &backends, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    wait_started(metrics);
    signal(&child, "-HUP");
    wait_until("the reload counted in /metrics", || {
        scrape(metrics).contains("siplb_reloads_total{result=\"ok\"} 1")
    });
    signal(&child, "-TERM");
    let (status, log) = exit_and_log(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit {status}: {log}");
    assert!(
        log.contains("configuration reloaded"),
        "no reload in the log: {log}"
    );
}

#[test]
fn sigterm_lets_calls_in_flight_finish_then_exits_zero() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(2), None);
    let metrics = free_port();
    let (mut child, port) = spawn_siplb(
        &pki,
        &backends,
        &[
            "--drain-timeout",
            "20",
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    // Both workers with both back ends up: a call is not refused for want of one.
    wait_workers_ready(metrics, 2);
    let opts = siplb::load::caller::CallOpts {
        rate: 200.0,
        hold: Duration::from_millis(1500),
        ..call_opts_to(&pki, format!("127.0.0.1:{port}").parse().expect("addr"), 20)
    };
    let caller = std::thread::spawn(move || siplb::load::caller::run(opts).expect("caller"));
    // SIGTERM once calls are established and held (1.5 s each) — or at once if the caller has
    // already ended, so the report below says what went wrong instead of a bare timeout.
    wait_until("all 20 calls in flight", || {
        calls_that_saw(&backends, "ACK") >= 20 || caller.is_finished()
    });
    signal(&child, "-TERM");
    let report = caller.join().expect("caller");
    assert_eq!(
        (report.ok, report.failed),
        (20, 0),
        "calls in flight did not finish: {}",
        report.summary()
    );
    // The drain ends when the last dialog does, well before --drain-timeout (a hang detector).
    let (status, log) = exit_and_log(&mut child, Duration::from_secs(25));
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("drained"), "{log}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting after the drain"
    );
}

/// Strict verifiers (`openssl verify -x509_strict`, Python 3.13's default TLS context) want the
/// Authority Key Identifier on every leaf `sipload certs` makes (the demo and the tests use the
/// same code).
#[test]
fn sipload_certs_pass_strict_x509_verification() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: openssl is not installed (apt-get install openssl)");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipload"))
        .args(["certs", "--dir"])
        .arg(dir.path())
        .args(["--name", "fe1.example.com", "--name", "127.0.0.1"])
        .output()
        .expect("sipload certs runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(dir.path().join("ca.pem"))
        .arg(dir.path().join("fe1.example.com.crt.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
