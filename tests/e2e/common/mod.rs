//! What the end-to-end tests share: their world (`world.rs`: PKI, back ends, siplb, `Harness`),
//! a client that sends raw SIP and waits for what comes back, calls, and waits with deadlines —
//! all on loopback with real TLS.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use siplb::load::caller::{self, CallOpts, CallReport};
use siplb::load::server::{ServerHandle, ServerStats};
use siplb::tls;
use siplb::worker::Balancer;

pub mod kamailio;
mod world;

pub use world::*;

pub fn call_opts(pki: &Pki, lb: &Balancer, calls: usize) -> CallOpts {
    call_opts_to(pki, lb.listen_addrs[0], calls)
}

/// Calls to `target` (siplb on a port of a process the test spawned, say).
pub fn call_opts_to(pki: &Pki, target: SocketAddr, calls: usize) -> CallOpts {
    CallOpts {
        target,
        server_name: tls::server_name(LB_NAME).expect("name"),
        tls: pki.client_tls(None),
        calls,
        rate: 500.0,
        concurrency: 20,
        per_call_connection: false,
        hold: Duration::ZERO,
        remote_bye: false,
        // A call that is lost fails whatever this is; it only has to outlast a slow machine's
        // slowest call (a busy 2-core machine running two suites saw 2 s at p99).
        timeout: Duration::from_secs(30),
        ruri: "sip:service@pool.test".into(),
        vary_user: false,
        from_domain: "sipload.invalid".into(),
        ws: false,
        progress: false,
        retry: false,
    }
}

pub fn run_calls(opts: CallOpts) -> CallReport {
    caller::run(opts).expect("caller runs")
}

/// The one back end that saw call `id`, having checked that it saw each of `what`.
pub fn assert_dialog<'a>(stats: &'a [ServerStats], id: &str, what: &[&str]) -> &'a ServerStats {
    let seen: Vec<&ServerStats> = stats.iter().filter(|s| s.calls.contains_key(id)).collect();
    assert_eq!(seen.len(), 1, "{id} reached {} back ends", seen.len());
    for w in what {
        assert!(seen[0].saw(id, w), "{id}: {w} missing: {:?}", seen[0].calls[id]);
    }
    seen[0]
}

/// For every call: which back ends saw it. Panics if any dialog touched two back ends.
pub fn assert_one_backend_per_call(report: &CallReport, stats: &[ServerStats]) -> Vec<usize> {
    let mut per_backend = vec![0usize; stats.len()];
    for id in &report.call_ids {
        let seen: Vec<usize> = (0..stats.len())
            .filter(|&i| stats[i].calls.contains_key(id))
            .collect();
        assert_eq!(seen.len(), 1, "call {id} reached back ends {seen:?}");
        per_backend[seen[0]] += 1;
    }
    per_backend
}

/// A SIP client for scripted exchanges: one TLS connection to siplb; everything received is kept.
pub struct TestClient {
    pub ep: siplb::load::endpoint::Endpoint,
    pub conn: usize,
    pub inbox: Inbox,
}

#[derive(Default)]
pub struct Inbox {
    pub messages: Vec<Vec<u8>>,
    /// Automatic answers: 200 OK to any request (with Contact and our tag for INVITE).
    pub answer_requests: bool,
}

impl siplb::load::endpoint::Handler for Inbox {
    fn on_message(&mut self, out: &mut siplb::load::endpoint::Out, conn: usize, m: &siplb::sip::Message) {
        self.messages.push(m.buf.to_vec());
        if self.answer_requests && m.is_request() && m.method() != Some(siplb::sip::Method::Ack) {
            let extra = "Contact: <sip:client@client.invalid;transport=tls>\r\n";
            out.send(
                conn,
                siplb::load::msg::response(m, 200, "OK", Some("clienttag"), true, extra),
            );
        }
    }
}

impl TestClient {
    pub fn connect(pki: &Pki, lb: &Balancer) -> TestClient {
        TestClient::connect_to(lb.listen_addrs[0], pki.client_tls(None))
    }

    /// A SIP-over-WebSocket connection (RFC 7118) to `addr`, a `--listen-wss` address.
    pub fn connect_ws(pki: &Pki, addr: SocketAddr) -> TestClient {
        let mut ep = siplb::load::endpoint::Endpoint::new().expect("endpoint");
        let conn = ep
            .connect_ws(
                addr,
                pki.client_tls(None),
                tls::server_name(LB_NAME).expect("name"),
            )
            .expect("connect");
        TestClient {
            ep,
            conn,
            inbox: Inbox::default(),
        }
    }

