//! The worker's rules in virtual time: a [`Core`] driven with in-memory wires ([`pipe::Pipe`]) and
//! a clock the test moves — no sockets, no threads, no sleeps. [`Sim`] plays the event loop and
//! every peer: back-end servers that answer probes and requests as told, and clients.

mod backends;
mod failover;
mod pipe;
mod pressure;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use super::{Core, Kind, Readiness, Wire};
use crate::config::RunArgs;
use crate::sip::response::{Extra, write_response};
use crate::sip::{Message, Read};
use crate::worker::runtime::Runtime;
use crate::worker::shared::Shared;
use pipe::Pipe;

/// The probe secret of the simulated worker.
const SECRET: u64 = 0x5ec2_e7ab_cdef_0123;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
}

/// Per back end: whether it refuses connections, and how many were tried.
#[derive(Default)]
struct Dial {
    refuse: AtomicBool,
    /// Completes a TLS 1.3 handshake, then refuses siplb's certificate (its alert).
    refuse_cert: AtomicBool,
    attempts: AtomicUsize,
}

pub struct Sim {
    pub core: Core<Pipe>,
    pub shared: Arc<Shared>,
    pub now: Instant,
    dials: Arc<Vec<Dial>>,
    dir: PathBuf,
    clients: u16,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sim {
    /// A worker with back ends `b0.test` … and `flags` beside the required ones.
    pub fn new(backends: usize, flags: &[&str]) -> Sim {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "siplb-core-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = crate::certs::Ca::new("core test CA").expect("CA");
        ca.write_pem(&dir.join("ca.pem")).expect("CA file");
        let leaf = ca.issue(&["lb.test"]).expect("leaf");
        let files = leaf.write(&dir, "lb").expect("leaf files");
        let mut args: Vec<String> = [
            "siplb",
            "--cert",
            files.cert.to_str().unwrap(),
            "--key",
            files.key.to_str().unwrap(),
            "--backend-ca",
            dir.join("ca.pem").to_str().unwrap(),
            "--listen",
            "127.0.0.1:5061",
            "--advertise",
            "lb.test:5061",
            "--workers",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for b in 0..backends {
            args.push("--backend".into());
            args.push(format!("b{b}.test=192.0.2.{}:5061", b + 1));
        }
        args.extend(flags.iter().map(|s| s.to_string()));
        let cfg = Args::try_parse_from(args)
            .expect("flags parse")
            .run
            .into_config()
            .expect("configuration");
        let rt = Runtime::load(&cfg, None, 7).expect("runtime");
        let shared = Arc::new(Shared::new(cfg, rt, 7, None, Vec::new(), None));
        let dials: Arc<Vec<Dial>> = Arc::new((0..backends).map(|_| Dial::default()).collect());
        let d = Arc::clone(&dials);
        let connect = Box::new(move |rt: &Runtime, b: usize| {
            d[b].attempts.fetch_add(1, Ordering::Relaxed);
            if d[b].refuse.load(Ordering::Relaxed) {
                let refused = std::io::ErrorKind::ConnectionRefused;
                return Err(super::ConnectError::Connect(refused.into()));
            }
            let mut pipe = Pipe::new();
            if d[b].refuse_cert.load(Ordering::Relaxed) {
                pipe.tls13 = true;
                pipe.fail = Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::CertificateUnknown,
                ));
            }
            Ok((pipe, rt.backends[b].addr))
        });
        let now = Instant::now();
        let core = Core::new(0, Arc::clone(&shared), SECRET, connect, now);
        let mut sim = Sim {
            core,
            shared,
            now,
            dials,
            dir,
            clients: 0,
        };
        sim.core.begin_turn(now);
        sim
    }

    /// Moves the clock by `d` and runs the timers (as the event loop does every turn).
    pub fn tick(&mut self, d: Duration) {
        self.now += d;
        self.core.begin_turn(self.now);
        self.core.handle_timeout(self.now);
        while self.core.poll_register().is_some() {}
        while self.core.poll_released().is_some() {}
    }

    /// Back end `b`'s pool connection, if it has one.
    pub fn conn_of(&self, b: usize) -> Option<usize> {
        self.core
            .connections()
            .into_iter()
            .find(|&(_, k)| k == Kind::Backend(b))
            .map(|(s, _)| s)
    }

