//! A flooding source (`sipload flood`), for tests and measurements of siplb's defences: N TLS
//! connections, from a source address of the caller's choice, each writing new INVITEs as fast
//! as TLS carries them until a deadline, reading what comes back and counting it by status code.
//! Blocking sockets, one thread per connection: the flood must cost the flooder little.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::msg::{self, Dialog};
use crate::sip::Read as Framed;

/// What to flood and how.
#[derive(Clone)]
pub struct FloodOpts {
    pub target: SocketAddr,
    pub server_name: ServerName<'static>,
    pub tls: Arc<ClientConfig>,
    /// Source address to connect from (one of this machine's); `None`: the system's choice.
    pub from: Option<IpAddr>,
    pub connections: usize,
    pub duration: Duration,
}

/// What a flood did.
#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    /// INVITEs written.
    pub sent: usize,
    /// Answers read back, by status code.
    pub answers: BTreeMap<u16, usize>,
    /// Connections that could not be made or were closed early, with why.
    pub failures: Vec<String>,
}

impl FloodReport {
    pub fn summary(&self) -> String {
        let answers: Vec<String> = self.answers.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let mut s = format!(
            "flood: {} INVITEs sent; answers {}",
            self.sent,
            answers.join(", ")
        );
        for f in &self.failures {
            s.push_str(&format!("\n  connection: {f}"));
        }
        s
    }
}

/// Runs the flood to its end (every connection until `duration` has passed).
pub fn run(opts: FloodOpts) -> FloodReport {
    let until = Instant::now() + opts.duration;
    let threads: Vec<_> = (0..opts.connections)
        .map(|n| {
            let opts = opts.clone();
            std::thread::spawn(move || one(&opts, n, until))
        })
        .collect();
    let mut total = FloodReport::default();
    for t in threads {
        let r = t.join().unwrap_or_else(|_| FloodReport {
            failures: vec!["flood thread panicked".into()],
            ..FloodReport::default()
        });
        total.sent += r.sent;
        for (c, n) in r.answers {
            *total.answers.entry(c).or_default() += n;
        }
        total.failures.extend(r.failures);
    }
    total
}

fn connect(opts: &FloodOpts) -> std::io::Result<TcpStream> {
    let Some(ip) = opts.from else {
        return TcpStream::connect(opts.target);
    };
    let domain = socket2::Domain::for_address(opts.target);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect(&opts.target.into())?;
    Ok(sock.into())
}

fn one(opts: &FloodOpts, n: usize, until: Instant) -> FloodReport {
    let mut report = FloodReport::default();
    let fail = |mut r: FloodReport, why: String| {
        r.failures.push(why);
        r
    };
    let tcp = match connect(opts) {
        Ok(t) => t,
        Err(e) => return fail(report, format!("connect: {e}")),
    };
    let conn = match rustls::ClientConnection::new(Arc::clone(&opts.tls), opts.server_name.clone()) {
        Ok(c) => c,
        Err(e) => return fail(report, format!("TLS: {e}")),
    };
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let _ = s.sock.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.sock.set_write_timeout(Some(Duration::from_secs(5)));
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            return fail(report, format!("TLS handshake: {e}"));
        }
    }
    // Reads wait a millisecond at most: the point is to write.
    let _ = s.sock.set_read_timeout(Some(Duration::from_millis(1)));
    let (mut buf, mut got) = (vec![0u8; 64 << 10], Vec::new());
    while Instant::now() < until {
        let mut batch = Vec::with_capacity(20 * 600);
        for _ in 0..20 {
            let mut d = Dialog {
                call_id: format!("flood-{n}-{}", report.sent),
                local: format!("<sip:flood@flood.invalid>;tag={}", msg::unique("f")),
                remote: "<sip:service@pool.test>".into(),
                remote_target: "sip:service@pool.test".into(),
                host: "flood.invalid".into(),
                ..Dialog::default()
            };
            batch.extend(d.request("INVITE", None, None, ""));
            report.sent += 1;
        }
        if let Err(e) = s.write_all(&batch).and_then(|_| s.flush()) {
            return fail(report, format!("write: {e}"));
        }
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        count(&mut got, &mut report.answers);
    }
    report
}

/// Counts the complete answers at the front of `got` by status code and drops them.
fn count(got: &mut Vec<u8>, answers: &mut BTreeMap<u16, usize>) {
    let mut pos = 0;
    loop {
        match crate::sip::read(&got[pos..], usize::MAX) {
            Framed::Message(f, m) => {
                if let Some(code) = m.status() {
                    *answers.entry(code).or_default() += 1;
                }
                pos += f.consumed();
            }
            Framed::Unparsable(f, _) => pos += f.consumed(),
            Framed::Ping(k) => pos += k,
            // Bytes that cannot be framed: nothing after them can be either.
            Framed::Invalid(_) => {
                pos = got.len();
                break;
            }
            Framed::Partial => break,
        }
    }
    got.drain(..pos);
}