    /// A connection to `addr` with client config `cfg` (a partner's edge certificate, say).
    pub fn connect_to(addr: SocketAddr, cfg: Arc<ClientConfig>) -> TestClient {
        let mut ep = siplb::load::endpoint::Endpoint::new().expect("endpoint");
        let conn = ep
            .connect(addr, cfg, tls::server_name(LB_NAME).expect("name"))
            .expect("connect");
        TestClient {
            ep,
            conn,
            inbox: Inbox::default(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        assert!(self.ep.send(self.conn, bytes), "send failed");
    }

    /// Runs the connection until siplb closes it; false if it is still open after 20 s.
    pub fn closed_by_peer(&mut self) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while self.ep.is_open(self.conn) {
            if std::time::Instant::now() > until {
                return false;
            }
            let _ = self.ep.turn(&mut self.inbox, Duration::from_millis(10));
        }
        true
    }

    /// Waits (20 s at most, as [`wait_until`]) until a received message satisfies `pred`;
    /// returns it.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&siplb::sip::Message) -> bool) -> Vec<u8> {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        loop {
            while seen < self.inbox.messages.len() {
                let m = self.inbox.messages[seen].clone();
                seen += 1;
                if siplb::sip::Message::parse(&m).is_ok_and(|p| pred(&p)) {
                    return m;
                }
            }
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}; got {} messages",
                seen
            );
            self.ep
                .turn(&mut self.inbox, Duration::from_millis(5))
                .expect("turn");
        }
    }
}

/// The status code and CSeq method of a response.
pub fn is_response(m: &siplb::sip::Message, code: u16, method: siplb::sip::Method) -> bool {
    m.status() == Some(code) && m.cseq.is_some_and(|c| c.2 == method)
}

/// The balancer's metrics once `pred` holds (workers publish every 250 ms), or the last seen.
pub fn metrics_when(
    lb: &Balancer,
    pred: impl Fn(&siplb::metrics::Metrics) -> bool,
) -> siplb::metrics::Metrics {
    metrics_within(lb, Duration::from_secs(3), pred)
}

/// As `metrics_when`, waiting at most `limit`.
pub fn metrics_within(
    lb: &Balancer,
    limit: Duration,
    pred: impl Fn(&siplb::metrics::Metrics) -> bool,
) -> siplb::metrics::Metrics {
    let until = std::time::Instant::now() + limit;
    loop {
        let m = lb.metrics();
        if pred(&m) || std::time::Instant::now() > until {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking TLS client connection (for raw exchanges).
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// Connects to `addr` and completes the TLS handshake as `name`; `None` if anything fails.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>, name: &str) -> Option<Tls> {
    let sock = std::net::TcpStream::connect(addr).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let conn = rustls::ClientConnection::new(cfg, tls::server_name(name).ok()?).ok()?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).ok()?;
    }
    Some(s)
}

/// A caller's side of a new dialog with `call_id`, to `ruri`.
pub fn new_dialog(call_id: &str, ruri: &str) -> siplb::load::msg::Dialog {
    siplb::load::msg::Dialog {
        call_id: call_id.into(),
        local: format!(
            "<sip:caller@client.invalid>;tag={}",
            siplb::load::msg::unique("f")
        ),
        remote: format!("<{ruri}>"),
        remote_target: ruri.into(),
        route: vec![],
        cseq: 0,
        host: "client.invalid".into(),
    }
}

/// INVITE, 200, ACK over `c`: a dialog established, ready for its in-dialog requests.
pub fn establish(c: &mut TestClient, call_id: &str) -> siplb::load::msg::Dialog {
    establish_dialog(c, new_dialog(call_id, "sip:service@pool.test"))
}

/// INVITE, 200, ACK over `c` for the caller's side `d` (its From and host as the test wants).
pub fn establish_dialog(c: &mut TestClient, mut d: siplb::load::msg::Dialog) -> siplb::load::msg::Dialog {
    let call_id = d.call_id.clone();
    let call_id = call_id.as_str();
    c.send(&d.request("INVITE", None, None, ""));
    let ok = c.wait_for("200 INVITE", |m| {
        is_response(m, 200, siplb::sip::Method::Invite) && m.call_id() == Some(call_id.as_bytes())
    });
    let ok = siplb::sip::Message::parse(&ok).expect("200 parses");
    assert!(ok.contact.is_some(), "a 200 without Contact");
    d.confirm(&ok);
    c.send(&d.request("ACK", Some(1), None, ""));
    d
}