    pub fn wire(&mut self, slot: usize) -> &mut Pipe {
        self.core.wire_mut(slot).expect("connection open")
    }

    pub fn is_open(&mut self, slot: usize) -> bool {
        self.core.wire_mut(slot).is_some()
    }

    /// The peer on `slot` sends `bytes` (empty: its handshake flight); the core reads it now.
    pub fn send(&mut self, slot: usize, bytes: &[u8]) {
        self.wire(slot).inbound.extend_from_slice(bytes);
        let ready = Readiness {
            readable: true,
            ..Readiness::default()
        };
        self.core.handle_event(slot, ready, self.now);
        self.core.handle_timeout(self.now);
    }

    /// The peer on `slot` goes away (its TCP connection closes).
    pub fn lose(&mut self, slot: usize) {
        self.wire(slot).ended.closed = true;
        let ready = Readiness {
            readable: true,
            read_closed: true,
            error: false,
        };
        self.core.handle_event(slot, ready, self.now);
        self.core.handle_timeout(self.now);
    }

    /// The SIP messages the peer on `slot` received since the last call.
    pub fn received(&mut self, slot: usize) -> Vec<Vec<u8>> {
        let Some(w) = self.core.wire_mut(slot) else {
            return Vec::new();
        };
        let bytes = std::mem::take(&mut w.sent);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Read::Message(f, _) = crate::sip::read(&bytes[pos..], usize::MAX) {
            out.push(bytes[pos..pos + f.consumed()].to_vec());
            pos += f.consumed();
        }
        assert_eq!(pos, bytes.len(), "only whole SIP messages were written");
        out
    }

    /// Back end `b`'s server: answers the probes among what it received with 200; the rest.
    pub fn serve_probes(&mut self, b: usize) -> Vec<Vec<u8>> {
        let Some(slot) = self.conn_of(b) else {
            return Vec::new();
        };
        let mut rest = Vec::new();
        for m in self.received(slot) {
            if call_id(&m).starts_with("siplb-probe-") {
                self.send(slot, &answer(&m, 200, Extra::default()));
            } else {
                rest.push(m);
            }
        }
        rest
    }

    /// Runs the clock until every back end is up (its connection's handshake done, a probe
    /// answered); panics after a simulated minute.
    pub fn all_up(&mut self) {
        for _ in 0..6000 {
            let n = self.core.be.pool.len();
            assert!(n > 0, "a simulated worker has back ends");
            if (0..n).all(|b| self.core.be.pool.avail(b) == crate::route::Avail::Up) {
                return;
            }
            self.run_for(Duration::from_millis(10), Duration::from_millis(10));
        }
        panic!("back ends not up after a simulated minute");
    }

    /// A client connection, its handshake done.
    pub fn client(&mut self) -> usize {
        self.clients += 1;
        let peer = format!("198.51.100.7:{}", 40000 + self.clients).parse().unwrap();
        let slot = self.core.handle_accepted(Pipe::new(), peer, Kind::Client, false);
        self.send(slot, b"");
        slot
    }

    /// Makes back end `b` refuse (or accept again) new connections.
    pub fn refuse(&self, b: usize, yes: bool) {
        self.dials[b].refuse.store(yes, Ordering::Relaxed);
    }

    /// Makes back end `b`'s server refuse siplb's certificate after the handshake.
    pub fn refuse_cert(&self, b: usize, yes: bool) {
        self.dials[b].refuse_cert.store(yes, Ordering::Relaxed);
    }

    pub fn attempts(&self, b: usize) -> usize {
        self.dials[b].attempts.load(Ordering::Relaxed)
    }

    /// The back end whose server received request `call` (and what it received), taking every
    /// back end's messages.
    pub fn who_got(&mut self, call: &str) -> Vec<(usize, Vec<u8>)> {
        let mut got = Vec::new();
        for b in 0..self.core.be.pool.len() {
            for m in self.serve_probes(b) {
                if call_id(&m) == call {
                    got.push((b, m));
                }
            }
        }
        got
    }
}