/// A command running the siplb binary, with the test runner's `RUST_LOG` taken away: a log filter
/// set for the tests would override the `--log` a test gives and change the lines it reads.
pub fn siplb_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_siplb"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// The siplb binary on a free port in front of `backends`, with `extra` flags, its stderr piped;
/// returns once it listens.
pub fn spawn_siplb(pki: &Pki, backends: &[ServerHandle], extra: &[&str]) -> (std::process::Child, u16) {
    let port = free_port();
    let mut cmd = siplb_command();
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--workers",
        "2",
        "--log",
        "info",
    ])
    .args([
        "--cert",
        &pki.lb.cert.display().to_string(),
        "--key",
        &pki.lb.key.display().to_string(),
    ])
    .args(["--backend-ca", &pki.ca_path.display().to_string()])
    .args(extra)
    .env("NO_COLOR", "1")
    .stderr(std::process::Stdio::piped());
    for b in backends {
        cmd.args(["--backend", &format!("{}={}", b.name, b.addr)]);
    }
    let child = cmd.spawn().expect("siplb starts");
    wait_until("siplb listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

/// Waits (at most `limit`) for a spawned siplb to exit; its status and its whole log.
pub fn exit_and_log(child: &mut std::process::Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let until = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < until,
            "siplb did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    (status, log)
}

/// Sends `sig` (`-HUP`, `-TERM`) to the spawned process — its own pid only.
pub fn signal(child: &std::process::Child, sig: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
}

/// Taken by the tests that load the whole machine (an attacker or a flood beside fifty callers,
/// a browser, a rolling restart under load): the suite runs its tests side by side, and two of
/// these at once on a 2-core machine starve the back ends they share it with, so what one of
/// them shows (nobody else is harmed) would be the other's doing. Held for the whole test.
pub fn machine_to_ourselves() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `cond` holds, for at most 20 s (generous: a test must pass on a machine three
/// times slower); on timeout fails naming `what`. For conditions nothing notifies us of.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let limit = Duration::from_secs(20);
    let until = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many calls (siplb's probes aside) the back ends saw `what` for (`"ACK"`, `"200 BYE"`).
pub fn calls_that_saw(backends: &[ServerHandle], what: &str) -> usize {
    backends
        .iter()
        .map(|b| {
            let s = b.snapshot();
            s.calls
                .keys()
                .filter(|id| !id.starts_with("siplb-probe-") && s.saw(id, what))
                .count()
        })
        .sum()
}

/// A free loopback port (for a spawned siplb's `--metrics`, say).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// What a spawned siplb's `--metrics` on `port` serves now (empty if it does not answer).
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut text = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    text
}

/// Waits until every one of a spawned siplb's `workers` is ready to route (every back end up in
/// it), as its `--metrics` on `port` says.
pub fn wait_workers_ready(port: u16, workers: usize) {
    let line = format!("siplb_workers_ready {workers}\n");
    wait_until(&format!("{workers} workers ready"), || {
        scrape(port).contains(&line)
    });
}

/// Waits until a spawned siplb serves `--metrics` on `port`: it binds that last, once every
/// listener is bound and its workers run ("siplb started").
pub fn wait_started(port: u16) {
    wait_until(&format!("siplb serving /metrics on {port}"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Reloads and waits until every worker runs with the result.
pub fn reload_and_wait(lb: &Balancer) {
    lb.reload().expect("reload");
    assert!(
        lb.wait_applied(Duration::from_secs(20)),
        "the workers did not take the reload"
    );
}

/// Reads until one whole head has arrived (siplb's own answers have no body); "" on EOF.
pub fn read_head(s: &mut impl std::io::Read) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the peer closes the connection within `limit` (a hang detector, not a timing check).
pub fn closes_within(s: &mut impl std::io::Read, sock: &std::net::TcpStream, limit: Duration) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let until = std::time::Instant::now() + limit;
    let mut chunk = [0u8; 1024];
    while std::time::Instant::now() < until {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