pub fn invite(call: &str) -> Vec<u8> {
    request("INVITE", call, 1)
}

pub fn request(method: &str, call: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:bob@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bK{call}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@a.test>;tag=a1\r\nTo: <sip:bob@pool.test>\r\nCall-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:alice@198.51.100.7:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A server's (or client's) answer to `request`.
pub fn answer(request: &[u8], code: u16, extra: Extra) -> Vec<u8> {
    let mut out = Vec::new();
    write_response(request, code, "Test", extra, &mut out);
    out
}

pub fn call_id(m: &[u8]) -> String {
    Message::parse(m)
        .ok()
        .and_then(|m| m.call_id().map(|c| String::from_utf8_lossy(c).into_owned()))
        .unwrap_or_default()
}

pub fn status(m: &[u8]) -> Option<u16> {
    Message::parse(m).ok().and_then(|m| m.status())
}

pub fn method(m: &[u8]) -> String {
    m.split(|&b| b == b' ')
        .next()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}

/// A server's final answer that starts a dialog: its To tagged, the request's Record-Route
/// copied (RFC 3261 §12.1.1).
pub fn dialog_answer(request: &[u8], code: u16) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let rr: String = text
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("record-route:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let ans = answer(request, code, Extra::default());
    let end = ans
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block")
        + 2;
    [&ans[..end], rr.as_bytes(), &ans[end..]].concat()
}

/// The caller's in-dialog request after `ok` (the 200 to its INVITE): routed by the
/// Record-Route the caller was given, reversed.
pub fn in_dialog(method: &str, ok: &[u8], cseq: u32) -> Vec<u8> {
    let text = String::from_utf8_lossy(ok);
    let header = |name: &str| {
        text.split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .collect::<Vec<_>>()
    };
    let mut routes = header("record-route:");
    routes.reverse();
    assert!(!routes.is_empty(), "the caller was given a Record-Route");
    let to = header("to:").pop().expect("a To");
    let call = header("call-id:").pop().expect("a Call-ID");
    format!(
        "{method} sip:bob@192.0.2.1:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bK{call}{cseq}\r\n\
         Max-Forwards: 70\r\nRoute: {}\r\nFrom: <sip:alice@a.test>;tag=a1\r\nTo: {to}\r\nCall-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        routes.join(", ")
    )
    .into_bytes()
}

impl Sim {
    /// Runs the clock for `d` in steps of `step`, the servers answering their probes; what
    /// else the servers received, by back end.
    pub fn run_for(&mut self, d: Duration, step: Duration) -> Vec<(usize, Vec<u8>)> {
        let mut got = Vec::new();
        let until = self.now + d;
        while self.now < until {
            self.tick(step);
            for b in 0..self.core.be.pool.len() {
                // New pool connections get their server's handshake flight.
                if let Some(s) = self.conn_of(b)
                    && self.wire(s).is_handshaking()
                {
                    self.send(s, b"");
                }
                got.extend(self.serve_probes(b).into_iter().map(|m| (b, m)));
            }
        }
        got
    }

    /// A call from client `c` answered 200 by whichever server took it: the 200 the caller got,
    /// and the back end.
    pub fn call(&mut self, c: usize, call: &str) -> (Vec<u8>, usize) {
        let (b, inv) = self.invite(c, call);
        let s = self.conn_of(b).expect("pool connection");
        self.send(s, &dialog_answer(&inv, 200));
        let heard = self.received(c);
        assert_eq!(heard.len(), 1, "the caller got the 200");
        assert_eq!(status(&heard[0]), Some(200));
        (heard[0].clone(), b)
    }

    /// Client `c` sends INVITE `call`: the back end whose server got it (exactly one did), and
    /// the INVITE as it got it.
    pub fn invite(&mut self, c: usize, call: &str) -> (usize, Vec<u8>) {
        self.send(c, &invite(call));
        let mut got = self.who_got(call);
        assert_eq!(got.len(), 1, "one server got INVITE {call}");
        got.remove(0)
    }

    /// The event loop saw `slot` writable (its peer read some).
    pub fn writable(&mut self, slot: usize) {
        self.core.handle_event(slot, Readiness::default(), self.now);
        self.core.handle_timeout(self.now);
    }
}
